"""A pair coordinated through a real etcd (issue 16), on the two-host lab (netlab.py).

    master    10.77.0.1   Cyrus "master" + syncwarden (default instance), pair host "host-a";
                          its Cyrus also runs a sync_server (port 10005), to become a replica
    replica1  10.77.0.2   Cyrus "replica1" + syncwarden -i r1, pair host "host-b", role replica;
                          its imapd.conf logs to channel "back" (10.77.0.1:10005), so that it can
                          replicate back once it is the master
    etcd      10.77.0.9   one etcd node (Debian's etcd-server), client port 23791, as the
                          unit etcd-lab.service
    (no host) syncwarden -i c and -i d: pair "mail2" (host-c master, host-d replica), whose
                          links lead nowhere: there for `fleet status` to list two pairs

Both daemons have ``coordination: {etcd: {endpoints: [http://10.77.0.9:23791]}, pair: mail1}``.
The workers of r1 run on replica1 too (instance drop-ins), so a partition cuts them as well.
"""

from __future__ import annotations

import json
import time

from .cyruslab import CyrusLab, SYNC_PW, SYNC_USER
from .netlab import NetLab
from .swlab import Syncwarden, check_config

USERS = ("bob", "alice", "carol")
HOSTS = {"master": 1, "replica1": 2, "etcd": 9}
ETCD = "http://10.77.0.9:23791"
ETCD_UNIT = "etcd-lab.service"
MASTER_SYNC_PORT = 10005
PAIR = "mail1"
NAMES = {"master": "host-a", "replica1": "host-b"}
TTL = "15s"
R1 = "r1"                                   # the replica host's syncwarden instance
SECOND_PAIR = {"c": ("host-c", "master"), "d": ("host-d", "replica")}   # instance: name, role
MASTER_UNITS = ("cyrus-imapd.service", "syncwarden.service", "syncwarden-sync@.service",
                "syncwarden-drain@.service", "syncwarden-user@.service",
                "syncwarden-verify-imap.service")     # failover's IMAP-only Cyrus (bench)
R1_UNITS = (f"syncwarden@{R1}.service", f"syncwarden-sync@{R1}:back.service",
            f"syncwarden-drain@{R1}:back.service", f"syncwarden-user@{R1}:back.service")
MASTER_KEY = "74b52afcc5564388b252fb4226878557"     # the master-key journal entry

ETCD_SERVICE = f"""\
[Unit]
Description=etcd of the syncwarden coordination tests

[Service]
ExecStart=/usr/bin/etcd --name lab --data-dir /var/lib/etcd-lab \\
  --listen-client-urls {ETCD} --advertise-client-urls {ETCD} \\
  --listen-peer-urls http://127.0.0.1:23801 --initial-advertise-peer-urls http://127.0.0.1:23801 \\
  --initial-cluster lab=http://127.0.0.1:23801
"""

COORDINATION = f"""\
coordination:
  etcd: {{endpoints: [{ETCD}], timeout: 1s}}
  pair: {PAIR}
  name: NAME
  ttl: {TTL}
"""


def config(role, imapd, service, link, host, port) -> str:
    name = NAMES["master" if role == "master" else "replica1"]
    return (f"role: {role}\ncyrus: {{imapd_conf: {imapd}, service: {service}}}\n"
            f"links:\n  {link}: {{host: {host}, port: {port}}}\n"
            "probe: {interval: 500ms, timeout: 1s}\ndrain: {timeout: 20s}\n"
            + COORDINATION.replace("NAME", name))


