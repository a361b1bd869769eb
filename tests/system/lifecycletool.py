#!/usr/bin/python3
"""The lifecycle system tests' tools, run INSIDE the test container beside labclient.py (whose
IMAP and LMTP helpers it imports). JSON on stdout.

  shared     PORT MAILBOX N TAG        admin CREATE + SETACL + APPEND N messages to a shared
                                       mailbox -> {"appended": n}
  inventory  PORT USERS SHARED         every mailbox of USERS (as each user) and the SHARED
                                       mailboxes (as admin) -> {mailbox: [guid, ...] sorted}
  gapcheck   --accepted F --out F --stop F --master PORT --replicas N=PORT,... --users U
             --status F --max-lag S
                                       every second: every message accepted (a line of F, the
                                       stream's record) more than S seconds ago must be on the
                                       master and on at least one replica that status F shows
                                       live; one JSON line per sample to --out, until --stop
                                       exists
"""

import argparse
import imaplib
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labclient import ADMIN, ADMIN_PW, imap, imap_as  # noqa: E402


def admin(port):
    m = imap(port)
    m.login(ADMIN, ADMIN_PW)
    return m


def cmd_shared(a):
    m = admin(a.port)
    m.create(a.mailbox)
    typ, data = m.setacl(a.mailbox, ADMIN, "lrswipkxtecda")
    if typ != "OK":
        raise imaplib.IMAP4.error(f"SETACL {a.mailbox}: {data}")
    for i in range(a.n):
        text = (f"From: lab@cyrlab.test\r\nSubject: {a.tag} {i}\r\nMessage-ID: <{a.tag}-{i}-"
                f"{time.time()}@cyrlab.test>\r\n\r\nshared body {i}\r\n").encode()
        typ, data = m.append(a.mailbox, None, None, text)
        if typ != "OK":
            raise imaplib.IMAP4.error(f"APPEND {a.mailbox}: {data}")
    m.logout()
    return {"appended": a.n}


def guids(m, folder):
    typ, data = m.select(folder, readonly=True)
    if typ != "OK":
        return None
    if int(data[0]) == 0:
        return []
    typ, data = m.uid("FETCH", "1:*", "(DIGEST.SHA1)")
    return sorted(re.search(rb"DIGEST\.SHA1 ([0-9a-f]+)", x[0] if isinstance(x, tuple) else x)
                  .group(1).decode() for x in data if x)


def cmd_inventory(a):
    out = {}
    for user in a.users.split(","):
        m = imap_as(a.port, user)
        typ, data = m.list()
        names = [re.match(rb'\([^)]*\) (?:"[^"]*"|NIL) (.*)$', x).group(1).strip(b'"')
                 .decode() for x in data if x]
        for name in names:
            out[f"{user}:{name}"] = guids(m, name)
        m.logout()
    m = admin(a.port)
    for mailbox in a.shared.split(","):
        out[mailbox] = guids(m, mailbox)
    m.logout()
    return out


class Seen:
    """Message-IDs in each user's INBOX on one server, read afresh at every sample."""

    def __init__(self, port):
        self.port, self.conns = port, {}

    def ids(self, user):
        """The Message-IDs, or None when the server could not be read (not "none there")."""
        try:
            m = self.conns.get(user) or imap_as(self.port, user)
            self.conns[user] = m
            typ, data = m.select("INBOX", readonly=True)
            if typ != "OK" or int(data[0]) == 0:
                return set()
            typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            return {mid.decode() for x in data if isinstance(x, tuple)
                    for mid in re.findall(rb"<[^>]+>", x[1])}
        except (imaplib.IMAP4.error, OSError):
            self.conns.pop(user, None)      # down or restarting: reconnect next time
            return None


def cmd_gapcheck(a):
    users = a.users.split(",")
    replicas = dict(r.split("=") for r in a.replicas.split(","))
    servers = {"master": Seen(a.master), **{n: Seen(int(p)) for n, p in replicas.items()}}
    accepted, offset = {}, 0          # message-id -> when this checker first saw it accepted
    out = open(a.out, "a")
    samples = failures = skipped = 0
    while not os.path.exists(a.stop):
        t0 = time.time()
        try:
            with open(a.accepted) as f:
                f.seek(offset)
                chunk = f.read()
            whole = chunk[:chunk.rfind("\n") + 1]
            offset += len(whole.encode())
            for line in whole.split():
                accepted.setdefault(line, t0)
        except FileNotFoundError:
            pass
        try:
            with open(a.status) as f:
                live = sorted(x["name"] for x in json.load(f)["links"] if x["state"] == "live")
        except (OSError, ValueError, KeyError):
            live = None               # the daemon restarting: judged on the last good sample
        due = {m for m, t in accepted.items() if t < t0 - a.max_lag}
        if live is not None and due:
            on, unread = {}, []
            for name, srv in servers.items():
                if name == "master" or name in live:
                    seen = [srv.ids(u) for u in users]
                    if any(x is None for x in seen):
                        unread.append(name)
                    on[name] = set().union(*(x for x in seen if x is not None))
            if unread:
                skipped += 1
                out.write(json.dumps({"t": round(t0, 3), "live": live, "unread": unread}) + "\n")
            else:
                missing = sorted(m for m in due if m not in on["master"]
                                 or not any(m in on[r] for r in live))
                samples += 1
                failures += bool(missing)
                out.write(json.dumps({"t": round(t0, 3), "live": live, "due": len(due),
                                      "missing": missing[:20], "missing_count": len(missing)})
                          + "\n")
            out.flush()
        time.sleep(max(0.0, 1.0 - (time.time() - t0)))
    return {"samples": samples, "failures": failures, "skipped": skipped,
            "accepted": len(accepted)}


def main(argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shared")
    s.add_argument("port", type=int)
    s.add_argument("mailbox")
    s.add_argument("n", type=int)
    s.add_argument("tag")
    s = sub.add_parser("inventory")
    s.add_argument("port", type=int)
    s.add_argument("users")
    s.add_argument("shared")
    s = sub.add_parser("gapcheck")
    for opt in ("--accepted", "--out", "--stop", "--replicas", "--users", "--status"):
        s.add_argument(opt, required=True)
    s.add_argument("--master", type=int, required=True)
    s.add_argument("--max-lag", type=float, required=True)
    a = p.parse_args(argv)
    try:
        result = globals()["cmd_" + a.cmd](a)
    except (OSError, imaplib.IMAP4.error) as e:
        json.dump({"error": "%s: %s" % (type(e).__name__, e)}, sys.stdout)
        print()
        return 3
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
