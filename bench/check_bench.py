#!/usr/bin/python3
"""Benchmark: `syncwarden check` and `check --deep` against a full `sync_client -A` pass.

200 users x 5 mailboxes x 20 messages (1,000 mailboxes, 20,000 messages) on a real Cyrus 3.6
master, replicated to a real replica, in a systemd container (the system tests' harness; needs
root). Timed in the same run, over the same data:
  - sync_client -A, first pass (copies everything to the empty replica),
  - sync_client -A, second pass (the pair is in sync: Cyrus compares every mailbox, sends nothing),
  - syncwarden check (mailboxes/s) and check --deep (messages/s), both sides read over IMAP.
Each is timed from the host around the same kind of call (a process started in the container).
Target (issue 17): the shallow check no slower than the in-sync `sync_client -A` pass.
Usage: bench/check_bench.py [USERS] [MAILBOXES] [MESSAGES]
"""

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.system.cyruslab import CyrusLab  # noqa: E402
from tests.system.sandbox import Sandbox, cleanup_stale  # noqa: E402
from tests.system.swlab import Syncwarden  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from benchlib import machine_note  # noqa: E402

FOLDERS = ("Sent", "Archive", "Lists", "Work")
CHECK = """\
check:
  credentials: /etc/syncwarden/imap-credentials
  master: {host: 127.0.0.1, port: 10143, tls: none}
  replicas: {replica1: {host: 127.0.0.1, port: 11143, tls: none}}
"""
# Runs inside the container: APPEND the messages as each user, 8 sessions at a time.
POPULATE = r"""
import imaplib, socket, sys, uuid
from concurrent.futures import ThreadPoolExecutor
users, folders, n = sys.argv[1].split(","), sys.argv[2].split(","), int(sys.argv[3])
def one(user):
    m = imaplib.IMAP4("127.0.0.1", 10143)
    m.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # else 40 ms per APPEND
    m.authenticate("PLAIN", lambda _: f"{user}\0cyrus\0adminpw".encode())
    for folder in folders:
        for i in range(n):
            body = (f"From: bench@cyrlab.test\r\nTo: {user}@cyrlab.test\r\nSubject: {folder} {i}"
                    f"\r\nMessage-ID: <{uuid.uuid4()}@bench>\r\n\r\nmessage {i} of {folder}\r\n")
            flags = "(\\Seen)" if i % 3 else None
            typ, data = m.append(folder, flags, None, body.encode())
            assert typ == "OK", data
    m.logout()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(one, users))
"""


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main(argv) -> int:
    n_users, n_boxes, n_msgs = (int(a) for a in (argv + ["200", "5", "20"][len(argv):]))
    users = [f"u{i:04d}" for i in range(n_users)]
    folders = ["INBOX"] + [f"INBOX.{f}" for f in FOLDERS[:n_boxes - 1]]
    mailboxes, messages = n_users * len(folders), n_users * len(folders) * n_msgs
    cleanup_stale()
    with Sandbox("swcheckbench", tmpfs_size="6g") as sb:
        t0 = time.perf_counter()
        lab = CyrusLab(sb, replicas=("replica1",), users=users)
        lab.setup()
        lab.create_mailbox("master", *(f"user.{u}.{f}" for u in users
                                       for f in FOLDERS[:n_boxes - 1]))
        sb.run("/usr/bin/python3", "-c", POPULATE, ",".join(users), ",".join(folders), n_msgs,
               timeout=1800)
        sb.run("rm", "-f", f"{lab.sync_dir('replica1')}/log")   # -A below sends it all anyway
        setup = time.perf_counter() - t0
        sw = Syncwarden(sb, lab)
        sw.install()
        sw.configure(links=["replica1"], extra=CHECK)
        sb.write_file("/etc/syncwarden/imap-credentials", "user: cyrus\npassword: adminpw\n",
                      mode=0o600)

        first, r = timed(lambda: lab.sync_client("replica1", "-A", timeout=3600))
        second, _ = timed(lambda: lab.sync_client("replica1", "-A", timeout=3600))
        results = {}
        for name, args in (("check", []), ("check --deep", ["--deep"])):
            took, r = timed(lambda: sw.cli("check", "replica1", "--json", *args, check=False,
                                           timeout=3600))
            doc = json.loads(r.stdout)
            assert r.returncode == 0 and doc["mailboxes"] == mailboxes, (r.returncode, doc)
            results[name] = (took, doc)
        single, r = timed(lambda: sb.sh("sed -i 's/^check:/check:\\n  parallel: 1/' "
                                        "/etc/syncwarden/syncwarden.yaml && syncwarden check"
                                        " replica1 --deep --json", check=False, timeout=3600))
    print(f"check vs sync_client -A: {n_users} users x {len(folders)} mailboxes x {n_msgs}"
          f" messages = {mailboxes:,} mailboxes, {messages:,} messages (setup {setup:.0f}s)")
    print(f"  sync_client -A, first pass (copies all): {first:7.2f} s  {mailboxes / first:7.0f}"
          f" mailboxes/s  {messages / first:8.0f} messages/s")
    print(f"  sync_client -A, pair in sync:            {second:7.2f} s  {mailboxes / second:7.0f}"
          f" mailboxes/s  {messages / second:8.0f} messages/s")
    how = {"check": "each side's admin LIST", "check --deep": "4 users at once"}
    for name, (took, doc) in results.items():
        print(f"  syncwarden {name:<13} ({how[name]}): {took:7.2f} s "
              f" {mailboxes / took:7.0f} mailboxes/s  {messages / took:8.0f} messages/s"
              f"  (own timer {doc['duration_seconds']:.2f} s)")
    print(f"  syncwarden check --deep (1 user at once): {single:7.2f} s "
          f" {mailboxes / single:7.0f} mailboxes/s  {messages / single:8.0f} messages/s")
    shallow, deep = results["check"][0], results["check --deep"][0]
    print(f"  ({machine_note()})")
    print(f"  shallow check / in-sync sync_client -A: {shallow / second:.2f} (target <= 1)")
    print(f"RESULT check_mailboxes_per_s={mailboxes / shallow:.0f}"
          f" deep_messages_per_s={messages / deep:.0f}"
          f" sync_A_in_sync_s={second:.2f} sync_A_first_s={first:.2f}"
          f" check_s={shallow:.2f} check_deep_s={deep:.2f} ratio={shallow / second:.2f}"
          f" target_met={'yes' if shallow <= second else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
