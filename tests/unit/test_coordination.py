"""Coordination through etcd (issue 16): config, the master key as role authority, the
reconcile tick honouring it, the registry, and a switchover, against an in-memory etcd."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import config as configmod
from supervisor.config import ConfigError
from supervisor.coord import fleet
from supervisor.coord.authority import Authority
from supervisor.coord.etcd import EtcdError
from supervisor.coord.keys import Keys, decode
from supervisor.coord.switchover import SwitchoverDriver
from supervisor.cyrus import imapdconf
from supervisor.link.reconcile import Edges, LocalState, Reconciler
from supervisor.link.quarantine_store import QuarantineStore
from supervisor.link.roles import RoleStore
from supervisor.link.runtime import Blocker
from supervisor.state import Holds

from .fakeetcd import FakeEtcdStore
from .fakes import FakeClock, FakeJournal, FakeProber, FakeSystemd, SyncExecutor

REPO = Path(__file__).resolve().parents[2]
LINKS = "links: {r1: {host: h, port: 1}}\n"
KEYS = Keys("/syncwarden", "mail1")


# --- config ---------------------------------------------------------------------------------
def test_without_coordination_nothing_of_it_is_loaded():
    """Without ``coordination:`` the daemon decides alone, as before: no setting, and neither
    the etcd client nor the coordination thread is even imported."""
    assert configmod.parse(LINKS).coordination is None
    code = ("import sys; from supervisor import daemon, config;"
            f" config.parse({LINKS!r});"
            " print(sorted(m for m in sys.modules if m.startswith('supervisor.coord')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "['supervisor.coord', 'supervisor.coord.settings']"


def test_coordination_parses_into_settings():
    c = configmod.parse(LINKS + "coordination: {etcd: {endpoints: ['https://10.0.0.5:2379/'],"
                        " prefix: /sw/, ca: /etc/ssl/ca.pem, cert: /c.pem, key: /k.pem},"
                        " pair: mail1, name: imap-a, ttl: 20s}").coordination
    assert c.etcd.endpoints == ("https://10.0.0.5:2379",) and c.etcd.prefix == "/sw"
    assert c.etcd.ca == Path("/etc/ssl/ca.pem") and c.pair == "mail1" and c.name == "imap-a"
    assert c.ttl == 20.0


def test_coordination_problems_all_at_once_with_paths():
    with pytest.raises(ConfigError) as info:
        configmod.parse(LINKS + "coordination: {etcd: {endpoints: [ftp://x], prefix: x,"
                        " cert: /c, timeout: 1h, endpointz: 1}, pair: Mail, name: 'a b',"
                        " ttl: 1s, tll: 3}")
    found = info.value.problems
    assert "coordination.tll: unknown key (did you mean 'ttl'?)" in found
    assert "coordination.etcd.endpointz: unknown key (did you mean 'endpoints'?)" in found
    assert any(p.startswith("coordination.etcd.endpoints[0]: expected http://") for p in found)
    assert any(p.startswith("coordination.etcd.prefix: expected a key prefix") for p in found)
    assert any(p.startswith("coordination.etcd.key: required with the other") for p in found)
    assert any(p.startswith("coordination.etcd.timeout: expected a duration") for p in found)
    assert any(p.startswith("coordination.pair: expected 1-64") for p in found)
    assert any(p.startswith("coordination.name: expected a host name") for p in found)
    assert "coordination.ttl: expected a duration from 5s to 10m, got '1s'" in found
    assert len(found) == 9
    with pytest.raises(ConfigError) as info:
        configmod.parse(LINKS + "coordination: {}")
    assert [p.split(":")[0] for p in info.value.problems] == [
        "coordination.etcd.endpoints", "coordination.pair"]


# --- the master key ---------------------------------------------------------------------------
def authority(store, name, ttl=10):
    return Authority(store.client(), KEYS, name, "default", ttl, FakeJournal(), store.clock)


def key_entries(a):
    return [e for e in a.journal.entries if e["ID"] == "master-key"]


def test_one_of_two_configured_masters_holds_the_key_the_other_never_pushes():
    clock = FakeClock()
    store = FakeEtcdStore(clock)
    a, b = authority(store, "a"), authority(store, "b")
    assert a.step(True).held and a.view.may_push(clock.monotonic(), a.guard)
    vb = b.step(True)
    assert not vb.held and vb.holder == "a" and not vb.may_push(clock.monotonic(), b.guard)
    assert decode(store.value(KEYS.master))["host"] == "a"
    e = key_entries(a)[0]
    assert (e["SYNCWARDEN_PAIR"], e["SYNCWARDEN_HOLDER"], e["SYNCWARDEN_OLD_HOLDER"]) == (
        "mail1", "a", "")
    for _ in range(30):                 # a keeps its lease; b keeps reading it held
        clock.advance(1)
        assert a.step(True).held and not b.step(True).held
    assert len(key_entries(a)) == 1 and key_entries(b) == []    # b's first reading: no change
    clock.advance(11)                   # a is gone (its lease ran out): b takes the key
    assert b.step(True).held
    assert [(e["SYNCWARDEN_OLD_HOLDER"], e["SYNCWARDEN_HOLDER"]) for e in key_entries(b)] == [
        ("a", "b")]


def test_a_replica_never_takes_the_key_and_a_demoted_master_lets_it_go():
    clock = FakeClock()
    store = FakeEtcdStore(clock)
    r, m = authority(store, "r"), authority(store, "m")
    assert not r.step(False).held and store.value(KEYS.master) is None
    assert m.step(True).held
    assert not m.step(False).held and store.value(KEYS.master) is None     # demoted
    assert [e["SYNCWARDEN_HOLDER"] for e in key_entries(m)] == ["m", ""]


def test_etcd_lost_keeps_the_master_until_its_lease_could_run_out_never_later():
    clock = FakeClock()
    store = FakeEtcdStore(clock)
    a = authority(store, "a", ttl=30)
    granted_at = clock.monotonic()
    assert a.step(True).held
    store.down = True
    while a.step(True).may_push(clock.monotonic(), a.guard):
        assert a.view.error and clock.monotonic() < granted_at + 30
        clock.advance(0.5)
    assert clock.monotonic() >= granted_at + 30 - a.guard - 0.5
    store.down = False                  # etcd back before the lease ran out there: kept
    assert a.step(True).may_push(clock.monotonic(), a.guard)


def test_a_master_cut_off_past_its_lease_finds_the_key_taken_and_stays_off():
    clock = FakeClock()
    store = FakeEtcdStore(clock)
    cut: set[str] = set()
    a, b = cuttable(store, "a", cut), cuttable(store, "b", cut)
    a.step(True)
    cut.add("a")
    clock.advance(11)                   # a's lease ran out in etcd
    assert b.step(True).held            # b (configured master too) takes the key
    assert not a.step(True).may_push(clock.monotonic(), a.guard)
    cut.clear()
    assert not a.step(True).held and a.view.holder == "b"


def cuttable(store, name, cut, ttl=10):
    """A daemon whose own way to etcd can be cut (a partition), etcd itself still up."""
    a = authority(store, name, ttl)

    def call(path, body):
        if name in cut:
            raise EtcdError(f"{name}: cut off from etcd")
        return store.call(path, body)

    a.etcd.call = call
    return a


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "tick", "down", "up", "cut-a", "heal-a",
                                           "cut-b", "heal-b", "demote-a", "promote-a"]),
                          st.floats(0.1, 12)), max_size=60))
def test_never_two_daemons_may_push_at_once(script):
    """Whatever happens to etcd and to each daemon's way to it, at no moment may two daemons
    push; and one that may push holds the key in etcd under a live lease."""
    clock = FakeClock()
    store = FakeEtcdStore(clock)
    cut: set[str] = set()
    daemons = {n: cuttable(store, n, cut) for n in "ab"}
    want = {"a": True, "b": True}
    for what, dt in script:
        if what in daemons:
            daemons[what].step(want[what])
        elif what == "tick":
            clock.advance(dt)
        elif what in ("down", "up"):
            store.down = what == "down"
        elif what.startswith(("cut-", "heal-")):
            (cut.add if what.startswith("cut-") else cut.discard)(what[-1])
        else:
            want["a"] = what == "promote-a"
        now = clock.monotonic()
        pushing = [n for n, d in daemons.items() if d.view.may_push(now, d.guard)]
        assert len(pushing) <= 1, pushing
        for n in pushing:
            held = store.value(KEYS.master)
            assert held is not None and decode(held)["host"] == n


# --- the tick -------------------------------------------------------------------------------
class Switch:
    def __init__(self, allowed):
        self.allowed = allowed

    def may_push(self, mono):
        return self.allowed


def make_sup(tmp_path, authority):
    cfg = configmod.parse(f"cyrus: {{imapd_conf: {tmp_path}/imapd.conf}}\n"
                          "links: {replica1: {host: 127.0.0.1, port: 11005}}\n")
    imapd = imapdconf.ImapdConf(tmp_path / "imapd.conf", {"configdirectory": str(tmp_path)})
    clock = FakeClock()
    env = dict(clock=clock, systemd=FakeSystemd(), prober=FakeProber(clock),
               journal=FakeJournal())
    env["prober"].reachable["replica1"] = True
    sup = Reconciler(cfg, imapd, Edges(env["systemd"], env["prober"], env["journal"], clock,
                                       env["systemd"].log, None, SyncExecutor,
                                       authority=authority),
                     LocalState(Holds(tmp_path / "holds.json"), RoleStore(tmp_path / "role"),
                                QuarantineStore(tmp_path / "q"), tmp_path / "users"))
    return sup, env


def test_a_master_without_the_key_starts_no_worker_and_stops_it_when_the_key_goes(tmp_path):
    switch = Switch(False)
    sup, env = make_sup(tmp_path, switch)
    for _ in range(3):
        sup.tick()
        env["clock"].advance(1)
    assert not any(c[0] == "start" for c in env["systemd"].calls)
    assert sup.views[0].blocker is Blocker.AUTHORITY
    assert "not the master key's holder" in sup.summary
    with pytest.raises(ValueError, match="master key"):
        sup.operator.drain("replica1")
    switch.allowed = True
    for _ in range(2):
        sup.tick()
        env["clock"].advance(1)
    assert ("start", "syncwarden-sync@replica1.service") in env["systemd"].calls
    switch.allowed = False
    sup.tick()
    assert env["systemd"].calls[-1] == ("stop", "syncwarden-sync@replica1.service")


# --- registry and fleet status ---------------------------------------------------------------
def test_fleet_status_shows_every_pair_and_marks_stale_entries():
    clock = FakeClock()
    store = FakeEtcdStore(clock)
    for pair, hosts in (("mail1", "ab"), ("mail2", "cd")):
        for i, host in enumerate(hosts):
            a = Authority(store.client(), Keys("/syncwarden", pair), host, "default", 10,
                          FakeJournal(), clock)
            a.step(i == 0, {"instance": "default", "role": "master" if i == 0 else "replica",
                            "links": {"r1": {"state": "live", "host": "x", "entries": 0}}})
    store.kv[Keys("/syncwarden", "mail2").member("d")]["value"] = (
        b'{"role": "replica", "links": {}, "written_at": 1, "ttl": 10}')
    doc = fleet.read(store.client(), "/syncwarden", clock.wall())
    assert sorted(doc["pairs"]) == ["mail1", "mail2"]
    assert doc["pairs"]["mail1"]["master"] == "a" and doc["pairs"]["mail2"]["master"] == "c"
    members = doc["pairs"]["mail2"]["members"]
    assert members["c"]["stale"] is False and members["d"]["stale"] is True
    text = fleet.render(doc)
    assert "mail1" in text and "stale" in text and "r1 live" in text


# --- switchover -------------------------------------------------------------------------------
class FakeOperator:
    def __init__(self, sup):
        self.sup = sup

    def change_role(self, role, by):
        if self.sup.draining:
            raise ValueError("a drain is running")
        self.sup.role.role = role
        self.sup.role.is_master = role == "master"
        self.sup.role.since = self.sup.clock.wall()

    def drain(self, name, hold_after=True, why=""):
        self.sup.draining = True


class FakeDrains:
    def __init__(self):
        self.last = {}

    def abort_all(self, why):
        pass


class FakeRole:
    def __init__(self, role):
        self.role, self.is_master, self.since = role, role == "master", 0.0
        self.store = self

    def load(self):
        from supervisor.link.roles import RoleRecord
        return RoleRecord(self.role, self.since, "test")


class FakeSup:
    def __init__(self, role, clock):
        self.role, self.clock = FakeRole(role), clock
        self.operator, self.drains = FakeOperator(self), FakeDrains()
        self.links, self.draining = {"r1": None}, False


class Node:
    """One daemon: its authority (run by hand, as the thread would) and its driver."""

    def __init__(self, store, name, role, mail=""):
        self.authority = authority(store, name)
        self.sup = FakeSup(role, store.clock)
        self.mail = mail
        self.stopped = []
        self.quiet = False
        self.driver = SwitchoverDriver(name, self, lambda: self.mail, self._stop)

    def _stop(self):
        self.stopped.append("cyrus")
        self.mail = ""

    @property
    def view(self):
        return self.authority.view

    def ask(self, action):
        self.authority.action = action

    def round(self):
        self.authority.step(self.sup.role.is_master)
        self.driver.step(self.sup)


def request(store, frm, to, stop_cyrus=False):
    from supervisor.coord import commands
    return commands.write_request(store.client(), KEYS, frm, to, stop_cyrus, "id-1")


def run(nodes, rounds=8, drained=True):
    for _ in range(rounds):
        for n in nodes:
            n.round()
            if n.sup.draining:             # the drain is over by the next round
                n.sup.draining = False
                n.sup.drains.last = {"r1": {"drained": drained, "entries_left": 0,
                                            "at": "t", "message": "sent"}}


def test_switchover_swaps_the_roles_through_the_key(tmp_path):
    clock = FakeClock()
    store = FakeEtcdStore(clock)
    a, b = Node(store, "a", "master"), Node(store, "b", "replica")
    run([a, b], 2)
    assert a.view.held and not b.view.held
    request(store, "a", "b")
    run([a, b])
    assert b.view.held and b.sup.role.role == "master"
    assert not a.view.held and a.sup.role.role == "replica" and a.view.holder == "b"
    assert decode(store.value(KEYS.switchover))["phase"] == "done"
    assert store.value(KEYS.handover) is None


def test_switchover_refused_while_cyrus_accepts_mail_unless_told_to_stop_it():
    clock = FakeClock()
    store = FakeEtcdStore(clock)
    a, b = Node(store, "a", "master", mail="master[1234]"), Node(store, "b", "replica")
    run([a, b], 2)
    request(store, "a", "b")
    run([a, b])
    doc = decode(store.value(KEYS.switchover))
    assert doc["phase"] == "refused" and "Cyrus accepts mail" in doc["detail"]
    assert a.view.held and a.sup.role.role == "master" and b.sup.role.role == "replica"
    request(store, "a", "b", stop_cyrus=True)
    run([a, b])
    assert a.stopped == ["cyrus"] and b.view.held and a.sup.role.role == "replica"


def test_switchover_interrupted_after_the_release_ends_with_one_master():
    """The old master dies right after the release; the target takes over alone. Or the
    target dies: nobody pushes until it (or another named by switchover --to) takes it."""
    clock = FakeClock()
    store = FakeEtcdStore(clock)
    a, b = Node(store, "a", "master"), Node(store, "b", "replica")
    run([a, b], 2)
    request(store, "a", "b")
    run([a], 4)                           # b is down meanwhile: a drains and releases
    assert decode(store.value(KEYS.switchover))["phase"] == "released"
    assert a.sup.role.role == "replica" and not a.view.held
    a2 = Node(store, "a", "replica")      # a restarted: it stays a replica
    run([a2], 3)
    assert store.value(KEYS.master) is None and not a2.view.held
    run([b, a2], 3)                        # b back: it takes the key
    assert b.view.held and b.sup.role.role == "master" and a2.view.holder == "b"


def test_an_old_switchover_does_not_undo_a_later_promote():
    """a handed over to b; later b is demoted and a promoted by hand: the done request that
    names a as its old master must not demote a again."""
    clock = FakeClock()
    store = FakeEtcdStore(clock)
    a, b = Node(store, "a", "master"), Node(store, "b", "replica")
    run([a, b], 2)
    request(store, "a", "b")
    run([a, b])
    assert b.view.held
    clock.advance(5)
    b.sup.operator.change_role("replica", "demote")
    run([b, a], 2)
    clock.advance(5)
    a.sup.operator.change_role("master", "promote")
    run([a, b], 4)
    assert a.view.held and a.sup.role.role == "master" and b.sup.role.role == "replica"


# --- the daemon ---------------------------------------------------------------------------------
class RealClock:
    import time as _t
    monotonic = staticmethod(_t.monotonic)
    wall = staticmethod(_t.time)


def run_daemon(tmp_path, store, role="master", own_job=""):
    import socket
    import threading

    from supervisor.daemon import Daemon
    from supervisor.paths import Instance
    from supervisor.systemd.journal import Journal
    from supervisor.systemd.notify import Notifier

    from .fakes import FakeJournalFiles

    (tmp_path / "imapd.conf").write_text(
        f"configdirectory: {tmp_path}\nsync_log: on\nsync_log_channels: replica1\n"
        "sync_try_imap: no\nreplica1_sync_host: 127.0.0.1\nreplica1_sync_port: 1\n")
    cfg = tmp_path / "syncwarden.yaml"
    cfg.write_text(f"role: {role}\ncyrus: {{imapd_conf: {tmp_path}/imapd.conf}}\n"
                   "links: {replica1: {host: 127.0.0.1, port: 1}}\n"
                   "probe: {interval: 100ms, timeout: 100ms}\n"
                   "coordination: {etcd: {endpoints: ['http://etcd:2379']}, pair: mail1,"
                   " name: a, ttl: 10s}\n")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(tmp_path / "journal"))
    systemd = FakeSystemd()
    systemd.own_job = own_job
    d = Daemon(cfg, systemd_factory=lambda: systemd, journal=Journal(str(tmp_path / "journal")),
               notifier=Notifier(), instance=Instance(root=tmp_path), clock=RealClock(),
               journal_reader=FakeJournalFiles().reader, rival_scan=lambda conf, links: [],
               etcd=store.client())
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", d.run()), daemon=True)
    t.start()
    return d, t, result


def wait_until(predicate, timeout=5.0):
    import time
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_daemon_takes_the_key_shows_it_and_gives_it_up_when_it_stops(tmp_path):
    store = FakeEtcdStore(RealClock())
    d, t, result = run_daemon(tmp_path, store)
    try:
        wait_until(lambda: store.value(KEYS.master) is not None)
        assert decode(store.value(KEYS.master))["host"] == "a"
        wait_until(lambda: store.value(KEYS.member("a")) is not None)
        entry = decode(store.value(KEYS.member("a")))
        assert entry["role"] == "master" and "replica1" in entry["links"]
        wait_until(lambda: d.status_path.exists() and json.loads(
            d.status_path.read_text()).get("coordination", {}).get("holds_key") is True)
    finally:
        d.request_stop()
        t.join(10)
    assert result["rc"] == 0
    assert store.value(KEYS.master) is None and store.value(KEYS.member("a")) is None


def test_a_restarted_master_keeps_its_key_from_the_first_tick(tmp_path):
    """The key under the last daemon's lease, still alive: the new daemon takes it over (never
    deleting it, so nobody else could take it between), and a restart leaves it in place."""
    store = FakeEtcdStore(RealClock())
    old = authority(store, "a", ttl=10)
    old.step(True)
    created = store.kv[KEYS.master]["create"]
    d, t, result = run_daemon(tmp_path, store, own_job="restart")
    try:
        wait_until(lambda: store.kv.get(KEYS.master, {}).get("lease") not in (None, old.lease))
        assert store.kv[KEYS.master]["create"] == created      # never deleted
    finally:
        d.request_stop()
        t.join(10)
    assert store.kv[KEYS.master]["create"] == created            # a restart keeps it


def test_the_status_table_says_who_holds_the_key():
    from supervisor.commands import render

    doc = {"version": "x", "instance": "default", "role": "master", "links": [],
           "coordination": {"pair": "mail1", "name": "a", "holder": "b", "holds_key": False,
                            "error": None}}
    assert "pair mail1 as a, master key held by b" in render.status_table(doc, now=0)
    doc["coordination"].update(holds_key=True, error="http://etcd:2379: timed out")
    head = render.status_table(doc, now=0).splitlines()[0]
    assert "master key held here (etcd: http://etcd:2379: timed out)" in head
    del doc["coordination"]
    assert "pair" not in render.status_table(doc, now=0)


def test_a_hung_loop_s_registry_entry_is_not_rewritten_so_it_goes_stale():
    from supervisor.coord.service import Coordination
    from supervisor.coord.settings import CoordinationSettings, EtcdSettings

    clock = FakeClock()
    store = FakeEtcdStore(clock)
    c = Coordination(CoordinationSettings(EtcdSettings(("http://etcd:2379",)), "mail1", "a",
                                          ttl=15), "default", FakeJournal(), clock, lambda: None,
                     etcd=store.client())
    c.publish({"role": "master", "links": {}}, clock.monotonic())
    c.authority.step(True, c._fresh_entry())
    first = decode(store.value(KEYS.member("a")))["written_at"]
    clock.advance(6)                       # the loop ticks no more: the thread goes on
    c.authority.step(True, c._fresh_entry())
    assert decode(store.value(KEYS.member("a")))["written_at"] == first
    clock.advance(10)
    c.authority.step(True, c._fresh_entry())
    doc = fleet.read(store.client(), "/syncwarden", clock.wall())
    assert doc["pairs"]["mail1"]["members"]["a"]["stale"] is True
    c.publish({"role": "master", "links": {}}, clock.monotonic())   # it ticks again
    c.authority.step(True, c._fresh_entry())
    doc = fleet.read(store.client(), "/syncwarden", clock.wall())
    assert doc["pairs"]["mail1"]["members"]["a"]["stale"] is False


def test_a_lease_etcd_no_longer_knows_stops_the_pushing_at_once():
    """etcd lost the lease (revoked by hand, say) while this daemon thinks it has time left:
    the first write under it is refused, and the daemon stops pushing then, not at its own
    deadline; the next round takes a new lease and the key again."""
    clock = FakeClock()
    store = FakeEtcdStore(clock)
    a = authority(store, "a")
    a.step(True, {"role": "master"})
    store.lease_revoke({"ID": str(a.lease)})          # the key and the entry go with it
    clock.advance(1)
    v = a.step(True, {"role": "master", "changed": 1})
    assert not v.held and not v.may_push(clock.monotonic(), a.guard)
    assert a.step(True, {"role": "master", "changed": 1}).held
    assert decode(store.value(KEYS.master))["host"] == "a"


def test_one_switchover_at_a_time_but_a_dead_request_is_replaced():
    from supervisor.coord import commands

    clock = FakeClock()
    store = FakeEtcdStore(clock)
    request(store, "a", "b")
    with pytest.raises(commands.Refused, match="in progress"):
        request(store, "a", "b")
    doc = commands.write_request(store.client(), KEYS, "b", "a", False, "id-2")  # b holds it now
    assert decode(store.value(KEYS.switchover))["id"] == doc["id"] == "id-2"


def test_once_drained_for_a_switchover_the_master_pushes_no_more():
    """Between the drains' end and the release no worker starts again (it would still run when
    the target takes the key); a release that cannot be made (etcd down) keeps it so."""
    clock = FakeClock()
    store = FakeEtcdStore(clock)
    a, b = Node(store, "a", "master"), Node(store, "b", "replica")
    run([a, b], 2)
    request(store, "a", "b")
    a.round()                                  # stops Cyrus (none runs), starts the drains
    a.round()
    a.sup.draining = False
    a.sup.drains.last = {"r1": {"drained": True, "entries_left": 0, "at": "t"}}
    store.down = True
    a.driver.step(a.sup)                       # drained: asks for the release
    assert a.quiet and a.view.held              # still the holder, but quiet
    a.round()
    assert a.quiet
    store.down = False
    run([a, b])
    assert b.view.held and not a.quiet and a.sup.role.role == "replica"


def test_tls_files_that_do_not_load_refuse_the_start(tmp_path):
    from supervisor.configload import ConfigProblem, load_checked

    (tmp_path / "imapd.conf").write_text(
        f"configdirectory: {tmp_path}\nsync_log: on\nsync_log_channels: r1\nsync_try_imap: no\n"
        "r1_sync_host: h\nr1_sync_port: 1\n")
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cyrus: {{imapd_conf: {tmp_path}/imapd.conf, sync_client: /bin/true}}\n"
                   "links: {r1: {host: h, port: 1}}\n"
                   "coordination: {etcd: {endpoints: ['https://e:2379'], ca: "
                   f"{tmp_path}/ca.pem, cert: {tmp_path}/none.pem, key: {tmp_path}/k.pem}},"
                   " pair: p}\n")
    with pytest.raises(ConfigProblem) as info:
        load_checked(cfg)
    text = str(info.value)
    assert f"coordination.etcd.cert: {tmp_path}/none.pem is not a readable file" in text
    assert f"coordination.etcd.key: {tmp_path}/k.pem is not a readable file" in text
    (tmp_path / "none.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    with pytest.raises(ConfigProblem, match="coordination.etcd: the TLS files do not load"):
        load_checked(cfg)


# --- the wire -----------------------------------------------------------------------------------
def serve_once(answers):
    """A one-shot HTTP server on the loopback: each connection gets the next raw answer; the
    requests it read are returned in the list given back."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    seen = []

    def run():
        for answer in answers:
            conn, _ = srv.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                head, _, body = data.partition(b"\r\n\r\n")
                n = int([h for h in head.split(b"\r\n") if h.lower().startswith(
                    b"content-length:")][0].split(b":")[1])
                while len(body) < n:
                    body += conn.recv(4096)
                seen.append((head.split(b"\r\n")[0].decode(), json.loads(body)))
                conn.sendall(answer)
        srv.close()

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1], seen


