"""The fault matrix, part 1: the network and the replica's host (issue 11).

One container for the whole module: a master host and two replica hosts (netlab.py), mail
delivered all the time.  Each scenario starts from a healthy pair and leaves one behind, so
they share it; each ends with every accepted message on both replicas.
"""

from __future__ import annotations

import time

import pytest

from .matrix import drain_entries, fixtures, states_since

pytestmark = [pytest.mark.system, pytest.mark.matrix]


pair, healthy = fixtures("mxnet")


@pytest.mark.parametrize("seconds,way", [(5, "both"), (60, "b>a")])
def test_partition(pair, seconds, way):
    net, sb = pair.net, pair.sb
    with pair.delivering(f"partition-{seconds}s") as mail:
        pair.wait_accepted(mail, 20)
        cursor = sb.journal_cursor()
        net.partition("master", "replica1", way)
        time.sleep(seconds)
        net.heal("master", "replica1")
        healed = time.time()
        mail.recover_s = pair.recovered(mail, healed)
        pair.wait_accepted(mail, 20)
    pair.settle(mail)
    if seconds > 10:     # a live link is probed every 5 s: a 5 s cut may pass unnoticed
        assert "down" in states_since(sb, cursor, "replica1")
    assert states_since(sb, cursor, "replica2") == []      # the other link never noticed


def test_partition_across_a_drain(pair):
    """systemctl stop while cut off: a bounded stop, the entries kept, sent at the next start."""
    net, sb, sw = pair.net, pair.sb, pair.sw
    with pair.delivering("partition-across-drain") as mail:
        pair.wait_accepted(mail, 20)
        cursor = sb.journal_cursor()
        net.partition("master", "replica1")
        time.sleep(1)                      # the daemon has not noticed yet
        t0 = time.monotonic()
        sb.systemctl("stop", "syncwarden", timeout=120)
        took = time.monotonic() - t0
        drains = drain_entries(sb, cursor)
        assert drains["replica1"][0] == "drain-incomplete", drains
        assert drains["replica1"][1] > 0              # entries left, kept on disk
        assert drains["replica2"][0] == "drain-finished", drains
        pair.wait_accepted(mail, 40)                  # Cyrus takes mail, nobody sends it
        net.heal("master", "replica1")
        started = time.time()
        sb.systemctl("start", "syncwarden")
        mail.recover_s = pair.recovered(mail, started)
        pair.wait_accepted(mail, 20)
    mail.notes["stop_s"] = f"{took:.1f}"
    assert took < 20 + 5                              # drain.timeout is 20 s in the lab
    pair.settle(mail)


def test_replica_host_power_off_and_back(pair):
    net, lab = pair.net, pair.lab
    with pair.delivering("replica-power-off") as mail:
        pair.wait_accepted(mail, 20)
        net.power_off("replica1")
        pair.wait_accepted(mail, 200)                 # ~10 s of mail while it is off
        booted = net.power_on("replica1")
        mail.recover_s = pair.recovered(mail, booted)
        assert lab.is_up("replica1")
        pair.wait_accepted(mail, 20)
    pair.settle(mail)


def test_replica_host_hang_and_back(pair):
    net, sw = pair.net, pair.sw
    with pair.delivering("replica-hang") as mail:
        pair.wait_accepted(mail, 20)
        net.hang("replica1")
        assert sw.wait_state("replica1", "down", timeout=30)   # probes time out
        pair.wait_accepted(mail, 60)
        back = net.unhang("replica1")
        mail.recover_s = pair.recovered(mail, back)
        pair.wait_accepted(mail, 20)
    pair.settle(mail)
