"""Is a replica's sync_server answering? (SPEC: TCP connect, banner, NOOP -> OK.)

Probes run in worker threads with a hard deadline, so a replica that accepts the connection and
then says nothing delays only its own result, never the main loop, the status command or the
watchdog. The banner check needs no credentials: sync_server answers NOOP before login.
"""

from __future__ import annotations

import socket
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


def probe(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """(reachable, detail). Never raises; the whole exchange must finish within ``timeout``."""
    where = f"{host}:{port}"
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            conn = _Conn(sock, deadline)
            # Capability lines ("* SASL ...", "* STARTTLS", ...) come before the OK banner.
            for _ in range(64):
                line = conn.line()
                if line.startswith("* OK "):
                    break
                if not line.startswith("* "):
                    return False, f"{where} is not a Cyrus sync server: it said {_short(line)}"
            else:
                return False, f"{where} is not a Cyrus sync server: no '* OK' banner"
            if "Cyrus sync server" not in line:
                return False, f"{where} is not a Cyrus sync server: banner {_short(line)}"
            banner = line[5:].strip()
            sock.sendall(b"NOOP\r\n")
            answer = conn.line()
            if not answer.startswith("OK"):
                return False, f"{where} sync server refused NOOP: {_short(answer)}"
            try:
                sock.sendall(b"EXIT\r\n")
            except OSError:
                pass  # the answer to NOOP already proved it alive
            return True, banner
    except TimeoutError:
        return False, f"{where} did not answer within {timeout:g}s"
    except (OSError, ConnectionError, ValueError) as exc:
        return False, f"{where}: {getattr(exc, 'strerror', None) or exc}"


def _short(text: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


class Prober:
    """At most one probe in flight per link, each in its own thread; results polled per tick."""

    def __init__(self, wake: Callable[[], None], clock=time.monotonic, probe_fn=probe):
        self._wake = wake
        self._clock = clock
        self._probe = probe_fn
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="probe")
        self._inflight: dict[str, Future] = {}

    def request(self, link: str, host: str, port: int, timeout: float) -> bool:
        """Start a probe unless one is already running for this link."""
        if link in self._inflight:
            return False
        future = self._pool.submit(self._run, host, port, timeout)
        future.add_done_callback(lambda _f: self._wake())
        self._inflight[link] = future
        return True

    def _run(self, host, port, timeout) -> ProbeResult:
        reachable, detail = self._probe(host, port, timeout)
        return ProbeResult(reachable, detail, self._clock())

    def in_flight(self, link: str) -> bool:
        return link in self._inflight

    def results(self) -> dict[str, ProbeResult]:
        done = {k: f for k, f in self._inflight.items() if f.done()}
        for k in done:
            del self._inflight[k]
        return {k: f.result() for k, f in done.items()}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
