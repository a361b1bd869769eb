"""A link's rolling worker: starting and stopping its unit, judging what its session shows
(a refused login, a failure that repeats, a pass completed), judging the backlog against the
live thresholds, and restarting it with back-off when it exits.

Composed into the reconciler (reconcile.py), which decides *whether* a link should have a
worker (its state, blockers, the quarantine); this module carries it out through the systemd
edge and fires the link's triggers on what it sees.
"""

from __future__ import annotations

import logging

from ..cyrus.failures import CONFIG_EXITS, Session
from .runtime import RESTART_BACKOFF_MAX, RESTART_BACKOFF_MIN, LinkRuntime
from .states import LinkState, WORKER_STATES

log = logging.getLogger(__name__)


class WorkerControl:
    def __init__(self, systemd, journal, worker_log, live, may_go_live, classified, stopping):
        self.systemd, self.journal = systemd, journal
        self.worker_log = worker_log   # an adopted worker's journal from before (Edges)
        self.live = live               # () -> the config's ``live:`` thresholds
        self.may_go_live = may_go_live  # link -> whether the replica holds a full copy
        self.classified = classified   # rt -> whether the replica has been probed (or needn't)
        self.stopping = stopping       # () -> whether the daemon stops (kill, not StopUnit)

    def judge_session(self, rt: LinkRuntime, mono: float) -> bool:
        """Act on what the running worker showed of its session; True if the state changed."""
        if not rt.worker_running or not rt.worker_ours or rt.quarantine.busy:
            return False
        if rt.runs.current is None and not rt.runs.find_current(
                rt.units.worker, self.systemd, self.worker_log):
            return False
        run = rt.runs.run
        run.observe(rt.snapshot.log_run)
        problem = run.problem
        if problem is None:
            rt.reported_problem = None
            if run.proven:
                rt.restart_backoff, rt.last_problem = RESTART_BACKOFF_MIN, None
            return False
        rt.last_problem = problem.cause
        unit = rt.units.worker
        if problem.kind is Session.REFUSED:
            # It would retry forever with the credentials it read at start: a new worker
            # reads imapd.conf again (worker_run.py says why down and not quarantined).
            self.stop(rt)
            wait = self._schedule_restart(rt, mono)
            rt.link.fire("login_refused", f"{problem.cause} (journalctl -u {unit});"
                         f" trying again in {wait:g}s")
            return True
        if problem.cause != rt.reported_problem:
            rt.reported_problem = problem.cause
            rt.link.fire("worker_failing", f"{problem.cause} (journalctl -u {unit})")
            return True
        return False

    def judge_backlog(self, rt: LinkRuntime) -> None:
        if not rt.worker_running:
            return  # starting: judge once it runs
        snap, live = rt.snapshot, self.live()
        within = (snap.error is None and snap.entries <= live.max_backlog
                  and snap.oldest_age <= live.max_lag)
        # live is earned: only by a run that completed a pass (worker_run.py), and only by a
        # replica that holds a full copy (lifecycle.py)
        seeded = self.may_go_live(rt.name)
        if rt.link.state is LinkState.CATCHING_UP and within and rt.runs.run.proven and seeded:
            rt.link.fire("caught_up", "backlog within live thresholds")
        elif rt.link.state is LinkState.LIVE and not seeded:
            rt.link.fire("fell_behind", "the replica is being seeded (syncwarden seed)")
        elif rt.link.state is LinkState.LIVE and not within:
            why = snap.error or f"{snap.entries} entries queued, oldest {snap.oldest_age:.0f}s"
            rt.link.fire("fell_behind", f"backlog above live thresholds: {why}")

    def exited(self, rt: LinkRuntime, mono: float) -> None:
        rt.worker_ours = False
        unit = rt.units.worker
        try:
            info = self.systemd.exit_info(unit)
            how = f"{info.result}, exit status {info.status}"
        except Exception as exc:
            info, how = None, f"exit status unknown: {exc}"
        problem = rt.runs.run.problem
        rt.runs.unbind()
        if problem is not None:
            how += f"; last: {problem.cause}"
        self.journal.send(f"{unit} exited ({how})", "warning", "worker-exited",
                          SYNCWARDEN_LINK=rt.name, UNIT_NAME=unit)
        if info is not None and info.result == "exit-code" and info.status in CONFIG_EXITS:
            rt.link.fire("quarantine", f"sync_client exited with status {info.status}, which"
                         f" means a configuration problem: see journalctl -u {unit}")
            return
        if mono - rt.worker_started > RESTART_BACKOFF_MAX:
            rt.restart_backoff = RESTART_BACKOFF_MIN  # it had been running well: start afresh
        wait = self._schedule_restart(rt, mono)
        rt.link.fire("worker_exited", f"worker exited ({how}); restarting in"
                     f" {wait:g}s if the replica answers")

    @staticmethod
    def _schedule_restart(rt: LinkRuntime, mono: float) -> float:
        wait = rt.restart_backoff
        rt.restart_after = mono + wait
        rt.restart_backoff = min(wait * 2, RESTART_BACKOFF_MAX)
        return wait

    def converge(self, rt: LinkRuntime, mono: float) -> None:
        if not self.classified(rt):
            return  # a worker found at daemon start keeps running until the first probe
        want = rt.link.state in WORKER_STATES and not rt.quarantine.busy
        if want and not rt.worker_running and not rt.worker_ours:
            try:
                rt.runs.unbind()          # a new run: it earns live afresh
                rt.reported_problem = None
                self.systemd.start(rt.units.worker)
                rt.worker_ours, rt.worker_started = True, mono
            except Exception as exc:
                log.error("cannot start %s: %s", rt.units.worker, exc, extra={"link": rt.name})
        elif not want and rt.worker_running:
            self.stop(rt)

    def stop(self, rt: LinkRuntime) -> None:
        # SIGTERM: sync_client exits 75 at once and keeps log-run whole for the next start.
        # While the daemon itself stops, a StopUnit job would wait for that stop (the worker
        # is ordered Before= the daemon): signal it directly instead.
        try:
            if self.stopping():
                self.systemd.kill(rt.units.worker)
            else:
                self.systemd.stop(rt.units.worker)
            rt.worker_ours = False
            rt.runs.unbind()
        except Exception as exc:
            log.error("cannot stop %s: %s", rt.units.worker, exc, extra={"link": rt.name})
