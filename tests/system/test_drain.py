"""Drain on stop and soft failover against real Cyrus under real systemd."""

from __future__ import annotations

import re
import time

import pytest

from .swlab import Syncwarden, check_config, log_lines, wait_same

pytestmark = pytest.mark.system

USERS = ("bob", "alice", "carol", "dave", "erin")
DRAIN_STARTED = "1298f2b758144975a8594738b542a373"
DRAIN_FINISHED = "581662cb1fa54a15a0fc686c70a56e53"
DRAIN_INCOMPLETE = "c11644a4ea7e4edb80dd7a5ec88a19aa"
# A drain's argv for its passes; in the container's own /run, which host_path cannot see.
PASS_FILE = "/run/syncwarden/workers/replica1.pass"


@pytest.fixture
def sw(sandbox, cyrus):
    return Syncwarden(sandbox, cyrus)


def held_backlog(sw, cyrus, per_user: int, link="replica1") -> int:
    """Hold the link and queue per_user messages for every user; returns the log lines."""
    sw.cli("hold", link)
    assert sw.wait_state(link, "down")
    cyrus.deliver_many(USERS, per_user, "queued", sessions=4)
    lines = log_lines(sw.sb, cyrus, link)
    return lines["log"] + lines["log-run"]


@pytest.mark.trixie
def test_stop_drains_a_held_backlog_of_5000(sandbox, cyrus, sw):
    sw.setup()
    assert sw.wait_state("replica1", "live") and sw.wait_state("replica2", "live")
    queued = held_backlog(sw, cyrus, 1000)
    assert queued >= 10_000                                   # APPEND + MAILBOX per message
    t0 = time.monotonic()
    sandbox.systemctl("stop", "cyrus-imapd", "syncwarden", timeout=300)
    took = time.monotonic() - t0
    assert log_lines(sandbox, cyrus, "replica1") == {"log": 0, "log-run": 0}
    assert not sandbox.host_path(cyrus.sync_dir("replica1") + "/log").exists()
    assert not sandbox.host_path(cyrus.sync_dir("replica1") + "/log-run").exists()
    cyrus.start("master")                                     # to read it over IMAP
    assert wait_same(cyrus, "replica1", USERS, timeout=5) == {}
    assert all(len(cyrus.messages("replica1", u)) == 1000 for u in USERS)
    started = sw.journal_messages(message_id=DRAIN_STARTED)
    finished = [e for e in sw.journal_messages(message_id=DRAIN_FINISHED)
                if e["SYNCWARDEN_LINK"] == "replica1"]
    assert any(e["SYNCWARDEN_LINK"] == "replica1" and int(e["SYNCWARDEN_ENTRIES"]) == queued
               for e in started)
    assert len(finished) == 1 and int(finished[0]["SYNCWARDEN_ENTRIES_LEFT"]) == 0
    assert 0 < float(finished[0]["SYNCWARDEN_DURATION"]) < took
    # the passes ran as units, visible in the journal
    assert sandbox.journal(unit="syncwarden-drain@replica1.service")
    # Started without the daemon (no argv left for it: taken back when the drain ended), the
    # unit runs the launcher, which removes a stale shutdown file before sync_client starts
    # (with it, sync_client would unlink it and exit at once, sending nothing).
    chan = cyrus.sync_dir("replica1")
    assert "replica1.pass" not in sandbox.run("ls", "/run/syncwarden/workers").stdout
    cyrus.deliver("bob", 1, "by-hand")
    sandbox.run("install", "-o", "cyrus", "-m", "644", "/dev/null", f"{chan}/shutdown")
    sandbox.systemctl("start", "syncwarden-drain@replica1")
    assert log_lines(sandbox, cyrus, "replica1") == {"log": 0, "log-run": 0}
    assert wait_same(cyrus, "replica1", ["bob"], timeout=5) == {}


