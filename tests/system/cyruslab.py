"""A Cyrus IMAP 3.6 master and N replicas inside a Sandbox, run by the container's systemd.

Layout (container paths), one folder per instance under /srv/cyrlab/<name>/:
    imapd.conf  cyrus.conf  sasldb2  conf/{db,proc,lock,log,msg,socket,sync,user,quota,sieve}/
    spool/  sieve/
Ports on 127.0.0.1 (the container's own loopback):
    master       IMAP 10143  LMTP 10024
    replica i    IMAP 1i143  LMTP 1i024  sync_server 1i005   (replica1: 11143 11024 11005)
In the two-host lab (netlab.py) each instance listens on its host's address instead (hosts=), and
the master's channels point there.  spool_sizes= gives an instance's spool a small filesystem of
its own (a size-limited tmpfs), to fill up.
Units: cyrus-imapd.service runs the master (it replaces Debian's unit of that name, because the
product orders itself Before=cyrus-imapd.service); cyrlab-replica@<name>.service runs a replica.
Logins: admin cyrus/adminpw, sync user repl/replpw (admin everywhere), users with password "pw".

All IMAP/LMTP traffic runs inside the container through labclient.py (see there).
"""

from __future__ import annotations

import json
from pathlib import Path

from .sandbox import CommandError

ROOT = "/srv/cyrlab"
BIN = "/usr/lib/cyrus/bin"
DEFAULT_USERS = ("bob", "alice", "carol", "dave", "erin")
ADMIN, ADMIN_PW, SYNC_USER, SYNC_PW, USER_PW = "cyrus", "adminpw", "repl", "replpw", "pw"
CONF_SUBDIRS = ("db", "proc", "lock", "log", "msg", "socket", "sync", "user", "quota", "sieve")
LABCLIENT = Path(__file__).with_name("labclient.py")

# Every path and socket of an instance lives in its folder: Debian's /etc/imapd.conf points
# proc_path, locks and sockets at /run/cyrus, which instances would otherwise share.
IMAPD_CONF = """\
configdirectory: {d}/conf
defaultpartition: default
partition-default: {d}/spool
sievedir: {d}/sieve
servername: lab-{name}
syslog_prefix: lab-{name}
admins: {admin} {sync_user}
altnamespace: no
unixhierarchysep: no
hashimapspool: no
lmtp_downcase_rcpt: yes
lmtpsocket: {d}/conf/socket/lmtp
idlesocket: {d}/conf/socket/idle
notifysocket: {d}/conf/socket/notify
proc_path: {d}/conf/proc
mboxname_lockpath: {d}/conf/lock
allowplaintext: yes
# No saslauthd and no "alwaystrue" in Debian's libsasl2: PLAIN against a private sasldb.
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {d}/sasldb2
sasl_mech_list: PLAIN
"""

MASTER_SYNC = """\
sync_log: on
sync_log_channels: {channels}
sync_try_imap: no
"""

CHANNEL = """\
{link}_sync_host: {host}
{link}_sync_port: {port}
{link}_sync_authname: {sync_user}
{link}_sync_password: {sync_pw}
{link}_sync_repeat_interval: 1
"""

# master does not pass -C on to its children: without their own -C they would silently use
# /etc/imapd.conf and Debian's /var/lib/cyrus.
CYRUS_CONF = """\
START {{
  recover cmd="ctl_cyrusdb -C {conf} -r"
}}
SERVICES {{
  imap     cmd="imapd -C {conf}" listen="{addr}:{imap}" prefork=0
  lmtp     cmd="lmtpd -C {conf} -a" listen="{addr}:{lmtp}" prefork=0
  lmtpunix cmd="lmtpd -C {conf}" listen="{d}/conf/socket/lmtp" prefork=0
{sync_service}}}
EVENTS {{
  checkpoint cmd="ctl_cyrusdb -C {conf} -c" period=30
}}
DAEMON {{
}}
"""
SYNC_SERVICE = '  syncserver cmd="sync_server -C {conf}" listen="{addr}:{sync}" prefork=0\n'

