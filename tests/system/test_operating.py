"""Operating syncwarden under real systemd and real Cyrus: a restart that keeps replicating, a
reload that fails when it must, the state-change hook as an unprivileged user, and imapd.conf
read as Cyrus's own cyr_info reads it."""

from __future__ import annotations

import json
import re
import time

import pytest

from .swlab import SRC, Syncwarden, wait_same

pytestmark = pytest.mark.system

USERS = ("bob", "alice", "carol", "dave", "erin")
DRAIN_STARTED = "1298f2b758144975a8594738b542a373"
DAEMON_STOPPED = "870f0fe792d04652b89c7a68e2d59f88"
CONFIG_REJECTED = "079e45ee09f248a4854ea2bda5110589"
CONFIG_RELOADED = "1cf2c3820a374294ae242cbc8ccece9e"
WORKER = "syncwarden-sync@replica1.service"


@pytest.fixture
def sw(sandbox, cyrus):
    return Syncwarden(sandbox, cyrus)


def unit_pid(sb, unit: str) -> int:
    return int(sb.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout.strip())


def since(sb, cursor, unit="syncwarden.service", message_id=None) -> list[dict]:
    argv = ["journalctl", "--no-pager", "-o", "json", "-u", unit, "--after-cursor", cursor]
    entries = [json.loads(x) for x in sb.run(*argv).stdout.splitlines() if x.strip()]
    return [e for e in entries if message_id is None or e.get("MESSAGE_ID") == message_id]


def accepted_ids(sb, path: str) -> list[str]:
    hp = sb.host_path(path)
    return hp.read_text().split() if hp.exists() else []


@pytest.mark.cyrus(replicas=["replica1"])
def test_restart_under_delivery_keeps_the_worker_and_drains_nothing(sandbox, cyrus, sw):
    sw.setup()
    assert sw.wait_state("replica1", "live", timeout=60)
    worker, daemon = unit_pid(sandbox, WORKER), sw.main_pid()
    assert worker > 0 and daemon > 0
    cursor = sandbox.journal_cursor()
    cyrus.stream(USERS, rate=20, accepted="/var/lib/lab-accepted.txt")
    time.sleep(3)
    t0 = time.monotonic()
    sandbox.systemctl("restart", "syncwarden", timeout=60)
    took = time.monotonic() - t0
    print(f"systemctl restart syncwarden took {took:.2f}s under delivery")
    assert sw.main_pid() not in (0, daemon)                  # a new daemon ...
    time.sleep(3)                                            # ... delivering meanwhile
    assert unit_pid(sandbox, WORKER) == worker               # ... the same worker
    assert sw.wait_state("replica1", "live", timeout=30)
    sandbox.systemctl("stop", "lab-deliver")
    accepted = accepted_ids(sandbox, "/var/lib/lab-accepted.txt")
    assert len(accepted) > 50
    assert wait_same(cyrus, "replica1", USERS, timeout=60) == {}
    assert sum(len(cyrus.messages("replica1", u)) for u in USERS) == len(accepted)
    assert unit_pid(sandbox, WORKER) == worker
    assert since(sandbox, cursor, message_id=DRAIN_STARTED) == []   # nothing was drained
    (stopped,) = since(sandbox, cursor, message_id=DAEMON_STOPPED)
    assert stopped["MESSAGE"] == "syncwarden stopped for a restart, 1 worker(s) left running"
    adopted = [e for e in sw.transitions("replica1") if e.get("SYNCWARDEN_TRIGGER") == "adopt"]
    assert adopted and WORKER in adopted[-1]["SYNCWARDEN_REASON"]
    # and a stop still drains
    sandbox.systemctl("stop", "syncwarden", timeout=120)
    assert [e for e in since(sandbox, cursor, message_id=DRAIN_STARTED)
            if e.get("SYNCWARDEN_LINK") == "replica1"]
    assert unit_pid(sandbox, WORKER) == 0


