"""syncwarden inside a Sandbox, installed as a user would: `make install`, `systemctl start`."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = "/srv/syncwarden-src"   # the checkout, as seen inside the container
CONFIG = "/etc/syncwarden/syncwarden.yaml"
STATE_CHANGE = "9188708125f0471ca551bf5b2bf38e93"

BASE_CONFIG = """\
cyrus: {{imapd_conf: /srv/cyrlab/master/imapd.conf}}
links:
{links}
probe: {{interval: {interval}, timeout: 1s}}
live: {{max_backlog: 1000, max_lag: 30s}}
drain: {{timeout: {drain_timeout}}}
"""


def check_config(lab, links) -> str:
    """The `check:` section for check, repair and failover: the lab's IMAP ports, plain."""
    rows = "".join(f"    {n}: {{host: {lab.addr(n)}, port: {lab.port(n, 'imap')}, tls: none}}\n"
                   for n in links)
    return ("check:\n  credentials: /etc/syncwarden/imap-credentials\n"
            f"  master: {{host: {lab.addr('master')}, port: {lab.port('master', 'imap')},"
            " tls: none}\n"
            f"  replicas:\n{rows}")


class Syncwarden:
    def __init__(self, sandbox, lab, netns: str | None = None):
        """netns: the network namespace of the master's host (netlab.py), where the CLI runs."""
        self.sb, self.lab = sandbox, lab
        self.prefix = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []

    def install(self) -> None:
        """`make install` from a checkout. The checkout is copied in through the overlay's upper
        layer: files changed on the host after the container booted may not show through the
        overlay's lower layer (overlayfs does not promise it)."""
        src = self.sb.host_path(SRC)
        for part in ("supervisor", "units", "config"):
            shutil.copytree(REPO / part, src / part, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(REPO / "Makefile", src / "Makefile")
        self.sb.run("make", "-s", "-C", SRC, "install")

    def configure(self, links=None, interval="1s", drain_timeout="60s", extra="") -> None:
        names = links or self.lab.replicas
        lab = self.lab
        body = "\n".join(f"  {n}: {{host: {lab.addr(n)}, port: {lab.port(n, 'sync')}}}"
                         for n in names)
        self.sb.write_file(CONFIG, BASE_CONFIG.format(links=body, interval=interval,
                                                      drain_timeout=drain_timeout) + extra)

    def setup(self, **kw) -> None:
        self.install()
        self.configure(**kw)
        self.sb.systemctl("start", "syncwarden")

    def cli(self, *args, check=True, timeout=120):
        return self.sb.run(*self.prefix, "syncwarden", *args, check=check, timeout=timeout)

    def status(self) -> dict:
        r = self.cli("status", "--json", check=False)
        return json.loads(r.stdout)

    def link(self, name: str) -> dict:
        return next(x for x in self.status()["links"] if x["name"] == name)

    def wait_state(self, name: str, state: str, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.link(name)["state"] == state:
                    return True
            except (ValueError, StopIteration, KeyError):
                pass   # daemon (re)starting
            time.sleep(0.2)
        return False

    def transitions(self, name: str | None = None) -> list[dict]:
        """State-change journal entries of the daemon, as field dicts."""
        entries = self.sb.journal(unit="syncwarden.service", fields=True)
        return [e for e in entries if e.get("MESSAGE_ID") == STATE_CHANGE
                and (name is None or e.get("SYNCWARDEN_LINK") == name)]

    def path(self, name: str) -> list[tuple[str, str]]:
        return [(e["SYNCWARDEN_FROM"], e["SYNCWARDEN_TO"]) for e in self.transitions(name)]

    def sync_clients(self, link: str) -> list[int]:
        """PIDs of rolling sync_client processes for a link, found by their command line."""
        out = self.sb.run("pgrep", "-f", f"sync_client .* -R -n {link} ", check=False).stdout
        return [int(p) for p in out.split()]

    def main_pid(self) -> int:
        out = self.sb.run("systemctl", "show", "-p", "MainPID", "--value", "syncwarden").stdout
        return int(out.strip() or 0)

    def journal_messages(self, unit="syncwarden.service", message_id=None) -> list[dict]:
        entries = self.sb.journal(unit=unit, fields=True)
        return [e for e in entries if message_id is None or e.get("MESSAGE_ID") == message_id]


def log_lines(sb, lab, link: str) -> dict[str, int]:
    """Lines in the channel's log and log-run (0 when absent), read from the host side."""
    out = {}
    for name in ("log", "log-run"):
        p = sb.host_path(f"{lab.sync_dir(link)}/{name}")
        out[name] = len(p.read_bytes().splitlines()) if p.exists() else 0
    return out


def same_messages(lab, replica: str, users) -> dict[str, tuple[int, int]]:
    """Users whose (uid, guid) lists differ between master and replica: {user: (m, r) counts}."""
    m = lab.messages_many("master", users)
    r = lab.messages_many(replica, users)
    return {u: (len(m[u]), len(r[u])) for u in users if m[u] != r[u]}


def wait_same(lab, replica: str, users, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        diff = same_messages(lab, replica, users)
        if not diff or time.monotonic() > deadline:
            return diff
        time.sleep(0.5)


def status_line(sb) -> str:
    out = sb.run("systemctl", "status", "--no-pager", "syncwarden", check=False).stdout
    m = re.search(r'Status: "([^"]*)"', out)
    return m.group(1) if m else ""