class CoordLab:
    def __init__(self, sandbox):
        self.sb = sandbox
        self.net = NetLab(sandbox, HOSTS)
        addrs = self.net.addrs()
        self.lab = CyrusLab(sandbox, replicas=("replica1",), users=USERS,
                            hosts={k: v for k, v in addrs.items() if k != "etcd"})
        self.sw = Syncwarden(sandbox, self.lab)          # installs; cli() picks the host

    # --- building ----------------------------------------------------------------------------
    def setup(self) -> None:
        self.sb.start()
        self.setup_started()

    def setup_started(self) -> None:
        """setup() in a container already booted (the benchmark's)."""
        sb, lab, net = self.sb, self.lab, self.net
        net.create()
        sb.write_file(f"/etc/systemd/system/{ETCD_UNIT}", ETCD_SERVICE)
        net.join("etcd", (ETCD_UNIT,), boot=(ETCD_UNIT,))
        net.join("master", MASTER_UNITS, boot=("cyrus-imapd.service", "syncwarden.service"),
                 volatile=("/run/syncwarden",))
        net.join("replica1", (lab.unit("replica1"),) + R1_UNITS,
                 boot=(lab.unit("replica1"), R1_UNITS[0]))
        lab.create()
        self._both_ways()
        lab.start_all()
        lab.create_mailbox("master", *(f"user.{u}" for u in USERS))
        sb.write_file("/etc/syncwarden/imap-credentials", "user: cyrus\npassword: adminpw\n",
                      mode=0o600)
        sb.systemctl("start", ETCD_UNIT)
        self.wait_etcd()
        self.sw.install()
        sb.write_file("/etc/syncwarden/syncwarden.yaml", config(
            "master", lab.conf("master"), "cyrus-imapd.service", "replica1",
            lab.addr("replica1"), lab.port("replica1", "sync"))
            # failover (the benchmark's by-hand path) reads host-a over IMAP on its loopback:
            # with Cyrus stopped it starts an IMAP-only Cyrus there, on host-a's network
            + check_config(lab, ("replica1",)).replace(
                f"host: {lab.addr('master')}, port: {lab.port('master', 'imap')}",
                f"host: 127.0.0.1, port: {lab.port('master', 'imap')}"))
        sb.write_file(f"/etc/syncwarden/{R1}.yaml", config(
            "replica", lab.conf("replica1"), lab.unit("replica1"), "back", lab.addr("master"),
            MASTER_SYNC_PORT))
        self._second_pair()
        sb.systemctl("start", "syncwarden.service", R1_UNITS[0], *(
            f"syncwarden@{i}.service" for i in SECOND_PAIR))

    def _second_pair(self) -> None:
        """Pair mail2 for `fleet status`: two more daemons (host-c master, host-d replica),
        each with a Cyrus config of its own whose one channel leads nowhere (its link stays
        down). Nothing else runs for them: they are there to be listed."""
        for inst, (name, role) in SECOND_PAIR.items():
            d = f"/srv/fleet/{inst}"
            self.sb.run("mkdir", "-p", f"{d}/conf/sync")
            self.sb.write_file(f"{d}/imapd.conf", (
                f"configdirectory: {d}/conf\nsync_log: on\nsync_log_channels: peer\n"
                "sync_try_imap: no\npeer_sync_host: 10.77.0.200\npeer_sync_port: 12005\n"))
            self.sb.write_file(f"/etc/syncwarden/{inst}.yaml", (
                f"role: {role}\ncyrus: {{imapd_conf: {d}/imapd.conf}}\n"
                "links: {peer: {host: 10.77.0.200, port: 12005}}\n"
                + COORDINATION.replace("NAME", name).replace(f"pair: {PAIR}", "pair: mail2")))

    def _both_ways(self) -> None:
        """The master's Cyrus gets a sync_server, the replica's a channel back to it."""
        lab = self.lab
        conf = self.sb.host_path(f"{lab.conf('master').rsplit('/', 1)[0]}/cyrus.conf")
        line = (f'  syncserver cmd="sync_server -C {lab.conf("master")}"'
                f' listen="{lab.addr("master")}:{MASTER_SYNC_PORT}" prefork=0\n')
        conf.write_text(conf.read_text().replace("}\nEVENTS", line + "}\nEVENTS", 1))
        imapd = self.sb.host_path(lab.conf("replica1"))
        imapd.write_text(imapd.read_text() + (
            "sync_log: on\nsync_log_channels: back\nsync_try_imap: no\n"
            f"back_sync_host: {lab.addr('master')}\nback_sync_port: {MASTER_SYNC_PORT}\n"
            f"back_sync_authname: {SYNC_USER}\nback_sync_password: {SYNC_PW}\n"
            "back_sync_repeat_interval: 1\n"))

    # --- etcd --------------------------------------------------------------------------------
    def etcdctl(self, *args, check=True):
        return self.sb.run("env", "ETCDCTL_API=3", "etcdctl", f"--endpoints={ETCD}",
                           "--dial-timeout=1s", "--command-timeout=2s", *args, check=check)

    def wait_etcd(self, timeout: float = 30) -> None:
        wait(lambda: self.etcdctl("endpoint", "health", check=False).returncode == 0, timeout)

    def holder(self) -> str | None:
        out = self.etcdctl("get", "--print-value-only", f"/syncwarden/pairs/{PAIR}/master").stdout
        return json.loads(out)["host"] if out.strip() else None

    def etcd_doc(self, name: str) -> dict:
        """The pair's switchover request or handover (keys.py), {} when there is none."""
        out = self.etcdctl("get", "--print-value-only", f"/syncwarden/pairs/{PAIR}/{name}").stdout
        return json.loads(out) if out.strip() else {}

    # --- the two daemons ---------------------------------------------------------------------
    def cli(self, host: str, *args, check=True, timeout=120):
        inst = ["-i", R1] if host == "replica1" else []
        return self.sb.run(*self.net.netns(host), "syncwarden", *inst, *args, check=check,
                           timeout=timeout)

    def status(self, host: str) -> dict:
        r = self.cli(host, "status", "--json", check=False)
        try:
            return json.loads(r.stdout)
        except ValueError:
            return {}

    def link(self, host: str) -> dict:
        links = self.status(host).get("links") or [{}]
        return links[0]

    def coordination(self, host: str) -> dict:
        return self.status(host).get("coordination") or {}

    def sync_clients(self, link: str) -> list[int]:
        out = self.sb.run("pgrep", "-f", f"sync_client .* -n {link}( |$)", check=False).stdout
        return [int(p) for p in out.split()]

    def key_entries(self, unit: str) -> list[dict]:
        return [e for e in self.sb.journal(unit=unit, fields=True)
                if e.get("MESSAGE_ID") == MASTER_KEY]

    def dump(self) -> None:
        try:
            r = self.sb.run("journalctl", "--no-pager", "-n", "150", "-o", "short-monotonic",
                            "-u", "syncwarden*", "-u", ETCD_UNIT, check=False)
            print(f"--- journal of {self.sb.name} ---\n{r.stdout}")
            for host in ("master", "replica1"):
                print(f"--- status on {host} ---\n{self.cli(host, 'status', check=False).stdout}")
        except Exception as e:            # the dump must not hide the test's own failure
            print(f"(journal unavailable: {e})")


def wait(what, timeout: float = 30, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s"
        time.sleep(step)
