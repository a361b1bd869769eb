"""Two Cyrus instances on one host, each with its own replica, under two syncwarden daemons.

The default instance (master -> replica1) runs as syncwarden.service with today's paths; the
instance "east" (a second Cyrus master -> replica2) runs as syncwarden@east.service with
/etc/syncwarden/east.yaml, /run/syncwarden/east and /var/lib/syncwarden/east. What one daemon
does (a stop that drains, a hold, a quarantined user) must leave the other alone.
"""

from __future__ import annotations

import json
import time

import pytest

from . import cyruslab as cl
from .swlab import BASE_CONFIG, CONFIG, Syncwarden

pytestmark = pytest.mark.system

USERS = ("bob", "alice", "carol")
EAST_CONFIG = "/etc/syncwarden/east.yaml"
DRAIN_STARTED = "1298f2b758144975a8594738b542a373"
QUARANTINED = "45c01d22db55461db7e54216c2522d47"


class TwoMasters(cl.CyrusLab):
    """The lab's master feeds replica1 only; a second master, "east", feeds replica2."""

    def __init__(self, sandbox):
        super().__init__(sandbox, replicas=("replica1", "replica2"), users=USERS)
        self.names = ("master", "east", "replica1", "replica2")

    def ports(self, name):
        if name == "east":
            return {"imap": 13143, "lmtp": 13024}
        return super().ports(name)

    def unit(self, name):
        return "cyrlab-replica@east.service" if name == "east" else super().unit(name)

    def channels(self, name):
        return {"master": ["replica1"], "east": ["replica2"]}.get(name, [])

    def create(self):
        super().create()
        for name in ("master", "east"):   # rewrite both masters' imapd.conf: one channel each
            d = f"{cl.ROOT}/{name}"
            text = cl.IMAPD_CONF.format(d=d, name=name, admin=cl.ADMIN, sync_user=cl.SYNC_USER)
            text += cl.MASTER_SYNC.format(channels=" ".join(self.channels(name)))
            for link in self.channels(name):
                text += cl.CHANNEL.format(link=link, host=self.addr(link),
                                          port=self.port(link, "sync"),
                                          sync_user=cl.SYNC_USER, sync_pw=cl.SYNC_PW)
            self.sb.write_file(self.conf(name), text)
        self.sb.sh(f"chown -R cyrus:mail {cl.ROOT}")

    def east_sync_dir(self, link):
        return f"{cl.ROOT}/east/conf/sync/{link}"


def east_config(lab) -> str:
    return BASE_CONFIG.format(
        links=f"  replica2: {{host: 127.0.0.1, port: {lab.port('replica2', 'sync')}}}",
        interval="1s", drain_timeout="60s").replace(
        "/srv/cyrlab/master/imapd.conf", "/srv/cyrlab/east/imapd.conf")


def link(sw, instance, name):
    r = sw.sb.run("syncwarden", "-i", instance, "status", "--json", check=False)
    return next(x for x in json.loads(r.stdout)["links"] if x["name"] == name)


