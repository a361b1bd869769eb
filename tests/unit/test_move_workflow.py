"""The move workflow (supervisor/move/workflow.py) against fake edges and a fake clock: the
order of the phases, rollback before the switch, forward only after it, the lock deadline,
and resuming from a saved state."""

from __future__ import annotations

import copy

from hypothesis import given, settings, strategies as st

from supervisor.move import workflow
from supervisor.move.workflow import DONE, FAILED, PHASES, ROLLED_BACK, EdgeError, Move, Plan

LOCK_TIMEOUT = 10.0


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Edges:
    """Two stores' deny records, where the routing points, how much mail each holds.
    ``costs[call]`` seconds per call (an edge honours its timeout: past it, it fails then);
    ``fail`` calls that fail (once each, or every time with ``always``)."""

    def __init__(self, clock, costs=None, fail=(), always=False, diffs=0):
        self.clock, self.costs, self.fail, self.always = clock, costs or {}, set(fail), always
        self.denied = {"src": False, "dst": False}
        self.route = "src"
        self.synced = 0
        self.diffs = diffs
        self.calls: list[tuple[str, float]] = []
        self.lock_spans: list[float] = []      # seconds the source was denied while routed there
        self._locked_at = None

    def _call(self, name, timeout=None):
        cost = self.costs.get(name, 0.1)
        if timeout is not None and cost > timeout:
            self.clock.now += timeout
            self.calls.append((name, self.clock.now))
            raise EdgeError(f"{name}: timed out")
        self.clock.now += cost
        self.calls.append((name, self.clock.now))
        if name in self.fail:
            if not self.always:
                self.fail.discard(name)
            raise EdgeError(f"{name}: failed")

    def deny_target(self, user):
        self._call("deny_target")
        self.denied["dst"] = True

    def allow_target(self, user):
        self._call("allow_target")
        self.denied["dst"] = False

    def deny_source(self, user, timeout):
        self._call("deny_source", timeout)
        self.denied["src"] = True
        self._locked_at = self.clock.now

    def allow_source(self, user):
        self._call("allow_source")
        if self.denied["src"] and self._locked_at is not None:
            self.lock_spans.append(self.clock.now - self._locked_at)
        self.denied["src"] = False

    def end_sessions(self, user, timeout):
        self._call("end_sessions", timeout)
        return 1

    def sync_to_target(self, user, timeout):
        self._call("sync", timeout)
        self.synced += 1
        self.diffs = 0

    def verify(self, user, timeout):
        self._call("verify", timeout)
        return ["user.bob: differs"] * self.diffs

    def switch(self, user, source, target, timeout):
        self._call("switch", timeout)
        self.route = "dst" if target == "east" else "src"
        if self.route == "dst" and self._locked_at is not None:
            self.lock_spans.append(self.clock.now - self._locked_at)
            self._locked_at = None

    def replicate(self, user):
        self._call("replicate")
        return ["replica2"]

    guarded: dict

    def guard(self, user, seconds):
        self.__dict__.setdefault("guarded", {})[user] = self.clock.now + seconds

    def unguard(self, user):
        self.__dict__.setdefault("guarded", {}).pop(user, None)


def run(edges, clock, state=None, saved=None):
    plan = Plan("bob", "default", "east", LOCK_TIMEOUT)
    state = state or workflow.new_state(plan, clock())
    events = []
    saves = saved if saved is not None else []
    move = Move(state, plan, edges, clock, lambda s: saves.append(copy.deepcopy(s)),
                lambda kind, s, **d: events.append((kind, d.get("phase"))))
    return move.run(), events, saves


def test_a_clean_move_runs_every_phase_in_order_and_ends_switched_and_unlocked():
    clock = Clock()
    edges = Edges(clock)
    st, events, saves = run(edges, clock)
    assert st["result"] == DONE and st["phase"] == DONE
    assert [p for k, p in events if k == "phase"] == list(PHASES)
    assert events[0][0] == "started" and events[-1][0] == "finished"
    assert [c for c, _ in edges.calls] == [
        "deny_target", "sync", "end_sessions", "deny_source", "end_sessions", "sync", "verify",
        "switch", "sync", "allow_target", "replicate"]
    assert edges.route == "dst" and edges.denied == {"src": True, "dst": False}
    assert workflow.critical_path(st) == st["unlocked_at"] - st["locked_at"] > 0
    assert saves[-1] == st                      # the last thing saved is the outcome


