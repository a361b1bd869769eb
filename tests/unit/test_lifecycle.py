"""Seeding, retiring and freezing links, driven tick by tick with a fake clock and fake edges."""

from __future__ import annotations

import json
from pathlib import Path

from supervisor import config as configmod
from supervisor.cyrus import imapdconf
from supervisor.cyrus.writers import OldWriter
from supervisor.link.lifecycle_store import LifecycleStore
from supervisor.link.quarantine_store import QuarantineStore
from supervisor.link.reconcile import Edges, LocalState, Reconciler
from supervisor.link.roles import RoleStore
from supervisor.link.runtime import Blocker
from supervisor.link.states import LinkState
from supervisor.state import Holds

from .fakes import FakeClock, FakeJournal, FakeProber, FakeSystemd, SyncExecutor


LINKS = {"replica1": 11005, "replica2": 12005, "replica3": 13005}
LISTING = "syncwarden-list@replica3.service"


def dump(users=(), shared=(), extra=None) -> bytes:
    """What ctl_mboxlist -d prints (imap/ctl_mboxlist.c), for these mailboxes."""
    doc = {f"user.{u}": {"name": f"user.{u}", "mbtype": "e"} for u in users}
    doc.update({s: {"name": s, "mbtype": "e"} for s in shared})
    doc.update(extra or {})
    return json.dumps(doc).encode()


class Env:
    """One daemon's worth of edges and state on disk; ``restart()`` makes a new daemon on the
    same files and units, as after a SIGKILL."""

    def __init__(self, tmp_path: Path, links=("replica1", "replica2"), checks=None):
        self.tmp = tmp_path
        self.clock = FakeClock()
        self.systemd = FakeSystemd()
        self.journal = FakeJournal()
        self.prober = FakeProber(self.clock)
        self.writers: list = []                    # what old_writers answers
        self.checks = checks if checks is not None else {}
        self.ran: list[tuple[str, list[str]]] = []   # (unit, names) of every seed batch run
        self.fail: dict[str, int] = {}             # name -> failing runs left (exit 1)
        self.inventory = dump(users=[f"u{i:02}" for i in range(20)], shared=["shared.a"])
        for name in LINKS:
            self.prober.reachable[name] = True
        self.sup = self.build(links)

    def config(self, links):
        rows = "".join(f"  {n}: {{host: 127.0.0.1, port: {LINKS[n]}}}\n" for n in links)
        return configmod.parse(f"""
cyrus: {{imapd_conf: {self.tmp}/imapd.conf, sync_client: /usr/lib/cyrus/bin/sync_client}}
links:
{rows}live: {{max_backlog: 10, max_lag: 30s}}
probe: {{interval: 1s, timeout: 1s}}
""", str(self.tmp / "syncwarden.yaml"))

    def imapd(self, links):
        opts = {"configdirectory": str(self.tmp), "sync_log_channels": " ".join(links)}
        for n in links:
            opts[f"{n}_sync_host"] = "127.0.0.1"
            opts[f"{n}_sync_port"] = str(LINKS[n])
        return imapdconf.ImapdConf(self.tmp / "imapd.conf", opts)

    def build(self, links):
        self.links = tuple(links)
        state = self.tmp / "state"
        store = LifecycleStore(state / "lifecycle.json", state / "seed")
        sup = Reconciler(
            self.config(links), self.imapd(links),
            Edges(self.systemd, self.prober, self.journal, self.clock, self.systemd.log,
                  None, SyncExecutor, old_writers=lambda imapd, changed: list(self.writers)),
            LocalState(Holds(state / "holds.json"), RoleStore(state / "role.json"),
                       QuarantineStore(state / "quarantine"), self.tmp / "users",
                       lifecycle=store, listing_dir=self.tmp / "listing",
                       last_check=lambda link: self.checks.get(link)))
        for name in LINKS:
            self.systemd.oneshot[f"syncwarden-list@{name}.service"] = self._lister(name)
            for kind in ("seed", "shared"):
                for n in range(1, 9):
                    unit = f"syncwarden-user@{name}.{kind}{n}.service"
                    self.systemd.oneshot[unit] = self._batch(unit, f"{name}.{kind}{n}")
        return sup

    def _lister(self, name):
        def run():
            (self.tmp / "listing" / f"{name}.mailboxes").write_bytes(self.inventory)
        return run

    def _batch(self, unit, slot):
        def run():
            names = (self.tmp / "users" / slot).read_text().split()
            self.ran.append((unit, names))
            for n in names:
                if self.fail.get(n):
                    self.fail[n] -= 1
                    return 1
            return 0
        return run

    def restart(self, links=None):
        self.sup = self.build(links or self.links)

    def reconfigure(self, links):
        self.links = tuple(links)
        self.sup.reconfigure(self.config(links), self.imapd(links))

    def tick(self, n=1, seconds=1.0):
        for _ in range(n):
            self.sup.tick()
            self.clock.advance(seconds)

    def state(self, name):
        return self.sup.links[name].link.state

    def link(self, name):
        return next(x for x in self.sup.status()["links"] if x["name"] == name)

    def ids(self, mid):
        return [e for e in self.journal.entries if e["ID"] == mid]


