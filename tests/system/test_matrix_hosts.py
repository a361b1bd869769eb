"""The fault matrix, part 3: whole hosts and their disks (issue 11).

One container for the module: a master host and two replica hosts (netlab.py); replica2's spool
is a small filesystem of its own, to fill.  Mail is delivered all the time; each scenario ends
with every accepted message on both replicas and check --deep in sync on both links.
"""

from __future__ import annotations

import os
import time

import pytest

from .matrix import Pair
from .sandbox import Sandbox, cleanup_stale

pytestmark = [pytest.mark.system, pytest.mark.matrix]


@pytest.fixture(scope="module")
def pair():
    cleanup_stale()
    p = Pair(Sandbox(f"mxhost-{os.getpid()}"), spool_sizes={"replica2": "128m"})
    try:
        p.setup()
        yield p
    finally:
        p.sb.stop()


@pytest.fixture(autouse=True)
def healthy(pair, request):
    pair.healthy()
    yield
    if getattr(getattr(request.node, "report_call", None), "failed", False):
        pair.dump()


def wait_for(what, timeout=60, step=0.2):
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


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
