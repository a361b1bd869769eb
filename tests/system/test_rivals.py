"""What keeps an instance serving, found from the instance itself (issue 10, items 14, 15):
a Cyrus master under a unit of any name stops `failover`, and a sync_client syncwarden did not
start (running, or in cyrus.conf) makes `check-config` fail and, while it runs, is named in
`status` and keeps a drain from claiming completion, against real Cyrus under real systemd."""

from __future__ import annotations

import time

import pytest

from .cyruslab import BIN
from .swlab import Syncwarden, check_config, wait_same

pytestmark = pytest.mark.system

MASTER_DIR = "/srv/cyrlab/master"
USERS = ("bob", "alice", "carol", "dave", "erin")


@pytest.fixture
def sw(sandbox, cyrus):
    return Syncwarden(sandbox, cyrus)


def main_pid(sandbox, unit: str) -> int:
    return int(sandbox.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout)


@pytest.mark.trixie
def test_failover_refuses_while_the_master_runs_under_another_unit(sandbox, cyrus, sw):
    sandbox.write_file("/etc/syncwarden/imap-credentials", "user: cyrus\npassword: adminpw\n",
                       mode=0o600)
    sw.setup(extra=check_config(cyrus, cyrus.replicas))
    assert sw.wait_state("replica1", "live")
    # The same Cyrus, moved to a unit syncwarden has never heard of, still takes mail.
    cyrus.stop("master")
    sandbox.run("systemd-run", "--unit=mail-elsewhere", "--quiet", "--property=User=cyrus",
                "--property=Group=mail", f"{BIN}/master", "-C", cyrus.master_conf,
                "-M", f"{MASTER_DIR}/cyrus.conf", "-p", f"{MASTER_DIR}/elsewhere.pid")
    assert cyrus.wait_port("master", "lmtp", timeout=15)
    assert sandbox.systemctl("is-active", "-q", "cyrus-imapd", check=False).returncode != 0
    pid = main_pid(sandbox, "mail-elsewhere")
    r = sw.cli("failover", "--yes", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert (f"failover: refused: Cyrus still runs for {cyrus.master_conf}, so mail may still be"
            f" accepted here: master pid {pid} (-C {cyrus.master_conf}; unit"
            " mail-elsewhere.service)") in r.stderr
    # the replicas' masters run from other imapd.conf files: not this instance
    assert "/srv/cyrlab/replica" not in r.stderr
    assert r.stdout == "" and sw.status()["role"] == "master"


@pytest.mark.trixie
def test_check_config_names_a_sync_client_it_did_not_start(sandbox, cyrus, sw):
    sw.setup()
    assert sw.wait_state("replica1", "live") and sw.wait_state("replica2", "live")
    ours = sw.sync_clients("replica1") + sw.sync_clients("replica2")
    assert len(ours) == 2
    r = sw.cli("check-config", check=False)
    assert r.returncode == 0, r.stderr            # syncwarden's own workers are no rivals
    # A site's leftover: `sync_client -r` started by hand as cyrus; -r forks into the background.
    sandbox.sh(f"{BIN}/sync_client -C {cyrus.master_conf} -r -n replica1"
               " </dev/null >/dev/null 2>&1", user="cyrus")
    rival = []
    for _ in range(50):
        out = sandbox.run("pgrep", "-f", f"sync_client -C {cyrus.master_conf} -r -n replica1$",
                          check=False).stdout
        rival = [int(p) for p in out.split()]
        if rival:
            break
        time.sleep(0.1)
    assert len(rival) == 1
    r = sw.cli("check-config", check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "/etc/syncwarden/syncwarden.yaml: 1 problem"
    assert lines[1].startswith(f"  links.replica1: a sync_client runs for channel replica1"
                               f" outside syncwarden: pid {rival[0]}")
    assert lines[1].endswith(f"`sync_client -C {cyrus.master_conf} -r -n replica1`; stop it"
                             " and whatever starts it (two clients on one channel race for its"
                             " sync log)")
    assert not any(str(pid) in r.stderr for pid in ours)
    sandbox.run("kill", str(rival[0]))
    for _ in range(50):
        if sandbox.run("kill", "-0", str(rival[0]), check=False).returncode != 0:
            break
        time.sleep(0.1)
    # The same client in the cyrus.conf the running master was started with.
    conf = sandbox.read_file(f"{MASTER_DIR}/cyrus.conf")
    sandbox.write_file(f"{MASTER_DIR}/cyrus.conf", conf.replace(
        "START {\n", f'START {{\n  syncclient cmd="sync_client -C {cyrus.master_conf} -r'
        ' -n replica1"\n', 1))
    r = sw.cli("check-config", check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.splitlines()[1:] == [
        f"  links.replica1: {MASTER_DIR}/cyrus.conf:2 (START entry 'syncclient') starts"
        f" `sync_client -C {cyrus.master_conf} -r -n replica1` for channel replica1; remove the"
        " entry (two clients on one channel race for its sync log)"]


@pytest.mark.cyrus(replicas=("replica1",))
def test_a_rival_sync_client_is_named_and_a_drain_claims_nothing_while_it_runs(
        sandbox, cyrus, sw):
    sw.setup()
    assert sw.wait_state("replica1", "live")
    # as a plain-Cyrus site's cyrus.conf would start it, beside syncwarden's worker
    sandbox.run("systemd-run", "--unit=old-sync-client", "-p", "User=cyrus", "-p", "Group=mail",
                f"{BIN}/sync_client", "-C", cyrus.master_conf, "-R", "-n",
                "replica1")
    deadline, link = time.monotonic() + 30, {}
    while time.monotonic() < deadline and not link.get("rival"):
        link = sw.link("replica1")
        time.sleep(0.5)
    assert link.get("rival", "").startswith("a sync_client that syncwarden did not start runs"
                                            " for channel replica1: pid ")
    assert "old-sync-client.service" in link["rival"] and link["rival"] in link["reason"]
    cyrus.deliver_many(USERS, 5, "rival")
    r = sw.cli("drain", "replica1", "--wait", check=False)
    assert r.returncode == 1 and "syncwarden did not start" in r.stdout + r.stderr
    assert sw.link("replica1")["last_drain"]["drained"] is False
    sandbox.systemctl("stop", "old-sync-client")
    sw.cli("resume", "replica1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sw.link("replica1").get("rival"):
        time.sleep(0.5)
    assert sw.link("replica1")["rival"] is None
    r = sw.cli("drain", "replica1", "--wait")
    assert "drained" in r.stdout
    assert wait_same(cyrus, "replica1", USERS) == {}


@pytest.mark.trixie
def test_check_config_finds_cyrus_and_orders_syncwarden_before_its_unit(sandbox, cyrus, sw):
    """sync_client, master and the mail unit are found (Debian's layout here, no cyrus: keys
    set), and syncwarden must stop after whatever unit runs the master: systemd is asked."""
    sw.setup()
    assert sw.wait_state("replica1", "live")
    r = sw.cli("check-config")
    assert (f"Cyrus: sync_client {BIN}/sync_client (found), master {BIN}/master (found),"
            " service cyrus-imapd.service (runs this instance's master)") in r.stdout
    # The same Cyrus under a unit syncwarden.service is not ordered before.
    cyrus.stop("master")
    sandbox.run("systemd-run", "--unit=mail-elsewhere", "--quiet", "--property=User=cyrus",
                "--property=Group=mail", f"{BIN}/master", "-C", cyrus.master_conf,
                "-M", f"{MASTER_DIR}/cyrus.conf", "-p", f"{MASTER_DIR}/elsewhere.pid")
    assert cyrus.wait_port("master", "lmtp", timeout=15)
    r = sw.cli("check-config", check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.splitlines()[1:] == [
        "  cyrus.service: syncwarden.service is not ordered Before=mail-elsewhere.service, so at"
        " shutdown the links drain while mail-elsewhere.service still accepts mail; add it with"
        " `systemctl edit syncwarden.service` ([Unit] Before=mail-elsewhere.service)"]
    # What the message says to do is enough.
    sandbox.write_file("/etc/systemd/system/syncwarden.service.d/mail.conf",
                       "[Unit]\nBefore=mail-elsewhere.service\n")
    sandbox.systemctl("daemon-reload")
    r = sw.cli("check-config")
    assert "service mail-elsewhere.service (runs this instance's master)" in r.stdout