def synced_names(env):
    return sorted(n for _, names in env.ran for n in names)


# --- a link added later is never seeded, and never live ------------------------------------

def test_links_of_the_first_start_count_as_seeded_a_later_one_does_not(tmp_path):
    env = Env(tmp_path)
    env.tick(3)
    assert env.state("replica1") is LinkState.LIVE
    assert env.link("replica1")["seeded"] is True
    env.reconfigure(("replica1", "replica2", "replica3"))
    env.tick(5)
    assert env.state("replica3") is LinkState.CATCHING_UP      # the worker takes changes
    link = env.link("replica3")
    assert link["seeded"] is False and link["seed"] is None
    assert "replica never seeded: run `syncwarden seed replica3`" in link["reason"]
    assert "replica3 catching-up, 0 queued, never seeded" in env.sup.summary
    env.restart()                                             # remembered on disk
    env.tick(5)
    assert env.state("replica3") is LinkState.CATCHING_UP
    assert env.state("replica1") is LinkState.LIVE


# --- seeding ----------------------------------------------------------------------------------

def seed_ready(tmp_path, **kw):
    env = Env(tmp_path, **kw)
    env.tick(3)
    env.reconfigure(("replica1", "replica2", "replica3"))
    env.tick(3)
    return env


def test_seed_waits_for_old_writers_then_syncs_users_and_shared_mailboxes_in_parallel(tmp_path):
    env = seed_ready(tmp_path)
    env.writers = [OldWriter(4242, "lmtpd", 1.0, "started by master pid 1")]
    answer = env.sup.lifecycle.seed("replica3", 3)
    assert answer.startswith("replica3: seed started (3 at a time)")
    env.tick(2)
    link = env.link("replica3")
    assert link["seed"]["state"] == "waiting-for-writers"
    assert "lmtpd pid 4242" in link["reason"] and "SIGHUP" in link["reason"]
    assert not any(u == LISTING for _, u in env.systemd.calls)
    env.writers = []
    env.tick(7)                                 # looked at again within WRITER_CHECK (5 s)
    listing = env.systemd.runs[LISTING]
    assert listing["argv"] == ["/usr/lib/cyrus/bin/ctl_mboxlist", "-C",
                               f"{tmp_path}/imapd.conf", "-d"]
    assert listing["user"] == "cyrus"
    env.tick(20)
    assert env.link("replica3")["seed"]["state"] == "done"
    assert synced_names(env) == sorted([f"u{i:02}" for i in range(20)] + ["shared.a"])
    shared = [u for u, names in env.ran if names == ["shared.a"]]
    assert len(shared) == 1 and shared[0].startswith("syncwarden-user@replica3.shared")
    assert {u for u, names in env.ran if "u00" in names} <= {
        f"syncwarden-user@replica3.seed{n}.service" for n in (1, 2, 3)}
    env.tick(2)
    assert env.state("replica3") is LinkState.LIVE
    assert env.link("replica3")["seeded"] is True
    finished = env.ids("seed-finished")[-1]
    assert finished["SYNCWARDEN_RESULT"] == "complete" and finished["SYNCWARDEN_USERS"] == 20
    assert env.ids("seed-started") and env.ids("seed-progress")


