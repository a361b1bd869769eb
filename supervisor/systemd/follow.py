"""Following the workers' journal: one ``journalctl -f`` child, read without blocking.

sync_client reports failures only through syslog, which journald files under the worker's unit.
journalctl is the narrow, stable interface to that (no extra Python dependency); its JSON lines
are read from the daemon's select loop and handed on as (unit, message).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess

log = logging.getLogger(__name__)

# The template units' slices (systemd escapes their "-" as \x2d). Field matches, not
# `--unit GLOB`: journalctl refuses a glob that matches no unit yet ("No data available").
SLICES = ("system-syncwarden\\x2dsync.slice", "system-syncwarden\\x2duser.slice")


class JournalFollower:
    def __init__(self, on_line, selector: selectors.BaseSelector, clock, slices=SLICES,
                 argv0: str = "journalctl"):
        self.on_line = on_line
        self.selector = selector
        self.clock = clock
        self.slices = slices
        self.argv0 = argv0
        self.proc: subprocess.Popen | None = None
        self.buf = b""
        self.restart_after = 0.0

    def ensure_running(self) -> None:
        """(Re)start journalctl if it is not running; called every tick."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:
            self._close()
        if self.clock() < self.restart_after:
            return
        argv = [self.argv0, "--follow", "--lines=0", "--output=json",
                "--output-fields=MESSAGE,_SYSTEMD_UNIT,_SYSTEMD_INVOCATION_ID"]
        argv += [f"_SYSTEMD_SLICE={s}" for s in self.slices]
        try:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL)  # its errors: our journal
        except OSError as exc:
            log.error("cannot follow the workers' journal (%s): failed users will not be"
                      " detected until it works", exc)
            self.restart_after = self.clock() + 30
            return
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.selector.register(self.proc.stdout, selectors.EVENT_READ, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:
            self._close()
            self.restart_after = self.clock() + 1
            return
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            message = entry.get("MESSAGE")
            if isinstance(message, list):   # journald's form for non-UTF-8 text
                message = bytes(message).decode("utf-8", "replace")
            unit = entry.get("_SYSTEMD_UNIT")
            if isinstance(message, str) and isinstance(unit, str):
                self.on_line(unit, message, entry.get("_SYSTEMD_INVOCATION_ID"))

    def _close(self) -> None:
        try:
            self.selector.unregister(self.proc.stdout)
        except (KeyError, ValueError):
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.stdout.close()
        self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self._close()
