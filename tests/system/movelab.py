"""Two Cyrus stores for user moves (issue 15): the lab of tests/system/test_moves.py and of
bench/move_bench.py.

Two Cyrus masters, each with its own replica under its own syncwarden daemon: the default
instance ("master" -> replica1) and the instance "east" ("east" -> replica2). The default
instance's imapd.conf has a channel "east" to east's sync_server (the store), and both masters
run an extra imapd on loopback ("imapverify", ports 24143 and 24243) that the lock leaves open
for the deep verify. Mail reaches the users through moverouter.py, a small MTA that follows the
routing map the reference switch hook rewrites, and queues what a locked store refuses with 451.
"""

from __future__ import annotations

from . import cyruslab as cl
from .swlab import BASE_CONFIG

USERS = ("bob", "alice", "carol", "dave", "erin", "frank")
EAST_CONFIG = "/etc/syncwarden/east.yaml"
ROUTES = "/srv/cyrlab/routes"
ROUTER = "/srv/cyrlab/moverouter.py"
ACCEPTED = "/srv/cyrlab/accepted"
STOP = "/srv/cyrlab/router-stop"
HOOK = "/usr/local/share/syncwarden/hooks/routing-map-hook"
VERIFY = {"master": 24143, "east": 24243}
EAST_SYNC = 24005
FOLDERS = ("INBOX", "INBOX.Sent", "INBOX.Archive")
MOVE_PHASE = "153b693b77ee4ecba663d5e594bf559d"
VERIFY_SERVICE = '  imapverify cmd="imapd -C {conf}" listen="127.0.0.1:{port}" prefork=0\n'


class TwoStores(cl.CyrusLab):
    """master -> replica1 and east -> replica2; east also runs a sync_server (the store)."""

    def __init__(self, sandbox, users=USERS):
        super().__init__(sandbox, replicas=("replica1", "replica2"), users=users)
        self.names = ("master", "east", "replica1", "replica2")

    def ports(self, name):
        if name == "east":
            return {"imap": 13143, "lmtp": 13024, "sync": EAST_SYNC, "verify": VERIFY["east"]}
        if name == "master":
            return {**super().ports(name), "verify": VERIFY["master"]}
        return super().ports(name)

    def unit(self, name):
        return "cyrlab-replica@east.service" if name == "east" else super().unit(name)

    def create(self):
        super().create()
        channels = {"master": ["replica1"], "east": ["replica2"]}
        for name in ("master", "east"):
            d = f"{cl.ROOT}/{name}"
            text = cl.IMAPD_CONF.format(d=d, name=name, admin=cl.ADMIN, sync_user=cl.SYNC_USER)
            text += cl.MASTER_SYNC.format(channels=" ".join(channels[name]))
            links = channels[name] + (["east"] if name == "master" else [])
            for link in links:
                port = EAST_SYNC if link == "east" else self.port(link, "sync")
                text += cl.CHANNEL.format(link=link, host="127.0.0.1", port=port,
                                          sync_user=cl.SYNC_USER, sync_pw=cl.SYNC_PW)
            self.sb.write_file(self.conf(name), text)
            p = self.ports(name)
            extra = VERIFY_SERVICE.format(conf=self.conf(name), port=p["verify"])
            if "sync" in p:
                extra += cl.SYNC_SERVICE.format(conf=self.conf(name), addr="127.0.0.1",
                                                sync=p["sync"])
            self.sb.write_file(f"{d}/cyrus.conf", cl.CYRUS_CONF.format(
                conf=self.conf(name), d=d, addr="127.0.0.1", imap=p["imap"], lmtp=p["lmtp"],
                sync_service=extra))
        self.sb.sh(f"chown -R cyrus:mail {cl.ROOT}")

    def ids(self, port: int, user: str, folder="INBOX") -> dict | None:
        """{message-id: guid} of a user's folder read at a port (None: no such folder)."""
        return self._client("ids", port, user, "--folder", folder)[user]

    def login(self, port: int, user: str) -> str:
        """The user's own LOGIN with its password: "OK" or the server's refusal."""
        script = ("import imaplib,sys\nm=imaplib.IMAP4('127.0.0.1',int(sys.argv[1]))\n"
                  "try:\n print(m.login(sys.argv[2],'pw')[0]); m.logout()\n"
                  "except Exception as e:\n print('refused: %s' % e)\n")
        return self.sb.run("/usr/bin/python3", "-c", script, port, user).stdout.strip()


def default_config(lab, lock_timeout="30s", hook=None, east_imap=None) -> str:
    """``east_imap``: another port for the verify to read "east" at (a store that differs)."""
    links = f"  replica1: {{host: 127.0.0.1, port: {lab.port('replica1', 'sync')}}}"
    hook = hook or f"ROUTING_MAP={ROUTES} {HOOK}"
    return BASE_CONFIG.format(links=links, interval="1s", drain_timeout="60s") + f"""\
check:
  credentials: /etc/syncwarden/imap-credentials
  master: {{host: 127.0.0.1, port: {VERIFY['master']}, tls: none}}
stores:
  east:
    imapd_conf: /srv/cyrlab/east/imapd.conf
    imap: {{host: 127.0.0.1, port: {east_imap or VERIFY['east']}, tls: none}}
move:
  switch_hook: '{hook}'
  lock_timeout: {lock_timeout}
  verify_service: imapverify
"""


def east_config(lab) -> str:
    return BASE_CONFIG.format(
        links=f"  replica2: {{host: 127.0.0.1, port: {lab.port('replica2', 'sync')}}}",
        interval="1s", drain_timeout="60s").replace(
        "/srv/cyrlab/master/imapd.conf", "/srv/cyrlab/east/imapd.conf")


def setup_stores(sb, users=USERS):
    """In a booted Sandbox: the lab started, the users' INBOXes on the master, syncwarden
    installed with both instances' configs and the admin credentials, the router in place,
    both daemons started. Returns (lab, Syncwarden)."""
    from .swlab import Syncwarden

    lab = TwoStores(sb, users)
    lab.create()
    lab.start_all()
    lab.create_mailbox("master", *(f"user.{u}" for u in users))
    sw = Syncwarden(sb, lab)
    sw.install()
    sb.write_file("/etc/syncwarden/imap-credentials", "user: cyrus\npassword: adminpw\n",
                  mode=0o600)
    sb.write_file("/etc/syncwarden/syncwarden.yaml", default_config(lab))
    sb.write_file(EAST_CONFIG, east_config(lab))
    sb.write_file(ROUTER, (cl.LABCLIENT.parent / "moverouter.py").read_text(), mode=0o755)
    sb.systemctl("start", "syncwarden", "syncwarden@east")
    return lab, sw
