"""The reconcile core driven tick by tick with a fake clock and fake edges."""

from pathlib import Path

import pytest

from supervisor import config as configmod
from supervisor.cyrus import imapdconf
from supervisor.link.quarantine_store import QuarantineStore
from supervisor.link.reconcile import Edges, LocalState, Reconciler
from supervisor.link.roles import RoleStore
from supervisor.cyrus.probe import LOST_AFTER
from supervisor.link.states import WORKER_STATES, LinkState
from supervisor.systemd.units import UnitStatus
from supervisor.state import Holds

from .fakes import FakeClock, FakeExits, FakeJournal, FakeProber, FakeSystemd, SyncExecutor

W1 = "syncwarden-sync@replica1.service"
W2 = "syncwarden-sync@replica2.service"


def make(tmp_path: Path, role="master", extra="", rivals=None, interval="2s", passes=None):
    cfg = configmod.parse(f"""
role: {role}
cyrus: {{imapd_conf: {tmp_path}/imapd.conf}}
links:
  replica1: {{host: 127.0.0.1, port: 11005}}
  replica2: {{host: 127.0.0.1, port: 12005}}
live: {{max_backlog: 10, max_lag: 30s}}
probe: {{interval: {interval}, timeout: 1s}}
{extra}""")
    imapd = imapdconf.ImapdConf(tmp_path / "imapd.conf", {"configdirectory": str(tmp_path)})
    clock = FakeClock()
    env = dict(clock=clock, systemd=FakeSystemd(), prober=FakeProber(clock),
               journal=FakeJournal(), holds=Holds(tmp_path / "holds.json"), exits=FakeExits())
    sup = Reconciler(cfg, imapd, Edges(env["systemd"], env["prober"], env["journal"], clock,
                                       env["systemd"].log, rivals, SyncExecutor,
                                       exits=env["exits"], passes=passes),
                     LocalState(env["holds"], RoleStore(tmp_path / "role.json"),
                                QuarantineStore(tmp_path / "quarantine"), tmp_path / "users"))
    return sup, env


def step(sup, env, seconds=1.0, n=1):
    for _ in range(n):
        sup.tick()
        env["clock"].advance(seconds)


def state(sup, name="replica1"):
    return sup.links[name].link.state


def test_not_ready_until_every_link_was_probed(tmp_path):
    sup, env = make(tmp_path)
    sup.tick()
    assert not sup.ready and "probing" in sup.summary
    sup.tick()  # probe results arrive
    assert sup.ready
    assert state(sup) is LinkState.DOWN and env["systemd"].calls == []


def test_replica_answering_starts_worker_then_live(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=2)
    assert state(sup) is LinkState.CATCHING_UP
    assert ("start", W1) in env["systemd"].calls
    step(sup, env)
    assert state(sup) is LinkState.LIVE
    assert env["journal"].transitions("replica1") == [("down", "catching-up"),
                                                       ("catching-up", "live")]
    assert state(sup, "replica2") is LinkState.DOWN  # its replica never answered
    assert "replica1 live, 0 queued" in sup.summary
    assert "replica2 down (unreachable" in sup.summary


def test_transition_journal_fields(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=2)
    entry = [e for e in env["journal"].entries if e["ID"] == "state-change"][0]
    assert entry["SYNCWARDEN_LINK"] == "replica1"
    assert entry["SYNCWARDEN_FROM"] == "down" and entry["SYNCWARDEN_TO"] == "catching-up"
    assert "replica answered" in entry["SYNCWARDEN_REASON"]