def test_stop_with_unreachable_replica_keeps_files_and_reports(sandbox, cyrus, sw):
    sw.setup(drain_timeout="20s")
    assert sw.wait_state("replica1", "live")
    queued = held_backlog(sw, cyrus, 20)
    cyrus.stop("replica1")
    time.sleep(3)                                             # the probe notices
    before = {name: sandbox.host_path(cyrus.sync_dir("replica1") + "/" + name).read_bytes()
              for name in ("log", "log-run")
              if sandbox.host_path(cyrus.sync_dir("replica1") + "/" + name).exists()}
    t0 = time.monotonic()
    sandbox.systemctl("stop", "cyrus-imapd", "syncwarden", timeout=120)
    assert time.monotonic() - t0 < 20 + 5
    after = {name: sandbox.host_path(cyrus.sync_dir("replica1") + "/" + name).read_bytes()
             for name in before}
    assert after == before                                    # untouched
    (entry,) = [e for e in sw.journal_messages(message_id=DRAIN_INCOMPLETE)
                if e["SYNCWARDEN_LINK"] == "replica1"]
    assert int(entry["SYNCWARDEN_ENTRIES_LEFT"]) == queued
    assert cyrus.sync_dir("replica1") in entry["SYNCWARDEN_WHERE"]
    assert "unreachable" in entry["MESSAGE"]
    # the next start, with the replica back, sends everything
    cyrus.start("replica1")
    cyrus.start("master")
    sandbox.systemctl("start", "syncwarden")
    sw.cli("resume", "replica1")
    assert sw.wait_state("replica1", "live", timeout=30)
    assert wait_same(cyrus, "replica1", USERS) == {}


def test_drain_command_holds_until_resume(sandbox, cyrus, sw):
    sw.setup()
    assert sw.wait_state("replica1", "live")
    cyrus.deliver_many(USERS, 50, "before-drain")
    r = sw.cli("drain", "replica1", "--wait", timeout=120)
    assert re.search(r"replica1: drained in [\d.]+s", r.stdout)
    assert sw.link("replica1")["state"] == "down" and sw.link("replica1")["held"] is True
    assert wait_same(cyrus, "replica1", USERS, timeout=5) == {}
    cyrus.deliver("bob", 5, "after-drain")                    # writers still run: it stays queued
    time.sleep(3)
    assert sw.link("replica1")["state"] == "down"
    assert len(cyrus.messages("replica1", "bob")) == 50
    sw.cli("resume", "replica1")
    assert sw.wait_state("replica1", "live")
    assert wait_same(cyrus, "replica1", USERS) == {}


def test_second_sigterm_during_a_pass_loses_nothing(sandbox, cyrus, sw):
    sw.setup()
    assert sw.wait_state("replica1", "live")
    queued = held_backlog(sw, cyrus, 1000)
    sandbox.systemctl("stop", "cyrus-imapd")
    sandbox.systemctl("stop", "--no-block", "syncwarden")
    run = sandbox.host_path(cyrus.sync_dir("replica1") + "/log-run")
    deadline = time.monotonic() + 30
    while not run.exists() and time.monotonic() < deadline:
        time.sleep(0.01)                      # the pass has taken log: sync_client is at work
    assert run.exists()
    # the pass is sync_client exec'd by env from the argv the drain left, not the launcher
    pid = sandbox.run("systemctl", "show", "-p", "MainPID", "--value",
                      "syncwarden-drain@replica1").stdout.strip()
    environ = sandbox.run("cat", f"/proc/{pid}/environ").stdout.split("\0")
    argv = sandbox.run("cat", PASS_FILE).stdout.strip().partition("=")[2]
    assert argv.split()[-4:] == ["-R", "-1", "-n", "replica1"]
    assert f"SYNCWARDEN_PASS={argv}" in environ
    sandbox.systemctl("kill", "--signal=TERM", "syncwarden")   # the second SIGTERM
    sandbox.run("bash", "-c", "while systemctl is-active -q syncwarden; do sleep 0.1; done",
                timeout=60)
    (entry,) = [e for e in sw.journal_messages(message_id=DRAIN_INCOMPLETE)
                if e["SYNCWARDEN_LINK"] == "replica1"]
    assert "aborted by a second stop request" in entry["MESSAGE"]
    lines = log_lines(sandbox, cyrus, "replica1")
    assert lines == {"log": 0, "log-run": queued}             # the interrupted file, whole
    assert int(entry["SYNCWARDEN_ENTRIES_LEFT"]) == queued
    assert "replica1.pass" not in sandbox.run("ls", "/run/syncwarden/workers").stdout
    sandbox.systemctl("start", "cyrus-imapd", "syncwarden")
    sw.cli("resume", "replica1")
    assert sw.wait_state("replica1", "live", timeout=60)
    assert wait_same(cyrus, "replica1", USERS) == {}
    assert all(len(cyrus.messages("replica1", u)) == 1000 for u in USERS)


