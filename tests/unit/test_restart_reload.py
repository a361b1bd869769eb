"""A restart that keeps replicating, and a reload that says whether it worked.

The daemon's main loop in a thread, with a fake replica that answers like sync_server, fake
systemd units and the real control socket.
"""

import grp
import os
import threading

import pytest

from supervisor.commands.cli import main
from supervisor.control import request
from supervisor.daemon import Daemon
from supervisor.link.states import LinkState
from supervisor.paths import Instance
from supervisor.systemd.notify import Notifier

from .fakes import FakeJournal, FakeJournalFiles, FakeSystemd
from .test_core import W1, make, state, step
from .test_daemon import IMAPD, wait_for
from .test_drain import D1, LINES, one_pass, sync_dir
from .test_isolation import U1, entries, live_link, spin
from .test_probe import Server, sync_server


def config_text(tmp_path, port, extra=""):
    return (f"cyrus: {{imapd_conf: {tmp_path}/imapd.conf}}\n"
            f"links: {{replica1: {{host: 127.0.0.1, port: {port}}}}}\n"
            f"probe: {{interval: 100ms, timeout: 1s}}\n{extra}")


@pytest.fixture
def live_daemon(tmp_path, request):
    """A daemon whose one link replicates: its replica answers, its worker runs.
    (Indirect parameter: a replacement for the sync_log_channels line of imapd.conf.)"""
    replica = Server(sync_server)
    imapd = IMAPD.format(d=tmp_path, port=replica.port)
    channels = getattr(request, "param", None)
    if channels:
        imapd = imapd.replace("sync_log_channels: replica1", channels)
    (tmp_path / "imapd.conf").write_text(imapd)
    cfg = tmp_path / "syncwarden.yaml"
    cfg.write_text(config_text(tmp_path, replica.port))
    systemd, journal = FakeSystemd(), FakeJournal()
    d = Daemon(cfg, systemd_factory=lambda: systemd, journal=journal,
               notifier=Notifier(notifier=type("N", (), {"notify": lambda *a: None})()),
               instance=Instance(root=tmp_path), journal_reader=FakeJournalFiles().reader,
               rival_scan=lambda conf, links: [])
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", d.run()), daemon=True)
    t.start()
    try:
        # catching-up: the fake worker's login line is not in the daemon's journal reader
        assert wait_for(lambda: systemd.running(W1))
        yield d, systemd, journal, result, cfg, replica
    finally:
        d.request_stop()
        t.join(5)
        replica.close()


def stop(d, result):
    d.request_stop()
    assert wait_for(lambda: "rc" in result) and result["rc"] == 0


def ids(journal):
    return [e["ID"] for e in journal.entries]


# --- item 3: restart without a drain ----------------------------------------------------------

def test_a_restart_leaves_the_worker_running_and_drains_nothing(live_daemon):
    d, systemd, journal, result, _, _ = live_daemon
    calls = len(systemd.calls)
    systemd.own_job = "restart"             # systemctl restart: the job while we stop
    stop(d, result)
    assert systemd.running(W1)
    assert systemd.calls[calls:] == []      # not killed, not stopped, no drain pass
    assert "drain-started" not in ids(journal)
    (stopped,) = [e for e in journal.entries if e["ID"] == "daemon-stopped"]
    assert stopped["MESSAGE"] == "syncwarden stopped for a restart, 1 worker(s) left running"


@pytest.mark.parametrize("job", ["stop", "", OSError("no bus")])
def test_a_stop_a_shutdown_or_an_unknown_job_drains(live_daemon, job):
    d, systemd, journal, result, _, _ = live_daemon
    systemd.own_job = job
    stop(d, result)
    assert "drain-started" in ids(journal) and "drain-finished" in ids(journal)
    assert ("kill", W1) in systemd.calls and not systemd.running(W1)


def test_a_restart_ends_an_operators_drain_and_keeps_the_link_held(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES * 5)
    sup.operator.drain("replica1")
    step(sup, env)
    sup.drains.abort_all("interrupted by a restart of syncwarden; drain again")
    step(sup, env)
    assert not sup.draining and state(sup) is LinkState.DOWN
    assert "replica1" in env["holds"] and (d / "log").exists()
    (entry,) = [e for e in env["journal"].entries if e["ID"] == "drain-incomplete"]
    assert "interrupted by a restart" in entry["MESSAGE"]


# --- item 4: reload you can trust -----------------------------------------------------------

