"""The control socket: one JSON request line in, one JSON answer line out.

The daemon serves it from its main loop, and nothing a client sends (or fails to read) may
crash or stall that loop, since members of ``control.group`` are not root:

- every request passes one exception boundary: bad JSON (``[`` * 50000 included), a request
  outside the schema (control_schema.py) or a failing handler becomes a one-line error answer;
- a request may be at most MAX_REQUEST bytes, and each client has CLIENT_DEADLINE seconds for
  the whole exchange, then it is dropped;
- answers are queued and written as the socket takes them (EVENT_WRITE), never with a blocking
  send: a client that does not read costs one buffer until its deadline;
- clients are capped per uid and in total, and root has an allowance of its own, so that the
  control group cannot crowd root out; extra clients get a one-line error and are closed, and
  running out of descriptors (EMFILE) pauses accepting instead of spinning.

The kernel tells us who is calling (SO_PEERCRED): root may do anything, members of the
configured group may only read status.
"""

from __future__ import annotations

import collections
import errno
import grp
import json
import logging
import os
import selectors
import socket
import struct
import time
from pathlib import Path

from .control_schema import SCHEMA, Refused, validate
from .paths import Instance

log = logging.getLogger(__name__)

SOCKET_PATH = Instance().socket
MAX_REQUEST = 64 * 1024
CLIENT_DEADLINE = 5.0       # seconds to send a request and read the whole answer
MAX_PER_UID = 8             # clients of one non-root user at a time
MAX_CLIENTS = 64            # non-root clients at a time, all users together
MAX_ROOT_CLIENTS = 16       # root's own allowance, untouched by the control group
ACCEPTS_PER_WAKE = 64       # a flood of connections still lets the loop tick
ACCEPT_PAUSE = 0.5          # seconds without accepting after EMFILE/ENFILE
_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class ControlError(Exception):
    """No answer from the daemon (not running, not reachable, or it hung up)."""


class ControlPermissionError(ControlError):
    """The caller may not use the socket: neither root nor in the control group."""


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


def group_name(gid: int | None) -> str | None:
    if gid is None:
        return None
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _line(answer: dict) -> bytes:
    return json.dumps(answer).encode() + b"\n"    # json escapes line breaks: one line


def _error(message: str) -> dict:
    return {"ok": False, "error": message}


class _Client:
    __slots__ = ("conn", "uid", "admin", "deadline", "inbuf", "outbuf")

    def __init__(self, conn: socket.socket, uid: int, admin: bool, deadline: float):
        self.conn, self.uid, self.admin, self.deadline = conn, uid, admin, deadline
        self.inbuf = bytearray()
        self.outbuf: memoryview | None = None     # set once the answer is ready