# master runs in the foreground (no -d).  It cannot create its pidfile in /run as cyrus, so a
# privileged ("+") ExecStartPre makes it first.
UNIT = """\
[Unit]
Description=Cyrus IMAP lab {what} (syncwarden system tests)
After=network.target

[Service]
Type=simple
User=cyrus
Group=mail
ExecStartPre=+/usr/bin/install -o cyrus -g mail -m 644 /dev/null /run/cyrlab-{inst}.pid
ExecStart={bin}/master -C {root}/{inst}/imapd.conf -M {root}/{inst}/cyrus.conf -p /run/cyrlab-{inst}.pid
TimeoutStopSec=20

[Install]
WantedBy=multi-user.target
"""


class LabError(RuntimeError):
    pass


class CyrusLab:
    def __init__(self, sandbox, replicas=("replica1", "replica2"), users=DEFAULT_USERS,
                 hosts=None, spool_sizes=None):
        self.sb = sandbox
        self.replicas = tuple(replicas)
        self.users = tuple(users)
        self.hosts = dict(hosts or {})            # instance -> its address (default 127.0.0.1)
        self.spool_sizes = dict(spool_sizes or {})  # instance -> tmpfs size of its spool
        self.names = ("master",) + self.replicas
        self.master_conf = self.conf("master")
        self.labclient = f"{ROOT}/labclient.py"

    # --- names, paths, ports -----------------------------------------------------------------

    def ports(self, name: str) -> dict[str, int]:
        if name == "master":
            return {"imap": 10143, "lmtp": 10024}
        i = self.replicas.index(name) + 1
        return {"imap": 10143 + 1000 * i, "lmtp": 10024 + 1000 * i, "sync": 10005 + 1000 * i}

    def port(self, name: str, which: str = "imap") -> int:
        return self.ports(name)[which]

    def addr(self, name: str) -> str:
        return self.hosts.get(name, "127.0.0.1")

    def endpoint(self, name: str, which: str = "imap") -> str:
        """"HOST:PORT", as labclient.py takes it."""
        return f"{self.addr(name)}:{self.port(name, which)}"

    def spool(self, name: str) -> str:
        return f"{ROOT}/{name}/spool"

    def unit(self, name: str) -> str:
        if name == "master":
            return "cyrus-imapd.service"
        self.replicas.index(name)           # ValueError for a name that is not ours
        return f"cyrlab-replica@{name}.service"

    def conf(self, name: str) -> str:
        return f"{ROOT}/{name}/imapd.conf"

    def sync_dir(self, link: str) -> str:
        """The master's sync log folder for a link (container path): log, log-run live here."""
        return f"{ROOT}/master/conf/sync/{link}"

    # --- setup -------------------------------------------------------------------------------

    def create(self) -> None:
        """Write configs, folders, sasldb files and units; then daemon-reload.  Starts nothing."""
        sb = self.sb
        for name in self.names:
            d = f"{ROOT}/{name}"
            for sub in [f"conf/{s}" for s in CONF_SUBDIRS] + ["spool", "sieve"]:
                sb.host_path(f"{d}/{sub}").mkdir(parents=True, exist_ok=True)
            p = self.ports(name)
            text = IMAPD_CONF.format(d=d, name=name, admin=ADMIN, sync_user=SYNC_USER)
            if name == "master" and self.replicas:
                text += MASTER_SYNC.format(channels=" ".join(self.replicas))
                for link in self.replicas:
                    text += CHANNEL.format(link=link, host=self.addr(link),
                                           port=self.port(link, "sync"),
                                           sync_user=SYNC_USER, sync_pw=SYNC_PW)
            sb.write_file(self.conf(name), text)
            addr = self.addr(name)
            sync = (SYNC_SERVICE.format(conf=self.conf(name), addr=addr, sync=p["sync"])
                    if "sync" in p else "")
            sb.write_file(f"{d}/cyrus.conf", CYRUS_CONF.format(
                conf=self.conf(name), d=d, addr=addr, imap=p["imap"], lmtp=p["lmtp"],
                sync_service=sync))
        sb.write_file("/etc/systemd/system/cyrus-imapd.service",
                      UNIT.format(what="master", inst="master", bin=BIN, root=ROOT))
        sb.write_file("/etc/systemd/system/cyrlab-replica@.service",
                      UNIT.format(what="replica %i", inst="%i", bin=BIN, root=ROOT))
        sb.write_file(self.labclient, LABCLIENT.read_text(), mode=0o755)
        # sasldb: one saslpasswd2 per login, all in one call.  The realm must be the instance's
        # servername, or the login fails with "user not found".
        logins = [(ADMIN, ADMIN_PW), (SYNC_USER, SYNC_PW)] + [(u, USER_PW) for u in self.users]
        script = ["set -e"]
        for name in self.names:
            for user, pw in logins:
                script.append(f"printf %s {pw} | saslpasswd2 -p -c -f {ROOT}/{name}/sasldb2 "
                              f"-u lab-{name} {user} 2>/dev/null")
            script.append(f"chmod 640 {ROOT}/{name}/sasldb2")
        for name, size in self.spool_sizes.items():
            # mounted before Cyrus writes anything there; gone with the container
            script.append(f"mount -t tmpfs -o size={size},mode=0750 tmpfs {self.spool(name)}")
        script += [f"chown -R cyrus:mail {ROOT}", "systemctl daemon-reload"]
        sb.sh("\n".join(script))

    def setup(self) -> None:
        """create(), start every instance, and create the users' INBOXes on the master."""
        self.create()
        self.start_all()
        if self.users:
            self.create_mailbox("master", *(f"user.{u}" for u in self.users))

    # --- instances ---------------------------------------------------------------------------

    def start(self, name: str, timeout: float = 15) -> None:
        self.sb.systemctl("start", self.unit(name))
        self._wait_up([name], timeout)

    def start_all(self, timeout: float = 15) -> None:
        self.sb.systemctl("start", *(self.unit(n) for n in self.names))
        self._wait_up(self.names, timeout)

    def _wait_up(self, names, timeout) -> None:
        ports = [self.endpoint(n, w) for n in names for w in self.ports(n)]
        if not self._client("port", *ports, "--timeout", timeout)["ok"]:
            logs = "\n".join(self.sb.journal(lines=40))
            raise LabError(f"{names}: ports {ports} not all open after {timeout}s\n{logs}")

    def stop(self, name: str) -> None:
        self.sb.systemctl("stop", self.unit(name))

    def stop_all(self) -> None:
        self.sb.systemctl("stop", *(self.unit(n) for n in self.names))

    def kill(self, name: str, sig: str = "KILL") -> None:
        """Signal every process of the instance's unit (master and its children)."""
        self.sb.systemctl("kill", f"--signal={sig}", "--kill-who=all", self.unit(name))

    def is_up(self, name: str) -> bool:
        """Unit active and its IMAP port accepting connections."""
        unit_ok = self.sb.systemctl("is-active", "-q", self.unit(name), check=False).returncode == 0
        return unit_ok and self.wait_port(name, "imap", timeout=0)

    def wait_port(self, name: str, which: str = "imap", timeout: float = 10, closed=False) -> bool:
        """Wait until the port accepts connections (closed=True: refuses them)."""
        args = ["--timeout", timeout] + (["--closed"] if closed else [])
        return self._client("port", self.endpoint(name, which), *args)["ok"]

    def sync_client(self, link: str, *args, check=True, timeout=120):
        """Run sync_client -C <master imapd.conf> -n link ARGS once, as the cyrus user."""
        return self.sb.run(f"{BIN}/sync_client", "-C", self.master_conf, "-n", link, *args,
                           user="cyrus", check=check, timeout=timeout)

    def mbpath(self, name: str, mailbox: str) -> str:
        return self.sb.run(f"{BIN}/mbpath", "-C", self.conf(name), mailbox,
                           user="cyrus").stdout.strip()

    # --- mail --------------------------------------------------------------------------------

    def create_mailbox(self, name: str, *mailboxes: str) -> None:
        """Admin CREATE, e.g. create_mailbox("master", "user.bob", "user.bob.Sent")."""
        r = self._client("create", self.endpoint(name), *mailboxes)
        if r["failed"]:
            raise LabError(f"{name}: CREATE failed: {r['failed']}")

    def deliver(self, user: str, n: int, tag: str, instance="master", sessions=1) -> list[str]:
        """LMTP-deliver n messages to user; returns the Message-IDs that were accepted.

        Subjects read "<tag> <i> t=<epoch float>" (the time of delivery, to measure lag)."""
        return self.deliver_many([user], n, tag, instance, sessions)[user]

    def deliver_many(self, users, n: int, tag: str, instance="master", sessions=1) -> dict:
        """n messages to each user over `sessions` parallel LMTP sessions: {user: [message-id]}."""
        r = self._client("deliver", self.endpoint(instance, "lmtp"), ",".join(users), n, tag,
                         "--sessions", sessions, timeout=600)
        return r["accepted"]

    def stream(self, users, seconds: float | None = None, rate: float | None = None,
               accepted: str | None = None, instance="master", unit="lab-deliver") -> str:
        """Continuous round-robin LMTP delivery to users, in the background inside the
        container as the transient unit `unit` (labclient stream): for `seconds` (default until
        the unit is stopped), at most `rate` per second; each accepted Message-ID appended to
        the container file `accepted`. Returns the unit's name."""
        args = [self.labclient, "stream", self.endpoint(instance, "lmtp"), ",".join(users)]
        for flag, value in (("--seconds", seconds), ("--rate", rate), ("--accepted", accepted)):
            if value is not None:
                args += [flag, value]
        self.sb.run("systemd-run", f"--unit={unit}", "--quiet", "/usr/bin/python3", *args)
        return unit

    def append(self, instance: str, user: str, folder: str, n: int, tag: str) -> None:
        """IMAP APPEND n messages as user to folder (created if missing), e.g. "INBOX.Sent"."""
        self._client("append", self.endpoint(instance), user, folder, n, tag)

    def messages(self, instance: str, user: str, folder="INBOX") -> list[tuple[int, str]]:
        """Sorted (uid, guid) of a user's folder; [] if the folder does not exist there."""
        return self.messages_many(instance, [user], folder)[user]

    def messages_many(self, instance: str, users, folder="INBOX") -> dict:
        r = self._client("messages", self.endpoint(instance), ",".join(users), "--folder", folder)
        return {u: [tuple(x) for x in (rows or [])] for u, rows in r.items()}

    def status(self, instance: str, user: str, folder="INBOX") -> dict | None:
        """{messages, uidnext, uidvalidity, highestmodseq, mailboxid}; None if no such folder."""
        return self._client("status", self.endpoint(instance), user, "--folder", folder)

    def wait_messages(self, instance: str, user, count: int, timeout: float = 30,
                      folder="INBOX") -> bool:
        """Poll (every 50 ms, inside) until user (or each of a list of users) has >= count."""
        users = [user] if isinstance(user, str) else list(user)
        return self._client("wait", self.endpoint(instance), ",".join(users), count,
                            "--timeout", timeout, "--folder", folder, timeout=timeout + 60)["ok"]

    def _client(self, *args, timeout=120):
        r = self.sb.run("/usr/bin/python3", self.labclient, *args, timeout=timeout, check=False)
        if r.returncode == 3:         # could not talk to the server (down, restarting ...)
            raise LabError(f"labclient {args[0]} port {args[1]}: {json.loads(r.stdout)['error']}")
        if r.returncode != 0:
            raise CommandError(r.returncode, r.args, r.stdout, r.stderr)
        return json.loads(r.stdout)