@pytest.mark.cyrus(replicas=["replica1"])
def test_reload_of_a_bad_file_fails_systemctl_reload_and_says_why(sandbox, cyrus, sw):
    sw.setup()
    assert sw.wait_state("replica1", "live", timeout=60)
    good = sandbox.read_file("/etc/syncwarden/syncwarden.yaml")
    worker = unit_pid(sandbox, WORKER)
    cursor = sandbox.journal_cursor()
    sandbox.write_file("/etc/syncwarden/syncwarden.yaml",
                       good.replace("probe: {", "probe: {intervall: 3s, "))
    r = sandbox.systemctl("reload", "syncwarden", check=False)
    assert r.returncode != 0, r.stdout + r.stderr
    status = sandbox.run("systemctl", "status", "--no-pager", "-l", "-n", "20",
                         "syncwarden", check=False).stdout
    assert "probe.intervall: unknown key (did you mean 'interval'?)" in status, status
    assert sandbox.systemctl("is-active", "syncwarden", check=False).stdout.strip() == "active"
    assert since(sandbox, cursor, message_id=CONFIG_REJECTED)
    assert sw.link("replica1")["state"] == "live" and unit_pid(sandbox, WORKER) == worker
    # a good file: every setting applies, the control group at once
    sandbox.write_file("/etc/syncwarden/syncwarden.yaml", good + "control: {group: mail}\n")
    sandbox.systemctl("reload", "syncwarden")
    (reloaded,) = since(sandbox, cursor, message_id=CONFIG_RELOADED)
    assert "no link changed" in reloaded["MESSAGE"]
    sock = sandbox.run("stat", "-c", "%G %a", "/run/syncwarden/control.sock").stdout.split()
    assert sock == ["mail", "660"]
    assert sandbox.run("stat", "-c", "%G", "/run/syncwarden/status.json").stdout.strip() \
        == "mail"
    r = sandbox.run("syncwarden", "status", user="cyrus", check=False)     # cyrus is in mail
    assert r.returncode == 0 and "replica1" in r.stdout, r.stdout + r.stderr
    assert unit_pid(sandbox, WORKER) == worker                 # unchanged link kept running


HOOK = ("echo \"hook uid=$(id -u) user=$(id -un) link=$SYNCWARDEN_LINK"
        " $SYNCWARDEN_FROM->$SYNCWARDEN_TO code=$SYNCWARDEN_STATE_CODE"
        " trigger=$SYNCWARDEN_TRIGGER instance=$SYNCWARDEN_INSTANCE"
        " reason=$SYNCWARDEN_REASON\"; sleep 1000")


@pytest.mark.cyrus(replicas=["replica1"])
def test_the_hook_runs_as_nobody_with_its_environment_and_a_timeout(sandbox, cyrus, sw):
    sw.setup(extra=f"hooks: {{on_state_change: '{HOOK}', timeout: 3s}}\n")
    assert sw.wait_state("replica1", "live", timeout=60)
    line = sandbox.wait_journal(r"hook uid=\d+ .*catching-up->live", timeout=30,
                                identifier="syncwarden-hook")
    assert line is not None, sandbox.journal(identifier="syncwarden-hook")
    assert re.search(r"hook uid=65534 user=nobody link=replica1 catching-up->live code=2"
                     r" trigger=caught_up instance=default reason=backlog within live", line)
    assert sandbox.wait_journal(r"hook uid=65534 .* down->catching-up .*trigger=replica_up"
                                r" .*reason=replica answered", timeout=5,
                                identifier="syncwarden-hook")
    # each hook is stopped after hooks.timeout (it sleeps 1000 s), and held nothing up
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        units = sandbox.run("systemctl", "list-units", "--all", "--no-legend", "--plain",
                            "syncwarden-hook-*").stdout.strip()
        if not units:
            break
        time.sleep(0.5)
    assert not units, units
    timed_out = [e for e in sandbox.journal(fields=True) if "syncwarden-hook-default-replica1"
                 in e.get("UNIT", "") and re.search(r"time ?limit|timeout|timed out",
                                                    str(e.get("MESSAGE", "")), re.I)]
    assert timed_out