def test_a_seeding_link_is_catching_up_throughout_with_progress_in_its_reason(tmp_path):
    env = seed_ready(tmp_path)
    env.sup.lifecycle.seed("replica3", 1)
    seen = set()
    for _ in range(40):
        env.tick()
        seen.add(env.state("replica3"))
        seed = env.link("replica3")["seed"]
        if seed["state"] == "syncing" and 0 < seed["done"] < seed["total"]:
            assert "seeding: " in env.link("replica3")["reason"]
            assert seed["eta_seconds"] is not None
        if seed["state"] == "done":
            break
    assert seen == {LinkState.CATCHING_UP}


def test_reseeding_a_live_link_takes_it_out_of_live_until_done(tmp_path):
    env = Env(tmp_path)
    env.tick(3)
    assert env.state("replica2") is LinkState.LIVE
    env.sup.lifecycle.seed("replica2")
    env.tick()
    assert env.state("replica2") is LinkState.CATCHING_UP
    env.tick(30)
    assert env.state("replica2") is LinkState.LIVE


def test_seed_resumes_after_a_restart_without_starting_over(tmp_path):
    env = seed_ready(tmp_path)
    env.inventory = dump(users=[f"u{i:03}" for i in range(200)])
    env.sup.lifecycle.seed("replica3", 2)
    for _ in range(60):
        env.tick()
        if env.link("replica3")["seed"]["percent"] >= 40:
            break
    before = env.link("replica3")["seed"]["done"]
    assert 0 < before < 200
    # a seed batch "still running" when the daemon dies: it is run again, the rest is not
    runs_before = len(env.ran)
    env.restart()
    env.tick(60)
    assert env.link("replica3")["seed"]["state"] == "done"
    assert env.link("replica3")["seed"]["done"] == 200
    again = [n for _, names in env.ran[runs_before:] for n in names]
    assert len(again) <= 200 - before + 2 * 5                 # at most the running batches twice
    assert len(set(again)) == len(again)
    assert env.state("replica3") is LinkState.LIVE


def test_batches_stop_when_the_replica_goes_and_go_on_when_it_is_back(tmp_path):
    env = seed_ready(tmp_path)
    env.inventory = dump(users=[f"u{i:03}" for i in range(100)])
    lines = []

    def slow():            # a batch that keeps running until the test lets it end
        lines.append("started")
    for n in (1, 2):
        env.systemd.oneshot.pop(f"syncwarden-user@replica3.seed{n}.service")
    env.sup.lifecycle.seed("replica3", 2)
    env.tick(8)
    assert env.systemd.running("syncwarden-user@replica3.seed1.service")
    env.prober.reachable["replica3"] = False
    env.tick(5)
    assert env.state("replica3") is LinkState.DOWN
    assert not env.systemd.running("syncwarden-user@replica3.seed1.service")
    assert ("stop", "syncwarden-user@replica3.seed1.service") in env.systemd.calls
    for n in (1, 2):
        unit = f"syncwarden-user@replica3.seed{n}.service"
        env.systemd.oneshot[unit] = env._batch(unit, f"replica3.seed{n}")
    env.prober.reachable["replica3"] = True
    env.tick(40)
    seed = env.link("replica3")["seed"]
    assert seed["state"] == "done" and seed["done"] == 100 and seed["failed"] == []


def test_a_failing_user_is_retried_alone_and_named_and_a_new_seed_retries_only_it(tmp_path):
    env = seed_ready(tmp_path)
    env.inventory = dump(users=[f"u{i:02}" for i in range(100)], shared=["shared.a"])
    env.fail = {"u07": 99}
    env.sup.lifecycle.seed("replica3", 2)                     # batches of 5 users
    env.tick(60)
    seed = env.link("replica3")["seed"]
    assert seed["state"] == "incomplete" and seed["failed"] == ["u07"]
    assert seed["done"] == 100                                # 99 users and the shared one
    assert "seed incomplete: 1 failed (u07)" in env.link("replica3")["reason"]
    assert [names for _, names in env.ran].count(["u07"]) == 3   # halved down to it, 3 alone
    assert env.state("replica3") is LinkState.CATCHING_UP      # not live: not a full copy
    assert env.ids("seed-finished")[-1]["SYNCWARDEN_RESULT"] == "incomplete"
    env.fail = {}
    runs = len(env.ran)
    assert "retrying the 1 that failed" in env.sup.lifecycle.seed("replica3")
    env.tick(10)
    assert [names for _, names in env.ran[runs:]] == [["u07"]]
    assert env.link("replica3")["seed"]["state"] == "done"
    env.tick(2)
    assert env.state("replica3") is LinkState.LIVE


