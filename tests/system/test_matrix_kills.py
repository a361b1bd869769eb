"""The fault matrix, part 2: syncwarden's own processes SIGKILLed (issue 11).

One container for the module (a master host, two replica hosts, netlab.py), mail delivered all
the time; each scenario ends with every accepted message on both replicas.
"""

from __future__ import annotations

import threading
import time

import pytest

from .matrix import fixtures, wait_for

pytestmark = [pytest.mark.system, pytest.mark.matrix]

REPAIR_ACTION = "731e5034f2ae471c8c0cc739e53ee141"


pair, healthy = fixtures("mxkill")



def test_worker_sigkill(pair):
    with pair.delivering("worker-sigkill") as mail:
        pair.wait_accepted(mail, 40)
        killed = time.time()
        pair.sb.systemctl("kill", "--signal=KILL", "syncwarden-sync@replica1.service")
        mail.recover_s = pair.recovered(mail, killed)
        pair.wait_accepted(mail, 20)
    pair.settle(mail)


def test_daemon_sigkill_during_a_drain(pair):
    sb, sw, lab = pair.sb, pair.sw, pair.lab
    with pair.delivering("daemon-sigkill-drain") as mail:
        sw.cli("hold", "replica1")
        assert sw.wait_state("replica1", "down")
        lab.deliver_many(pair.users, 300, "backlog", sessions=4)   # 3,000 entries to drain
        # stop; SIGKILL the daemon once the drain's one-shot pass runs
        sb.sh("systemctl stop --no-block syncwarden\n"
              "until [ $(systemctl show -P ActiveState syncwarden-drain@replica1) = activating ]\n"
              "do sleep 0.01; done\n"
              "systemctl kill --signal=KILL syncwarden\n"
              "while systemctl is-active -q syncwarden; do sleep 0.1; done", timeout=120)
        sb.systemctl("start", "syncwarden")
        assert sw.link("replica1")["held"] is True         # the hold outlives the daemon
        resumed = time.time()
        sw.cli("resume", "replica1")
        mail.recover_s = pair.recovered(mail, resumed)
        pair.wait_accepted(mail, 20)
    pair.settle(mail)


def test_daemon_sigkill_during_a_retry(pair):
    sb, sw, lab = pair.sb, pair.sw, pair.lab
    box = lab.mbpath("replica1", "user.carol")
    with pair.delivering("daemon-sigkill-retry") as mail:
        pair.wait_accepted(mail, 10)
        sb.run("chmod", "000", box)                        # carol breaks on replica1
        wait_for(lambda: sw.status()["quarantine"], timeout=60)
        assert [q["user"] for q in sw.status()["quarantine"]] == ["carol"]
        pair.wait_accepted(mail, 20)                       # the others flow meanwhile
        sb.run("chmod", "700", box)                        # repaired
        old = sw.main_pid()
        sb.run("touch", "/run/syncwarden/test-crash-at-retry-started")
        retried = time.time()
        sw.cli("quarantine", "retry", "carol")             # the daemon dies right after
        wait_for(lambda: sw.main_pid() not in (0, old))    # restarted by systemd
        wait_for(lambda: not sw.status()["quarantine"], timeout=60)
        mail.recover_s = pair.recovered(mail, retried)
        pair.wait_accepted(mail, 20)
    assert sb.run("test", "-e", "/run/syncwarden/test-crash-at-retry-started",
                  check=False).returncode == 1             # it did die there
    pair.settle(mail)


def test_daemon_sigkill_during_a_repair(pair):
    sb, sw, lab = pair.sb, pair.sw, pair.lab
    with pair.delivering("daemon-sigkill-repair") as mail:
        pair.wait_accepted(mail, 10)
        # mail only the replica has: a folder the repair copies back, message by message (it
        # takes less than the daemon's restart: the repair ends while no daemon runs)
        lab.append("replica1", "alice", "INBOX.Only", 100, "replica-only")
        cursor = sb.journal_cursor()
        result = {}
        repair = threading.Thread(target=lambda: result.update(
            r=sw.cli("repair", "replica1", "--yes", check=False, timeout=600)))
        repair.start()
        wait_for(lambda: any(e.get("SYNCWARDEN_ACTION") == "copy" for e in sb.journal(
            since_cursor=cursor, fields=True) if e.get("MESSAGE_ID") == REPAIR_ACTION), step=0.05)
        old = sw.main_pid()
        sb.systemctl("kill", "--signal=KILL", "syncwarden")
        wait_for(lambda: sw.main_pid() not in (0, old))
        repair.join(600)
        done = time.time()
        r = result["r"]
        assert r.returncode == 0, r.stdout + r.stderr
        assert "replica1: resumed" in r.stdout
        mail.recover_s = pair.recovered(mail, done)
        pair.wait_accepted(mail, 20)
    on_master = lab.messages("master", "alice", "INBOX.Only")
    assert len(on_master) == 100
    assert {g for _, g in lab.messages("replica1", "alice", "INBOX.Only")} == {
        g for _, g in on_master}
    pair.settle(mail)
