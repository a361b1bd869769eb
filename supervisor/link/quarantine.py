"""Keeping a link flowing past failing users (goal f).

Cyrus spins forever on a ``log-run`` that holds one broken user, and every user not in that
file stalls (cyrus-lab.md 4c). Per link, this module:

1. reads the worker's log for failed passes (failures.py) and the users they name;
2. quarantines those users: stops the worker (SIGTERM keeps log-run whole), moves their entries
   out of log-run and log into the store (rewrite.py, quarantine.py), and lets the core start
   the worker again;
3. when the log names nobody, bisects the stuck log-run's users with one-shot
   ``sync_client -n LINK -u -f LIST`` runs (exit 1 when any user failed);
4. retries each quarantined user with back-off, as a one-shot unit, and releases it on success.

``step`` makes one tick's decisions; units are started and read through the systemd edge.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..cyrus import rewrite
from ..cyrus.channel import LOG, LOG_RUN, Channel
from ..cyrus.failures import FailedPass, FailureDetector, Session, session_event
from ..state import atomic_write, cyrus_gid, ensure_dir
from .quarantine_store import QuarantineStore
from ..systemd.units import LinkUnits

log = logging.getLogger(__name__)


def crash_points(flag_of):
    """Fault injection for the crash-safety system tests: ``crash(NAME)`` SIGKILLs the daemon
    there, once, when the file ``flag_of(NAME)`` exists (a test creates it; see
    paths.Instance.crash_flag). Never present otherwise."""
    def crash(name: str) -> None:
        try:
            flag_of(name).unlink()
        except FileNotFoundError:
            return
        os.kill(os.getpid(), signal.SIGKILL)
    return crash


def no_crash(name: str) -> None:
    pass

RETRY_MAX = 86400.0
# Failed passes that name nobody before the stuck log-run is bisected.
BISECT_AFTER = 2


@dataclass
class Job:
    """Pin the failure on users (bisecting if needed), then move their entries out."""
    culprits: dict[str, str]                 # user -> error
    bisect: bool
    phase: str = "stop-worker"
    queue: list[list[str]] = field(default_factory=list)
    candidates: set[str] = field(default_factory=set)
    running: list[str] | None = None
    moved: int | None = None                 # entries moved out, once the rewrite is over


class Quarantine:
    """One link's quarantine workflow: failure detection, bisection, moving entries, retries."""

    def __init__(self, link: str, units: LinkUnits, sync_dir: Path, users_file: Path,
                 store: QuarantineStore, journal, retry_interval: float, crash=no_crash,
                 executor=None):
        self.link = link
        self.worker_unit = units.worker
        self.unit = units.user
        self.crash_point = crash
        self.sync_dir = Path(sync_dir)
        self.users_file = Path(users_file)
        self.store = store
        self.journal = journal
        self.retry_interval = retry_interval
        self.detector = FailureDetector()
        self.failure: FailedPass | None = None
        self.job: Job | None = None
        self.retrying: str | None = None
        self.unit_error = ""
        self.unit_refused = False       # the user sync's login was refused: it never ends
        self.rival: str | None = None
        self.log_seen: tuple | None = None
        self.invocation: str | None = None          # the worker run whose lines we read
        self.stopped_invocations: set[str] = set()
        # Rewrites of multi-GB logs take seconds: they run in one thread per link, off the main
        # loop (whose watchdog would kill a daemon blocked in one), and end early, leaving the
        # log whole, when the daemon stops.
        self._executor = executor or (lambda: ThreadPoolExecutor(
            1, thread_name_prefix=f"rewrite-{link}"))
        self._pool = None
        self._rewrite: Future | None = None
        self._on_rewritten = None
        self._stopping = threading.Event()

    # -- input -------------------------------------------------------------------------------
    def feed(self, unit: str, message: str, invocation: str | None = None) -> None:
        if unit == self.worker_unit:
            # Lines of a worker we stopped may still be on their way through the journal:
            # they describe a log-run that is gone, and must not start another job.
            if invocation is not None:
                if invocation in self.stopped_invocations:
                    return
                self.invocation = invocation
            failed = self.detector.feed(message)
            if failed is not None and failed.transport:
                log.info("A sync pass to %s failed on the connection to the replica (%s);"
                         " no user is to blame.", self.link, failed.error,
                         extra={"link": self.link})
                self.detector.reprocessing = 0
            elif failed is not None:
                log.info("A sync pass failed (%s); users named: %s.", failed.error,
                         ", ".join(sorted(failed.users)) or "none", extra={"link": self.link})
                self.failure = failed
        elif unit == self.unit:
            event = session_event(message)
            if event is not None and event.kind is Session.REFUSED:
                # sync_client -u retries that login forever, with the password it read at start
                self.unit_error, self.unit_refused = event.cause, True
            elif ("NO response" in message or "bailing out" in message
                  or "IOERROR" in message or "update failed" in message):
                self.unit_error = message.strip()

    @property
    def busy(self) -> bool:
        """While a job runs the rolling worker must stay stopped."""
        return self.job is not None

    def quarantined(self) -> set[str]:
        return self.store.users(self.link)

    # -- one tick ----------------------------------------------------------------------------
    def step(self, mono: float, wall: float, worker_running: bool, unit_status, systemd,
             stop_worker, rival: str | None = None, worker_alive: bool | None = None
             ) -> str | None:
        """Returns a reason when failures cannot be pinned on users (the link must wait).
        ``rival``: a sync_client syncwarden did not start runs for the link (link/rivals.py):
        its sync log is not rewritten meanwhile."""
        unit_running = unit_status is not None and unit_status.running
        self.rival = rival
        self.worker_alive = worker_running if worker_alive is None else worker_alive
        if self.unit_refused:
            self.unit_refused = False
            if unit_running:          # SIGTERM: judged below as a failed run, tried again later
                systemd.stop(self.unit)
                return None
        if self.job is None and self.failure is not None and self.retrying is None:
            self._open_job()
        if self.job is not None:
            return self._step_job(wall, worker_running, unit_running, systemd, stop_worker)
        if self.retrying is not None:
            if not unit_running:
                self._retry_done(wall, systemd)
            return None
        if rival is None:
            self._filter_log()
        due = [q for q in self.store.records(self.link) if q.next_retry <= wall]
        if due and not unit_running:
            self._start_retry(min(due, key=lambda q: q.next_retry), systemd)
        return None

    def _open_job(self) -> None:
        failed, self.failure = self.failure, None
        if failed.users:
            # Also for users quarantined already: the worker took new entries of theirs from
            # log before the filter below moved them; they must leave log-run too.
            self.job = Job(dict(failed.users), bisect=False)
        elif self.detector.reprocessing >= BISECT_AFTER:
            self.job = Job({}, bisect=True)
            self.detector.reprocessing = 0
        # else: one anonymous failure; wait for the spin to repeat before bisecting

    def _step_job(self, wall, worker_running, unit_running, systemd, stop_worker):
        job = self.job
        if job.phase == "stop-worker":
            if worker_running:
                stop_worker()
                if self.invocation is not None:
                    self.stopped_invocations.add(self.invocation)
                return None
            if self.worker_alive:
                return None       # stopping ("deactivating"): sync_client may still be at work
            self.crash_point("worker-stopped")
            if job.bisect:
                if not (self.sync_dir / LOG_RUN).exists():
                    self.job = None      # nothing is stuck any more: let the worker go on
                    return None
                job.candidates = Channel(self.sync_dir).users_in(LOG_RUN)
                if not job.candidates:
                    self.job = None
                    return ("passes keep failing on a log-run that names no user (shared"
                            " mailboxes only)")
                job.queue = [sorted(job.candidates)]
                job.phase = "bisect"
            else:
                job.candidates = Channel(self.sync_dir).users_in(LOG_RUN)
                job.phase = "move"
        if job.phase == "bisect":
            if unit_running:
                return None
            if job.running is not None:
                self._judge_group(job, systemd)
            if job.queue:
                job.running = job.queue.pop(0)
                self._run_users(job.running, systemd)
                return None
            if not job.culprits:
                self.job = None   # every user synced on its own: the stall is over
                return None
            job.phase = "move"
        if job.phase == "move":
            if len(job.candidates) > 1 and set(job.culprits) >= job.candidates:
                # Named or bisected alike: a replica whose disk is full refuses everyone.
                self.job = None
                return (f"every user of the stuck log-run fails ({len(job.candidates)}):"
                        f" not a per-user problem, e.g. {next(iter(job.culprits.values()))}")
            if self.rival is not None:
                return None           # it renames log without the lock: wait until it is gone
            if job.moved is None and self._rewrite is None:
                self._quarantine(job, wall)            # the rewrite starts
            if not self._rewrite_done() or job.moved is None:
                return None                            # running, or cancelled by a stop
            self.job = None
            self.failure = None   # reported by the stopped worker: its log-run is gone now
            self.detector.pass_succeeded()
        return None

    # -- rewrites off the main loop ------------------------------------------------------------
    def _submit(self, fn, on_done) -> None:
        if self._pool is None:
            self._pool = self._executor()
        self._rewrite, self._on_rewritten = self._pool.submit(fn), on_done

    def _rewrite_done(self) -> bool:
        """True when no rewrite runs; a finished one hands its result to its callback here,
        in the main loop (an OSError from it reaches the tick, which holds the link)."""
        if self._rewrite is None:
            return True
        if not self._rewrite.done():
            return False
        future, on_done = self._rewrite, self._on_rewritten
        self._rewrite = self._on_rewritten = None
        try:
            on_done(future.result())
        except rewrite.Cancelled:
            pass                      # the daemon is stopping: the log was left whole
        return True

    def close(self) -> None:
        """The daemon stops: a rewrite in progress ends at its next chunk, the log whole."""
        self._stopping.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _judge_group(self, job: Job, systemd) -> None:
        group, job.running = job.running, None
        status = systemd.exit_info(self.unit).status
        if status == 0:
            return
        if len(group) == 1:
            job.culprits[group[0]] = self.unit_error or f"sync_client -u exited {status}"
            return
        half = len(group) // 2
        job.queue[:0] = [group[:half], group[half:]]

    def _run_users(self, users: list[str], systemd) -> None:
        self.unit_error = ""
        # sync_client runs as cyrus and must read the list; nobody else may (it names users)
        gid = cyrus_gid()
        ensure_dir(self.users_file.parent, 0o750, gid)
        atomic_write(self.users_file, "".join(f"{u}\n" for u in users).encode(), 0o640, gid)
        systemd.start(self.unit)

    def _quarantine(self, job: "Job", wall: float) -> None:
        """Records first (in the loop), then the entries move out in the rewrite thread."""
        culprits = job.culprits
        users = set(culprits)
        new = {u: e for u, e in culprits.items() if u not in self.quarantined()}
        for user, error in sorted(new.items()):
            self.store.add(self.link, user, error, wall, self.retry_interval)
        self.crash_point("record-saved")

        def move() -> int:
            moved = 0
            for name in (LOG_RUN, LOG):
                # the worker is gone (job phase "stop-worker"): log-run may be rewritten
                moved += rewrite.move_out(self.sync_dir / name, users, self._store_entries,
                                          no_client=True, cancelled=self._stopping.is_set)
                self.crash_point(f"{name}-rewritten")
            return moved

        def moved_out(moved: int) -> None:
            job.moved = moved
            if len(new) < len(culprits):
                log.info("Moved %d more entries of users %s, quarantined already on %s.",
                         moved, ", ".join(sorted(set(culprits) - set(new))), self.link,
                         extra={"link": self.link})
            for user, error in sorted(new.items()):
                self.journal.send(f"user {user} quarantined: {error};"
                                  f" {self.store.count(self.link, user)} entries held in the"
                                  " store", "warning", "user-quarantined",
                                  SYNCWARDEN_LINK=self.link, SYNCWARDEN_USER=user,
                                  SYNCWARDEN_ERROR=error, SYNCWARDEN_ENTRIES=moved)

        self._submit(move, moved_out)

    def _store_entries(self, moved: dict[str, list[bytes]]) -> None:
        self.store.append(self.link, moved)
        self.crash_point("entries-stored")    # stored, not yet removed from the sync log

    def _filter_log(self) -> None:
        """Entries for quarantined users that reach log are kept out of the stream too."""
        users = self.quarantined()
        if not users:
            return
        log = self.sync_dir / LOG
        try:
            st = log.stat()
        except FileNotFoundError:
            return
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        if seen != self.log_seen and self._rewrite_done():
            self._submit(lambda: rewrite.move_out(log, users, self._store_entries,
                                                  cancelled=self._stopping.is_set),
                         lambda moved: setattr(self, "log_seen", seen))
            self._rewrite_done()      # done at once when the rewrite was quick

    # -- retries -----------------------------------------------------------------------------
    def _start_retry(self, q, systemd) -> None:
        q.retry_offset = self.store.entries_size(self.link, q.user)
        self.store.save(q)
        self.retrying = q.user
        self._run_users([q.user], systemd)
        self.crash_point("retry-started")
        self.journal.send(f"retrying quarantined user {q.user} (attempt"
                          f" {q.attempts + 1})", "info", "user-retried",
                          SYNCWARDEN_LINK=self.link, SYNCWARDEN_USER=q.user)

    def _retry_done(self, wall: float, systemd) -> None:
        user, self.retrying = self.retrying, None
        q = self.store.get(self.link, user)
        if q is None:
            return   # dropped meanwhile
        status = systemd.exit_info(self.unit).status
        if status == 0:
            # The user sync covered the entries stored before it began, except lines naming
            # someone else too; those and the later ones go back.
            back = rewrite.replay_after_user_sync(self.store.entries(self.link, user), user,
                                                  max(q.retry_offset, 0))
            rewrite.append(self.sync_dir / LOG, back)
            self.store.remove(self.link, user)
            self.failure = None   # passes that failed on this user before it was repaired
            self.journal.send(f"user {user} released after {q.attempts + 1}"
                              f" attempt(s)", "notice", "user-released",
                              SYNCWARDEN_LINK=self.link, SYNCWARDEN_USER=user)
            return
        q.attempts += 1
        q.error = self.unit_error or f"sync_client -u {user} exited {status}"
        q.next_retry = wall + min(self.retry_interval * 2 ** q.attempts, RETRY_MAX)
        q.retry_offset = -1
        self.store.save(q)
        self.journal.send(f"retry of {user} failed: {q.error}", "warning",
                          "user-retried", SYNCWARDEN_LINK=self.link, SYNCWARDEN_USER=user,
                          SYNCWARDEN_ERROR=q.error)

    # -- operator ----------------------------------------------------------------------------
    def retry_now(self, user: str, wall: float) -> str:
        q = self.store.get(self.link, user)
        if q is None:
            raise KeyError(f"{user} is not quarantined on {self.link}")
        q.next_retry = wall
        self.store.save(q)
        return f"{self.link}: {user} will be retried now"

    def drop(self, user: str) -> str:
        q = self.store.get(self.link, user)
        if q is None:
            raise KeyError(f"{user} is not quarantined on {self.link}")
        n = self.store.count(self.link, user)
        self.store.remove(self.link, user)
        self.journal.send(f"quarantined user {user} dropped by the operator;"
                          f" {n} stored entries given up", "warning", "user-released",
                          SYNCWARDEN_LINK=self.link, SYNCWARDEN_USER=user)
        return f"{self.link}: {user} dropped, {n} stored entries given up"