def test_reload_over_the_socket_answers_the_outcome(live_daemon, tmp_path, capsys):
    d, systemd, journal, result, cfg, replica = live_daemon
    good = cfg.read_text()
    cfg.write_text(good.replace(f"port: {replica.port}", "port: nope"))
    answer = request("reload", path=d.socket_path)
    assert answer["ok"] is False
    assert "reload rejected, the running configuration stays" in answer["error"]
    assert "links.replica1.port: expected an integer 1-65535, got 'nope'" in answer["error"]
    # what ExecReload= runs: exit 1, the reason on stderr (systemctl reload fails with it)
    assert main(["--socket", str(d.socket_path), "reload"]) == 1
    assert "links.replica1.port: expected an integer" in capsys.readouterr().err
    assert systemd.running(W1) and "rc" not in result       # the running config stays
    cfg.write_text(good.replace("timeout: 1s", "timeout: 2s"))
    assert main(["--socket", str(d.socket_path), "reload"]) == 0
    assert "configuration reloaded from" in capsys.readouterr().out
    assert systemd.running(W1) and ("stop", W1) not in systemd.calls


def test_reload_applies_control_group_to_the_socket_and_the_status_file(live_daemon):
    d, systemd, journal, result, cfg, _ = live_daemon
    other = next(g for g in ("daemon", "nogroup", "users", "mail") if _group(g) is not None)
    assert os.stat(d.socket_path).st_gid == grp.getgrnam("adm").gr_gid
    cfg.write_text(cfg.read_text() + f"control: {{group: {other}}}\n")
    assert request("reload", path=d.socket_path)["ok"]
    gid = grp.getgrnam(other).gr_gid
    assert os.stat(d.socket_path).st_gid == gid
    assert wait_for(lambda: os.stat(d.status_path).st_gid == gid)
    assert d.control.denied == f"permission denied: you are not root or in group {other}"


def _group(name):
    try:
        return grp.getgrnam(name)
    except KeyError:
        return None


def reload(sup, tmp_path, extra=""):
    """make()'s configuration again (with ``extra``), as a reload applies it."""
    fresh, _ = make(tmp_path / "fresh", extra=extra)
    sup.reconfigure(fresh.config, sup.imapd)


def test_a_bisection_in_progress_survives_a_reload(tmp_path):
    sup, env, d = live_link(tmp_path)
    users = ["u%02d" % i for i in range(8)]
    (d / "log-run").write_bytes(entries(*users))
    tried = []

    def user_sync():
        listed = (tmp_path / "users" / "replica1").read_text().split()
        tried.append(listed)
        return 1 if "u05" in listed else 0
    env["systemd"].oneshot[U1] = user_sync
    for _ in range(2):
        spin(sup, 1)
        step(sup, env)
    step(sup, env, n=2)
    assert sup.links["replica1"].quarantine.busy and tried      # bisecting
    job = sup.links["replica1"].quarantine.job
    reload(sup, tmp_path, extra="quarantine: {retry_interval: 20m}")
    assert sup.links["replica1"].quarantine.job is job
    assert sup.links["replica1"].quarantine.retry_interval == 1200
    step(sup, env, n=12)
    assert [q["user"] for q in sup.status()["quarantine"]] == ["u05"]
    assert tried[0] == users                # one bisection, not started afresh


def test_a_retry_in_progress_survives_a_reload(tmp_path):
    sup, env, d = live_link(tmp_path)
    sup.local.store.add("replica1", "alice", "IOERROR", 0.0, 600)
    sup.local.store.append("replica1", {"alice": [b"APPEND user.alice"]})
    q = sup.links["replica1"].quarantine
    sup.operator.quarantine("retry", "alice", None)
    step(sup, env)
    assert q.retrying == "alice" and env["systemd"].running(U1)   # the user sync runs
    reload(sup, tmp_path)
    assert sup.links["replica1"].quarantine is q and q.retrying == "alice"
    env["systemd"].exit(U1, 0)
    step(sup, env)
    assert sup.status()["quarantine"] == []
    assert [e for e in env["journal"].entries if e["ID"] == "user-released"]


def test_a_drain_in_progress_survives_a_reload(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES * 3)
    env["systemd"].oneshot[D1] = one_pass(d)
    sup.operator.drain("replica1")
    step(sup, env)
    reload(sup, tmp_path, extra="drain: {timeout: 5m}")
    assert "replica1" in sup.drains
    env["systemd"].stop(W1)
    step(sup, env, n=4)
    assert not (d / "log").exists() and state(sup) is LinkState.DOWN
    (done,) = [e for e in env["journal"].entries if e["ID"] == "drain-finished"]
    assert "drain interrupted" not in sup.links["replica1"].link.reason


