"""Whether a link's worker has earned ``live`` (SPEC guarantee 6), from its own log and files.

A worker earns ``live`` once it has completed a pass since it started. What sync_client shows of
that (cyrus/failures.py has the lines, read from Cyrus 3.6.1 and 3.10 and the lab):

- a login: ``Destination supports #sieve mailbox`` right after every successful login to a
  3.6+ replica, ``Reprocessing sync log file`` once connected. An idle worker logs nothing else,
  and the channel directory does not change, so for an idle link this is all there is;
- a pass over ``log-run`` ending: sync_client unlinks ``log-run`` only after a good pass, and the
  quarantine rewrites it only while no worker runs. So a pass is complete once the worker has
  logged in and no ``log-run`` is left at a tick (nothing in progress, or nothing to do), or
  once a ``log-run`` this run saw has gone;
- a refused login or no session at all (the failure lines).

Evidence is kept per systemd invocation: the tick binds the link to the invocation of the worker
unit now running (over D-Bus), and lines of earlier runs, which may still be on their way through
the journal, count for nothing. Lines are ordered by their journal time, so a line read twice (the
start-up replay and an adopted worker's history overlap) cannot undo a later one.

What the tick does with it (reconcile.py):

- ``live`` only for a run whose pass completed and which has no problem since;
- a refused login (``REFUSED``) stops the worker and takes the link ``down``, with the cause as
  its reason and the usual restart back-off (1 s doubling to 5 min). Not ``catching-up``: the
  worker would retry forever with the password it read at start, so a fixed imapd.conf would
  never be used; and not ``quarantined``: SASL reports a replica whose password backend is down
  exactly like a wrong password, which heals by itself, and each restart reads imapd.conf again,
  so fixing either side is enough, without an operator command;
- no session (``NO_SESSION``: connect or greeting failures, which sync_client retries itself)
  keeps the link ``catching-up`` (or takes a ``live`` one there) with the cause as its reason;
  the probe decides whether the replica is gone.

With a pre-3.6 replica (no SIEVE-MAILBOX) or journald storing less than INFO, an idle link has
nothing to show and stays ``catching-up`` until a pass is seen in the files: it is not claimed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from ..cyrus.failures import Session, SessionEvent, session_event
from ..systemd.units import link_of

log = logging.getLogger(__name__)

# Invocations remembered per link: the current one and a few before it, whose late lines are
# recognised and ignored.
KEEP_RUNS = 8


@dataclass
class RunEvidence:
    """What one run of a worker has shown."""

    session: Session | None = None        # the latest session event
    problem: SessionEvent | None = None   # why the latest attempt failed, until a login
    completed: bool = False               # a pass completed since the last login
    saw_log_run: bool = False             # a log-run existed while this run's worker ran
    last_at: int = -1                     # journal time (µs) of the latest line applied

    def feed(self, event: SessionEvent, at: int | None) -> None:
        if at is not None:
            if at < self.last_at:
                return                    # older than what was applied already
            self.last_at = at
        if event.kind is Session.LOGGED_IN:
            if self.session is not Session.LOGGED_IN:
                self.completed = False
            self.session, self.problem = Session.LOGGED_IN, None
            return
        if event.generic and self.problem is not None:
            return                        # "retrying": the specific cause came just before
        self.session, self.problem, self.completed = event.kind, event, False

    def observe(self, log_run: bool) -> None:
        """One tick's look at the channel directory while this run's worker runs."""
        if log_run:
            self.saw_log_run = True
            return
        if self.session is Session.LOGGED_IN or (self.saw_log_run and self.problem is None):
            self.completed = True
            self.session = Session.LOGGED_IN

    @property
    def proven(self) -> bool:
        return self.completed and self.problem is None

    def describe(self) -> str:
        if self.problem is not None:
            return self.problem.cause
        if self.proven:
            return "logged in, pass completed"
        if self.session is Session.LOGGED_IN:
            return "logged in, first pass in progress"
        return "no login or completed pass seen yet"


@dataclass
class WorkerRuns:
    """Evidence per invocation of one link's worker unit, and which invocation is current."""

    runs: "OrderedDict[str, RunEvidence]" = field(default_factory=OrderedDict)
    current: str | None = None            # None: a worker starting, not yet bound

    def feed(self, invocation: str | None, event: SessionEvent, at: int | None) -> None:
        if not invocation:
            return
        self._run(invocation).feed(event, at)

    def bind(self, invocation: str) -> bool:
        """Make ``invocation`` the current run; True if nothing of it was seen before."""
        self.current = invocation
        fresh = invocation not in self.runs
        self._run(invocation)
        return fresh

    def find_current(self, unit: str, systemd, worker_log) -> bool:
        """Bind to the run of ``unit`` now running (its InvocationID, over D-Bus); if nothing
        of it was read yet, read its history first (a worker adopted at start logged in before
        the daemon could read it). False if it cannot be told yet."""
        try:
            invocation = systemd.invocation(unit)
        except Exception as exc:   # D-Bus hiccup: the tick asks again
            log.warning("cannot read the invocation of %s: %s", unit, exc,
                        extra={"link": link_of(unit)})
            return False
        if not invocation:
            return False
        if self.bind(invocation) and worker_log is not None:
            try:
                history = worker_log.history(unit, invocation)
            except Exception as exc:
                log.warning("cannot read the journal of %s: %s", unit, exc,
                            extra={"link": link_of(unit)})
                history = []
            for message, at in history:
                event = session_event(message)
                if event is not None:
                    self.feed(invocation, event, at)
        return True

    def unbind(self) -> None:
        """The worker is stopping or gone: its evidence no longer counts."""
        self.current = None

    @property
    def run(self) -> RunEvidence:
        if self.current is None:
            return RunEvidence()
        return self._run(self.current)

    def _run(self, invocation: str) -> RunEvidence:
        run = self.runs.get(invocation)
        if run is None:
            run = self.runs[invocation] = RunEvidence()
            while len(self.runs) > KEEP_RUNS:
                self.runs.popitem(last=False)
        return run
