"""Draining a link: send every entry that was queued when the drain began, then stop.

Cyrus has no drain (cyrus-replication.md §8): a shutdown file only makes the rolling client
finish the file it is on, and ``sync_client -R -1`` exits 0 even when it failed. So a drain is:

1. ask the rolling worker to finish through its shutdown file (SIGTERM after a grace period, or
   at once when the replica is gone: SIGTERM keeps ``log-run`` whole);
2. run one-shot passes (``syncwarden-drain@LINK.service``: ``sync_client -R -1 -n LINK``), one
   file per pass (``log-run`` first, then ``log``), until both files that existed once the
   worker stopped have been sent, or neither file exists. Entries written meanwhile by running
   mail services wait for the next start: with writers active, "empty" may never happen.

Success is judged by the files, never by exit codes. A drain that cannot finish leaves the files
untouched for the next start. Each ``step`` is one tick's worth of decisions; nothing blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..systemd.units import UnitStatus

# How long the rolling worker may take to finish its current file after the shutdown file.
WORKER_FINISH_GRACE = 30.0
# Consecutive one-shot passes that leave the same log-run behind before the drain gives up.
MAX_FAILED_PASSES = 3


def drain_unit(worker_unit: str) -> str:
    return worker_unit.replace("syncwarden-sync@", "syncwarden-drain@", 1)


class SyncFiles:
    """The channel directory as the drain sees it: which log files exist, by identity."""

    def __init__(self, sync_dir: Path):
        self.dir = Path(sync_dir)
        self.shutdown = self.dir / "shutdown"

    def present(self) -> tuple[bool, bool]:
        """(log-run exists, log exists). Files are counted, not identified: Cyrus unlinks
        log-run and creates a new log all the time, and inode numbers get reused."""
        return (self.dir / "log-run").exists(), (self.dir / "log").exists()

    def request_shutdown(self) -> bool:
        """Create the shutdown file; only where Cyrus already made the channel directory, so
        that we never create a root-owned directory that Cyrus could not write its log into."""
        if not self.dir.is_dir():
            return False
        self.shutdown.touch()
        return True

    def clear_shutdown(self) -> None:
        try:
            self.shutdown.unlink()
        except FileNotFoundError:
            pass


@dataclass
class Outcome:
    drained: bool
    message: str


class DrainJob:
    def __init__(self, link: str, worker_unit: str, files: SyncFiles, now: float,
                 timeout: float, entries: int, hold_after: bool, why: str):
        self.link = link
        self.worker_unit = worker_unit
        self.unit = drain_unit(worker_unit)
        self.files = files
        self.started = now
        self.deadline = now + timeout
        self.timeout = timeout
        self.entries_at_start = entries
        self.hold_after = hold_after
        self.why = why
        self.files_left: int | None = None  # files to send, counted once the worker is gone
        self.phase = "finish-worker"
        self.shutdown_requested_at: float | None = None
        self.pass_running = False
        self.passes = 0
        self.failed_passes = 0
        self.last_progress = now
        self.outcome: Outcome | None = None
        self.abort_reason: str | None = None

    def abort(self, reason: str) -> None:
        self.abort_reason = reason

    def fail(self, reason: str) -> Outcome:
        """End the drain now (an edge refused to act); the files stay as they are."""
        return self._finish(False, reason)

    def step(self, now: float, worker: UnitStatus | None, drainer: UnitStatus | None,
             replica_lost: bool, systemd) -> Outcome | None:
        """Advance by one tick; returns the outcome once the drain is over."""
        if self.outcome is not None:
            return self.outcome
        worker_running = worker is not None and worker.running
        drainer_running = drainer is not None and drainer.running
        give_up = self.abort_reason or (
            "the replica is unreachable" if replica_lost else None) or (
            f"drain.timeout ({self.timeout:g}s) reached" if now >= self.deadline else None)
        if give_up:
            for unit, running in ((self.worker_unit, worker_running), (self.unit, drainer_running)):
                if running:
                    systemd.stop(unit)   # SIGTERM: sync_client keeps log-run whole
            self.files.clear_shutdown()
            return self._finish(False, give_up)
        if self.phase == "finish-worker":
            if worker_running:
                self._finish_worker(now, systemd)
                return None
            self.files.clear_shutdown()
            self.phase = "passes"
        return self._passes(now, drainer_running, systemd)

    def _finish_worker(self, now: float, systemd) -> None:
        if self.shutdown_requested_at is None:
            self.shutdown_requested_at = now
            if not self.files.request_shutdown():
                systemd.stop(self.worker_unit)
        elif now - self.shutdown_requested_at > WORKER_FINISH_GRACE:
            systemd.stop(self.worker_unit)

    def _passes(self, now: float, drainer_running: bool, systemd) -> Outcome | None:
        if drainer_running:
            return None
        run, log = self.files.present()
        if self.files_left is None:
            self.files_left = run + log
        elif self.pass_running:        # a pass just ended: judge it by the files
            self.pass_running = False
            if run:                    # sync_client unlinks log-run only after a good pass
                self.failed_passes += 1
                if self.failed_passes >= MAX_FAILED_PASSES:
                    return self._finish(False, f"{MAX_FAILED_PASSES} passes in a row could not"
                                        f" send log-run: see journalctl -u {self.unit}")
            else:
                self.failed_passes = 0
                self.files_left -= 1
                self.last_progress = now
        if self.files_left <= 0 or not (run or log):
            return self._finish(True, "every entry queued when the drain began was sent")
        systemd.start(self.unit)
        self.pass_running = True
        self.passes += 1
        return None

    def _finish(self, drained: bool, message: str) -> Outcome:
        self.outcome = Outcome(drained, message)
        return self.outcome