class ControlServer:
    def __init__(self, path: Path, gid: int | None, handler, selector: selectors.BaseSelector,
                 clock=time.monotonic, peer=peer_groups, deadline: float = CLIENT_DEADLINE):
        """``handler(request: dict, admin: bool) -> result`` gets validated requests only;
        ValueError/KeyError refuse with their message, anything else is an internal error."""
        self.path = Path(path)
        self.gid = gid
        self.handler = handler
        self.selector = selector
        self.clock = clock
        self.peer = peer
        self.deadline = deadline
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o660)
        self.set_group(gid)
        # A deep backlog: a flood of connections queues there instead of refusing root's.
        self.sock.listen(socket.SOMAXCONN)
        self.sock.setblocking(False)
        self._clients: dict[socket.socket, _Client] = {}
        self._per_uid: collections.Counter = collections.Counter()
        self._paused_until: float | None = None
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def set_group(self, gid: int | None) -> None:
        """The group that may read status (control.group), at start and on every reload:
        the socket's group and the check of each caller. None (no such group): root only."""
        if gid is not None or os.geteuid() == 0:
            os.chown(self.path, 0, 0 if gid is None else gid)
        self.gid = gid
        group = group_name(gid)
        self.denied = (f"permission denied: you are not root or in group {group}" if group else
                       "permission denied: root only (the control group does not exist)")

    # -- accepting ---------------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    self._pause(exc)
                return   # ECONNABORTED and the like: that caller is gone
            try:
                self._admit(conn)
            except Exception:   # the boundary: one caller must not take the daemon down
                log.exception("control socket: dropping a caller")
                self._forget(conn)
                conn.close()

    def _pause(self, exc: OSError) -> None:
        """Out of descriptors: the listening socket stays readable, so stop watching it for a
        moment instead of spinning; callers wait in the backlog meanwhile."""
        log.warning("control socket: cannot accept (%s); pausing %.1fs with %d clients",
                    exc.strerror, ACCEPT_PAUSE, len(self._clients))
        self.selector.unregister(self.sock)
        self._paused_until = self.clock() + ACCEPT_PAUSE

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        uid, gids = self.peer(conn)
        admin = uid == 0
        if not admin and (self.gid is None or self.gid not in gids):
            return self._refuse(conn, self.denied)
        busy = self._busy(uid)
        if busy:
            return self._refuse(conn, f"busy: {busy}; try again later")
        client = _Client(conn, uid, admin, self.clock() + self.deadline)
        self._clients[conn] = client
        self._per_uid[uid] += 1
        self.selector.register(conn, selectors.EVENT_READ, lambda: self._serve(client))

    def _busy(self, uid: int) -> str | None:
        if uid == 0:
            if self._per_uid[0] >= MAX_ROOT_CLIENTS:
                return f"{MAX_ROOT_CLIENTS} root clients are connected"
            return None
        if self._per_uid[uid] >= MAX_PER_UID:
            return f"uid {uid} has {MAX_PER_UID} clients connected"
        if len(self._clients) - self._per_uid[0] >= MAX_CLIENTS:
            return f"{MAX_CLIENTS} clients are connected"
        return None

    def _refuse(self, conn: socket.socket, message: str) -> None:
        """One small line into a fresh socket's empty buffer: it cannot block."""
        try:
            conn.send(_line(_error(message)))
        except OSError:
            pass
        conn.close()

    # -- one client --------------------------------------------------------------------------
    def _serve(self, client: _Client) -> None:
        try:
            if client.outbuf is None:
                self._read(client)
            else:
                self._write(client)
        except Exception:       # the boundary, again: drop the caller, keep the daemon
            log.exception("control socket: dropping a caller")
            self._close(client)

    def _read(self, client: _Client) -> None:
        try:
            data = client.conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._close(client)
        if data:
            start = len(client.inbuf)
            client.inbuf += data
            end = client.inbuf.find(b"\n", start)
            if end < 0:
                if len(client.inbuf) > MAX_REQUEST:
                    self._respond(client, _line(_error(
                        f"bad request: longer than {MAX_REQUEST} bytes")))
                return
            request = bytes(client.inbuf[:end])
        elif client.inbuf:
            request = bytes(client.inbuf)   # the caller closed its side after the request
        else:
            return self._close(client)      # connected and left
        if len(request) > MAX_REQUEST:
            return self._respond(client, _line(_error(
                f"bad request: longer than {MAX_REQUEST} bytes")))
        self._respond(client, self.dispatch(request, client.admin))

    def _respond(self, client: _Client, answer: bytes) -> None:
        client.inbuf = bytearray()
        client.outbuf = memoryview(answer)
        self.selector.modify(client.conn, selectors.EVENT_WRITE, lambda: self._serve(client))
        self._write(client)

    def _write(self, client: _Client) -> None:
        try:
            sent = client.conn.send(client.outbuf)
        except (BlockingIOError, InterruptedError):
            return          # the selector says when it can take more
        except OSError:
            return self._close(client)
        client.outbuf = client.outbuf[sent:]
        if not client.outbuf:
            self._close(client)

    def _close(self, client: _Client) -> None:
        self._forget(client.conn)
        client.conn.close()

    def _forget(self, conn: socket.socket) -> None:
        client = self._clients.pop(conn, None)
        if client is not None:
            self._per_uid[client.uid] -= 1
            if self._per_uid[client.uid] <= 0:
                del self._per_uid[client.uid]
            self.selector.unregister(conn)

    # -- the request -------------------------------------------------------------------------
    def dispatch(self, line: bytes, admin: bool) -> bytes:
        """The answer line to a request line; never raises."""
        try:
            return _line(self._answer(line, admin))
        except Exception as exc:    # e.g. a result json cannot encode
            log.exception("control socket: cannot answer a request")
            return _line(_error(f"internal error: {type(exc).__name__}"))

    def _answer(self, line: bytes, admin: bool) -> dict:
        try:
            request = validate(json.loads(line))
        except Refused as exc:
            return _error(str(exc))
        except (ValueError, RecursionError) as exc:   # not JSON, not UTF-8, nested too deep
            return _error(f"bad request: {(str(exc) or type(exc).__name__)[:200]}")
        cmd = request["cmd"]
        if not admin and not SCHEMA[cmd].read_only:
            return _error(f"permission denied: '{cmd}' needs root")
        try:
            return {"ok": True, "result": self.handler(request, admin)}
        except (ValueError, KeyError) as exc:
            return _error(str(exc.args[0]) if exc.args else str(exc))
        except Exception as exc:
            log.exception("control socket: %s failed", cmd)
            return _error(f"internal error in {cmd}: {type(exc).__name__}: {exc}")

    # -- housekeeping ------------------------------------------------------------------------
    def expire(self, now: float | None = None) -> None:
        """Drop clients past their deadline (reading or being answered); resume accepting
        after a pause."""
        now = self.clock() if now is None else now
        for client in list(self._clients.values()):
            if now > client.deadline:
                self._close(client)
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            self.selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._close(client)
        if self._paused_until is None:
            self.selector.unregister(self.sock)
        self.sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def request(cmd: str, path: Path = SOCKET_PATH, timeout: float = 10.0, **args) -> dict:
    """Ask the daemon; raises ControlError when no daemon answers (ControlPermissionError
    when the caller may not ask)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            _connect(sock, path, time.monotonic() + timeout)
            try:
                sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass    # refused at once (busy, permission): its one line is still readable
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
        raise ControlPermissionError(_denied(path)) from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    if not buf:
        raise ControlError(f"the daemon closed {path} without answering")
    try:
        return json.loads(buf)
    except ValueError:
        raise ControlError(f"{path}: not an answer: {buf[:80]!r}") from None


def _connect(sock: socket.socket, path: Path, deadline: float) -> None:
    """connect(), waiting while the listen backlog is full (a flood of other callers): a unix
    socket with a timeout says EAGAIN at once where a blocking one would wait for room."""
    while True:
        try:
            return sock.connect(str(path))
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ControlError(f"{path}: the daemon accepts no connection (its backlog"
                                   " stayed full)") from None
            time.sleep(0.005)


def _denied(path: Path) -> str:
    """Why connecting was refused, naming the group that would be let in."""
    try:
        group = group_name(os.stat(path).st_gid)
    except OSError:
        group = None
    if group in (None, "root"):
        return f"permission denied on {path}: root only"
    return f"permission denied on {path}: you are not root or in group {group}"


def wait_for_drains(path: Path, started: float, link: str | None = None,
                    poll: float = 0.2, progress=None) -> dict[str, dict]:
    """Poll status until the drain of ``link`` (or of every link) has an outcome newer than
    ``started`` (wall clock); returns {link: last_drain}. ``progress(links)`` sees each
    poll's links. ControlError when the daemon stops answering meanwhile."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(started)))
    while True:
        answer = request("status", path=path)
        if not answer.get("ok"):
            raise ControlError(f"status refused: {answer.get('error')}")
        links = [x for x in answer["result"]["links"] if link is None or x["name"] == link]
        done = {x["name"]: x["last_drain"] for x in links
                if x["state"] != "draining" and x.get("last_drain")
                and x["last_drain"]["at"] >= stamp}
        if len(done) == len(links):
            return done
        if progress is not None:
            progress(links)
        time.sleep(poll)
