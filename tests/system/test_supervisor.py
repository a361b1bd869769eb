"""The supervisor core against real Cyrus (a master, two replicas) under real systemd."""

from __future__ import annotations

import time

import pytest

from .swlab import Syncwarden, status_line, wait_same

pytestmark = pytest.mark.system

USERS = ("bob", "alice", "carol", "dave", "erin")


@pytest.fixture
def sw(sandbox, cyrus):
    return Syncwarden(sandbox, cyrus)


@pytest.mark.trixie
def test_happy_path_500_messages_reach_both_replicas(sandbox, cyrus, sw):
    # a shutdown file left from an earlier drain would make sync_client exit without work
    stale = cyrus.sync_dir("replica1") + "/shutdown"
    sandbox.run("install", "-d", "-o", "cyrus", "-g", "mail", cyrus.sync_dir("replica1"))
    sandbox.run("touch", stale, user="cyrus")
    sw.setup()
    assert sw.wait_state("replica1", "live") and sw.wait_state("replica2", "live")
    accepted = cyrus.deliver_many(USERS, 100, "happy")
    assert sum(len(v) for v in accepted.values()) == 500
    for replica in ("replica1", "replica2"):
        assert wait_same(cyrus, replica, USERS) == {}, replica   # same UIDs and GUIDs
    assert all(len(cyrus.messages("replica2", u)) == 100 for u in USERS)
    assert sw.wait_state("replica1", "live") and sw.wait_state("replica2", "live")
    assert status_line(sandbox) == "replica1 live, 0 queued; replica2 live, 0 queued"
    entries = sw.transitions("replica1")
    assert [(e["SYNCWARDEN_FROM"], e["SYNCWARDEN_TO"]) for e in entries][:2] == [
        ("down", "catching-up"), ("catching-up", "live")]
    assert entries[0]["SYNCWARDEN_REASON"].startswith("replica answered: lab-replica1 Cyrus sync")
    assert entries[0]["SYSLOG_IDENTIFIER"] == "syncwarden"
    assert entries[0]["_SYSTEMD_UNIT"] == "syncwarden.service"
    # the workers are Cyrus's own client, run by systemd as the cyrus user
    assert len(sw.sync_clients("replica1")) == 1 and len(sw.sync_clients("replica2")) == 1
    user = sandbox.run("systemctl", "show", "-p", "User", "--value",
                       "syncwarden-sync@replica1.service").stdout.strip()
    assert user == "cyrus"
    assert not sandbox.host_path(stale).exists()
    # a reload with a bad config fails, is logged, and the running one kept
    sandbox.sh("cp /etc/syncwarden/syncwarden.yaml /root/good.yaml; "
               "echo 'quarantine: {retry_interval: often}' >> /etc/syncwarden/syncwarden.yaml")
    assert sandbox.systemctl("reload", "syncwarden", check=False).returncode != 0
    assert sandbox.wait_journal("reload rejected, keeping the running configuration: .*"
                                "quarantine.retry_interval: expected a duration",
                                unit="syncwarden.service")
    cyrus.deliver("bob", 3, "after-bad-reload")
    assert wait_same(cyrus, "replica1", ["bob"]) == {}
    assert sw.link("replica1")["state"] == "live"


@pytest.mark.trixie
def test_replica_down_at_start_then_resumes(sandbox, cyrus, sw):
    cyrus.stop("replica1")
    sw.setup()
    assert sw.wait_state("replica2", "live")
    link = sw.link("replica1")
    assert link["state"] == "down" and link["replica"]["reachable"] is False
    assert "replica1 down (unreachable" in status_line(sandbox)
    cyrus.deliver_many(USERS, 20, "while-down")
    assert sw.link("replica1")["backlog"]["entries"] >= 200
    cyrus.start("replica1")
    assert sw.wait_state("replica1", "live", timeout=20)
    assert wait_same(cyrus, "replica1", USERS) == {}
    assert sw.path("replica1")[:2] == [("down", "catching-up"), ("catching-up", "live")]
    assert sw.link("replica1")["backlog"]["entries"] == 0


def test_replica_killed_mid_stream_loses_nothing(sandbox, cyrus, sw):
    sw.setup()
    assert sw.wait_state("replica1", "live")
    # deliveries keep running inside the container while the replica dies and comes back
    sandbox.run("systemd-run", "--unit=lab-deliver", "--quiet", "/usr/bin/python3",
                cyrus.labclient, "deliver", "10024", ",".join(USERS), "120", "stream")
    time.sleep(1.5)
    cyrus.kill("replica1", "KILL")
    assert sw.wait_state("replica1", "down", timeout=15)
    time.sleep(10)
    cyrus.start("replica1")
    sandbox.run("bash", "-c", "while systemctl is-active -q lab-deliver; do sleep 0.2; done",
                timeout=300)
    assert sw.wait_state("replica1", "live", timeout=30)
    assert wait_same(cyrus, "replica1", USERS) == {}
    assert wait_same(cyrus, "replica2", USERS) == {}
    assert sum(len(cyrus.messages("master", u)) for u in USERS) == 600


