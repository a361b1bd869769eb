"""The fault matrix's common parts (issue 11): a master and its replicas on hosts of their own
(netlab.py), mail delivered all the time, the final comparison, and the MATRIX line.

    pair = Pair(Sandbox(...)); pair.setup()
    with pair.delivering("partition-5s") as mail:      # LMTP to the master, ~20 messages/s
        ... fault ... t = heal ...
        mail.recover_s = pair.recovered(mail, t)        # every message accepted before t
    pair.settle(mail)   # on every replica; same GUIDs in every mailbox; check --deep in sync

Each run prints `MATRIX scenario=... delivered=N lost=N recover_s=X` (also at the end of the
pytest run, see conftest.py), the figures for the README's table.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from contextlib import contextmanager

import pytest

from .cyruslab import CyrusLab
from .labclient import user_of
from .netlab import NetLab
from .sandbox import Sandbox, cleanup_stale
from .swlab import STATE_CHANGE, Syncwarden, check_config

USERS = ("bob", "alice", "carol", "dave", "erin")
HOSTS = {"master": 1, "replica1": 2, "replica2": 3}
MASTER_UNITS = ("cyrus-imapd.service", "syncwarden.service", "syncwarden-sync@.service",
                "syncwarden-drain@.service", "syncwarden-user@.service",
                "syncwarden-check@.service")
RATE = 20                     # messages a second, round-robin over the users
LINES: list[str] = []          # MATRIX lines of this pytest run
_ids = itertools.count(1)

DRAIN_IDS = {"1298f2b758144975a8594738b542a373": "drain-started",
             "581662cb1fa54a15a0fc686c70a56e53": "drain-finished",
             "c11644a4ea7e4edb80dd7a5ec88a19aa": "drain-incomplete"}


def fixtures(name: str, **kw):
    """A matrix module's fixtures: `pair`, one container for the module (Pair(**kw)), and
    `healthy`, which starts each scenario from a healthy pair and dumps the journal after a
    failed one.  In the module: pair, healthy = fixtures("mxnet")."""
    @pytest.fixture(scope="module")
    def pair():
        cleanup_stale()
        p = Pair(Sandbox(f"{name}-{os.getpid()}"), **kw)
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

    return pair, healthy


def wait_for(what, timeout: float = 60, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s"
        time.sleep(step)


def daemon_entries(sb, cursor) -> list[dict]:
    """The daemon's journal entries after cursor.  Filtered here, not with journalctl -u: with
    a match and --after-cursor, journalctl 252 skips the first matching entry."""
    return [e for e in sb.journal(since_cursor=cursor, fields=True)
            if e.get("_SYSTEMD_UNIT") == "syncwarden.service"]


def states_since(sb, cursor, link: str) -> list[str]:
    """The states a link entered after the journal cursor."""
    return [e["SYNCWARDEN_TO"] for e in daemon_entries(sb, cursor)
            if e.get("MESSAGE_ID") == STATE_CHANGE and e.get("SYNCWARDEN_LINK") == link]


def drain_entries(sb, cursor) -> dict[str, tuple[str, int]]:
    """{link: (last drain outcome, entries left)} from the daemon's journal after cursor."""
    out = {}
    for e in daemon_entries(sb, cursor):
        what = DRAIN_IDS.get(e.get("MESSAGE_ID"))
        if what in ("drain-finished", "drain-incomplete"):
            out[e["SYNCWARDEN_LINK"]] = (what, int(e["SYNCWARDEN_ENTRIES_LEFT"]))
    return out


class Mail:
    """One scenario's delivery: its record file and what was measured."""

    def __init__(self, scenario: str, path: str):
        self.scenario, self.path = scenario, path
        self.recover_s: float | None = None
        self.notes: dict[str, str] = {}       # more figures for the MATRIX line
        self.accepted: list[str] = []       # Message-IDs, in the order the master took them


