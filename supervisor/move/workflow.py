"""One user's move to another store: the phases as data, run against narrow edges.

The flow is docs/moves.md's: the target denied first (nobody uses the half-made copy), an
initial sync as long as it takes, then the critical path: lock the source (cyr_deny: logins
and LMTP 451), end the user's sessions, final sync, deep verify (source vs target), switch the
routing (the hook), catch up what an in-flight delivery appended, unlock on the target; last,
the target sends the user to its own replicas (its sync_server logged nothing for them).

Rules kept here, and only here:
- the lock deadline (``lock_timeout`` from the lock) is checked before every phase up to the
  switch and bounds each one's edge call; past it, or on any failure before the switch is
  done, the move rolls back: the source unlocked and authoritative, the routing switched back
  if the hook had started, the target's copy left denied (stale, marked so);
- after the switch the move goes forward only; a catch-up that fails is reported, not
  allowed to keep the user locked;
- the deadline also bounds the catch-up after the switch (skipped once it has passed), so the
  user is unlocked on the target by then; a guard outside the process (``edges.guard``: a
  timer, armed from the lock to the unlock) runs ``expire`` at the deadline, so a lock
  outlives it by the timer's accuracy even when the move process is killed;
- the state is a plain dict, saved (``save``) after every phase, so ``move`` run again resumes:
  a move interrupted while the source was locked and not yet switched rolls back first and
  starts again from the initial sync; one interrupted after the switch goes on where it was.

Edges (the real ones in edges.py; fakes in tests) raise EdgeError with one line saying what
failed; the clock is wall time (the deadline is saved and read by another process).
"""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("prepare", "initial-sync", "lock", "end-sessions", "final-sync", "verify", "switch",
          "catch-up", "unlock", "replicate")
# Phases that run with the source locked and may still roll back: the deadline applies.
BEFORE_SWITCH = PHASES[PHASES.index("lock"):PHASES.index("switch") + 1]
DONE, ROLLED_BACK, FAILED = "done", "rolled-back", "failed"
FINISHED = (DONE, ROLLED_BACK)
MIN_STEP = 0.5        # seconds: the shortest time an edge call is given before the deadline


class EdgeError(Exception):
    """A side effect failed; the text says what and where, in one line."""


@dataclass(frozen=True)
class Plan:
    user: str
    source: str
    target: str
    lock_timeout: float


def new_state(plan: Plan, now: float) -> dict:
    return {"user": plan.user, "source": plan.source, "target": plan.target,
            "phase": PHASES[0], "result": None, "started": now, "updated": now,
            "locked_at": None, "deadline": None, "unlocked_at": None,
            "switch_started": False, "phases": {}, "error": None, "warnings": []}


def describe(plan: Plan, replicas: list[str], hook: str | None) -> list[str]:
    """What the move will do, phase by phase (``--dry-run``)."""
    u, s, t = plan.user, plan.source, plan.target
    return [
        f"prepare: deny {u} on {t} (cyr_deny), so that nobody uses the copy being made",
        f"initial-sync: sync_client -u {u} from {s} to {t}, as long as it takes",
        f"lock: cyr_deny {u} on {s} (logins refused, LMTP answers 451 4.2.1: mail waits at"
        f" the MTA); from here at most {plan.lock_timeout:g}s until the switch, or roll back",
        f"end-sessions: end {u}'s sessions on {s} (its proc directory)",
        f"final-sync: sync_client -u {u} again (only what changed)",
        f"verify: deep check of every mailbox of {u}, {s} vs {t} (UIDs, GUIDs, flags)",
        f"switch: {hook or '(no move.switch_hook configured: refused)'} {u} {s} {t}",
        f"catch-up: sync_client -u {u} once more (what an in-flight delivery added)",
        f"unlock: allow {u} on {t}; {u} stays denied on {s}, whose copy is kept",
        f"replicate: sync {u} from {t} to its replicas ({', '.join(replicas) or 'none'})",
    ]