CYR_INFO = "/usr/lib/cyrus/bin/cyr_info"


def test_imapd_conf_is_read_as_cyr_info_reads_it(sandbox):
    Syncwarden(sandbox, None).install()
    sandbox.run("mkdir", "-p", "/srv/cfgtest/conf", "/srv/cfgtest/more")
    sandbox.write_file("/srv/cfgtest/more/sync.conf",
                       "replica1_sync_host: 10.0.0.2\n  Replica1_Sync_Port:\t2005  \n"
                       "sync_client_sync_try_imap: 0\nreplica2_sync_try_imap: yes\n")
    sandbox.write_file("/srv/cfgtest/channels.conf",
                       "sync_log_channels: replica1 \\\nreplica2 \"\"\n")
    sandbox.write_file("/srv/cfgtest/imapd.conf",
                       "configdirectory: /srv/cfgtest/conf\n# a comment \\\n  continued\n"
                       "SYNC_LOG: yes\n@include: /srv/cfgtest/more/sync.conf\n"
                       "@include: /srv/cfgtest/channels.conf\nsync_try_imap: on\n"
                       "partition-default: /srv/cfgtest/spool\n")
    ours = json.loads(sandbox.run("python3", "-c", f"""
import json, sys
sys.path.insert(0, "{SRC}")
from supervisor.cyrus import imapdconf
c = imapdconf.load("/srv/cfgtest/imapd.conf")
print(json.dumps({{"options": c.options, "channels": c.channels,
                  "try_imap": c.flag("sync_try_imap", True),
                  "try_imap2": c.flag("sync_try_imap", True, "replica2"),
                  "sync_log": c.flag("sync_log", False)}}))""").stdout)
    theirs = {}
    for line in sandbox.run(CYR_INFO, "-n", "sync_client", "-C", "/srv/cfgtest/imapd.conf",
                            "conf-all").stdout.splitlines():
        key, _, value = line.partition(":")
        theirs[key] = value.strip()
    opts = ours["options"]
    assert {"replica1_sync_host", "replica1_sync_port", "replica2_sync_try_imap",
            "partition-default"} <= set(theirs), sorted(theirs)
    for key in ("configdirectory", "sync_log_channels", "replica1_sync_host",
                "replica1_sync_port", "replica2_sync_try_imap", "partition-default",
                "sync_client_sync_try_imap"):
        if key in theirs:      # overflow options under their own name
            assert opts[key] == theirs[key], (key, opts[key], theirs[key])
    assert theirs["sync_log_channels"] == 'replica1 replica2 ""'
    assert ours["channels"] == ["replica1", "replica2", None]
    assert theirs["sync_log"] == "yes" and ours["sync_log"] is True
    # sync_client's own view: its service-specific value wins
    assert theirs["sync_try_imap"] == "no" and ours["try_imap"] is False
    assert ours["try_imap2"] is False                  # atoi("yes"): sync_get_switchconfig
    assert theirs["replica1_sync_port"] == "2005"
    # what Cyrus refuses, we refuse
    for bad in ("sync_log : on\n", "sync_log: Off\n", "sync_log: on\nsync_log: off\n",
                "sync_host:\n", "@include: /srv/cfgtest/bad.conf\n"):
        sandbox.write_file("/srv/cfgtest/bad.conf", "configdirectory: /srv/cfgtest/conf\n" + bad)
        cyr = sandbox.run(CYR_INFO, "-C", "/srv/cfgtest/bad.conf", "conf", check=False)
        ours = sandbox.run("python3", "-c", f"""
import sys
sys.path.insert(0, "{SRC}")
from supervisor.cyrus import imapdconf
try:
    imapdconf.load("/srv/cfgtest/bad.conf")
except imapdconf.ImapdConfError as exc:
    print(exc)
    sys.exit(1)""", check=False)
        assert cyr.returncode != 0 and ours.returncode == 1, (bad, cyr.stdout + cyr.stderr,
                                                              ours.stdout)
