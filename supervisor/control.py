"""The control socket: one JSON request line in, one JSON answer line out.

The daemon serves it from its main loop without blocking (a slow client cannot stall a tick).
The kernel tells us who is calling (SO_PEERCRED): root may do anything, members of the
configured group may only read status.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import struct
import time
from pathlib import Path

from .paths import Instance

SOCKET_PATH = Instance().socket
READ_ONLY = {"status"}
_MAX_REQUEST = 64 * 1024
_CLIENT_DEADLINE = 5.0


class ControlError(Exception):
    pass


def peer_groups(conn: socket.socket) -> tuple[int, set[int]]:
    """(uid, every gid) of the process at the other end of a unix socket."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    gids = {gid}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                gids.update(int(g) for g in line.split()[1:])
    except OSError:
        pass  # the caller already left: its primary gid is all we know
    return uid, gids


class ControlServer:
    def __init__(self, path: Path, gid: int | None, handler, selector: selectors.BaseSelector):
        """``handler(request: dict, admin: bool) -> result``; raise ValueError/KeyError to refuse."""
        self.path = Path(path)
        self.gid = gid
        self.handler = handler
        self.selector = selector
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o660)
        if gid is not None:
            os.chown(self.path, 0, gid)
        self.sock.listen(16)
        self.sock.setblocking(False)
        self._clients: dict[socket.socket, tuple[bytearray, float, bool]] = {}
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        uid, gids = peer_groups(conn)
        admin = uid == 0
        if not admin and (self.gid is None or self.gid not in gids):
            self._answer(conn, {"ok": False, "error": "permission denied: root or the control"
                                " group only"})
            return
        conn.setblocking(False)
        self._clients[conn] = (bytearray(), time.monotonic() + _CLIENT_DEADLINE, admin)
        self.selector.register(conn, selectors.EVENT_READ, lambda c=conn: self._read(c))

    def _read(self, conn: socket.socket) -> None:
        buf, deadline, admin = self._clients[conn]
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buf += data
        if b"\n" not in buf and data and len(buf) < _MAX_REQUEST:
            return
        self._drop(conn)
        line = bytes(buf).split(b"\n", 1)[0]
        self._answer(conn, self._dispatch(line, admin))

    def _dispatch(self, line: bytes, admin: bool) -> dict:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ValueError("expected a JSON object with a 'cmd'")
        except ValueError as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        if not admin and request["cmd"] not in READ_ONLY:
            return {"ok": False, "error": f"permission denied: '{request['cmd']}' needs root"}
        try:
            return {"ok": True, "result": self.handler(request, admin)}
        except (ValueError, KeyError) as exc:
            return {"ok": False, "error": str(exc.args[0]) if exc.args else str(exc)}

    def _answer(self, conn: socket.socket, answer: dict) -> None:
        try:
            conn.settimeout(1.0)   # answers are small; a client that never reads is dropped
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass
        finally:
            conn.close()

    def _drop(self, conn: socket.socket) -> None:
        self.selector.unregister(conn)
        del self._clients[conn]

    def expire(self, now: float) -> None:
        """Close clients that sent no complete request in time."""
        for conn, (_, deadline, _) in list(self._clients.items()):
            if now > deadline:
                self._drop(conn)
                conn.close()

    def close(self) -> None:
        for conn in list(self._clients):
            self._drop(conn)
            conn.close()
        self.selector.unregister(self.sock)
        self.sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def request(cmd: str, path: Path = SOCKET_PATH, timeout: float = 10.0, **args) -> dict:
    """Ask the daemon; raises ControlError when no daemon answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                data = sock.recv(65536)
                if not data:
                    break
                buf += data
    except FileNotFoundError:
        raise ControlError(f"no daemon socket at {path}") from None
    except ConnectionRefusedError:
        raise ControlError(f"nothing listens on {path}") from None
    except PermissionError:
        raise ControlError(f"permission denied on {path}: root or the control group only") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    if not buf:
        raise ControlError(f"the daemon closed {path} without answering")
    return json.loads(buf)


def wait_for_drains(path: Path, started: float, link: str | None = None,
                    poll: float = 0.2) -> dict[str, dict]:
    """Poll status until the drain of ``link`` (or of every link) has an outcome newer than
    ``started`` (wall clock); returns {link: last_drain}."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(started)))
    while True:
        links = [x for x in request("status", path=path)["result"]["links"]
                 if link is None or x["name"] == link]
        done = {x["name"]: x["last_drain"] for x in links
                if x["state"] != "draining" and x.get("last_drain")
                and x["last_drain"]["at"] >= stamp}
        if len(done) == len(links):
            return done
        time.sleep(poll)
