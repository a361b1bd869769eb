"""Draining a link: send every entry that was queued when the drain began, then stop.

Cyrus has no drain (cyrus-replication.md §8): a shutdown file only makes the rolling client
finish the file it is on, and ``sync_client -R -1`` exits 0 even when it failed. So a drain is:

1. ask the rolling worker to finish the file it has in hand (``log-run``) through its shutdown
   file, and SIGTERM it (which keeps ``log-run`` whole) as soon as that file is sent: after a
   file sync_client sleeps up to ``sync_repeat_interval`` before it reads the shutdown file.
   SIGTERM at once when it has no file in hand (it is between files: nothing to finish, only
   a sleep to wait out), when the replica is gone, when Cyrus has not made the channel
   directory yet (a fresh install), or when the worker never logged in (it is retrying its
   connection, and sync_client looks at the shutdown file only between passes); and after a
   grace period;
2. run one-shot passes (``syncwarden-drain@LINK.service``: ``sync_client -R -1 -n LINK``), one
   file per pass (``log-run`` first, then ``log``), until both files that existed once the
   worker stopped have been sent, or neither file exists. The unit execs sync_client from the
   argv the drain leaves it (``passes``: commands/worker.py), without the launcher's Python
   start-up; so the drain removes a stale shutdown file itself before each pass. Entries
   written meanwhile by running mail services wait for the next start: with writers active,
   "empty" may never happen.

Success is judged by the files, never by exit codes. A drain that cannot finish leaves the files
untouched for the next start. It gives up at once on what more passes cannot fix: a refused login
(the pass's own log says so, while sync_client itself would retry it forever) or an exit status
that means a configuration error; it waits out ``drain.timeout`` only while passes make progress
or fail in ways that may heal (MAX_FAILED_PASSES in a row).

The worker is signalled (KillUnit), never stopped with a StopUnit job: the drain runs while the
daemon stops, and the worker units are ordered Before= the daemon so that a system shutdown
leaves them running for the drain; a stop job for one would wait for the daemon's own stop,
which waits for the drain. Each ``step`` is one tick's worth of decisions; nothing blocks.
The end of the process the drain waits for (the worker, then each pass) wakes the daemon's loop
through the ``exits`` edge (a pidfd), so the next step follows at once, not a tick later.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path

from ..cyrus.channel import Channel as SyncFiles   # the channel's files, as the drain uses them
from ..cyrus.failures import CONFIG_EXITS, Session, session_event
from ..cyrus.probe import LOST_AFTER
from ..systemd.units import LinkUnits, UnitStatus
from ..timefmt import iso

log = logging.getLogger(__name__)

# How long the rolling worker may take to finish its current file after the shutdown file.
WORKER_FINISH_GRACE = 30.0
# Consecutive one-shot passes that leave the same log-run behind before the drain gives up.
MAX_FAILED_PASSES = 3
# How often a worker that outlives its SIGTERM is signalled again.
KILL_REPEAT = 5.0


class Phase(enum.Enum):
    FINISH_WORKER = "finish-worker"   # the rolling worker finishes its file, then stops
    PASSES = "passes"                 # one-shot passes until the files are sent


@dataclass
class Outcome:
    drained: bool
    message: str


class DrainJob:
    def __init__(self, link: str, units: LinkUnits, files: SyncFiles, now: float,
                 timeout: float, entries: int, hold_after: bool, why: str, wall: float = 0.0):
        self.link = link
        self.worker_unit = units.worker
        self.unit = units.drain
        self.files = files
        self.started = now
        self.deadline = now + timeout
        self.timeout = timeout
        self.entries_at_start = entries
        self.hold_after = hold_after
        self.why = why
        self.files_left: int | None = None  # files to send, counted once the worker is gone
        self.phase = Phase.FINISH_WORKER
        self.shutdown_requested_at: float | None = None
        self.pass_running = False
        self.passes = 0
        self.failed_passes = 0
        self.last_progress = now
        self.outcome: Outcome | None = None
        self.abort_reason: str | None = None
        self.killed_at: float | None = None
        self.since_us = int(wall * 1_000_000)    # journal lines before the drain are old
        self.refused: str | None = None          # a pass's login was refused
        self.last_problem: str | None = None     # the latest session failure of a pass

    def abort(self, reason: str) -> None:
        self.abort_reason = reason

    def feed(self, message: str, at: int | None = None) -> None:
        """A line from the drain unit's journal."""
        if at is not None and at < self.since_us:
            return
        event = session_event(message)
        if event is None or event.kind is Session.LOGGED_IN:
            return
        if event.kind is Session.REFUSED:
            self.refused = event.cause
        if not (event.generic and self.last_problem):
            self.last_problem = event.cause

    def fail(self, reason: str) -> Outcome:
        """End the drain now (an edge refused to act); the files stay as they are."""
        return self._finish(False, reason)

    def step(self, now: float, worker: UnitStatus | None, drainer: UnitStatus | None,
             replica_lost: bool, systemd, worker_logged_in: bool = True,
             rival=lambda: None) -> Outcome | None:
        """Advance by one tick; returns the outcome once the drain is over."""
        if self.outcome is not None:
            return self.outcome
        worker_running = worker is not None and worker.running
        drainer_running = drainer is not None and drainer.running
        give_up = self.abort_reason or (
            f"{self.refused}: more passes cannot fix that" if self.refused else None) or (
            "the replica is unreachable" if replica_lost else None) or (
            f"drain.timeout ({self.timeout:g}s) reached" if now >= self.deadline else None)
        if give_up:
            if worker_running:
                systemd.kill(self.worker_unit)   # SIGTERM: sync_client keeps log-run whole
            if drainer_running:
                systemd.stop(self.unit)          # not ordered against the daemon
            self.files.clear_shutdown()
            if now >= self.deadline and self.last_problem and not self.abort_reason:
                give_up += f" (last pass: {self.last_problem})"
            return self._finish(False, give_up)
        if self.phase is Phase.FINISH_WORKER:
            if worker_running:
                self._finish_worker(now, systemd, worker_logged_in)
                return None
            if worker is not None and worker.alive:
                return None                      # still exiting: no pass beside it
            self.files.clear_shutdown()
            self.phase = Phase.PASSES
        return self._passes(now, drainer_running, systemd, rival)

    def _finish_worker(self, now: float, systemd, logged_in: bool) -> None:
        in_hand = self.files.present()[0]          # log-run: the file the worker is on
        if self.shutdown_requested_at is None:
            self.shutdown_requested_at = now
            if logged_in and in_hand and self.files.request_shutdown():
                return                 # it finishes the file it is on, then exits
            self._kill_worker(now, systemd)
        elif self.killed_at is None and not in_hand:
            # Its file is sent. It would sleep out sync_repeat_interval before it reads the
            # shutdown file, and takes no other file before that: SIGTERM loses nothing.
            self._kill_worker(now, systemd)
        elif now - self.shutdown_requested_at > WORKER_FINISH_GRACE and (
                self.killed_at is None or now - self.killed_at >= KILL_REPEAT):
            self._kill_worker(now, systemd)

    def _kill_worker(self, now: float, systemd) -> None:
        systemd.kill(self.worker_unit)   # SIGTERM: exit 75 at once, log-run kept whole
        self.killed_at = now

    def _passes(self, now: float, drainer_running: bool, systemd, rival) -> Outcome | None:
        if drainer_running:
            return None
        run, log = self.files.present()
        if self.files_left is None:
            self.files_left = run + log
            if not self.files_left:
                return self._sent("nothing to send", rival)
        elif self.pass_running:        # a pass just ended: judge it by the files
            self.pass_running = False
            info = systemd.exit_info(self.unit)
            if info.result == "exit-code" and info.status in CONFIG_EXITS:
                return self._finish(False, f"the pass exited with status {info.status}, a"
                                    " configuration error that more passes cannot fix: see"
                                    f" journalctl -u {self.unit}")
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
            return self._sent("every entry queued when the drain began was sent", rival)
        # A stale shutdown file makes sync_client exit at once without work; the pass may
        # exec sync_client without the launcher that removes it (commands/worker.py).
        self.files.clear_shutdown()
        systemd.start(self.unit)
        self.pass_running = True
        self.passes += 1
        return None

    def _sent(self, message: str, rival) -> Outcome:
        """The files say everything was sent: claimed only if no other client shares them."""
        who = rival()
        if who:
            return self._finish(False, f"{who}: it takes entries from the same sync log, so"
                                " this drain cannot tell that they were all sent")
        return self._finish(True, message)

    def _finish(self, drained: bool, message: str) -> Outcome:
        self.outcome = Outcome(drained, message)
        return self.outcome

    def awaited(self) -> tuple[str, int] | None:
        """(unit, run) whose end the drain waits for now: the worker, then each pass."""
        if self.outcome is not None:
            return None
        if self.phase is Phase.FINISH_WORKER:
            return self.worker_unit, 0
        return (self.unit, self.passes) if self.pass_running else None


