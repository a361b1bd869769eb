#!/usr/bin/python3
"""The narrated demo: a real Cyrus master with two replicas, supervised by syncwarden installed
from its .deb, under a real systemd in a throw-away container. Run by scripts/demo."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from system.cyruslab import CyrusLab  # noqa: E402
from system.sandbox import Sandbox, cleanup_stale  # noqa: E402
from system.swlab import Syncwarden, status_line, wait_same  # noqa: E402

USERS = ("bob", "alice", "carol", "dave", "erin")
BOLD, DIM, OFF = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{OFF}", flush=True)


def show(text: str) -> None:
    for line in text.rstrip().splitlines():
        print(f"   {line}", flush=True)


def cmd(sb, *argv) -> None:
    print(f"{DIM}   # {' '.join(argv)}{OFF}", flush=True)
    show(sb.run(*argv, check=False).stdout)


def build_deb() -> Path:
    out = REPO / "build" / "demo"
    subprocess.run([str(REPO / "packaging" / "build"), "deb", str(out)], check=True,
                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOLINT": "1", "NOCHECK": "1"},
                   stdout=subprocess.DEVNULL)
    return next((out / "deb").glob("syncwarden_*_all.deb"))


def transitions_since(sw, seen: int) -> int:
    entries = sw.transitions()
    for e in entries[seen:]:
        show(f"journal: link {e['SYNCWARDEN_LINK']}: {e['SYNCWARDEN_FROM']} -> "
             f"{e['SYNCWARDEN_TO']} ({e['SYNCWARDEN_REASON']})")
    return len(entries)


def main() -> int:
    say("Building the .deb from this checkout (packaging/build deb)")
    deb = build_deb()
    show(f"{deb.relative_to(REPO)}")
    cleanup_stale()
    say("Booting a throw-away systemd in a container (overlay of this machine, private network)")
    with Sandbox("swdemo") as sb:
        show(f"systemd {sb.boot_state} after {sb.boot_seconds:.1f}s")
        say("Creating a real Cyrus 3.6 master and two replicas inside it")
        lab = CyrusLab(sb)
        lab.setup()
        show("master    cyrus-imapd.service                IMAP 10143  LMTP 10024")
        show("replica1  cyrlab-replica@replica1.service   IMAP 11143  sync_server 11005")
        show("replica2  cyrlab-replica@replica2.service   IMAP 12143  sync_server 12005")

        say("Installing syncwarden the way an admin does: dpkg -i, edit the config, enable")
        sb.run("rm", "-f", "/usr/sbin/policy-rc.d")   # the host's own; a real system has none
        dest = sb.host_path(f"/root/{deb.name}")
        shutil.copy2(deb, dest)
        cmd(sb, "dpkg", "-i", f"/root/{deb.name}")
        sw = Syncwarden(sb, lab)
        sw.configure(interval="2s")
        cmd(sb, "cat", "/etc/syncwarden/syncwarden.yaml")
        cmd(sb, "syncwarden", "check-config")
        sb.systemctl("enable", "--now", "syncwarden")
        sw.wait_state("replica1", "live")
        sw.wait_state("replica2", "live")
        seen = transitions_since(sw, 0)
        show(f'systemctl status syncwarden:  Status: "{status_line(sb)}"')

        say("Delivering 100 messages over LMTP to 5 users on the master")
        lab.deliver_many(USERS, 20, "demo", sessions=2)
        for replica in ("replica1", "replica2"):
            same = wait_same(lab, replica, USERS) == {}
            show(f"{replica}: same UIDs and GUIDs as the master: {same}")

        say("replica2 goes away (its Cyrus is stopped)")
        lab.stop("replica2")
        sw.wait_state("replica2", "down")
        seen = transitions_since(sw, seen)
        lab.deliver_many(USERS, 10, "while-down")
        show("50 more messages delivered; replica1 gets them, replica2's are queued:")
        wait_same(lab, "replica1", USERS)
        time.sleep(1.5)
        cmd(sb, "syncwarden", "status")

        say("replica2 comes back: no operator, no 15-minute back-off")
        t0 = time.monotonic()
        lab.start("replica2")
        sw.wait_state("replica2", "live", timeout=30)
        took = time.monotonic() - t0
        seen = transitions_since(sw, seen)
        show(f"live again {took:.1f}s after its sync_server was started;"
             f" caught up: {wait_same(lab, 'replica2', USERS) == {}}")

        say("One user breaks on replica1 (its mailbox made unreadable): the others keep flowing")
        sb.run("chmod", "000", lab.mbpath("replica1", "user.carol"))
        lab.deliver_many(USERS, 3, "broken")
        deadline = time.monotonic() + 30
        while not sw.status()["quarantine"] and time.monotonic() < deadline:
            time.sleep(0.3)
        cmd(sb, "syncwarden", "quarantine", "list")
        others = [u for u in USERS if u != "carol"]
        show(f"the other users arrived on replica1: {wait_same(lab, 'replica1', others) == {}}")
        sb.run("chmod", "700", lab.mbpath("replica1", "user.carol"))
        show("repaired on the replica; retrying carol:")
        cmd(sb, "syncwarden", "quarantine", "retry", "carol")
        deadline = time.monotonic() + 30
        while sw.status()["quarantine"] and time.monotonic() < deadline:
            time.sleep(0.3)
        show(f"released; carol is complete on replica1: "
             f"{wait_same(lab, 'replica1', ['carol']) == {}}")

        say("A clean stop sends everything first: hold replica1, queue mail, stop the services")
        cmd(sb, "syncwarden", "hold", "replica1")
        sw.wait_state("replica1", "down")
        lab.deliver_many(USERS, 200, "queued", sessions=4)
        show(f"queued for replica1: {sw.link('replica1')['backlog']['entries']} entries")
        t0 = time.monotonic()
        sb.systemctl("stop", "cyrus-imapd", "syncwarden", timeout=300)
        show(f"systemctl stop cyrus-imapd syncwarden took {time.monotonic() - t0:.1f}s")
        for line in sb.journal(unit="syncwarden.service")[-6:]:
            show(f"journal: {line}")
        lab.start("master")
        show(f"replica1 has every message: {wait_same(lab, 'replica1', USERS) == {}}")
        say("Done. The container is removed; nothing on this machine was changed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