def test_a_listing_that_fails_is_tried_again_then_reported(tmp_path):
    env = seed_ready(tmp_path)
    env.inventory = b'{"user.bob": {"mbty'                    # cut short
    env.sup.lifecycle.seed("replica3")
    env.tick(40)
    seed = env.link("replica3")["seed"]
    assert seed["state"] == "incomplete"
    assert "could not be listed" in seed["detail"] and "no complete JSON" in seed["detail"]


# --- retiring ---------------------------------------------------------------------------------

def test_retire_refuses_without_another_live_link_with_a_clean_deep_check(tmp_path):
    env = Env(tmp_path)
    env.tick(3)
    try:
        env.sup.lifecycle.retire("replica1")
        raise AssertionError("not refused")
    except ValueError as exc:
        assert "replica2 is live but has no deep check" in str(exc) and "--force" in str(exc)
    env.checks["replica2"] = {"deep": True, "result": "differences", "finished": 2e9}
    try:
        env.sup.lifecycle.retire("replica1")
        raise AssertionError("not refused")
    except ValueError as exc:
        assert "replica2's last deep check found differences" in str(exc)


def test_retire_drains_then_removes_worker_and_backlog_and_says_what_to_edit(tmp_path):
    env = Env(tmp_path, checks={"replica2": {"deep": True, "result": "in-sync",
                                             "finished": 1.0}})
    env.tick(3)
    sync = tmp_path / "sync" / "replica1"
    sync.mkdir(parents=True)
    (sync / "log").write_text("APPEND user.bob\n")
    env.systemd.oneshot["syncwarden-drain@replica1.service"] = lambda: (sync / "log").unlink()
    assert env.sup.lifecycle.retire("replica1") == ("replica1: draining, then removing its"
                                                    " worker and backlog")
    env.tick(40)                       # the worker is given WORKER_FINISH_GRACE to finish
    link = env.link("replica1")
    assert link["retired"]["state"] == "retired" and link["state"] == "down"
    assert not sync.exists()
    assert "set 'sync_log_channels: replica2' and remove replica1_sync_host," \
           " replica1_sync_port" in link["reason"]
    entry = env.ids("link-retired")[-1]
    assert entry["SYNCWARDEN_FORCED"] == 0 and "links.replica1" in entry["MESSAGE"]
    env.tick(10)
    assert env.state("replica1") is LinkState.DOWN
    assert not env.systemd.running("syncwarden-sync@replica1.service")
    assert env.state("replica2") is LinkState.LIVE
    env.restart()
    env.tick(5)
    assert env.state("replica1") is LinkState.DOWN and "retired" in env.link("replica1")["reason"]
    env.reconfigure(("replica2",))
    env.reconfigure(("replica1", "replica2"))                 # the same name again: a new replica
    env.tick(5)
    assert env.link("replica1")["seeded"] is False and env.link("replica1")["retired"] is None


def test_retire_force_says_what_redundancy_is_lost(tmp_path):
    env = Env(tmp_path)
    env.prober.reachable["replica2"] = False
    env.tick(3)
    answer = env.sup.lifecycle.retire("replica1", force=True)
    assert "redundancy lost: replica1 was live; no other replica is live with a clean deep" \
           " check (replica2 is down)" in answer
    env.tick(5)
    assert env.ids("link-retired")[-1]["SYNCWARDEN_FORCED"] == 1


def test_retire_that_cannot_drain_is_abandoned_unless_forced(tmp_path):
    env = Env(tmp_path, checks={"replica2": {"deep": True, "result": "in-sync",
                                             "finished": 1.0}})
    env.tick(3)
    sync = tmp_path / "sync" / "replica1"
    sync.mkdir(parents=True)
    (sync / "log-run").write_text("APPEND user.bob\n")   # the passes never send it
    env.systemd.oneshot["syncwarden-drain@replica1.service"] = lambda: 0
    env.sup.lifecycle.retire("replica1")
    env.tick(45)
    assert env.link("replica1")["retired"] is None
    assert (sync / "log-run").exists()
    assert env.ids("link-retired")[-1]["SYNCWARDEN_RESULT"] == "abandoned"
    assert env.link("replica1")["seeded"] is True


