"""Check and repair after a hard failover, with real Cyrus under real systemd (issue 5).

The master dies; the replica serves mail for a while (new mail for existing users, a new folder,
a new user, and a folder that the master then creates too); the master comes back and gets mail
as well. check must put each case in its category, repair --dry-run must change nothing, and
after repair every message delivered anywhere must be on both sides.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from .swlab import Syncwarden, check_config

pytestmark = [pytest.mark.system, pytest.mark.cyrus(users=["bob", "alice", "carol", "dave"],
                                                    replicas=["replica1"])]

DIVERGENCE = "02ddff89b4fb4d0aae9a70c778cdd4a9"
REPAIR_ACTION = "731e5034f2ae471c8c0cc739e53ee141"
CHECK_FINISHED = "7ea2d6779cb9475db33529d5a233cb83"
USERS = ("bob", "alice", "carol", "dave", "zoe")
FOLDERS = ("INBOX", "INBOX.Sent", "INBOX.Travel", "INBOX.Shared")

# APPEND as a user (admin proxy login), inside the container: labclient delivers only to INBOX.
APPEND = """
import imaplib, sys, uuid
port, user, folder, text = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
m = imaplib.IMAP4("127.0.0.1", port)
m.authenticate("PLAIN", lambda _: f"{user}\\0cyrus\\0adminpw".encode())
body = f"From: lab@cyrlab.test\\r\\nSubject: {text}\\r\\nMessage-ID: <{uuid.uuid4()}@t>\\r\\n\\r\\n{text}\\r\\n"
typ, data = m.append(folder, "(\\\\Flagged $Lab)", None, body.encode())
assert typ == "OK", data
m.logout()
"""


def append(lab, instance, user, folder, text):
    lab.sb.run("/usr/bin/python3", "-c", APPEND, lab.port(instance), user, folder, text)


def guids(lab, instance) -> dict[str, set[str]]:
    """{user/folder: {guid}} of every known folder on one side."""
    out = {}
    for folder in FOLDERS:
        for user, rows in lab.messages_many(instance, USERS, folder).items():
            if rows:
                out[f"{user}/{folder}"] = {g for _, g in rows}
    return out


def categories(text: str) -> set[tuple[str, str, str]]:
    """(category, user, where) of each line of the plain report."""
    found = set()
    for line in text.splitlines():
        m = re.match(r"^([a-z-]+)\s+(\S+)\s+(\S+(?: uid \d+)?):", line)
        if m:
            found.add(m.groups())
    return found


def json_categories(doc: dict) -> set[tuple[str, str, str]]:
    return {(d["category"], d["user"], (d["mailbox"] or "(user)")
             + (f" uid {d['uid']}" if d["uid"] is not None else "")) for d in doc["differences"]}


def wait_worker(sw, link, timeout=30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sw.link(link)["worker"]["active"]:
            return True
        time.sleep(0.2)
    return False


def hard_failover(sw, lab):
    """The scenario of the issue; returns the GUIDs each side holds at the end of it."""
    sw.cli("hold", "replica1")       # the dead master replicates nothing until it is repaired
    assert sw.wait_state("replica1", "down")
    lab.kill("master")
    assert lab.wait_port("master", closed=True)
    # The replica serves mail meanwhile.
    lab.deliver("alice", 2, "on-replica", instance="replica1")
    lab.deliver("bob", 1, "on-replica", instance="replica1")
    lab.create_mailbox("replica1", "user.carol.Travel", "user.zoe", "user.dave.Shared")
    append(lab, "replica1", "carol", "INBOX.Travel", "new folder on the replica")
    lab.deliver("zoe", 2, "new-user", instance="replica1")
    append(lab, "replica1", "dave", "INBOX.Shared", "same name, replica copy")
    # The master comes back, creates the same folder and gets mail too.
    lab.start("master")
    lab.create_mailbox("master", "user.dave.Shared")
    append(lab, "master", "dave", "INBOX.Shared", "same name, master copy")
    lab.deliver("bob", 1, "master-after", instance="master")
    lab.deliver("alice", 1, "master-after", instance="master")


@pytest.mark.trixie
def test_check_and_repair_after_a_hard_failover(sandbox, cyrus, sw):
    sandbox.write_file("/etc/syncwarden/imap-credentials", "user: cyrus\npassword: adminpw\n",
                       mode=0o600)
    sw.setup(links=["replica1"], extra=check_config(cyrus, ["replica1"]))
    assert sw.wait_state("replica1", "live")
    cyrus.create_mailbox("master", "user.bob.Sent")
    append(cyrus, "master", "bob", "INBOX.Sent", "sent before")
    cyrus.deliver_many(["bob", "alice", "carol", "dave"], 3, "base")
    assert cyrus.wait_messages("replica1", ["bob", "alice", "carol", "dave"], 3)
    assert sw.cli("check", "replica1", check=False).returncode == 0

    hard_failover(sw, cyrus)
    delivered = guids(cyrus, "master")
    for key, found in guids(cyrus, "replica1").items():
        delivered[key] = delivered.get(key, set()) | found
    everything = set().union(*delivered.values())

    # check: each case in its category, text and JSON alike, exit 2 (CRITICAL).
    r = sw.cli("check", "replica1", check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    shallow = categories(r.stdout)
    assert shallow == {("replica-ahead", "alice", "user.alice"),
                       ("guid-mismatch", "bob", "user.bob"),
                       ("replica-only", "carol", "user.carol.Travel"),
                       ("uniqueid-conflict", "dave", "user.dave.Shared"),
                       ("replica-only", "zoe", "(user)")}, r.stdout
    doc = json.loads(sw.cli("check", "replica1", "--json", check=False).stdout)
    assert json_categories(doc) == shallow and doc["result"] == "differences"
    deep = sw.cli("check", "replica1", "--deep", check=False)
    assert deep.returncode == 2
    found = categories(deep.stdout)
    assert ("replica-only", "dave", "user.dave.Shared uid 1") in found
    assert ("guid-mismatch", "bob", "user.bob uid 4") in found
    assert {c for c, _, _ in found} == {"replica-ahead", "guid-mismatch", "replica-only",
                                        "uniqueid-conflict"}
    entry = sw.journal_messages(unit=None, message_id=DIVERGENCE)[-1]
    assert entry["SYNCWARDEN_UNIQUEID_CONFLICT"] == "1" and entry["SYNCWARDEN_LINK"] == "replica1"
    assert "adminpw" not in json.dumps(sandbox.journal(fields=True))

    # repair --dry-run: the plan, and nothing changes.
    before = (guids(cyrus, "master"), guids(cyrus, "replica1"))
    r = sw.cli("repair", "replica1", "--dry-run", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "create user.zoe on the master (user only on the replica)" in r.stdout
    assert "replace the replica's user.dave.Shared by the master's" in r.stdout
    assert (guids(cyrus, "master"), guids(cyrus, "replica1")) == before
    again = json.loads(sw.cli("check", "replica1", "--json", check=False).stdout)
    assert json_categories(again) == shallow

    # repair, with the link running first: the repair holds it itself, then resumes it.
    sw.cli("resume", "replica1")
    assert wait_worker(sw, "replica1")
    r = sw.cli("repair", "replica1", "--yes", check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "replica1: held for the repair" in r.stdout and "replica1: resumed" in r.stdout
    reasons = [e["SYNCWARDEN_REASON"] for e in sw.transitions("replica1")]
    assert "held by operator" in reasons
    actions = {e["SYNCWARDEN_ACTION"] for e in sw.journal_messages(unit=None,
                                                                   message_id=REPAIR_ACTION)}
    assert {"create-mailbox", "copy", "replace", "sync-user"} <= actions
    assert sw.wait_state("replica1", "live", timeout=60)

    # check --deep is clean; every message delivered anywhere is on both sides.
    deadline = time.monotonic() + 60
    while True:
        r = sw.cli("check", "replica1", "--deep", check=False)
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[-1].startswith("replica1: in sync: 5 user(s)")
    master, replica = guids(cyrus, "master"), guids(cyrus, "replica1")
    assert master == replica
    assert everything <= set().union(*master.values())
    assert master["zoe/INBOX"] and master["carol/INBOX.Travel"]
    assert delivered["dave/INBOX.Shared"] <= master["dave/INBOX.Shared"]

    # status shows the last check; the timer's service runs the same check under systemd.
    last = sw.link("replica1")["last_check"]
    assert last["result"] == "in-sync" and last["deep"] is True
    # (status may exit 1 here: a user of the split brain can still be in quarantine)
    assert "replica1: last deep check" in sw.cli("status", check=False).stdout
    sandbox.systemctl("enable", "--now", "syncwarden-check@replica1.timer")
    delay = sandbox.systemctl("show", "-p", "RandomizedDelayUSec", "--value",
                              "syncwarden-check@replica1.timer").stdout.strip()
    assert delay == "2h"
    sandbox.systemctl("start", "syncwarden-check@replica1.service", timeout=120)
    finished = sw.journal_messages(unit="syncwarden-check@replica1.service",
                                   message_id=CHECK_FINISHED)
    assert finished and finished[-1]["SYNCWARDEN_RESULT"] == "in-sync"
    assert sw.link("replica1")["last_check"]["deep"] is False


@pytest.fixture
def sw(sandbox, cyrus):
    return Syncwarden(sandbox, cyrus)