class Drains:
    """The drains in progress, one per link, and the outcome of each link's last one.

    Its inputs are declared: the link's runtime is passed to each call, the edges and the
    operator's holds at construction. The reconcile tick calls ``step`` for a draining link.
    """

    def __init__(self, systemd, journal, clock, holds, rival_now=lambda link: None,
                 exits=None, passes=None):
        self.systemd = systemd
        self.exits = exits             # ``watch(pid)``: wake the loop when it exits (or None)
        # ``prepare(link)`` / ``discard(link)``: the argv a pass execs without the launcher
        # (commands/worker.py), or None
        self.passes = passes
        # link -> (awaited (unit, run), its pid) whose exit wakes the loop
        self._watched: dict[str, tuple[tuple[str, int], int]] = {}
        self.rival_now = rival_now     # link -> why a sync_client we did not start runs, or None
        self.journal = journal
        self.clock = clock
        self.holds = holds
        self.jobs: dict[str, DrainJob] = {}
        self.last: dict[str, dict] = {}

    def __bool__(self) -> bool:
        return bool(self.jobs)

    def __contains__(self, link: str) -> bool:
        return link in self.jobs

    def start(self, rt, sync_dir: Path, timeout: float, hold_after: bool, why: str) -> str:
        """Begin draining a link whose machine has just entered ``draining``."""
        mono = self.clock.monotonic()
        snap = rt.backlog.read(mono, self.clock.wall())
        self.jobs[rt.name] = DrainJob(rt.name, rt.units, SyncFiles(sync_dir), mono, timeout,
                                      snap.entries, hold_after, why, self.clock.wall())
        self._pass_argv(rt.name, "prepare")
        self.journal.send(f"drain started ({why}), {snap.entries} entries"
                          " queued", "notice", "drain-started", SYNCWARDEN_LINK=rt.name,
                          SYNCWARDEN_ENTRIES=snap.entries)
        return f"{rt.name}: draining {snap.entries} entries"

    def abort_all(self, why: str) -> None:
        for job in self.jobs.values():
            job.abort(why)

    def drop(self, link: str, why: str, entries_left: int) -> None:
        """Forget the drain of a link that is no longer supervised (removed by a reload):
        its pass is stopped, its files stay as they are, and a stop waits for it no more."""
        job = self.jobs.pop(link, None)
        self._watched.pop(link, None)
        if job is None:
            return
        self._pass_argv(link, "discard")
        job.files.clear_shutdown()
        for unit, act in ((job.worker_unit, self.systemd.kill), (job.unit, self.systemd.stop)):
            try:
                act(unit)                 # SIGTERM keeps log-run whole
            except Exception as exc:
                log.warning("cannot stop %s: %s", unit, exc, extra={"link": link})
        self.journal.send(f"drain incomplete: {why}; {entries_left} entries left"
                          f" in {job.files.dir}", "err", "drain-incomplete",
                          SYNCWARDEN_LINK=link, SYNCWARDEN_REASON=why,
                          SYNCWARDEN_ENTRIES_LEFT=entries_left,
                          SYNCWARDEN_WHERE=str(job.files.dir))

    def feed(self, link: str, message: str, at: int | None = None) -> None:
        """A line from a link's drain pass unit."""
        job = self.jobs.get(link)
        if job is not None:
            job.feed(message, at)

    def step(self, rt, units: dict) -> None:
        """One tick of a draining link: advance its job; on an outcome, record and report it."""
        mono = self.clock.monotonic()
        job = self.jobs.get(rt.name)
        if job is None:   # e.g. reloaded mid-drain: nothing left to run, count it as stopped
            rt.link.fire("drain_failed", "drain interrupted")
            return
        try:
            logged_in = rt.runs.current is not None and rt.runs.run.session is Session.LOGGED_IN
            outcome = job.step(mono, rt.worker, units.get(job.unit),
                               rt.probe_failures >= LOST_AFTER, self.systemd, logged_in,
                               lambda: self.rival_now(rt.name))
        except Exception as exc:  # D-Bus or the file system refused: the logs are untouched
            outcome = job.fail(f"{type(exc).__name__}: {exc}")
            for unit, act in ((rt.units.worker, self.systemd.kill), (job.unit, self.systemd.stop)):
                try:
                    act(unit)                 # SIGTERM keeps log-run whole
                except Exception as stop_exc:
                    log.warning("cannot stop %s: %s", unit, stop_exc,
                                extra={"link": rt.name})
        if outcome is not None:
            self._finished(rt, job, outcome, mono)
        else:
            self._watch_exit(rt.name, job)

    def _pass_argv(self, link: str, act: str) -> None:
        """Leave (or take back) the argv of this link's passes for the drain unit. Without
        it the unit runs the launcher, a few tens of milliseconds slower: never an error."""
        if self.passes is None:
            return
        try:
            getattr(self.passes, act)(link)
        except OSError as exc:
            log.warning("cannot %s the drain passes' command line: %s", act, exc,
                        extra={"link": link})

    def _watch_exit(self, link: str, job: DrainJob) -> None:
        """Have the loop woken when the process the job waits for exits (once per process)."""
        awaited = job.awaited()
        if self.exits is None or awaited is None or self._watched.get(link, ((), 0))[0] == awaited:
            return
        try:
            pid = self.systemd.main_pid(awaited[0])
        except Exception as exc:   # the tick notices the end anyway, a tick later
            log.debug("no main pid for %s: %s", awaited[0], exc)
            return
        if pid and self.exits.watch(pid):
            self._watched[link] = (awaited, pid)

    def watched(self) -> bool:
        """Whether the end of every process the drains wait for will wake the loop by itself
        (watched, and not ended yet): then a tick is only a safety net, and can wait."""
        for link, job in self.jobs.items():
            awaited, pid = self._watched.get(link, ((), 0))
            if job.awaited() is None or awaited != job.awaited() or not self.exits.watching(pid):
                return False
        return True

    def _finished(self, rt, job: DrainJob, outcome: Outcome, mono: float) -> None:
        name = rt.name
        del self.jobs[name]
        self._watched.pop(name, None)
        self._pass_argv(name, "discard")
        rt.worker_ours = False
        snap = rt.snapshot = rt.backlog.read(mono, self.clock.wall())
        took = mono - job.started
        self.last[name] = {"at": iso(self.clock.wall()), "drained": outcome.drained,
                           "message": outcome.message, "entries_left": snap.entries,
                           "duration_seconds": round(took, 3), "passes": job.passes}
        fields = dict(SYNCWARDEN_LINK=name, SYNCWARDEN_ENTRIES_LEFT=snap.entries,
                      SYNCWARDEN_DURATION=f"{took:.3f}", SYNCWARDEN_PASSES=job.passes)
        if outcome.drained:
            self.journal.send(f"drained in {took:.1f}s, {outcome.message}"
                              f" ({job.passes} passes, {job.entries_at_start} entries queued at"
                              f" the start; {snap.entries} written since)", "notice",
                              "drain-finished", **fields)
            rt.link.fire("drained", f"drained: {outcome.message}")
        else:
            where = f"{rt.backlog.log_path} and {rt.backlog.run_path}"
            self.journal.send(f"drain incomplete: {outcome.message};"
                              f" {snap.entries} entries left in {where}; they are sent at the"
                              " next start", "err", "drain-incomplete", SYNCWARDEN_WHERE=where,
                              SYNCWARDEN_REASON=outcome.message, **fields)
            rt.link.fire("drain_failed", f"drain incomplete: {outcome.message}")
        if job.hold_after:
            self.holds.set(name, True)
