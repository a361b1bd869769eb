"""The metrics edge: an HTTP endpoint on a thread of its own, and a node_exporter textfile.

The main loop calls ``publish`` once per tick with the status document it has just built; that
only swaps in a new immutable snapshot (metrics.py), and now and then writes the textfile. The
endpoint's thread builds the metrics from the latest snapshot when Prometheus scrapes, so a
scrape never waits for the loop and the loop never waits for a scrape.

The endpoint serves one request at a time, each with a few seconds to arrive: a slow or hostile
client can delay other scrapes, but it cannot make the daemon start threads or grow. Binding
fails softly (logged, tried again every minute): replication matters more than its metrics.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import HTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry, MetricsHandler, generate_latest
from prometheus_client.process_collector import ProcessCollector

from ..config import MetricsSettings
from ..state import atomic_write
from .metrics import Memory, Snapshot, check_reader, families

log = logging.getLogger(__name__)

TEXTFILE_EVERY = 10.0      # seconds; and at once when what alerts are about changes
BIND_RETRY = 60.0          # seconds between attempts to bind a listen address in use
REQUEST_TIMEOUT = 5.0      # seconds a client may take to send its request


class _Collector:
    """Metric families of the exporter's latest snapshot, built when collected."""

    def __init__(self, exporter: "Exporter"):
        self.exporter = exporter

    def collect(self):
        snap = self.exporter.snapshot
        if snap is None:
            return iter(())
        return families(snap, self.exporter.last_check)


class _Handler(MetricsHandler):
    """prometheus_client's handler (text or OpenMetrics, gzip; it logs no line per scrape),
    with a deadline for the request."""
    timeout = REQUEST_TIMEOUT


class _Server(HTTPServer):
    def __init__(self, sockaddr, family, handler):
        self.address_family = family
        super().__init__(sockaddr, handler)


class Exporter:
    def __init__(self, settings: MetricsSettings, state_dir: Path, clock):
        self.settings = MetricsSettings()
        self.state_dir = Path(state_dir)
        self.clock = clock                   # monotonic, for the textfile's and bind's pace
        self.memory = Memory()
        self.snapshot: Snapshot | None = None
        self.last_check = check_reader(self.state_dir)
        collector = _Collector(self)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)           # memory, CPU, fds of the daemon
        self.file_registry = CollectorRegistry(auto_describe=False)
        self.file_registry.register(collector)              # node_exporter has its own
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None
        self._bind_after = 0.0
        self._written_at = float("-inf")
        self._written_states: list | None = None
        self._file_error: str | None = None
        self.configure(settings)

    @property
    def enabled(self) -> bool:
        return bool(self.settings.listen or self.settings.textfile)

    def configure(self, settings: MetricsSettings) -> None:
        """Apply (re)loaded settings: a changed listen address is rebound at once."""
        if settings.listen != self.settings.listen:
            self._stop_server()
            self._bind_after = 0.0
        if settings.textfile != self.settings.textfile:
            self._written_at, self._file_error = float("-inf"), None
        self.settings = settings
        self._ensure_server()

    def publish(self, doc: dict, wall: float) -> None:
        """One tick's status document (not changed afterwards by the caller)."""
        self.snapshot = self.memory.observe(doc, wall)
        self._ensure_server()
        if self.settings.textfile is not None:
            states = [(x["name"], x["state"], x["replica"].get("reachable"), x.get("held"),
                       x.get("quarantined")) for x in doc.get("links", [])]
            now = self.clock()
            if states != self._written_states or now - self._written_at >= TEXTFILE_EVERY:
                self._write_textfile(states, now)

    def close(self) -> None:
        """At exit: the textfile gets the last tick's figures (a stop's drains with them)."""
        if self.settings.textfile is not None and self.snapshot is not None:
            self._write_textfile(self._written_states, self.clock())
        self._stop_server()

    # -- the endpoint ------------------------------------------------------------------------
    def _ensure_server(self) -> None:
        if self.settings.listen is None or self.server is not None:
            return
        if self.clock() < self._bind_after:
            return
        host, port = self.settings.listen
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            server = _Server(sockaddr, family, _Handler.factory(self.registry))
        except OSError as exc:
            self._bind_after = self.clock() + BIND_RETRY
            log.error("metrics.listen %s:%d: cannot listen (%s); trying again in %.0fs", host,
                      port, getattr(exc, "strerror", None) or exc, BIND_RETRY)
            return
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="metrics-http", daemon=True)
        self.thread.start()
        log.info("serving metrics on http://%s/metrics", _show(sockaddr))

    def _stop_server(self) -> None:
        if self.server is None:
            return
        self.server.shutdown()          # within poll_interval
        self.server.server_close()
        self.thread.join(5)
        self.server = self.thread = None

    @property
    def address(self) -> tuple | None:
        """Where the endpoint listens (the port the system chose for port 0, in tests)."""
        return self.server.server_address if self.server is not None else None

    # -- the textfile ------------------------------------------------------------------------
    def _write_textfile(self, states, now: float) -> None:
        path = self.settings.textfile
        try:
            if not path.parent.is_dir():
                raise FileNotFoundError(f"{path.parent}: no such directory (is the textfile"
                                        " collector's directory right?)")
            atomic_write(path, generate_latest(self.file_registry), 0o644)
        except OSError as exc:
            error = str(exc)
            if error != self._file_error:        # once per new problem, not every 10 s
                log.error("metrics.textfile %s: cannot write: %s", path, error)
                self._file_error = error
        else:
            if self._file_error is not None:
                log.info("metrics.textfile %s: written again", path)
            self._file_error = None
        self._written_at, self._written_states = now, states


def _show(sockaddr) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
