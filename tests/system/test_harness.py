"""The harness itself: a container boots, the Cyrus lab runs in it, and nothing is left behind."""

import os
import signal
import subprocess
import sys
import time

import pytest

from . import roots
from . import sandbox as sandbox_mod
from .cyruslab import LabError
from .sandbox import BASE, Sandbox, cleanup_stale

pytestmark = pytest.mark.system


def leftovers(folder):
    """Mounts, nspawn and cgroups left of a sandbox: ([], None, []) when it is all gone."""
    return (sandbox_mod._mounts_under(folder), sandbox_mod._nspawn_pids().get(folder),
            [d for d in sandbox_mod._cgroup_dirs(folder.name) if d.exists()])


GONE = ([], None, [])


@pytest.mark.trixie
def test_container_boots(sandbox):
    failed = sandbox.systemctl("--failed", "--no-legend").stdout
    assert sandbox.boot_state == "running", failed
    # the Debian release asked for (roots.py), whichever the host runs
    assert roots.os_release(sandbox.root)["VERSION_CODENAME"] == sandbox.release
    assert sandbox.run("cat", "/etc/debian_version").stdout.startswith(
        roots.RELEASES[sandbox.release])
    assert sandbox.systemctl("is-system-running").stdout.strip() == "running"
    assert sandbox.run("cat", "/proc/1/comm").stdout.strip() == "systemd"
    # private network: only a loopback inside
    assert sandbox.run("ls", "/sys/class/net").stdout.split() == ["lo"]
    # host daemons are masked; Debian's cyrus-imapd is present but was not started at boot
    assert sandbox.systemctl("is-enabled", "exim4.service", check=False).stdout.strip() == "masked"
    assert sandbox.systemctl("is-active", "cyrus-imapd.service", check=False).stdout.strip() == "inactive"
    # /tmp inside is the container's own
    sandbox.run("touch", f"/tmp/{sandbox.name}")
    assert not os.path.exists(f"/tmp/{sandbox.name}")


@pytest.mark.trixie
def test_files_written_on_host_are_seen_inside(sandbox):
    sandbox.write_file("/etc/swtest/hello", "hi\n", mode=0o600, owner="cyrus:mail")
    out = sandbox.run("stat", "-c", "%U:%G %a", "/etc/swtest/hello").stdout.split()
    assert out == ["cyrus:mail", "600"]
    assert sandbox.run("cat", "/etc/swtest/hello", user="cyrus").stdout == "hi\n"
    # users are the container's own (cyrus is uid 103 on Debian 12, 101 on 13), not the host's
    uid = sandbox.run("id", "-u", "cyrus").stdout.strip()
    assert str(sandbox.host_path("/etc/swtest/hello").stat().st_uid) == uid
    assert sandbox.run("id", "-un", user="cyrus").stdout.strip() == "cyrus"
    assert sandbox.run("id", "-u", user="cyrus").stdout.strip() == uid


def test_lab_starts(cyrus):
    for name in cyrus.names:
        assert cyrus.is_up(name), name
    cyrus.sb.systemctl("is-active", *(cyrus.unit(n) for n in cyrus.names))


@pytest.mark.trixie
def test_deliver_and_one_shot_sync(cyrus):
    ids = cyrus.deliver("bob", 20, "harness")
    assert len(ids) == len(set(ids)) == 20
    master = cyrus.messages("master", "bob")
    assert [uid for uid, _ in master] == list(range(1, 21))
    assert cyrus.messages("replica1", "bob") == []          # nothing replicated yet

    r = cyrus.sync_client("replica1", "-u", "bob")
    assert r.returncode == 0, r.stderr

    assert cyrus.wait_messages("replica1", "bob", 20, timeout=5)
    assert cyrus.messages("replica1", "bob") == master
    st_m, st_r = cyrus.status("master", "bob"), cyrus.status("replica1", "bob")
    assert st_m["messages"] == 20 and st_m["mailboxid"]
    assert st_r == st_m                                      # same UIDVALIDITY, MODSEQ, MAILBOXID
    assert cyrus.status("replica2", "bob") is None            # replica2 was not synced
    # the channel logs fill up while no rolling client runs
    log = cyrus.sb.read_file(cyrus.sync_dir("replica2") + "/log")
    assert "APPEND user.bob" in log


def test_stopping_a_replica_closes_its_port(cyrus):
    cyrus.stop("replica1")
    assert cyrus.wait_port("replica1", "sync", closed=True, timeout=5)
    assert not cyrus.is_up("replica1")
    with pytest.raises(LabError, match="Connection refused"):
        cyrus.messages("replica1", "bob")
    assert cyrus.is_up("replica2")
    cyrus.start("replica1")
    assert cyrus.is_up("replica1")
    cyrus.kill("replica2")
    assert cyrus.wait_port("replica2", "imap", closed=True, timeout=5)


def test_nothing_left_after_stop():
    cleanup_stale()
    sb = Sandbox(f"leak-{os.getpid()}")
    with sb:
        assert sb.journal(lines=1)
        assert leftovers(sb.folder)[0]                       # mounted while running
    assert leftovers(sb.folder) == GONE
    assert not sb.folder.exists()


def test_poweroff():
    sb = Sandbox(f"off-{os.getpid()}")
    sb.start()
    assert sb.poweroff() == 0
    assert leftovers(sb.folder) == GONE


CRASHING_RUN = f"""
import sys, time
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.dirname(__file__)))!r})
from tests.system.sandbox import Sandbox
Sandbox(sys.argv[1]).start()
print("up", flush=True)
time.sleep(600)
"""


def test_cleanup_stale_after_killed_run():
    """A run killed with SIGKILL leaves mounts (its nspawn dies with it): cleanup_stale() removes them."""
    name = f"crash-{os.getpid()}"
    p = subprocess.Popen([sys.executable, "-c", CRASHING_RUN, name], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "up"
    finally:
        p.kill()
        p.wait()
    folder = BASE / name
    assert leftovers(folder)[0]
    deadline = time.monotonic() + 20
    cleanup_stale()
    while leftovers(folder) != GONE and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(folder) == GONE
    assert not folder.exists()


def test_cleanup_stale_kills_orphaned_nspawn():
    """An nspawn whose owning run is gone (simulated by a dead owner pid) is terminated by pid."""
    sb = Sandbox(f"orphan-{os.getpid()}")
    sb.start()
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        (sb.folder / "owner").write_text(f"{dead.pid} 0\n")
        cleanup_stale()
        assert leftovers(sb.folder) == GONE
        assert sb.popen.wait(5) is not None
        assert not sb.folder.exists()
    finally:
        sb.stop()


def test_container_outliving_its_nspawn_is_killed():
    """SIGKILLed nspawn leaves its container running (reparented to the host's PID 1):
    stop() must kill the container itself, or stray containers pile up."""
    sb = Sandbox(f"stray-{os.getpid()}")
    sb.start()
    try:
        pid1 = sb.pid1
        os.kill(sb.popen.pid, signal.SIGKILL)
        sb.popen.wait()
    finally:
        sb.stop()
    assert not sandbox_mod._alive(pid1)
    assert leftovers(sb.folder) == GONE