def test_verify_difference_gets_one_more_sync_then_passes():
    clock = Clock()
    edges = Edges(clock, diffs=2)
    edges.sync_to_target = lambda user, timeout: (edges._call("sync", timeout),
                                                  setattr(edges, "synced", edges.synced + 1))
    calls = []
    real_verify = Edges.verify

    def verify(user, timeout):
        calls.append(1)
        out = real_verify(edges, user, timeout)
        edges.diffs = 0                          # the extra sync carried the straggler
        return out
    edges.verify = verify
    st, _, _ = run(edges, clock)
    assert st["result"] == DONE and len(calls) == 2
    assert st["phases"]["verify"]["detail"] == "in sync after one more sync"


def test_verify_that_still_differs_rolls_back_the_source_unlocked_the_target_denied():
    clock = Clock()
    edges = Edges(clock)
    edges.verify = lambda user, timeout: (edges._call("verify", timeout), ["INBOX: GUID x"])[1]
    st, events, _ = run(edges, clock)
    assert st["result"] == ROLLED_BACK and "verify: 1 difference(s)" in st["error"]
    assert edges.denied == {"src": False, "dst": True}      # target's copy marked stale
    assert edges.route == "src"
    assert "switch" not in [c for c, _ in edges.calls]


def test_a_failing_switch_hook_switches_back_and_unlocks():
    clock = Clock()
    edges = Edges(clock, fail={"switch"})
    st, _, _ = run(edges, clock)
    assert st["result"] == ROLLED_BACK and st["error"].startswith("switch:")
    assert [c for c, _ in edges.calls][-3:] == ["switch", "allow_source", "switch"]  # unlock,
    # then the routing back
    assert edges.route == "src" and edges.denied["src"] is False


def test_the_deadline_bounds_each_step_and_rolls_back():
    clock = Clock()
    edges = Edges(clock, costs={"sync": 4.0})        # the final sync: 4 s of 10 left
    edges.costs["verify"] = 30.0                     # hangs: cut at the deadline
    st, _, _ = run(edges, clock)
    assert st["result"] == ROLLED_BACK
    assert edges.lock_spans and max(edges.lock_spans) <= LOCK_TIMEOUT + 0.2   # + allow_source


def test_after_the_switch_a_failure_goes_forward_on_resume():
    clock = Clock()
    edges = Edges(clock, fail={"replicate"})
    st, _, saves = run(edges, clock)
    assert st["result"] == FAILED and st["failed_phase"] == "replicate"
    assert edges.route == "dst" and edges.denied == {"src": True, "dst": False}
    resumed, events, _ = run(edges, clock, state=copy.deepcopy(saves[-1]))
    assert resumed["result"] == DONE
    assert [p for k, p in events if k == "phase"] == ["replicate"]


def test_a_failed_catch_up_is_reported_and_does_not_keep_the_user_locked():
    clock = Clock()
    edges = Edges(clock)
    syncs = []

    def sync(user, timeout):
        syncs.append(1)
        edges._call("sync", timeout)
        if len(syncs) == 3:
            raise EdgeError("connection reset")
    edges.sync_to_target = sync
    st, _, _ = run(edges, clock)
    assert st["result"] == DONE and edges.denied["dst"] is False
    assert st["warnings"] == ["catch-up: connection reset"]


def test_a_move_killed_while_locked_rolls_back_then_starts_again():
    clock = Clock()
    edges = Edges(clock)
    saved = []
    plan = Plan("bob", "default", "east", LOCK_TIMEOUT)
    state = workflow.new_state(plan, clock())

    class Killed(BaseException):
        pass

    def killed(user, timeout):
        raise Killed()
    edges.sync_to_target, real_sync = killed, edges.sync_to_target
    edges_calls_before = None
    try:
        Move(state, plan, edges, clock, lambda s: saved.append(copy.deepcopy(s)),
             lambda *a, **k: None).run()
    except Killed:
        pass
    # killed at the initial sync: nothing locked yet, the saved phase is initial-sync
    assert saved[-1]["phase"] == "initial-sync"
    edges.sync_to_target = real_sync
    edges.verify = killed
    try:
        Move(copy.deepcopy(saved[-1]), plan, edges, clock,
             lambda s: saved.append(copy.deepcopy(s)), lambda *a, **k: None).run()
    except Killed:
        pass
    assert edges.denied["src"] is True and workflow.resume_point(saved[-1]) == "rollback"
    del edges.verify                                  # back to the class's method
    edges_calls_before = len(edges.calls)
    st, _, _ = run(edges, clock, state=copy.deepcopy(saved[-1]))
    names = [c for c, _ in edges.calls[edges_calls_before:]]
    assert names[0] == "allow_source" and names[1] == "sync"   # unlocked, then from the start
    assert st["result"] == DONE and edges.denied == {"src": True, "dst": False}


@settings(max_examples=200, deadline=None)
@given(costs=st.dictionaries(st.sampled_from(["sync", "verify", "switch", "end_sessions",
                                              "deny_source"]),
                             st.floats(0.0, 20.0), max_size=5),
       fail=st.sets(st.sampled_from(["deny_target", "sync", "deny_source", "end_sessions",
                                     "verify", "switch", "allow_target", "replicate"])),
       diffs=st.integers(0, 2))