# --- freezing ---------------------------------------------------------------------------------

def test_freeze_drains_holds_runs_the_hook_and_thaws_at_the_deadline(tmp_path):
    env = Env(tmp_path)
    env.tick(3)
    hook = "syncwarden-freeze@replica1.service"
    env.systemd.oneshot[hook] = lambda: 0
    assert env.sup.lifecycle.freeze("replica1", 60, "snapshot --now", None).startswith(
        "replica1: draining, then frozen until ")
    env.tick(3)
    link = env.link("replica1")
    assert link["state"] == "down" and link["freeze"]["state"] == "frozen"
    assert "frozen until" in link["reason"] and "frozen until" in env.sup.summary
    run = env.systemd.runs[hook]
    assert run["argv"] == ["/bin/sh", "-c", "snapshot --now"]
    assert run["dynamic_user"] is True and run["user"] is None
    assert 50 < run["runtime_max"] <= 60
    assert run["env"]["SYNCWARDEN_LINK"] == "replica1"
    env.tick(5)
    assert env.link("replica1")["freeze"]["hook"]["state"] == "exited"
    assert env.ids("freeze-hook")[-1]["SYNCWARDEN_RESULT"] == "success"
    assert not env.systemd.running("syncwarden-sync@replica1.service")
    env.tick(55)
    assert env.link("replica1")["freeze"] is None
    assert env.ids("link-thawed")[-1]["SYNCWARDEN_REASON"].startswith("the deadline")
    env.tick(3)
    assert env.state("replica1") is LinkState.LIVE


def test_a_stop_while_frozen_keeps_the_backlog_and_the_freeze_survives_a_restart(tmp_path):
    env = Env(tmp_path)
    env.tick(3)
    env.sup.lifecycle.freeze("replica1", 600, None, None)
    env.tick(3)
    sync = tmp_path / "sync" / "replica1"
    sync.mkdir(parents=True, exist_ok=True)
    (sync / "log").write_text("APPEND user.bob\n")
    env.sup.drain_all("because syncwarden is stopping")
    assert "replica1" not in env.sup.drains and "replica2" in env.sup.drains
    env.restart()
    env.tick(5)
    assert env.sup.blocker(env.sup.links["replica1"]) is Blocker.FROZEN
    assert env.state("replica1") is LinkState.DOWN and (sync / "log").exists()
    assert not env.systemd.running("syncwarden-sync@replica1.service")
    assert "thawed" in env.sup.lifecycle.thaw("replica1")
    env.tick(3)
    assert env.state("replica1") in (LinkState.CATCHING_UP, LinkState.LIVE)


def test_a_freeze_whose_drain_fails_ends_at_once(tmp_path):
    env = Env(tmp_path)
    env.tick(3)
    sync = tmp_path / "sync" / "replica1"
    sync.mkdir(parents=True)
    (sync / "log-run").write_text("APPEND user.bob\n")   # the passes never send it
    env.systemd.oneshot["syncwarden-drain@replica1.service"] = lambda: 0
    env.sup.lifecycle.freeze("replica1", 600, "x", None)
    env.tick(45)
    assert env.link("replica1")["freeze"] is None
    assert "no known point" in env.ids("link-thawed")[-1]["SYNCWARDEN_REASON"]
    assert "syncwarden-freeze@replica1.service" not in env.systemd.runs


def test_freeze_refusals(tmp_path):
    env = Env(tmp_path)
    env.prober.reachable["replica2"] = False
    env.tick(3)
    for args, words in ((("replica2", 60, None, None), "does not answer"),
                        (("replica1", 0, None, None), "--until must be"),
                        (("replica1", 60, "x", "root"), "never runs as root"),
                        (("replica1", 60, "x", "no-such-user-here"), "no such user")):
        try:
            env.sup.lifecycle.freeze(*args)
            raise AssertionError(f"not refused: {args}")
        except ValueError as exc:
            assert words in str(exc)


