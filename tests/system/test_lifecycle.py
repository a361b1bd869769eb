"""A replica's life, against real Cyrus under real systemd (issue 14): replaced under continuous
delivery with no gap in redundancy, a seed that survives a daemon SIGKILL and a replica restart,
and a freeze for a backup while mail arrives."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .cyruslab import ROOT
from .swlab import CONFIG, Syncwarden, check_config, log_lines, wait_same

pytestmark = pytest.mark.system

USERS = ("bob", "alice", "carol", "dave", "erin")
TOOL = f"{ROOT}/lifecycletool.py"
SEED_STARTED = "8cc0ccb01d5c45ceb4e810530283c790"
FREEZE_HOOK = "864c64c2b9914c98868adb8ac7d54d2c"
THAWED = "f44f93ae247e41f3a175251e9aaa28ea"
MAX_LAG = 10

CONFIG_TEXT = """\
cyrus: {{imapd_conf: /srv/cyrlab/master/imapd.conf}}
links:
{links}
probe: {{interval: 1s, timeout: 1s}}
live: {{max_backlog: 1000, max_lag: {max_lag}s}}
drain: {{timeout: 60s}}
"""


@pytest.fixture
def sw(sandbox, cyrus):
    sandbox.write_file(TOOL, (Path(__file__).parent / "lifecycletool.py").read_text(), mode=0o755)
    sandbox.write_file("/etc/syncwarden/imap-credentials", "user: cyrus\npassword: adminpw\n",
                       mode=0o600)
    return Syncwarden(sandbox, cyrus)


def configure(sw, links, extra=""):
    rows = "\n".join(f"  {n}: {{host: 127.0.0.1, port: {sw.lab.port(n, 'sync')}}}"
                     for n in links)
    sw.sb.write_file(CONFIG, CONFIG_TEXT.format(links=rows, max_lag=MAX_LAG)
                     + check_config(sw.lab, links) + extra)


def tool(sb, *args, timeout=120):
    r = sb.run("/usr/bin/python3", TOOL, *map(str, args), timeout=timeout)
    return json.loads(r.stdout)


def set_channels(sandbox, cyrus, channels: str) -> None:
    conf = sandbox.host_path(cyrus.master_conf)
    lines = [f"sync_log_channels: {channels}" if x.startswith("sync_log_channels:") else x
             for x in conf.read_text().splitlines()]
    conf.write_text("\n".join(lines) + "\n")


def wait_for(what, timeout: float, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = what()
        except (ValueError, KeyError, StopIteration):
            value = None                       # the daemon (re)starting
        if value:
            return value
        time.sleep(poll)
    return None


def seed_of(sw, link):
    return sw.link(link)["seed"] or {}


def end_old_writers(sandbox, sw, link, timeout=40) -> list[str]:
    """What an operator does when status says the seed waits: SIGHUP to Cyrus's master
    (recycles idle services), then end the busy sessions status names. Returns the details."""
    seen = []
    sandbox.systemctl("kill", "--signal=HUP", "--kill-who=main", "cyrus-imapd")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seed = seed_of(sw, link)
        if seed.get("state") != "waiting-for-writers":
            return seen
        seen.append(seed["detail"])
        pids = [w.split()[-1] for w in seed["detail"].split(": ", 1)[1].split(";")[0]
                .split(" and ")[0].split(", ")] if ": " in seed["detail"] else []
        for pid in pids:
            sandbox.run("kill", pid, check=False)
        time.sleep(1.5)
    raise AssertionError(f"the seed still waits for Cyrus processes: {seen[-3:]}")


# --- replace a replica ----------------------------------------------------------------------

def test_a_replica_is_replaced_under_continuous_delivery_with_no_gap(sandbox, cyrus, sw):
    # The master logs for replica1 only, as a site before it adds a replica.
    set_channels(sandbox, cyrus, "replica1")
    sandbox.systemctl("restart", "cyrus-imapd")
    cyrus.wait_port("master", "lmtp", timeout=15)
    sw.install()
    configure(sw, ["replica1"])
    sandbox.systemctl("start", "syncwarden")
    assert sw.wait_state("replica1", "live")
    # mail from before replica2 exists: only a seed can bring it there
    cyrus.deliver_many(USERS, 8, "before")
    cyrus.create_mailbox("master", "shared.proj", "user.bob.Archive")
    tool(sandbox, "shared", cyrus.port("master"), "shared.proj", 5, "proj")
    tool(sandbox, "shared", cyrus.port("master"), "user.bob.Archive", 3, "archive")
    assert wait_same(cyrus, "replica1", USERS, timeout=30) == {}

    accepted, samples, stop = "/root/accepted", "/root/gapcheck", "/root/gapcheck.stop"
    cyrus.stream(USERS, rate=8, accepted=accepted)
    sandbox.run("systemd-run", "--unit=lab-gapcheck", "--quiet", "/usr/bin/python3", TOOL,
                "gapcheck", "--accepted", accepted, "--out", samples, "--stop", stop,
                "--master", cyrus.port("master"), "--users", ",".join(USERS),
                "--replicas", ",".join(f"{n}={cyrus.port(n)}" for n in cyrus.replicas),
                "--status", "/run/syncwarden/status.json", "--max-lag", MAX_LAG)
    time.sleep(MAX_LAG + 2)

    # replica2 added to imapd.conf and to the config: never seeded, so never live
    set_channels(sandbox, cyrus, "replica1 replica2")
    configure(sw, ["replica1", "replica2"])
    sandbox.systemctl("reload", "syncwarden")
    link = wait_for(lambda: next((x for x in sw.status()["links"] if x["name"] == "replica2"
                                  and x["state"] == "catching-up"), None), 20)
    assert link and link["seeded"] is False
    assert "replica never seeded: run `syncwarden seed replica2`" in link["reason"]

    # the seed first waits for the Cyrus processes that still have the old channel list; the
    # command follows it on its terminal (here: a unit's journal) to the end
    sandbox.run("systemd-run", "--unit=lab-seed", "--quiet", "syncwarden", "seed", "replica2")
    seed = wait_for(lambda: seed_of(sw, "replica2").get("state") == "waiting-for-writers"
                    and seed_of(sw, "replica2"), 20)
    assert seed and "lmtpd pid" in seed["detail"], seed
    print("seed waits:", seed["detail"])
    end_old_writers(sandbox, sw, "replica2")
    assert wait_for(lambda: sandbox.systemctl("is-active", "-q", "lab-seed", check=False)
                    .returncode != 0, 120)
    follow = "\n".join(sandbox.journal(unit="lab-seed.service"))
    print(follow)
    assert "replica2: waiting-for-writers: " in follow and "replica2: seed done" in follow
    assert "lab-seed.service: Deactivated successfully" in follow      # exit status 0
    assert sw.wait_state("replica2", "live", timeout=30)
    seed = seed_of(sw, "replica2")
    assert seed["users"] == len(USERS) and seed["shared_mailboxes"] >= 2   # shared, shared.proj
    assert seed["failed"] == []

    # a clean deep check of replica2, then replica1 goes. Under delivery a check may take a
    # message that arrives while it reads for master-only (it reads the backlog before the
    # master): an operator runs it again, as here.
    for _ in range(5):
        check = sw.cli("check", "replica2", "--deep", check=False)
        if check.returncode == 0:
            break
        print("check under delivery:", check.stdout.splitlines()[-2:])
    assert check.returncode == 0, check.stdout + check.stderr
    retire = sw.cli("retire", "replica1", "--yes", timeout=120)
    print(retire.stdout)
    assert "sync_log_channels: replica2" in retire.stdout and "links.replica1" in retire.stdout
    assert sw.link("replica1")["retired"]["state"] == "retired"
    assert not sandbox.host_path(cyrus.sync_dir("replica1") + "/log-run").exists()
    time.sleep(MAX_LAG + 3)                                   # delivery goes on: only replica2

    sandbox.systemctl("stop", "lab-deliver")
    sent = sandbox.read_file(accepted).split()
    assert len(sent) > 100
    assert wait_same(cyrus, "replica2", USERS, timeout=30) == {}
    time.sleep(2)
    sandbox.write_file(stop, "")
    wait_for(lambda: sandbox.systemctl("is-active", "-q", "lab-gapcheck", check=False)
             .returncode != 0, 15)
    rows = [json.loads(x) for x in sandbox.read_file(samples).splitlines()]
    checked = [r for r in rows if "missing" in r]
    gaps = [r for r in checked if r["missing_count"]]
    print(f"gap checker: {len(checked)} samples, {len(rows) - len(checked)} unreadable,"
          f" {len(gaps)} with a gap; {len(sent)} messages accepted")
    assert not gaps, gaps[:3]
    assert len(checked) >= 30 and len(rows) - len(checked) <= 5
    assert {tuple(r["live"]) for r in checked} >= {("replica1",), ("replica1", "replica2"),
                                                   ("replica2",)}
    # every mailbox, shared ones included, holds the same messages on replica2
    shared = "shared,shared.proj"
    master = tool(sandbox, "inventory", cyrus.port("master"), ",".join(USERS), shared)
    replica = tool(sandbox, "inventory", cyrus.port("replica2"), ",".join(USERS), shared)
    assert master == replica
    assert len(master["shared.proj"]) == 5 and len(master["bob:INBOX.Archive"]) == 3


# --- a seed interrupted ---------------------------------------------------------------------

MANY = [f"u{i:03}" for i in range(120)]


@pytest.mark.cyrus(users=MANY, replicas=("replica1", "replica2"))
def test_a_seed_interrupted_by_a_daemon_kill_and_a_replica_restart_goes_on(sandbox, cyrus, sw):
    sw.install()
    configure(sw, ["replica1"])
    sandbox.systemctl("start", "syncwarden")
    assert sw.wait_state("replica1", "live")
    cyrus.deliver_many(MANY, 4, "many", sessions=4)
    configure(sw, ["replica1", "replica2"])
    sandbox.systemctl("reload", "syncwarden")
    assert wait_for(lambda: sw.link("replica2")["seeded"] is False, 20)
    sw.cli("seed", "replica2", "--parallel", "2", "--no-wait")
    # A writer Cyrus started before the channel existed (the deliveries above) makes the seed
    # wait first, as it should: do what status tells the operator.
    state = wait_for(lambda: seed_of(sw, "replica2").get("state"), 20)
    if state == "waiting-for-writers":
        end_old_writers(sandbox, sw, "replica2")
    before = wait_for(lambda: (lambda s: s if s.get("state") == "syncing"
                               and s["percent"] >= 20 else None)(seed_of(sw, "replica2")), 90,
                      poll=0.1)
    assert before, seed_of(sw, "replica2")
    pid = sw.main_pid()
    sandbox.systemctl("kill", "--signal=KILL", "syncwarden")
    cyrus.stop("replica2")
    assert wait_for(lambda: sw.main_pid() not in (0, pid), 30)       # restarted by systemd
    after = wait_for(lambda: seed_of(sw, "replica2").get("state") and seed_of(sw, "replica2"), 20)
    print(f"seed at the kill: {before['done']}/{before['total']}; after the restart:"
          f" {after['done']}/{after['total']} ({after['state']})")
    assert after["started"] == before["started"]
    assert after["done"] >= before["done"], (before, after)
    assert wait_for(lambda: sw.link("replica2")["state"] == "down", 20)   # its replica is away
    time.sleep(2)
    cyrus.start("replica2")
    done = []

    def finished():
        seed = seed_of(sw, "replica2")
        done.append(seed.get("done", 0))
        return seed.get("state") in ("done", "incomplete") and seed
    seed = wait_for(finished, 120)
    print(f"seed {seed['state'] if seed else '?'}: {done[-1]}/{len(MANY)}, started"
          f" {before['started']}, finished {seed and seed['finished']}")
    assert seed and seed["state"] == "done" and seed["failed"] == [], seed
    assert seed["done"] == seed["total"] == len(MANY)
    assert done == sorted(done), "the seed started over"
    starts = sw.journal_messages(message_id=SEED_STARTED)
    assert len(starts) == 1
    assert sw.wait_state("replica2", "live", timeout=30)
    assert wait_same(cyrus, "replica2", MANY, timeout=30) == {}


# --- freeze for a backup ----------------------------------------------------------------------

def test_a_frozen_replica_does_not_change_the_hook_runs_and_it_catches_up_after(
        sandbox, cyrus, sw):
    sw.install()
    configure(sw, ["replica1", "replica2"])
    sandbox.systemctl("start", "syncwarden")
    assert sw.wait_state("replica1", "live") and sw.wait_state("replica2", "live")
    cyrus.stream(USERS, rate=8)
    time.sleep(3)
    r = sw.cli("freeze", "replica2", "--until", "30s", "--exec",
               'echo "hook ran for $SYNCWARDEN_LINK until $SYNCWARDEN_UNTIL as $(id -un)"')
    print(r.stdout)
    assert "frozen until" in r.stdout
    frozen = cyrus.messages_many("replica2", USERS)
    link = sw.link("replica2")
    assert link["state"] == "down" and link["freeze"]["state"] == "frozen"
    # a stop while frozen drains replica1 only: replica2's backlog stays for the thaw
    time.sleep(3)
    sandbox.systemctl("stop", "syncwarden")
    assert sum(log_lines(sandbox, cyrus, "replica2").values()) > 0
    assert sum(log_lines(sandbox, cyrus, "replica1").values()) < 10
    sandbox.systemctl("start", "syncwarden")
    assert wait_for(lambda: (sw.link("replica2")["freeze"] or {}).get("state") == "frozen", 20)
    time.sleep(5)
    assert cyrus.messages_many("replica2", USERS) == frozen          # unchanged while frozen
    assert cyrus.messages_many("master", USERS) != frozen            # mail kept arriving
    hook = wait_for(lambda: sw.journal_messages(message_id=FREEZE_HOOK), 20)
    assert hook[0]["SYNCWARDEN_RESULT"] == "success"
    out = "\n".join(sandbox.journal(unit="syncwarden-freeze@replica2.service"))
    assert "hook ran for replica2 until" in out and "as syncwarden-freeze" in out
    thawed = wait_for(lambda: sw.journal_messages(message_id=THAWED), 40)
    assert thawed and thawed[0]["SYNCWARDEN_REASON"].startswith("the deadline")
    assert sw.link("replica2")["freeze"] is None
    sandbox.systemctl("stop", "lab-deliver")
    assert sw.wait_state("replica2", "live", timeout=30)
    assert wait_same(cyrus, "replica2", USERS, timeout=30) == {}