def test_lost_replica_stops_worker_after_consecutive_failures(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    assert state(sup) is LinkState.LIVE
    env["prober"].reachable["replica1"] = False
    step(sup, env, seconds=2.0, n=LOST_AFTER + 1)
    assert state(sup) is LinkState.DOWN
    assert ("stop", W1) in env["systemd"].calls
    assert not env["systemd"].running(W1)
    env["prober"].reachable["replica1"] = True
    step(sup, env, seconds=2.0, n=2)
    assert state(sup) in WORKER_STATES and env["systemd"].running(W1)


def test_backlog_above_thresholds_is_catching_up(tmp_path):
    sup, env = make(tmp_path)
    (tmp_path / "sync" / "replica1").mkdir(parents=True)
    log = tmp_path / "sync" / "replica1" / "log"
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    assert state(sup) is LinkState.LIVE
    log.write_text("APPEND user.bob\nMAILBOX user.bob\n" * 20)
    step(sup, env)
    assert state(sup) is LinkState.CATCHING_UP
    assert "40 entries queued" in sup.links["replica1"].link.reason
    log.unlink()
    step(sup, env)
    assert state(sup) is LinkState.LIVE


def test_old_entry_means_catching_up_even_when_few(tmp_path):
    sup, env = make(tmp_path)
    (tmp_path / "sync" / "replica1").mkdir(parents=True)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    (tmp_path / "sync" / "replica1" / "log").write_text("APPEND user.bob\n")
    step(sup, env, seconds=31.0)
    step(sup, env)
    assert state(sup) is LinkState.CATCHING_UP


def test_daemon_restart_adopts_running_worker(tmp_path):
    sup, env = make(tmp_path)
    env["systemd"].units[W1] = UnitStatus(W1, "active", "running")
    env["prober"].reachable["replica1"] = True
    sup.tick()
    assert env["systemd"].running(W1)  # not stopped while unclassified
    step(sup, env, n=2)
    assert state(sup) in WORKER_STATES
    assert "adopted running worker" in [e["SYNCWARDEN_REASON"] for e in env["journal"].entries
                                        if e["ID"] == "state-change"][0]
    assert ("start", W1) not in env["systemd"].calls


def test_orphan_worker_of_unreachable_replica_is_stopped(tmp_path):
    sup, env = make(tmp_path)
    env["systemd"].units[W2] = UnitStatus(W2, "active", "running")
    step(sup, env, n=2)
    assert ("stop", W2) in env["systemd"].calls and state(sup, "replica2") is LinkState.DOWN


def test_worker_exit_backs_off_then_restarts(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    env["systemd"].exit(W1, 0)
    step(sup, env, seconds=0.5)
    assert state(sup) is LinkState.DOWN
    assert any(e["ID"] == "worker-exited" for e in env["journal"].entries)
    step(sup, env, seconds=0.5)
    step(sup, env, seconds=0.5, n=2)
    assert state(sup) in WORKER_STATES
    assert env["systemd"].calls.count(("start", W1)) == 2


def test_configuration_exit_status_quarantines(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    env["systemd"].exit(W1, 78, "exit-code")
    step(sup, env, n=5)
    assert state(sup) is LinkState.QUARANTINED
    assert env["systemd"].calls.count(("start", W1)) == 1  # never restarted by itself
    sup.operator.release("replica1")
    step(sup, env, n=2)
    assert state(sup) in WORKER_STATES


def test_hold_and_resume_survive_a_new_supervisor(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    sup.operator.hold("replica1", True)
    step(sup, env)
    assert state(sup) is LinkState.DOWN and not env["systemd"].running(W1)
    sup2, env2 = make(tmp_path)
    env2["prober"].reachable["replica1"] = True
    step(sup2, env2, n=3)
    assert state(sup2) is LinkState.DOWN and "held" in sup2.summary
    sup2.operator.hold("replica1", False)
    step(sup2, env2, n=2)
    assert state(sup2) in WORKER_STATES


def test_replica_role_never_starts_workers(tmp_path):
    sup, env = make(tmp_path, role="replica")
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=5)
    assert sup.ready and state(sup) is LinkState.DOWN
    assert ("start", W1) not in env["systemd"].calls and env["prober"].requests == []


def test_unknown_link_command_names_links(tmp_path):
    sup, _ = make(tmp_path)
    with pytest.raises(KeyError, match="replica1, replica2"):
        sup.operator.hold("nosuch", True)


def test_status_json_contract(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    doc = sup.status()
    assert set(doc) >= {"instance", "role", "version", "links", "quarantine"}
    link = doc["links"][0]
    assert link["name"] == "replica1" and link["state"] == "live" and link["state_code"] == 2
    assert link["replica"] == {"host": "127.0.0.1", "port": 11005, "reachable": True,
                               "detail": "lab Cyrus sync server 3.6.1"}
    assert link["backlog"]["entries"] == 0 and link["backlog"]["log_run"] is False
    assert link["worker"]["unit"] == W1 and link["worker"]["active"] is True
    assert link["since"].endswith("Z")


def test_reload_drops_and_adds_links(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable.update(replica1=True, replica2=True)
    step(sup, env, n=3)
    cfg = configmod.parse(f"""
cyrus: {{imapd_conf: {tmp_path}/imapd.conf}}
links:
  replica1: {{host: 127.0.0.1, port: 11006}}
  replica3: {{host: 127.0.0.1, port: 13005}}
""")
    sup.reconfigure(cfg, sup.imapd)
    assert ("stop", W2) in env["systemd"].calls
    assert set(sup.links) == {"replica1", "replica3"}
    assert "link settings changed" in sup.links["replica1"].link.reason
    step(sup, env)
    assert ("live", "down") in env["journal"].transitions("replica1")  # port changed: reconnect


def test_status_key_changes_exactly_with_the_status_file(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable.update(replica1=True, replica2=True)
    step(sup, env, n=4)
    key, doc = sup.status_key(), sup.status(fresh=False)
    step(sup, env)
    assert sup.status_key() == key and sup.status(fresh=False) == doc    # idle: nothing new
    env["prober"].reachable["replica1"] = False
    step(sup, env, seconds=2.0, n=10)             # live: probed every 10 s
    assert state(sup) is LinkState.DOWN
    assert sup.status_key() != key and sup.status(fresh=False) != doc