class Pair:
    def __init__(self, sandbox, replicas=("replica1", "replica2"), users=USERS,
                 spool_sizes=None, interval="1s", drain_timeout="20s", extra=""):
        self.sb = sandbox
        self.replicas = tuple(replicas)
        self.users = tuple(users)
        hosts = {n: HOSTS[n] for n in ("master",) + self.replicas}
        self.net = NetLab(sandbox, hosts)
        self.lab = CyrusLab(sandbox, replicas=self.replicas, users=self.users,
                            hosts=self.net.addrs(), spool_sizes=spool_sizes)
        self.sw = Syncwarden(sandbox, self.lab, netns="master")
        self.sw_kw = dict(interval=interval, drain_timeout=drain_timeout,
                          extra=check_config(self.lab, self.replicas) + extra)

    def setup(self) -> None:
        self.sb.start()
        self.net.create()
        self.net.join("master", MASTER_UNITS, boot=("cyrus-imapd.service", "syncwarden.service"),
                      volatile=("/run/syncwarden",))
        for r in self.replicas:
            unit = self.lab.unit(r)
            self.net.join(r, (unit,), boot=(unit,))
        self.lab.setup()
        self.sb.write_file("/etc/syncwarden/imap-credentials",
                           "user: cyrus\npassword: adminpw\n", mode=0o600)
        self.sw.setup(**self.sw_kw)
        self.sb.systemctl("enable", "syncwarden")
        assert self.wait_live(), self.sw.status()

    def wait_live(self, timeout: float = 30) -> bool:
        return all(self.sw.wait_state(r, "live", timeout) for r in self.replicas)

    # --- mail --------------------------------------------------------------------------------

    @contextmanager
    def delivering(self, scenario: str, users=None):
        """labclient stream to the master's LMTP from outside its host, recording every
        Message-ID it accepted."""
        n = next(_ids)
        mail = Mail(scenario, f"/var/lib/netlab/accepted-{n}.txt")
        self.sb.run("mkdir", "-p", "/var/lib/netlab")
        unit = self.lab.stream(users or self.users, rate=RATE, accepted=mail.path,
                               unit=f"lab-deliver-{n}")
        try:
            yield mail
        finally:
            self.sb.systemctl("stop", unit, check=False)
            mail.accepted = self.accepted(mail)

    def accepted(self, mail: Mail) -> list[str]:
        p = self.sb.host_path(mail.path)
        return p.read_text().split() if p.exists() else []

    def wait_accepted(self, mail: Mail, n: int, timeout: float = 30) -> None:
        """Until the master has accepted n more messages of this run."""
        start = len(self.accepted(mail))
        deadline = time.monotonic() + timeout
        while len(self.accepted(mail)) < start + n:
            assert time.monotonic() < deadline, f"the master accepted no {n} messages"
            time.sleep(0.1)

    def recovered(self, mail: Mail, since: float, replica: str = "replica1",
                  timeout: float = 120) -> float:
        """Seconds from `since` (epoch, the end of a fault) until every message accepted so
        far is on the replica."""
        n = len(self.accepted(mail))
        r = self.lab._client("arrived", self.lab.endpoint(replica), mail.path, n, "--since",
                             f"{since:.6f}", "--timeout", timeout, timeout=timeout + 60)
        assert r["ok"], f"{replica}: {r['missing']} of {r['wanted']} messages missing"
        return r["seconds"]

    # --- the verdict -------------------------------------------------------------------------

    def settle(self, mail: Mail, timeout: float = 90) -> int:
        """Every accepted message on every replica, the same GUIDs on both sides of every link
        (`syncwarden check --deep`), and the MATRIX line.  Returns the number lost."""
        lost = set()
        for r in self.replicas:
            answer = self.lab._client("arrived", self.lab.endpoint(r), mail.path,
                                      len(mail.accepted), "--timeout", timeout,
                                      timeout=timeout + 60)
            if not answer["ok"]:
                users = sorted({user_of(m) for m in mail.accepted})
                found = self.lab._client("ids", self.lab.endpoint(r), ",".join(users))
                lost |= {m for m in mail.accepted if m not in (found.get(user_of(m)) or {})}
        line = (f"MATRIX scenario={mail.scenario} delivered={len(mail.accepted)}"
                f" lost={len(lost)} recover_s="
                + ("-" if mail.recover_s is None else f"{mail.recover_s:.1f}")
                + "".join(f" {k}={v}" for k, v in mail.notes.items()))
        LINES.append(line)
        print(line)
        assert not lost, f"{len(lost)} accepted messages missing on a replica: {sorted(lost)[:5]}"
        for r in self.replicas:
            self.assert_in_sync(r)
        return len(lost)

    def assert_in_sync(self, link: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            r = self.sw.cli("check", link, "--deep", "--json", check=False, timeout=300)
            doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
            if doc.get("result") == "in-sync" or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert doc.get("result") == "in-sync", r.stdout[-3000:] + r.stderr
        return doc

    def healthy(self) -> None:
        """What each scenario starts from: every link live, nobody quarantined."""
        assert self.wait_live(60), self.sw.status()
        assert self.sw.status()["quarantine"] == []

    def dump(self) -> None:
        """The journal of a failed scenario (the container outlives the test)."""
        try:
            r = self.sb.run("journalctl", "--no-pager", "-n", "200", "-o", "short-monotonic",
                            "-u", "syncwarden*", check=False)
            print(f"--- syncwarden units of {self.sb.name} (last 200 lines) ---\n{r.stdout}")
            r = self.sw.cli("status", check=False)
            print(f"--- syncwarden status ---\n{r.stdout}{r.stderr}")
        except Exception as e:            # the dump must not hide the test's own failure
            print(f"(journal unavailable: {e})")