def spool_message_ids(sandbox, instance: str) -> set[str]:
    """Message-IDs of every message file in an instance's spool, read from the host side."""
    found = set()
    for path in sandbox.host_path(f"/srv/cyrlab/{instance}/spool").rglob("*."):
        if path.name[:-1].isdigit() and path.is_file():
            for line in path.read_bytes().split(b"\r\n"):
                if line.lower().startswith(b"message-id:"):
                    found.add(line.split(b":", 1)[1].strip().decode())
                    break
    return found


def test_poweroff_while_delivering_loses_no_accepted_message(sandbox, cyrus, sw):
    sw.setup()
    assert sw.wait_state("replica1", "live") and sw.wait_state("replica2", "live")
    # The replicas stand for other machines, which stay up while this one shuts down.
    sandbox.write_file("/etc/systemd/system/cyrlab-replica@.service.d/other-host.conf",
                       "[Unit]\nBefore=syncwarden.service\n")
    sandbox.systemctl("daemon-reload")
    sandbox.systemctl("enable", "syncwarden")
    # Delivers until the poweroff, recording every Message-ID the master accepted (250) in a
    # file, flushed and synced one by one: the record that survives the poweroff.
    cyrus.stream(USERS, accepted="/var/lib/lab-accepted.txt")
    time.sleep(3)
    rc = sandbox.poweroff(timeout=120, keep_files=True)
    assert rc == 0
    accepted = sandbox.host_path("/var/lib/lab-accepted.txt").read_text().split()
    assert len(accepted) > 100
    for replica in ("replica1", "replica2"):
        missing = set(accepted) - spool_message_ids(sandbox, replica)
        assert not missing, f"{replica} lacks {len(missing)} of {len(accepted)} accepted messages"
    for replica in ("replica1", "replica2"):
        assert not sandbox.host_path(cyrus.sync_dir(replica) + "/log").exists()
        assert not sandbox.host_path(cyrus.sync_dir(replica) + "/log-run").exists()



@pytest.mark.trixie
def test_failover_refuses_then_drains_verifies_and_demotes(sandbox, cyrus, sw):
    sandbox.write_file("/etc/syncwarden/imap-credentials", "user: cyrus\npassword: adminpw\n",
                       mode=0o600)
    sw.setup(extra=check_config(cyrus, cyrus.replicas))
    assert sw.wait_state("replica1", "live") and sw.wait_state("replica2", "live")
    sw.cli("hold", "replica2")
    cyrus.deliver_many(USERS, 40, "before-failover")
    r = sw.cli("failover", "--yes", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "failover: refused: Cyrus still runs for /srv/cyrlab/master/imapd.conf" in r.stderr
    assert re.search(r"master pid \d+ \(-C /srv/cyrlab/master/imapd.conf; unit"
                     r" cyrus-imapd.service\)", r.stderr)
    assert sw.status()["role"] == "master"
    sandbox.systemctl("stop", "cyrus-imapd")
    r = sw.cli("failover", "--yes", check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "started an IMAP-only Cyrus on 127.0.0.1:10143 to read the master" in r.stdout
    assert not cyrus.wait_port("master", "lmtp", timeout=0)      # no mail was accepted
    assert re.search(r"replica1: drained in [\d.]+s; verified: 5 users, \d+ mailboxes match",
                     r.stdout)
    assert re.search(r"replica2: drained in [\d.]+s; verified:", r.stdout)
    assert sw.status()["role"] == "replica"
    cyrus.start("master")
    assert wait_same(cyrus, "replica2", USERS, timeout=5) == {}   # the held link too
    # a daemon restart afterwards starts no workers
    sandbox.systemctl("restart", "syncwarden")
    time.sleep(4)
    doc = sw.status()
    assert doc["role"] == "replica" and all(x["state"] == "down" for x in doc["links"])
    assert sw.sync_clients("replica1") == [] and sw.sync_clients("replica2") == []