def test_the_daemon_ticks_faster_while_seed_batches_run(tmp_path):
    from types import SimpleNamespace

    from supervisor.daemon import TICK, TICK_SEEDING, Daemon

    daemon = Daemon(tmp_path / "x.yaml", journal=FakeJournal())
    sup = SimpleNamespace(links={}, draining=False, lifecycle=SimpleNamespace(busy=False))
    assert daemon._pace(sup) == TICK
    sup.lifecycle.busy = True
    assert daemon._pace(sup) == TICK_SEEDING < TICK
    env = seed_ready(tmp_path)
    env.systemd.oneshot.pop("syncwarden-user@replica3.seed1.service")     # keeps running
    env.sup.lifecycle.seed("replica3", 1)
    env.tick(10)
    assert env.sup.lifecycle.busy


def test_a_batch_running_across_a_restart_is_adopted_and_one_stopped_before_is_run_again(
        tmp_path):
    env = seed_ready(tmp_path)
    env.inventory = dump(users=[f"u{i:02}" for i in range(40)])
    for n in (1, 2):
        env.systemd.oneshot.pop(f"syncwarden-user@replica3.seed{n}.service")   # keep running
    env.sup.lifecycle.seed("replica3", 2)
    env.tick(8)
    s1, s2 = (f"syncwarden-user@replica3.seed{n}.service" for n in (1, 2))
    assert env.systemd.running(s1) and env.systemd.running(s2)
    batch1 = (tmp_path / "users" / "replica3.seed1").read_text().split()
    env.restart()
    env.tick(2)
    env.systemd.exit(s1, 0)                      # ended well while the new daemon watched
    env.tick(2)
    assert env.link("replica3")["seed"]["done"] == len(batch1)
    env.prober.reachable["replica3"] = False     # the replica goes: seed2's batch is stopped
    env.tick(6)
    assert ("stop", s2) in env.systemd.calls and not env.systemd.running(s2)
    for n in (1, 2):
        unit = f"syncwarden-user@replica3.seed{n}.service"
        env.systemd.oneshot[unit] = env._batch(unit, f"replica3.seed{n}")
    env.prober.reachable["replica3"] = True
    env.tick(30)
    seed = env.link("replica3")["seed"]
    assert seed["state"] == "done" and seed["done"] == 40
    rerun = [n for _, names in env.ran for n in names]
    assert not set(batch1) & set(rerun)          # the adopted batch was not run again
    assert sorted(rerun + batch1) == [f"u{i:02}" for i in range(40)]


def test_monitoring_takes_a_frozen_or_retired_link_for_down_on_purpose():
    from supervisor.exits import NAGIOS_CRITICAL, NAGIOS_OK, NAGIOS_WARNING
    from supervisor.monitor import verdict

    def link(name, state, **kw):
        return {"name": name, "state": state, "reason": "r", "held": False, "enabled": True,
                "quarantined": 0, "backlog": {"entries": 9, "oldest_age_seconds": 5.0}, **kw}
    live = link("replica1", "live")
    frozen = link("replica2", "down", freeze={"state": "frozen", "until": "..."})
    retired = link("replica3", "down", retired={"state": "retired"})
    never = link("replica4", "catching-up", seeded=False)
    assert verdict.level({"role": "master", "links": [live, frozen, retired]}) == NAGIOS_OK
    assert verdict.level({"role": "master", "links": [live, never]}) == NAGIOS_WARNING
    assert verdict.level({"role": "master",
                          "links": [live, link("replica2", "down")]}) == NAGIOS_CRITICAL


def test_a_d_bus_refusal_during_a_seed_step_is_logged_and_tried_again(tmp_path):
    env = seed_ready(tmp_path)
    env.sup.lifecycle.seed("replica3", 1)
    real = env.systemd.run
    calls = []

    def refuse(unit, argv, **kw):
        calls.append(unit)
        if len(calls) == 1:
            raise RuntimeError("org.freedesktop.DBus.Error.NoReply")
        return real(unit, argv, **kw)
    env.systemd.run = refuse
    env.tick(30)
    assert len(calls) >= 2 and env.link("replica3")["seed"]["state"] == "done"