def wait_link(sw, instance, name, state, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if link(sw, instance, name)["state"] == state:
                return True
        except (ValueError, StopIteration, KeyError):
            pass
        time.sleep(0.2)
    return False


def exists(sb, path) -> bool:
    """Looked up inside: /run is the container's own tmpfs, not in the overlay."""
    return sb.run("test", "-e", path, check=False).returncode == 0


def main_pid(sb, unit):
    return int(sb.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout.strip() or 0)


def test_two_instances_run_side_by_side_and_never_touch_each_other(sandbox):
    lab = TwoMasters(sandbox)
    lab.setup()
    lab.create_mailbox("east", *(f"user.{u}" for u in USERS))
    sw = Syncwarden(sandbox, lab)
    sw.install()
    sw.configure(links=["replica1"])
    sandbox.write_file(EAST_CONFIG, east_config(lab))
    sandbox.systemctl("start", "syncwarden", "syncwarden@east")
    assert wait_link(sw, "default", "replica1", "live")
    assert wait_link(sw, "east", "replica2", "live")

    # each instance's files are its own; the default keeps today's paths
    for path in ("/run/syncwarden/control.sock", "/run/syncwarden/east/control.sock",
                 "/run/syncwarden/status.json", "/run/syncwarden/east/status.json"):
        assert exists(sandbox, path), path
    assert sandbox.run("systemctl", "is-active", "syncwarden-sync@replica1.service",
                       "syncwarden-sync@east:replica2.service").returncode == 0
    east = json.loads(sandbox.run("syncwarden", "-i", "east", "status", "--json",
                                  check=False).stdout)      # (exit 1 when not all live)
    assert east["instance"] == "east" and [x["name"] for x in east["links"]] == ["replica2"]
    assert east["links"][0]["worker"]["unit"] == "syncwarden-sync@east:replica2.service"

    # mail to each master reaches its own replica
    lab.deliver("bob", 3, "default")
    lab.deliver("bob", 4, "east", instance="east")
    assert lab.wait_messages("replica1", "bob", 3)
    assert lab.wait_messages("replica2", "bob", 4)
    assert len(lab.messages("replica1", "bob")) == 3      # nothing of east's went there

    # a hold on east leaves the default's link live and flowing
    default_worker = main_pid(sandbox, "syncwarden-sync@replica1.service")
    sandbox.run("syncwarden", "-i", "east", "hold", "replica2")
    assert wait_link(sw, "east", "replica2", "down")
    assert "held" in link(sw, "east", "replica2")["reason"]
    assert exists(sandbox, "/var/lib/syncwarden/east/holds.json")
    assert not exists(sandbox, "/var/lib/syncwarden/holds.json")
    lab.deliver("alice", 2, "while-east-held")
    assert lab.wait_messages("replica1", "alice", 2)
    assert link(sw, "default", "replica1")["state"] == "live"
    assert main_pid(sandbox, "syncwarden-sync@replica1.service") == default_worker
    sandbox.run("syncwarden", "-i", "east", "resume", "replica2")
    assert wait_link(sw, "east", "replica2", "live")

    # each instance's reload reads its own file (ExecReload=syncwarden -i %i reload): a bad
    # one fails that reload alone, and a restart of one instance drains nothing anywhere
    good = sandbox.read_file(EAST_CONFIG)
    sandbox.write_file(EAST_CONFIG, good + "hooks: {user: root}\n")
    assert sandbox.systemctl("reload", "syncwarden@east", check=False).returncode != 0
    assert "hooks.user: the hook never runs as root" in sandbox.run(
        "systemctl", "status", "--no-pager", "-l", "-n", "20", "syncwarden@east",
        check=False).stdout
    sandbox.write_file(EAST_CONFIG, good)
    sandbox.systemctl("reload", "syncwarden@east", "syncwarden")
    east_worker = main_pid(sandbox, "syncwarden-sync@east:replica2.service")
    sandbox.systemctl("restart", "syncwarden@east")
    assert wait_link(sw, "east", "replica2", "live")
    assert main_pid(sandbox, "syncwarden-sync@east:replica2.service") == east_worker
    assert main_pid(sandbox, "syncwarden-sync@replica1.service") == default_worker

    # a user quarantined on the default instance is not quarantined on east
    sandbox.run("chmod", "000", lab.mbpath("replica1", "user.carol"))
    lab.deliver("carol", 2, "broken")
    lab.deliver("carol", 2, "fine", instance="east")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not sw.journal_messages(message_id=QUARANTINED):
        time.sleep(0.3)
    (q,) = sw.status()["quarantine"]
    assert q["user"] == "carol" and q["link"] == "replica1"
    assert lab.wait_messages("replica2", "carol", 2)
    east = json.loads(sandbox.run("syncwarden", "-i", "east", "status", "--json",
                                  check=False).stdout)      # (exit 1 when not all live)
    assert east["quarantine"] == [] and east["links"][0]["quarantined"] == 0
    assert sandbox.run("find", "/var/lib/syncwarden/east", "-name", "*.entries").stdout == ""

    # stopping east drains only east's link; the default daemon and its worker go on
    assert wait_link(sw, "default", "replica1", "live")
    default_daemon = main_pid(sandbox, "syncwarden.service")
    default_worker = main_pid(sandbox, "syncwarden-sync@replica1.service")   # restarted by the quarantine
    lab.deliver("alice", 3, "before-east-stop", instance="east")
    sandbox.systemctl("stop", "syncwarden@east")
    assert lab.wait_messages("replica2", "alice", 3, timeout=5)
    drains = sw.journal_messages(unit="syncwarden@east.service", message_id=DRAIN_STARTED)
    assert [e["SYNCWARDEN_LINK"] for e in drains] == ["replica2"]
    assert sw.journal_messages(unit="syncwarden.service", message_id=DRAIN_STARTED) == []
    assert main_pid(sandbox, "syncwarden.service") == default_daemon
    assert main_pid(sandbox, "syncwarden-sync@replica1.service") == default_worker
    assert link(sw, "default", "replica1")["state"] in ("live", "catching-up")
    assert not exists(sandbox, f"{lab.east_sync_dir('replica2')}/log")
