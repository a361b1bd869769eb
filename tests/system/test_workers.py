"""A worker's session with the replica, and stopping, against real Cyrus under real systemd:
`live` is earned, a refused login is named and does not hold up a stop, a fresh install stops at
once, and failures logged while the daemon was down are read when it starts."""

from __future__ import annotations

import time

import pytest

from .swlab import Syncwarden, log_lines, wait_same

pytestmark = pytest.mark.system

USERS = ("bob", "alice", "carol", "dave", "erin")
DRAIN_FINISHED = "581662cb1fa54a15a0fc686c70a56e53"
DRAIN_INCOMPLETE = "c11644a4ea7e4edb80dd7a5ec88a19aa"
QUARANTINED = "45c01d22db55461db7e54216c2522d47"
REFUSED = "replica refused the sync login: authentication failure"


@pytest.fixture
def sw(sandbox, cyrus):
    return Syncwarden(sandbox, cyrus)


def set_sync_password(sandbox, cyrus, link: str, password: str) -> None:
    conf = sandbox.host_path(cyrus.master_conf)
    lines = [f"{link}_sync_password: {password}" if x.startswith(f"{link}_sync_password:")
             else x for x in conf.read_text().splitlines()]
    conf.write_text("\n".join(lines) + "\n")


def stop_timed(sandbox, *units) -> float:
    t0 = time.monotonic()
    sandbox.systemctl("stop", *units, timeout=300)
    return time.monotonic() - t0


@pytest.mark.cyrus(replicas=("replica1",))
def test_wrong_sync_password_is_never_live_names_the_cause_and_does_not_hold_up_a_stop(
        sandbox, cyrus, sw):
    set_sync_password(sandbox, cyrus, "replica1", "wrong")
    sw.setup(drain_timeout="120s")
    deadline, states, reason = time.monotonic() + 15, set(), ""
    while time.monotonic() < deadline:          # the replica answers probes all along
        link = sw.link("replica1")
        states.add(link["state"])
        if REFUSED in link["reason"]:
            reason = link["reason"]
        time.sleep(0.3)
    assert "live" not in states and reason, (states, reason)
    assert sw.link("replica1")["replica"]["reachable"] is True
    # a stop: the drain's pass is refused too, and it gives up at once, keeping the entries
    cyrus.deliver_many(USERS, 5, "refused")
    queued = sum(log_lines(sandbox, cyrus, "replica1").values())
    assert queued >= 50
    took = stop_timed(sandbox, "cyrus-imapd", "syncwarden")
    print(f"stop with a refused login took {took:.1f}s")
    assert took < 60, f"the stop took {took:.1f}s"
    (entry,) = [e for e in sw.journal_messages(message_id=DRAIN_INCOMPLETE)
                if e["SYNCWARDEN_LINK"] == "replica1"]
    assert REFUSED in entry["MESSAGE"] and "more passes cannot fix that" in entry["MESSAGE"]
    assert sum(log_lines(sandbox, cyrus, "replica1").values()) == queued   # still on disk
    # fixed: the next start sends everything and earns live
    set_sync_password(sandbox, cyrus, "replica1", "replpw")
    sandbox.systemctl("start", "cyrus-imapd", "syncwarden")
    assert sw.wait_state("replica1", "live", timeout=60)
    assert wait_same(cyrus, "replica1", USERS) == {}
    assert sw.link("replica1")["worker"]["session"] == "logged in, pass completed"


@pytest.mark.cyrus(users=(), replicas=("replica1",))
def test_fresh_install_stops_at_once_with_nothing_to_send(sandbox, cyrus, sw):
    sw.setup(drain_timeout="120s")
    assert sw.wait_state("replica1", "live")    # earned by the worker's login: nothing queued
    assert not sandbox.host_path(cyrus.sync_dir("replica1")).exists()
    took = stop_timed(sandbox, "syncwarden")
    print(f"stop of a fresh install took {took:.1f}s")
    assert took < 30, f"the stop took {took:.1f}s"
    (entry,) = [e for e in sw.journal_messages(message_id=DRAIN_FINISHED)
                if e["SYNCWARDEN_LINK"] == "replica1"]
    assert "nothing to send" in entry["MESSAGE"]
    assert not sandbox.host_path(cyrus.sync_dir("replica1")).exists()
    worker = sandbox.run("systemctl", "is-active", "syncwarden-sync@replica1.service",
                         check=False).stdout.strip()
    assert worker == "inactive"


Q_USERS = tuple(f"u{i:02d}" for i in range(1, 11))
BROKEN = "u05"


@pytest.mark.cyrus(users=Q_USERS, replicas=("replica1",))
def test_failures_logged_while_the_daemon_was_down_are_read_at_start(sandbox, cyrus, sw):
    sw.setup()
    assert sw.wait_state("replica1", "live")
    cyrus.deliver_many(Q_USERS, 1, "before")
    assert wait_same(cyrus, "replica1", Q_USERS) == {}
    assert sandbox.host_path("/var/lib/syncwarden/journal-cursor").exists()
    # SIGKILL, and no restart: the worker runs on, unsupervised
    sandbox.systemctl("kill", "--signal=KILL", "syncwarden")
    sandbox.systemctl("stop", "syncwarden")
    assert sw.sync_clients("replica1")
    sandbox.run("chmod", "000", cyrus.mbpath("replica1", f"user.{BROKEN}"))
    cyrus.deliver_many(Q_USERS, 3, "while-down")
    assert sandbox.wait_journal("bailing out", unit="syncwarden-sync@replica1.service")
    sandbox.systemctl("start", "syncwarden")
    replayed = sandbox.wait_journal(r"reading \d+ worker journal entries written since the"
                                    " daemon last ran", unit="syncwarden.service")
    assert replayed
    deadline = time.monotonic() + 60
    while not sw.status().get("quarantine") and time.monotonic() < deadline:
        time.sleep(0.3)
    assert [q["user"] for q in sw.status()["quarantine"]] == [BROKEN]
    assert [e["SYNCWARDEN_USER"] for e in sw.journal_messages(message_id=QUARANTINED)] == [BROKEN]
    others = tuple(u for u in Q_USERS if u != BROKEN)
    assert wait_same(cyrus, "replica1", others, timeout=60) == {}