def test_the_client_speaks_http_1_0_json_to_the_gateway_without_ssl():
    from supervisor.coord.etcd import Etcd
    from supervisor.coord.settings import EtcdSettings

    body = json.dumps({"kvs": [{"key": "L2E=", "value": "dg==", "create_revision": "2",
                                "mod_revision": "3", "lease": "7"}]}).encode()
    port, seen = serve_once([b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body,
                             b"HTTP/1.0 503 Service Unavailable\r\n\r\n{\"error\": \"no leader\"}",
                             b"garbage"])
    e = Etcd(EtcdSettings((f"http://127.0.0.1:{port}",), timeout=2))
    kv = e.get("/a")
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease) == (
        "/a", b"v", 2, 3, 7)
    assert seen[0] == ("POST /v3/kv/range HTTP/1.0", {"key": "L2E="})
    with pytest.raises(EtcdError, match="HTTP 503: no leader"):
        e.get("/a")
    with pytest.raises(EtcdError, match="not an HTTP answer"):
        e.get("/a")


def test_the_etcd_client_does_not_load_ssl_for_http_endpoints():
    code = ("import sys; from supervisor.coord import service, switchover, etcd;"
            " print('ssl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_target_of_a_switchover_keeps_the_key_it_takes(tmp_path):
    """The daemon named by a handover records master, takes the key, and keeps it: the round
    that takes it reads the role as it is now, not as it was before the tick promoted it
    (it did once, and let the key go again at once)."""
    from supervisor.coord.keys import encode

    store = FakeEtcdStore(RealClock())
    c = store.client()
    c.put(KEYS.handover, encode({"from": "b", "to": "a", "position": {}, "at": 1}))
    c.put(KEYS.switchover, encode({"id": "x", "from": "b", "to": "a", "phase": "released",
                                   "released_at": 1}))
    d, t, result = run_daemon(tmp_path, store, role="replica")
    try:
        wait_until(lambda: store.value(KEYS.master) is not None)
        import time
        time.sleep(2.5)                     # a couple of rounds
        assert [what for what, key in store.history if key == KEYS.master] == ["put"]
        assert decode(store.value(KEYS.master))["host"] == "a"
        assert decode(store.value(KEYS.switchover))["phase"] == "done"
    finally:
        d.request_stop()
        t.join(10)


def test_with_the_default_ttl_etcd_down_for_a_minute_does_not_stop_the_master():
    """Issue 16: etcd down for a minute, at the worst moment (just before a renewal was due),
    and the master pushes throughout; it stops only once its lease could have run out."""
    from supervisor.coord.authority import RENEW_EVERY
    from supervisor.coord.settings import CoordinationSettings

    clock = FakeClock()
    store = FakeEtcdStore(clock)
    a = authority(store, "a", ttl=CoordinationSettings.ttl)
    assert a.step(True).held
    clock.advance(RENEW_EVERY - 0.5)            # the next renewal would be due in 0.5 s
    assert a.step(True).may_push(clock.monotonic(), a.guard)
    renewed = a.renewed
    store.down = True
    down_at = clock.monotonic()
    while clock.monotonic() < down_at + 60:
        clock.advance(1)
        assert a.step(True).may_push(clock.monotonic(), a.guard), clock.monotonic() - down_at
    while a.step(True).may_push(clock.monotonic(), a.guard):
        clock.advance(1)
    assert clock.monotonic() <= renewed + CoordinationSettings.ttl - a.guard + 1
    store.down = False
    assert a.step(True).may_push(clock.monotonic(), a.guard)    # etcd back: it pushes again