def test_a_link_removed_while_draining_does_not_hold_up_a_stop(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES)
    sup.operator.drain("replica1")
    step(sup, env)
    from supervisor import config as configmod
    cfg = configmod.replace(sup.config, links={"replica2": sup.config.links["replica2"]})
    sup.reconfigure(cfg, sup.imapd)
    assert not sup.draining and "replica1" not in sup.links
    (entry,) = [e for e in env["journal"].entries if e["ID"] == "drain-incomplete"]
    assert "removed from the configuration" in entry["MESSAGE"]
    assert entry["SYNCWARDEN_ENTRIES_LEFT"] == 2 and not (d / "shutdown").exists()


def test_a_moved_configdirectory_is_followed_on_reload(tmp_path):
    from supervisor.cyrus import imapdconf
    sup, env = make(tmp_path)
    step(sup, env, n=2)
    moved = tmp_path / "moved"
    (moved / "sync" / "replica1").mkdir(parents=True)
    (moved / "sync" / "replica1" / "log").write_text(LINES * 2)
    imapd = imapdconf.ImapdConf(tmp_path / "imapd.conf", {"configdirectory": str(moved)})
    sup.reconfigure(sup.config, imapd)
    step(sup, env)
    assert sup.status()["links"][0]["backlog"]["entries"] == 4


# --- item 8: reasons that stay true -----------------------------------------------------------

def test_a_link_added_by_reload_says_its_replica_is_unreachable(tmp_path):
    from supervisor import config as configmod
    sup, env = make(tmp_path)
    one = configmod.replace(sup.config, links={"replica1": sup.config.links["replica1"]})
    sup.reconfigure(one, sup.imapd)
    step(sup, env, n=3)
    sup.reconfigure(make(tmp_path / "x")[0].config, sup.imapd)     # replica2 comes back
    assert sup.links["replica2"].link.reason == "added by a reload"
    step(sup, env, n=3)
    assert state(sup, "replica2") is LinkState.DOWN
    reason = sup.links["replica2"].link.reason
    assert reason.startswith("replica unreachable: replica2: Connection refused"), reason
    assert "daemon started" not in str(sup.status())


def test_a_resumed_link_whose_replica_is_gone_stops_saying_held(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    sup.operator.hold("replica1", True)
    step(sup, env)
    assert sup.links["replica1"].link.reason == "held by operator"
    env["prober"].reachable["replica1"] = False
    step(sup, env, seconds=2, n=7)
    assert sup.links["replica1"].reachable is False
    assert sup.links["replica1"].link.reason == "held by operator"   # still true
    sup.operator.hold("replica1", False)
    step(sup, env, seconds=2, n=2)
    assert state(sup) is LinkState.DOWN
    assert sup.links["replica1"].link.reason.startswith("replica unreachable:")
    assert env["journal"].transitions("replica1")[-1] == ("live", "down")   # the hold's


# --- item 5: a channel nothing reads, in status -------------------------------------------------

@pytest.mark.parametrize("live_daemon", ["sync_log_channels: replica1 backup"], indirect=True)
def test_status_lists_a_channel_nothing_reads_with_its_backlog(live_daemon, tmp_path):
    d, systemd, journal, result, cfg, _ = live_daemon
    (tmp_path / "sync" / "backup").mkdir(parents=True)
    (tmp_path / "sync" / "backup" / "log").write_text("APPEND user.bob\n" * 7)
    doc = request("status", path=d.socket_path)["result"]
    (stray,) = doc["unsupervised_channels"]
    assert stray["channel"] == "backup" and stray["backlog"]["entries"] == 7
    assert stray["log"] == f"{tmp_path}/sync/backup/log"
    # once a link supervises it, a reload takes it off the list
    (tmp_path / "imapd.conf").write_text((tmp_path / "imapd.conf").read_text()
                                         + "backup_sync_host: 127.0.0.1\n"
                                         "backup_sync_port: 1\n")
    cfg.write_text(cfg.read_text().replace("links: {replica1:", "links: {backup: {host:"
                                           " 127.0.0.1, port: 1}, replica1:"))
    answer = request("reload", path=d.socket_path)
    assert answer["ok"] and "added: backup" in answer["result"], answer
    assert request("status", path=d.socket_path)["result"]["unsupervised_channels"] == []
    (reloaded,) = [e for e in journal.entries if e["ID"] == "config-reloaded"]
    assert "added: backup" in reloaded["MESSAGE"]
