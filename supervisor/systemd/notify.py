"""sd_notify messages to systemd (READY, STATUS, WATCHDOG, STOPPING, EXTEND_TIMEOUT_USEC).

Without NOTIFY_SOCKET (run by hand, in tests) every call is a no-op, as sd_notify(3) does.
"""

from __future__ import annotations

import sdnotify


class Notifier:
    def __init__(self, notifier=None):
        self._n = notifier or sdnotify.SystemdNotifier()
        self.last_status = ""

    def ready(self) -> None:
        self._n.notify("READY=1")

    def status(self, line: str) -> None:
        if line != self.last_status:
            # STATUS= is one line; a newline would end the field early.
            self._n.notify("STATUS=" + line.replace("\n", " "))
            self.last_status = line

    def watchdog(self) -> None:
        self._n.notify("WATCHDOG=1")

    def reloading(self) -> None:
        self._n.notify("RELOADING=1")

    def stopping(self) -> None:
        self._n.notify("STOPPING=1")

    def extend_timeout(self, seconds: float) -> None:
        self._n.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")
