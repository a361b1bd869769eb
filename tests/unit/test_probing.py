"""Probe and knock scheduling in the tick, with a fake clock (probing.py)."""

import dataclasses

from supervisor.cyrus.probe import LOST_AFTER
from supervisor.link.probing import KNOCK_EVERY, KNOCK_FOR
from supervisor.link.states import LinkState

from .test_core import W1, make, state, step


def test_refused_replica_is_knocked_on_and_resumes_when_the_port_accepts(tmp_path):
    sup, env = make(tmp_path)
    prober = env["prober"]
    step(sup, env, seconds=0.1, n=2)                   # first probe: refused
    assert state(sup) is LinkState.DOWN
    assert prober.watched == {"replica1": KNOCK_EVERY, "replica2": KNOCK_EVERY}
    requests = len(prober.requests)
    prober.reachable["replica1"] = True
    prober.accept("replica1")                          # a knock connected: probe at once
    step(sup, env, seconds=0.1)
    assert state(sup) is LinkState.CATCHING_UP and ("start", W1) in env["systemd"].calls
    assert len(prober.requests) == requests            # no wait for the next interval
    assert prober.watched == {"replica2": KNOCK_EVERY}


def test_silent_replica_is_only_probed(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].silent.update(replica1=True, replica2=True)   # no answer, not refused
    step(sup, env, n=3)
    assert env["prober"].watched == {}


def test_only_the_first_minutes_of_refusals_are_knocked_on(tmp_path):
    sup, env = make(tmp_path)                          # probe.interval 2s
    step(sup, env, n=2)
    assert env["prober"].watched["replica1"] == KNOCK_EVERY
    env["clock"].advance(KNOCK_FOR)
    step(sup, env, seconds=2.0, n=2)
    assert "replica1" not in env["prober"].watched     # maintenance: the probes will do
    env["prober"].silent["replica1"] = True            # the host reboots: no answer at all
    step(sup, env, seconds=2.0, n=2)
    env["prober"].silent["replica1"] = False           # up again, Cyrus not yet
    step(sup, env, seconds=2.0, n=2)
    assert env["prober"].watched["replica1"] == KNOCK_EVERY


def test_no_knocks_when_probes_come_as_often(tmp_path):
    sup, env = make(tmp_path, interval="100ms")
    step(sup, env, seconds=0.1, n=3)
    assert env["prober"].watched == {}


def test_live_link_is_never_knocked_and_lost_as_before(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    assert state(sup) is LinkState.LIVE
    env["prober"].reachable["replica1"] = False
    step(sup, env, seconds=2.0, n=LOST_AFTER)          # refused, but its worker runs
    assert state(sup) is LinkState.LIVE and "replica1" not in env["prober"].watched
    step(sup, env, seconds=2.0)
    assert state(sup) is LinkState.DOWN
    assert env["prober"].watched["replica1"] == KNOCK_EVERY


def test_held_or_removed_links_are_not_knocked_on(tmp_path):
    sup, env = make(tmp_path)
    step(sup, env, n=2)
    sup.operator.hold("replica1", True)
    step(sup, env)
    assert "replica1" not in env["prober"].watched
    only = {"replica1": sup.config.links["replica1"]}
    sup.reconfigure(dataclasses.replace(sup.config, links=only), sup.imapd)
    assert "replica2" not in env["prober"].watched


def test_due_probes_start_between_ticks_without_a_tick(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable.update(replica1=True, replica2=True)
    step(sup, env, n=4)                          # live, and no probe in flight
    assert state(sup) is LinkState.LIVE
    due = sup.next_probe_due(env["clock"].monotonic())
    env["clock"].mono = due
    requests, summary = len(env["prober"].requests), sup.summary
    calls = list(env["systemd"].calls)
    sup.start_due_probes()
    assert len(env["prober"].requests) == requests + 2            # both came due together
    assert sup.summary == summary and env["systemd"].calls == calls   # no tick ran
    assert sup.next_probe_due(env["clock"].monotonic()) > due


def test_the_loop_waits_for_the_tick_and_starts_probes_on_the_way():
    from supervisor.daemon import TICK, Daemon

    class Clock:
        mono = 100.0

        def monotonic(self):
            return self.mono

    class Selector:
        def select(self, timeout):
            clock.mono += timeout
            return []

    class Sup:
        draining, started = False, []
        lifecycle = type("Lifecycle", (), {"busy": False})()

        def next_probe_due(self, now):
            return (now // 0.3 + 1) * 0.3          # a probe every 0.3 s

        def start_due_probes(self):
            self.started.append(clock.mono)

    clock, sup = Clock(), Sup()
    d = Daemon.__new__(Daemon)
    d.clock = clock
    d._wait(Selector(), sup)
    assert clock.mono >= 100.0 + TICK and len(sup.started) == 3   # 100.2, 100.5, 100.8