def resume_point(state: dict) -> str:
    """Where a saved, unfinished move goes on: "rollback" when it stopped with the source
    locked before the switch was done; else its phase."""
    phase = state["phase"]
    if phase in BEFORE_SWITCH and state.get("locked_at") is not None \
            and not (phase == "switch" and state["phases"].get("switch")):
        return "rollback"
    return phase


def critical_path(state: dict) -> float | None:
    """Seconds from the lock to the unlock on the target, once both happened."""
    if state.get("locked_at") is None or state.get("unlocked_at") is None:
        return None
    return state["unlocked_at"] - state["locked_at"]


class Move:
    """Runs one user's phases in order. ``edges``: the side effects; ``save(state)``: persist;
    ``event(kind, state, **detail)``: one journal entry (kind: started, phase, finished)."""

    def __init__(self, state: dict, plan: Plan, edges, clock, save, event):
        self.state, self.plan, self.edges = state, plan, edges
        self.clock, self.save, self.event = clock, save, event

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> dict:
        st = self.state
        if st["phase"] == FAILED:       # stopped after the switch: go on from the failed phase
            st["phase"], st["result"], st["error"] = st["failed_phase"], None, None
        if resume_point(st) == "rollback":
            self._rollback("interrupted while locked, before the switch")
            st.update(phase="initial-sync", result=None, error=None, locked_at=None,
                      deadline=None, unlocked_at=None, switch_started=False)
        self.event("started", st)
        while st["phase"] not in FINISHED and st["phase"] != FAILED:
            phase = st["phase"]
            if phase in BEFORE_SWITCH and st["deadline"] is not None \
                    and self.clock() >= st["deadline"]:
                self._rollback(f"the lock deadline ({self.plan.lock_timeout:g}s) passed"
                               f" before {phase}")
                break
            began = self.clock()
            try:
                detail = getattr(self, "_" + phase.replace("-", "_"))()
            except EdgeError as exc:
                if phase in PHASES[:PHASES.index("switch") + 1]:
                    self._rollback(f"{phase}: {exc}")
                else:
                    st.update(phase=FAILED, failed_phase=phase, result=FAILED,
                              error=f"{phase}: {exc}", updated=self.clock())
                    self.save(st)
                break
            now = self.clock()
            st["phases"][phase] = {"seconds": round(now - began, 3), "detail": detail or ""}
            st["phase"] = PHASES[PHASES.index(phase) + 1] if phase != PHASES[-1] else DONE
            st["updated"] = now
            if st["phase"] == DONE:
                st["result"] = DONE
            self.save(st)
            self.event("phase", st, phase=phase, seconds=now - began, detail=detail or "")
        self.event("finished", st)
        return st

    def _left(self) -> float | None:
        """Seconds an edge call may take: to the deadline while it binds, else unbounded."""
        if self.state["deadline"] is None:
            return None
        return max(MIN_STEP, self.state["deadline"] - self.clock())

    # --- the phases (each returns a short detail for the journal and status) ----------------

    def _prepare(self):
        self.edges.deny_target(self.plan.user)
        return f"denied on {self.plan.target}"

    def _initial_sync(self):
        self.edges.sync_to_target(self.plan.user, None)

    def _lock(self):
        now = self.clock()
        self.state.update(locked_at=now, deadline=now + self.plan.lock_timeout)
        self.save(self.state)        # a crash from here on rolls back (resume_point)
        # If this process dies, the guard (a timer outside it) rolls back at the deadline.
        self.edges.guard(self.plan.user, self.plan.lock_timeout)
        # Sessions ended first: cyr_deny ends those it finds itself, but then waits a whole
        # second before it looks again (imap/cyr_deny.c). One that starts in between is
        # refused or ended by cyr_deny, and the next phase looks again.
        n = self.edges.end_sessions(self.plan.user, self._left())
        self.edges.deny_source(self.plan.user, self._left())
        return f"denied on {self.plan.source}" + (f" ({n} session(s) ended first)" if n else "")

    def _end_sessions(self):
        n = self.edges.end_sessions(self.plan.user, self._left())
        return f"{n} session(s) ended"

    def _final_sync(self):
        self.edges.sync_to_target(self.plan.user, self._left())

    def _verify(self):
        diffs = self.edges.verify(self.plan.user, self._left())
        if diffs:
            # A delivery accepted before the lock may have landed after the final sync.
            self.edges.sync_to_target(self.plan.user, self._left())
            diffs = self.edges.verify(self.plan.user, self._left())
            if diffs:
                raise EdgeError(f"{len(diffs)} difference(s) after a second sync: "
                                + "; ".join(diffs[:3]))
            return "in sync after one more sync"
        return "in sync"

    def _switch(self):
        self.state["switch_started"] = True
        self.save(self.state)
        self.edges.switch(self.plan.user, self.plan.source, self.plan.target, self._left())
        return f"routing: {self.plan.user} -> {self.plan.target}"

    # Forward only from here; the deadline still bounds the catch-up, so that the user is
    # unlocked on the target by then.

    def _catch_up(self):
        if self.clock() >= self.state["deadline"]:
            self.state["warnings"].append("catch-up: skipped, the lock deadline had passed")
            return "skipped: the lock deadline had passed"
        try:
            self.edges.sync_to_target(self.plan.user, self._left())
        except EdgeError as exc:
            # The user's mail is on the target; waiting would only keep the user locked.
            self.state["warnings"].append(f"catch-up: {exc}")
            return f"failed (reported, not retried): {exc}"

    def _unlock(self):
        self.edges.allow_target(self.plan.user)
        self.state.update(unlocked_at=self.clock(), deadline=None)
        self.save(self.state)
        self._unguard()
        return f"allowed on {self.plan.target}"

    def _replicate(self):
        done = self.edges.replicate(self.plan.user)
        return f"synced to {', '.join(done) or 'no replicas'}"

    # --- rolling back -------------------------------------------------------------------------

    def expire(self) -> bool:
        """What the guard runs at the deadline when no move process runs: a move that stopped
        with the user locked before the switch is rolled back; one that stopped after the
        switch goes forward (the catch-up skipped, the user unlocked on the target, the
        replicas synced). False (nothing done) when the user is not locked or the deadline
        is still ahead."""
        st = self.state
        if st.get("deadline") is None or st.get("locked_at") is None \
                or st.get("unlocked_at") is not None or self.clock() < st["deadline"]:
            return False
        if resume_point(st) == "rollback":
            self._rollback("the lock deadline passed and no move process was running")
            self.event("finished", st)
        else:
            self.run()
        return True

    def _unguard(self) -> None:
        try:
            self.edges.unguard(self.plan.user)
        except EdgeError:
            pass         # a guard that fires finds nothing to roll back (expire)

    def _rollback(self, why: str) -> None:
        """The source authoritative again: unlocked, and the routing back if the switch had
        started; the target's copy stays denied. Each step is tried even if one fails."""
        st, problems = self.state, []
        # Unlock first: a switch back may take long, and meanwhile mail routed to the denied
        # target only waits at the MTA (451), while the source may serve the user again.
        if st.get("locked_at") is not None:
            try:
                self.edges.allow_source(self.plan.user)
            except EdgeError as exc:
                problems.append(f"unlocking {self.plan.source}: {exc}")
        if st.get("switch_started"):
            try:
                self.edges.switch(self.plan.user, self.plan.target, self.plan.source, None)
            except EdgeError as exc:
                problems.append(f"switching back: {exc}")
        st.update(phase=ROLLED_BACK, result=ROLLED_BACK, updated=self.clock(),
                  error=why + ("" if not problems else "; rollback: " + "; ".join(problems)),
                  unlocked_at=self.clock() if st.get("locked_at") is not None else None)
        self.save(st)
        if st.get("locked_at") is not None:
            self._unguard()
