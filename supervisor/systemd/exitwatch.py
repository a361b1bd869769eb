"""Waking the daemon's loop the moment a unit's main process exits (a pidfd, Linux 5.3+).

A drain waits for processes that end whenever sync_client is done: the rolling worker finishing
its file, then each one-shot pass. Polled once a tick, each end would be noticed up to a tick
late, and a drain of a few seconds has several such ends. A pidfd in the loop's selector becomes
readable as the process exits; the tick that follows sees the unit inactive (the exit is
systemd's SIGCHLD, which it handles before the D-Bus call that lists the unit). Where pidfd_open
is refused, ``watch`` says so and the tick simply notices the end itself.
"""

from __future__ import annotations

import logging
import os
import selectors

log = logging.getLogger(__name__)


class ExitWatch:
    def __init__(self, selector: selectors.BaseSelector):
        self.selector = selector
        self._fds: dict[int, int] = {}     # pid -> pidfd

    def watch(self, pid: int) -> bool:
        """Wake the loop when ``pid`` exits; False if that cannot be watched (already gone)."""
        if pid in self._fds:
            return True
        try:
            fd = os.pidfd_open(pid)
        except OSError as exc:
            log.debug("cannot watch pid %d: %s", pid, exc)
            return False
        self._fds[pid] = fd
        self.selector.register(fd, selectors.EVENT_READ, lambda: self._exited(pid))
        return True

    def watching(self, pid: int) -> bool:
        """Whether ``pid`` is watched and the loop has not yet been woken by its end."""
        return pid in self._fds

    def _exited(self, pid: int) -> None:
        fd = self._fds.pop(pid)
        self.selector.unregister(fd)
        os.close(fd)

    def close(self) -> None:
        for pid in list(self._fds):
            self._exited(pid)
