"""The fault matrix, part 3: whole hosts and their disks (issue 11).

One container for the module: a master host and two replica hosts (netlab.py); replica2's spool
is a small filesystem of its own, to fill.  Mail is delivered all the time; each scenario ends
with every accepted message on both replicas and check --deep in sync on both links.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from . import netlab
from .cyruslab import CONF_SUBDIRS, ROOT
from .matrix import fixtures, wait_for

pytestmark = [pytest.mark.system, pytest.mark.matrix]


pair, healthy = fixtures("mxhost", spool_sizes={"replica2": "128m"})



def test_master_host_power_off_and_reboot(pair):
    net, lab = pair.net, pair.lab
    with pair.delivering("master-power-off") as mail:
        pair.wait_accepted(mail, 40)
        net.power_off("master")                  # Cyrus, syncwarden, its workers: all at once
        time.sleep(5)
        booted = net.power_on("master")          # boots: Cyrus and syncwarden start, no hold
        # everything the master accepted before it died goes out now
        mail.recover_s = pair.recovered(mail, booted)
        pair.recovered(mail, booted, "replica2")
        pair.wait_accepted(mail, 40)
    pair.settle(mail)


def test_replica_mail_partition_full(pair):
    sb, sw, lab = pair.sb, pair.sw, pair.lab
    with pair.delivering("replica-disk-full") as mail:
        pair.wait_accepted(mail, 20)
        netlab.fill(sb, lab.spool("replica2"))
        # every user fails alike: the link is held for the operator, saying what Cyrus said
        assert sw.wait_state("replica2", "quarantined", timeout=60), sw.link("replica2")
        reason = sw.link("replica2")["reason"]
        assert "every user of the stuck log-run fails" in reason, reason
        assert "refused by the replica" in reason and "Failed to parse APPLY line" in reason
        assert sw.status()["quarantine"] == []            # no user was singled out
        pair.wait_accepted(mail, 40)                      # replica1 keeps flowing
        pair.recovered(mail, time.time(), "replica1")
        netlab.free(sb, lab.spool("replica2"))
        freed = time.time()
        sw.cli("release", "replica2")
        mail.recover_s = pair.recovered(mail, freed, "replica2")
        pair.wait_accepted(mail, 20)
    pair.settle(mail)


def test_hard_failover_ends_with_every_user_released_by_the_repair(pair):
    """The issue's story: the master's host dies with no warning and no hold; the replica
    serves mail, gets a new folder, a new user, and a folder of the same name as one the master
    creates after it comes back; syncwarden starts as at boot."""
    net, sw, lab = pair.net, pair.sw, pair.lab
    with pair.delivering("hard-failover") as mail:
        pair.wait_accepted(mail, 20)
        net.power_off("master")
        lab.deliver("alice", 3, "on-replica", instance="replica1")
        lab.deliver("bob", 2, "on-replica", instance="replica1")
        lab.append("replica1", "carol", "INBOX.Travel", 2, "new-folder-on-replica")
        lab.create_mailbox("replica1", "user.zoe")
        lab.deliver("zoe", 2, "new-user-on-replica", instance="replica1")
        lab.append("replica1", "dave", "INBOX.Shared", 2, "same-name-replica-copy")
        served = {(u, f): {g for _, g in lab.messages("replica1", u, f)}
                  for u, f in (("alice", "INBOX"), ("bob", "INBOX"), ("carol", "INBOX.Travel"),
                               ("zoe", "INBOX"), ("dave", "INBOX.Shared"))}
        booted = net.power_on("master")
        lab.append("master", "dave", "INBOX.Shared", 1, "same-name-master-copy")
        # the same-name folder makes dave fail on replica1: quarantined, the others flow
        wait_for(lambda: [q["user"] for q in sw.status()["quarantine"]] == ["dave"])
        pair.wait_accepted(mail, 20)
        # check finds every case
        doc = json.loads(sw.cli("check", "replica1", "--json", check=False).stdout)
        found = {(d["category"], d["user"], d["mailbox"]) for d in doc["differences"]}
        assert {("uniqueid-conflict", "dave", "user.dave.Shared"),
                ("replica-only", "carol", "user.carol.Travel"),
                ("replica-only", "zoe", None)} <= found, found
        r = sw.cli("repair", "replica1", "--yes", check=False, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        repaired = time.time()
        # the repair fixed what quarantined dave, and retries him at once (not in 10 minutes)
        wait_for(lambda: sw.status()["quarantine"] == [], timeout=30)
        mail.notes["released_after_repair_s"] = f"{time.time() - repaired:.1f}"
        mail.recover_s = pair.recovered(mail, booted)
    pair.settle(mail)
    for (user, folder), guids in served.items():    # what the replica served is everywhere
        for side in ("master", "replica1", "replica2"):
            assert guids <= {g for _, g in lab.messages(side, user, folder)}, (side, user, folder)


def test_replica_back_with_an_empty_spool_is_found_and_repaired(pair):
    """The replica's disk was replaced: its Cyrus comes back empty. Rolling replication sends
    only what changes from now on, so the link looks healthy while users and folders nobody
    writes to are missing: the check timer finds it, and status says what to run."""
    sb, net, sw, lab = pair.sb, pair.net, pair.sw, pair.lab
    writers = ("bob", "alice", "carol", "dave")           # erin gets no new mail
    lab.append("master", "bob", "INBOX.Archive", 5, "archived")
    lab.deliver("erin", 3, "old-mail")
    with pair.delivering("replica-empty-spool", users=writers) as mail:
        pair.wait_accepted(mail, 20)
        pair.recovered(mail, time.time())
        net.power_off("replica1")
        d = f"{ROOT}/replica1"
        sb.sh(f"rm -rf {d}/spool/* {d}/sieve/* {d}/conf\n"
              + "".join(f"mkdir -p {d}/conf/{sub}\n" for sub in CONF_SUBDIRS)
              + f"chown -R cyrus:mail {d}")
        booted = net.power_on("replica1")
        assert sw.wait_state("replica1", "live", timeout=60)
        # what is written to goes out again (Cyrus uploads a whole missing mailbox) ...
        mail.recover_s = pair.recovered(mail, booted)
        # ... but erin and bob's archive are gone from the replica, and nothing says so but
        # the check: the timer's service, run as the timer would
        r = sb.systemctl("start", "syncwarden-check@replica1.service", check=False)
        assert r.returncode != 0                        # the unit fails: divergence found
        last = sw.link("replica1")["last_check"]
        assert last["result"] == "differences" and last["counts"]["master-only"] >= 2, last
        status = sw.cli("status", check=False).stdout
        assert re.search(r"replica1: last check .* DIFFERENCES: .*master-only \d", status)
        assert "syncwarden repair replica1" in status, status      # what to run
        r = sw.cli("repair", "replica1", "--yes", check=False, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        pair.wait_accepted(mail, 20)
    pair.settle(mail)
    assert len(lab.messages("replica1", "bob", "INBOX.Archive")) == 5
    assert lab.messages("replica1", "erin") == lab.messages("master", "erin") != []
