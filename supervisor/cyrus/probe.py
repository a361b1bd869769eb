"""Is a replica's sync_server answering? (SPEC: TCP connect, banner, NOOP -> OK.)

Probes run in worker threads with a hard deadline, so a replica that accepts the connection and
then says nothing delays only its own result, never the main loop, the status command or the
watchdog. The banner check needs no credentials: sync_server answers NOOP before login.

Between probes, a replica whose port refused the connection can be *watched*: one thread knocks
on the port (a non-blocking connect, nothing sent) as often as the tick asks (link/probing.py:
every 0.1 s at first) and starts a full probe over the connection the moment the port accepts
one. A refused knock wakes nobody: it costs one TCP connect, the main loop never hears of it.
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable


# Consecutive failed probes before a running link is declared lost: one lost probe on a busy
# replica should not interrupt a sync pass, two in a row (~2 intervals) is an outage.
LOST_AFTER = 2


@dataclass(frozen=True)
class ProbeResult:
    reachable: bool
    detail: str       # one line: why not, or the server's banner
    at: float         # monotonic time the probe finished
    refused: bool = False   # the port refused the connection: the host is up, Cyrus is not


@dataclass(frozen=True)
class Answer:
    """What one probe found (``probe``'s result, before the prober adds the time)."""

    reachable: bool
    detail: str
    refused: bool = False


class _Conn:
    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline, self.buf = sock, deadline, b""

    def line(self) -> str:
        while b"\n" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("connection closed")
            self.buf += data
            if len(self.buf) > 65536:
                raise ValueError("no line break in 64 KiB")
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", "replace").rstrip("\r")


def probe(host: str, port: int, timeout: float, sock: socket.socket | None = None) -> Answer:
    """Never raises; the whole exchange must finish within ``timeout``. ``sock``: a connection
    to host:port made already (by a knock), which the probe uses and closes."""
    where = f"{host}:{port}"
    deadline = time.monotonic() + timeout
    try:
        if sock is None:
            sock = socket.create_connection((host, port), timeout=timeout)
        with sock:
            conn = _Conn(sock, deadline)
            # Capability lines ("* SASL ...", "* STARTTLS", ...) come before the OK banner.
            for _ in range(64):
                line = conn.line()
                if line.startswith("* OK "):
                    break
                if not line.startswith("* "):
                    return Answer(False, f"{where} is not a Cyrus sync server: it said"
                                  f" {_short(line)}")
            else:
                return Answer(False, f"{where} is not a Cyrus sync server: no '* OK' banner")
            if "Cyrus sync server" not in line:
                return Answer(False, f"{where} is not a Cyrus sync server: banner {_short(line)}")
            banner = line[5:].strip()
            sock.sendall(b"NOOP\r\n")
            answer = conn.line()
            if not answer.startswith("OK"):
                return Answer(False, f"{where} sync server refused NOOP: {_short(answer)}")
            try:
                sock.sendall(b"EXIT\r\n")
            except OSError:
                pass  # the answer to NOOP already proved it alive
            return Answer(True, banner)
    except TimeoutError:
        return Answer(False, f"{where} did not answer within {timeout:g}s")
    except ConnectionRefusedError as exc:
        return Answer(False, f"{where}: {exc.strerror or exc}", refused=True)
    except (OSError, ConnectionError, ValueError) as exc:
        return Answer(False, f"{where}: {getattr(exc, 'strerror', None) or exc}")


def _short(text: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


@dataclass(frozen=True)
class _Watch:
    host: str
    port: int
    every: float      # seconds between knocks
    timeout: float    # of the probe that follows an accepted knock


class Prober:
    """At most one probe in flight per link, each in its own thread; results polled per tick.

    A result wakes the main loop unless it repeats a success: a replica that answered again
    changes nothing, and the next regular tick takes the result (with 100 live links, 10
    probes a second would otherwise be 10 ticks a second). Watched links are knocked on by one
    more thread (started at the first watch), which sleeps until the next knock is due and
    wakes the main loop only through a probe's result."""

    def __init__(self, wake: Callable[[], None], clock=time.monotonic, probe_fn=probe):
        self._wake = wake
        self._clock = clock
        self._probe = probe_fn
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="probe")
        self._lock = threading.Lock()     # the knocker thread starts probes too
        self._inflight: dict[str, Future] = {}
        self._watched: dict[str, _Watch] = {}
        self._answered: set[str] = set()     # links whose last probe found the replica
        self._knocker: threading.Thread | None = None
        self._poke_r, self._poke_w = socket.socketpair()
        self._poke_r.setblocking(False)
        self._poke_w.setblocking(False)
        self._closed = False

    def request(self, link: str, host: str, port: int, timeout: float) -> bool:
        """Start a probe unless one is already running for this link."""
        return self._start(link, host, port, timeout, None)

    def _start(self, link, host, port, timeout, sock) -> bool:
        with self._lock:
            if link in self._inflight or self._closed:
                return False
            future = self._pool.submit(self._run, host, port, timeout, sock)
            self._inflight[link] = future
        future.add_done_callback(lambda f: self._done(link, f))
        return True

    def _done(self, link: str, future: Future) -> None:
        ok = not future.cancelled() and future.exception() is None and future.result().reachable
        with self._lock:
            again = ok and link in self._answered
            (self._answered.add if ok else self._answered.discard)(link)
        if not again:
            self._wake()

    def _run(self, host, port, timeout, sock) -> ProbeResult:
        found = self._probe(host, port, timeout, *((sock,) if sock else ()))
        return ProbeResult(found.reachable, found.detail, self._clock(), found.refused)

    def in_flight(self, link: str) -> bool:
        with self._lock:
            return link in self._inflight

    def results(self) -> dict[str, ProbeResult]:
        with self._lock:
            done = {k: f for k, f in self._inflight.items() if f.done()}
            for k in done:
                del self._inflight[k]
        return {k: f.result() for k, f in done.items()}

    # -- watching: knock until the port accepts ------------------------------------------------
    def watch(self, link: str, host: str, port: int, every: float, timeout: float) -> None:
        """Knock on host:port every ``every`` seconds until ``unwatch(link)``, or until the port
        accepts a connection: then a probe (within ``timeout``) runs over that connection, its
        result comes from ``results()`` like any other, and the watch is over. Calling it again
        with the same arguments changes nothing."""
        w = _Watch(host, port, every, timeout)
        with self._lock:
            if self._closed or self._watched.get(link) == w:
                return
            self._watched[link] = w
            if self._knocker is None:
                self._knocker = threading.Thread(target=self._knock_loop, name="knock",
                                                 daemon=True)
                self._knocker.start()
        self._poke()

    def unwatch(self, link: str) -> None:
        with self._lock:
            self._watched.pop(link, None)

    def watching(self) -> dict[str, float]:
        """{link: seconds between knocks} of the links watched now."""
        with self._lock:
            return {k: w.every for k, w in self._watched.items()}

    def _poke(self) -> None:
        try:
            self._poke_w.send(b"\0")
        except OSError:
            pass   # already poked (full) or closed

    def _knock_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._poke_r, selectors.EVENT_READ)
        due: dict[tuple[str, int], float] = {}       # address -> next knock
        pending: dict[tuple[str, int], tuple[socket.socket, float]] = {}   # connecting
        while True:
            with self._lock:
                if self._closed:
                    break
                every: dict[tuple[str, int], _Watch] = {}
                for w in self._watched.values():   # links that share a replica share knocks
                    a = (w.host, w.port)
                    every[a] = min(every.get(a, w), w, key=lambda x: x.every)
            now = time.monotonic()
            for a in [a for a in due if a not in every]:
                del due[a]
            for a, (s, since) in list(pending.items()):
                if a not in every or now - since > every[a].timeout:
                    self._forget(sel, pending, a)
            for a, w in every.items():
                if a not in pending and due.get(a, 0.0) <= now:
                    # on a grid: replicas knocked on at the same rate share each wake-up
                    due[a] = (now // w.every + 1) * w.every
                    self._knock(a, sel, pending, now)
            wait = min([d - now for d in due.values()] + [60.0])
            for key, _ in sel.select(max(0.0, wait)):
                if key.fileobj is self._poke_r:
                    try:
                        while self._poke_r.recv(512):
                            pass
                    except OSError:
                        pass
                    continue
                a, sock = key.data, key.fileobj
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                sel.unregister(sock)
                del pending[a]
                if err == 0:
                    self._accepted(a, sock)
                else:
                    sock.close()
        for a in list(pending):
            self._forget(sel, pending, a)
        sel.close()
        self._poke_r.close()
        self._poke_w.close()

    def _knock(self, a, sel, pending, now) -> None:
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(*a, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError:
            return        # no address now: the next knock tries again, probes say why
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        if err == 0:
            self._accepted(a, sock)
        elif err in (errno.EINPROGRESS, errno.EAGAIN):
            sel.register(sock, selectors.EVENT_WRITE, a)
            pending[a] = (sock, now)
        else:
            sock.close()    # refused (the usual answer), or unreachable

    @staticmethod
    def _forget(sel, pending, a) -> None:
        sock, _ = pending.pop(a)
        sel.unregister(sock)
        sock.close()

    def _accepted(self, a, sock: socket.socket) -> None:
        """The port took a connection: end the watches on it and probe over the connection."""
        with self._lock:
            links = [(k, w) for k, w in self._watched.items() if (w.host, w.port) == a]
            for k, _ in links:
                del self._watched[k]
        sock.setblocking(True)
        for k, w in links:
            if sock is not None and self._start(k, w.host, w.port, w.timeout, sock):
                sock = None          # the probe owns it now
            elif sock is None:
                self._start(k, w.host, w.port, w.timeout, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._watched.clear()
            knocker = self._knocker
        if knocker is None:
            self._poke_r.close()
            self._poke_w.close()
        else:
            self._poke()            # the knocker sees _closed and closes the pair itself
        self._pool.shutdown(wait=False, cancel_futures=True)
