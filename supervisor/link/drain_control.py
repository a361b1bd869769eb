"""The supervisor's drain commands and per-tick drain steps (see drain.py for the protocol).

A mixin of core.Supervisor: it uses the links, edges and journal the supervisor holds.
"""

from __future__ import annotations

import logging

from ..link import report
from ..link.drain import DrainJob, SyncFiles
from ..cyrus.probe import LOST_AFTER
from ..link.states import LinkState

log = logging.getLogger(__name__)


class DrainControl:
    @property
    def draining(self) -> bool:
        return bool(self.drains)

    def drain(self, name: str, hold_after: bool = True, why: str = "requested by operator") -> str:
        rt = self._get(name)
        if name in self.drains:
            return f"{name}: already draining"
        if self.role != "master":
            raise ValueError(f"{name}: role is {self.role}: this host sends nothing")
        if not self._fire(rt, "drain", f"drain {why}"):
            raise ValueError(f"{name} is {rt.link.state.value}: release it first")
        mono = self.clock.monotonic()
        snap = rt.backlog.read(mono, self.clock.wall())
        job = DrainJob(name, rt.unit, SyncFiles(self.imapd.sync_dir(name)), mono,
                       self.config.drain.timeout, snap.entries, hold_after, why)
        self.drains[name] = job
        self.journal.send(f"link {name}: drain started ({why}), {snap.entries} entries queued",
                          "notice", "drain-started", SYNCWARDEN_LINK=name,
                          SYNCWARDEN_ENTRIES=snap.entries)
        self._journal_history(rt)
        return f"{name}: draining {snap.entries} entries"

    def drain_all(self, why: str) -> None:
        """Drain every link this host replicates (used when the daemon stops)."""
        self.stopping = True
        for name, rt in self.links.items():
            if (self.role == "master" and rt.settings.enabled
                    and rt.link.state is not LinkState.QUARANTINED):
                self.drain(name, hold_after=False, why=why)

    def abort_drains(self, why: str) -> None:
        for job in self.drains.values():
            job.abort(why)

    def _step_drain(self, rt, mono: float, units: dict) -> None:
        name = rt.settings.name
        job = self.drains.get(name)
        if job is None:   # e.g. reloaded mid-drain: nothing left to run, count it as stopped
            self._fire(rt, "drain_failed", "drain interrupted")
            return
        try:
            outcome = job.step(mono, rt.worker, units.get(job.unit),
                               rt.probe_failures >= LOST_AFTER, self.systemd)
        except Exception as exc:  # D-Bus or the file system refused: the logs are untouched
            outcome = job.fail(f"{type(exc).__name__}: {exc}")
            for unit in (rt.unit, job.unit):
                try:
                    self.systemd.stop(unit)   # SIGTERM keeps log-run whole
                except Exception:
                    pass
        if outcome is None:
            return
        del self.drains[name]
        rt.worker_ours = False
        snap = rt.snapshot = rt.backlog.read(mono, self.clock.wall())
        took = mono - job.started
        self.last_drain[name] = {"at": report.iso(self.clock.wall()), "drained": outcome.drained,
                                 "message": outcome.message, "entries_left": snap.entries,
                                 "duration_seconds": round(took, 3), "passes": job.passes}
        fields = dict(SYNCWARDEN_LINK=name, SYNCWARDEN_ENTRIES_LEFT=snap.entries,
                      SYNCWARDEN_DURATION=f"{took:.3f}", SYNCWARDEN_PASSES=job.passes)
        if outcome.drained:
            self.journal.send(f"link {name}: drained in {took:.1f}s ({job.passes} passes,"
                              f" {job.entries_at_start} entries queued at the start;"
                              f" {snap.entries} written since)", "notice", "drain-finished",
                              **fields)
            self._fire(rt, "drained", f"drained: {outcome.message}")
        else:
            where = f"{rt.backlog.log_path} and {rt.backlog.run_path}"
            self.journal.send(f"link {name}: drain incomplete: {outcome.message};"
                              f" {snap.entries} entries left in {where}; they are sent at the"
                              " next start", "err", "drain-incomplete", SYNCWARDEN_WHERE=where,
                              SYNCWARDEN_REASON=outcome.message, **fields)
            self._fire(rt, "drain_failed", f"drain incomplete: {outcome.message}")
        if job.hold_after:
            self.holds.set(name, True)