def test_daemon_sigkill_adopts_running_workers(sandbox, cyrus, sw):
    sw.setup()
    assert sw.wait_state("replica1", "live") and sw.wait_state("replica2", "live")
    before = {link: sw.sync_clients(link) for link in ("replica1", "replica2")}
    old_pid = sw.main_pid()
    sandbox.systemctl("kill", "--signal=KILL", "syncwarden")
    deadline = time.monotonic() + 20
    while sw.main_pid() in (0, old_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sw.main_pid() not in (0, old_pid)          # systemd restarted it
    assert sw.wait_state("replica1", "live") and sw.wait_state("replica2", "live")
    after = {link: sw.sync_clients(link) for link in ("replica1", "replica2")}
    assert after == before and all(len(p) == 1 for p in after.values())   # adopted, not restarted
    reasons = [e["SYNCWARDEN_REASON"] for e in sw.transitions("replica1")]
    assert any(r.startswith("adopted running worker syncwarden-sync@replica1") for r in reasons)
    cyrus.deliver_many(USERS, 5, "after-restart")
    assert wait_same(cyrus, "replica1", USERS) == {}


def test_one_link_outage_does_not_disturb_the_other(sandbox, cyrus, sw):
    sw.setup()
    assert sw.wait_state("replica1", "live") and sw.wait_state("replica2", "live")
    cyrus.stop("replica2")
    assert sw.wait_state("replica2", "down", timeout=15)
    t0 = time.monotonic()
    cyrus.deliver_many(USERS, 20, "one-down")
    assert wait_same(cyrus, "replica1", USERS, timeout=20) == {}
    lag = time.monotonic() - t0
    assert sw.link("replica2")["backlog"]["entries"] >= 200     # replica2 really missed them
    assert [t for t in sw.path("replica1")] == [("down", "catching-up"), ("catching-up", "live")]
    assert sw.link("replica1")["state"] == "live" and lag < 20
    cyrus.start("replica2")
    assert sw.wait_state("replica2", "live", timeout=20)
    assert wait_same(cyrus, "replica2", USERS) == {}


@pytest.mark.trixie
def test_bad_inputs_get_one_line_errors(sandbox, cyrus, sw):
    sw.install()
    # a mistyped key; then a link missing from sync_log_channels: refused, naming both files
    sandbox.write_file("/etc/syncwarden/syncwarden.yaml",
                       "cyrus: {imapd_conf: /srv/cyrlab/master/imapd.conf}\n"
                       "links:\n  replica3: {host: 127.0.0.1, port: 13005}\n"
                       "probe: {intervall: 1s}\n")
    r = sw.cli("check-config", check=False)
    assert r.returncode == 2
    assert "probe.intervall: unknown key (did you mean 'interval'?)" in r.stderr
    sandbox.sh("sed -i 's/intervall/interval/' /etc/syncwarden/syncwarden.yaml")
    r = sw.cli("check-config", check=False)
    assert r.returncode == 2
    assert ("links.replica3: not in sync_log_channels of /srv/cyrlab/master/imapd.conf"
            " (replica1 replica2)") in r.stderr
    assert "/etc/syncwarden/syncwarden.yaml" in r.stderr
    r = sandbox.systemctl("start", "syncwarden", check=False)
    assert r.returncode != 0
    journal = "\n".join(sandbox.journal(unit="syncwarden.service"))
    assert "refusing to start" in journal and "replica3" in journal
    # a replica port that speaks IMAP, not the sync protocol (both files agree on it)
    sandbox.sh("sed -i 's/^replica2_sync_port: 12005/replica2_sync_port: 12143/' "
               "/srv/cyrlab/master/imapd.conf")
    sandbox.write_file("/etc/syncwarden/syncwarden.yaml",
                       "cyrus: {imapd_conf: /srv/cyrlab/master/imapd.conf}\n"
                       "links:\n  replica1: {host: 127.0.0.1, port: 11005}\n"
                       "  replica2: {host: 127.0.0.1, port: 12143}\n"
                       "probe: {interval: 1s, timeout: 1s}\n")
    sandbox.systemctl("reset-failed", "syncwarden", check=False)
    sandbox.systemctl("start", "syncwarden")
    assert sw.wait_state("replica1", "live")
    link = sw.link("replica2")
    assert link["state"] == "down"
    assert "127.0.0.1:12143 is not a Cyrus sync server: banner" in link["replica"]["detail"]
    # a malformed line in the sync log is counted, never fatal, and nothing is lost
    sw.cli("hold", "replica1")
    assert sw.wait_state("replica1", "down")
    cyrus.deliver("bob", 3, "malformed")
    sandbox.sh("printf 'NONSENSE here\\n' >> /srv/cyrlab/master/conf/sync/replica1/log")
    deadline = time.monotonic() + 10
    while sw.link("replica1")["backlog"]["malformed"] != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sw.link("replica1")["backlog"]["malformed"] == 1
    sw.cli("resume", "replica1")
    assert sw.wait_state("replica1", "live")
    assert wait_same(cyrus, "replica1", ["bob"]) == {}


def test_status_when_daemon_is_not_running(sandbox, cyrus, sw):
    sw.install()
    sw.configure()
    r = sw.cli("status", check=False)
    assert r.returncode == 3
    assert r.stdout.startswith("syncwarden daemon is not running")
    before = {x["name"]: x["backlog"]["entries"] for x in sw.status()["links"]}
    cyrus.deliver("bob", 4, "no-daemon")
    doc = sw.status()
    assert doc["daemon"]["running"] is False
    assert {x["name"]: x["backlog"]["entries"] - before[x["name"]] for x in doc["links"]} == {
        "replica1": 8, "replica2": 8}           # APPEND + MAILBOX per message, from the files