def test_whatever_fails_the_user_ends_on_exactly_one_store_and_no_lock_outlives_the_deadline(
        costs, fail, diffs):
    clock = Clock()
    edges = Edges(clock, costs=costs, fail=fail, diffs=diffs)
    st_, _, _ = run(edges, clock)
    for _ in range(3):                     # an operator runs it again while it is unfinished
        if st_["result"] != FAILED:
            break
        st_, _, _ = run(edges, clock, state=copy.deepcopy(st_))
    if st_["result"] == DONE:
        assert edges.route == "dst" and edges.denied == {"src": True, "dst": False}
    elif st_["result"] == ROLLED_BACK:
        assert edges.route == "src" and edges.denied["src"] is False
        # the stale copy stays closed (or none was made: the target's deny itself failed)
        assert edges.denied["dst"] is True or edges.synced == 0
    else:                                        # failed after the switch, unresolved
        assert edges.route == "dst" and edges.denied["src"] is True
    # the source locked while the routing still pointed at it: never past the deadline by
    # more than the unlock itself (0.1 s) and one step's minimum
    assert all(span <= LOCK_TIMEOUT + workflow.MIN_STEP + 0.2 for span in edges.lock_spans)
    # a finished move unlocked the user on the target by the deadline (+ two short steps)
    if st_["result"] == DONE:
        assert workflow.critical_path(st_) <= LOCK_TIMEOUT + 2 * workflow.MIN_STEP + 0.3


def test_a_guard_is_armed_for_the_lock_and_disarmed_at_the_switch_or_the_rollback():
    clock = Clock()
    edges = Edges(clock)
    run(edges, clock)
    assert edges.guarded == {}
    edges = Edges(clock, fail={"verify"})
    st, _, _ = run(edges, clock)
    assert st["result"] == ROLLED_BACK and edges.guarded == {}


def test_the_guard_rolls_back_a_dead_move_at_its_deadline_and_only_then():
    clock = Clock()
    edges = Edges(clock)
    saved = []
    plan = Plan("bob", "default", "east", LOCK_TIMEOUT)

    class Killed(BaseException):
        pass

    def killed(user, timeout):
        raise Killed()
    edges.verify = killed
    try:
        Move(workflow.new_state(plan, clock()), plan, edges, clock,
             lambda s: saved.append(copy.deepcopy(s)), lambda *a, **k: None).run()
    except Killed:
        pass
    assert edges.denied["src"] and "bob" in edges.guarded      # the process is gone
    events = []

    def guard_run():
        return Move(copy.deepcopy(saved[-1]), plan, edges, clock,
                    lambda s: saved.append(copy.deepcopy(s)),
                    lambda kind, s, **d: events.append((kind, s["result"]))).expire()
    assert guard_run() is False and edges.denied["src"]          # before the deadline
    clock.now = edges.guarded["bob"]
    assert guard_run() is True
    assert edges.denied["src"] is False and saved[-1]["result"] == ROLLED_BACK
    assert events == [("finished", ROLLED_BACK)]
    assert Move(copy.deepcopy(saved[-1]), plan, edges, clock, lambda s: None,
                lambda *a, **k: None).expire() is False         # once only


def test_after_the_switch_the_guard_goes_forward_and_unlocks_the_target():
    clock = Clock()
    edges = Edges(clock)
    saved = []
    plan = Plan("bob", "default", "east", LOCK_TIMEOUT)
    syncs = []

    class Killed(BaseException):
        pass

    def sync(user, timeout):
        syncs.append(1)
        if len(syncs) == 3:                # the catch-up, after the switch
            raise Killed()
        Edges.sync_to_target(edges, user, timeout)
    edges.sync_to_target = sync
    try:
        Move(workflow.new_state(plan, clock()), plan, edges, clock,
             lambda s: saved.append(copy.deepcopy(s)), lambda *a, **k: None).run()
    except Killed:
        pass
    assert edges.route == "dst" and edges.denied == {"src": True, "dst": True}
    assert saved[-1]["phase"] == "catch-up" and "bob" in edges.guarded
    clock.now = edges.guarded["bob"]
    done = Move(copy.deepcopy(saved[-1]), plan, edges, clock,
                lambda s: saved.append(copy.deepcopy(s)), lambda *a, **k: None)
    assert done.expire() is True
    st = saved[-1]
    assert st["result"] == DONE and edges.denied == {"src": True, "dst": False}
    assert st["warnings"] == ["catch-up: skipped, the lock deadline had passed"]
    assert edges.guarded == {} and workflow.critical_path(st) <= LOCK_TIMEOUT + 0.2
