#!/usr/bin/python3
"""IMAP/LMTP client for the Cyrus lab, run INSIDE the test container (stdlib only, JSON on stdout).

The container has a private network, so the test process on the host cannot reach Cyrus; CyrusLab
runs this script through nsenter instead.  Each subcommand does a whole batch in one process
(many messages, many users, a polling loop) to keep the per-call overhead to one exec.

  create   PORT MAILBOX...                   admin CREATE      -> {"created": [...], "failed": {mb: why}}
  deliver  PORT USERS N TAG [--sessions S]   LMTP, N messages per user
                                             -> {"accepted": {user: [message-id, ...]}, "failed": [...], "seconds": s}
  stream   PORT USERS [--seconds S] [--rate R] [--accepted FILE] [--tag TAG]
                                             LMTP round-robin over USERS, one message at a time,
                                             for S seconds (default: until stopped), at most R per
                                             second; each accepted Message-ID is appended to FILE
                                             and fsynced (a record that survives a poweroff)
                                             -> {"sent": n, "failed": n, "seconds": s}
  messages PORT USERS [--folder F]           UID FETCH 1:* (DIGEST.SHA1) as each user
                                             -> {user: [[uid, guid], ...] or null if the folder is missing}
  status   PORT USER [--folder F]            -> {"messages", "uidnext", "uidvalidity", "highestmodseq",
                                                 "mailboxid"} or null
  wait     PORT USERS COUNT [--timeout T]    poll until every user has >= COUNT messages
                                             -> {"ok": bool, "counts": {user: n}, "seconds": s}
  port     PORT... [--closed] [--timeout T]  wait until every port accepts (or refuses) connections
                                             -> {"ok": bool, "seconds": s}

  append   PORT USER FOLDER N TAG             IMAP APPEND as the user, creating FOLDER if missing
                                             -> {"appended": n}
  ids      PORT USERS [--folder F]           as messages, by Message-ID: {user: {message-id: guid} or null}
  arrived  PORT FILE N [--since E] [--timeout T]
                                             poll until the first N messages of FILE (a stream's
                                             --accepted record) are all in their users' INBOXes
                                             -> {"ok": bool, "seconds": s (from epoch E, default
                                                 now), "missing": n, "wanted": n}

PORT is a port on 127.0.0.1, or HOST:PORT (the two-host lab's addresses, netlab.py).
USERS is comma-separated.  A server that cannot be reached gives {"error": "..."} and exit status 3.  Reading a user's mail uses SASL PLAIN with authzid=user and the admin
as authcid: Cyrus admins may not SELECT or STATUS other users' mailboxes, but may act as them.

Every LMTP delivery of the tests and benchmarks goes through `message` and `Lmtp` below; the
benchmarks' scripts inside the container import them from here (/srv/cyrlab/labclient.py).
"""

import argparse
import imaplib
import json
import os
import re
import smtplib
import socket
import sys
import threading
import time
import uuid

HOST = "127.0.0.1"
ADMIN, ADMIN_PW = "cyrus", "adminpw"


def endpoint(text):
    """"10143" -> ("127.0.0.1", 10143); "10.77.0.1:10143" -> ("10.77.0.1", 10143)."""
    host, _, port = str(text).rpartition(":")
    return host or HOST, int(port)


def imap(port):
    m = imaplib.IMAP4(*endpoint(port), timeout=30)
    # imaplib writes a continuation and its CRLF separately: with Nagle and delayed ACKs every
    # AUTHENTICATE would take 40 ms.
    m.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return m


def imap_as(port, user):
    m = imap(port)
    m.authenticate("PLAIN", lambda _: f"{user}\0{ADMIN}\0{ADMIN_PW}".encode())
    return m


def cmd_create(a):
    m = imap(a.port)
    m.login(ADMIN, ADMIN_PW)
    created, failed = [], {}
    for mb in a.mailboxes:
        typ, data = m.create(mb)
        if typ == "OK":
            created.append(mb)
        else:
            failed[mb] = b" ".join(data).decode(errors="replace")
    m.logout()
    return {"created": created, "failed": failed}


def message(user, i, tag, token):
    now = time.time()
    # Unique Message-IDs: LMTP duplicate suppression would silently drop repeats.
    mid = "<%s-%d-%s-%s@cyrlab.test>" % (re.sub(r"[^\w.-]", "_", tag), i, user, token)
    text = ("From: lab@cyrlab.test\r\nTo: %s@cyrlab.test\r\nSubject: %s %d t=%.6f\r\n"
            "Message-ID: %s\r\nDate: %s\r\n\r\nbody of %s %d for %s\r\n") % (
        user, tag, i, now, mid, time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(now)),
        tag, i, user)
    return mid, text


def user_of(message_id):
    """The user a message of message() was for (users without "-" in their names)."""
    return message_id.strip("<>").split("@")[0].rsplit("-", 2)[1]


class Lmtp:
    """One LMTP session for many deliveries. It connects on first use and again after a
    connection error, so a server restart costs only the message in flight; a refused recipient
    or message keeps the session."""

    def __init__(self, port, timeout=30):
        self.port, self.timeout, self.conn = port, timeout, None

    def connect(self):
        if self.conn is None:
            self.conn = smtplib.LMTP(*endpoint(self.port), timeout=self.timeout)
        return self.conn

    def send(self, user, text, sender="lab@cyrlab.test"):
        """Deliver one message to user's INBOX; raises smtplib.SMTPException or OSError."""
        try:
            self.connect().sendmail(sender, [user], text)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError):
            raise
        except (smtplib.SMTPException, OSError):
            self.conn = None           # reconnect at the next send
            raise

    def close(self):
        if self.conn is not None:
            try:
                self.conn.quit()
            except (smtplib.SMTPException, OSError):
                pass
            self.conn = None


def cmd_deliver(a):
    users = a.users.split(",")
    token = uuid.uuid4().hex[:10]
    jobs = [(u, i) for i in range(1, a.n + 1) for u in users]
    accepted, failed = {}, []

    def session(part):
        lm = Lmtp(a.port)
        for user, i in part:
            mid, text = message(user, i, a.tag, token)
            try:
                lm.send(user, text)
                accepted[(user, i)] = mid
            except (smtplib.SMTPException, OSError) as e:
                failed.append("%s %d: %s" % (user, i, e))
        lm.close()

    t0 = time.time()
    threads = [threading.Thread(target=session, args=(jobs[k::a.sessions],))
               for k in range(a.sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = {u: [accepted[(u, i)] for i in range(1, a.n + 1) if (u, i) in accepted] for u in users}
    return {"accepted": out, "failed": failed, "seconds": round(time.time() - t0, 3)}


def cmd_stream(a):
    """Continuous delivery (run in the background, e.g. as a transient unit): a failed attempt
    is not repeated, the next message follows as usual."""
    users = a.users.split(",")
    token = uuid.uuid4().hex[:10]
    out = open(a.accepted, "a") if a.accepted else None
    lm, sent, failed, i = Lmtp(a.port), 0, 0, 0
    t0 = time.time()
    while a.seconds is None or time.time() - t0 < a.seconds:
        user = users[i % len(users)]
        i += 1
        mid, text = message(user, i, a.tag, token)
        try:
            lm.send(user, text)
        except (smtplib.SMTPException, OSError):
            failed += 1
            time.sleep(1.0 / a.rate if a.rate else 0.05)
            continue
        sent += 1
        if out:
            out.write(mid + "\n")
            out.flush()
            os.fsync(out.fileno())
        if a.rate:
            time.sleep(1.0 / a.rate)
    lm.close()
    return {"sent": sent, "failed": failed, "seconds": round(time.time() - t0, 3)}


def fetch_guids(port, user, folder):
    m = imap_as(port, user)
    try:
        typ, data = m.select(folder, readonly=True)
        if typ != "OK":
            return None
        if int(data[0]) == 0:
            return []
        typ, data = m.uid("FETCH", "1:*", "(DIGEST.SHA1)")
        rows = []
        for item in data:
            if isinstance(item, tuple):
                item = item[0]
            if item:
                uid = re.search(rb"UID (\d+)", item)
                guid = re.search(rb"DIGEST\.SHA1 ([0-9a-f]+)", item)
                rows.append([int(uid.group(1)), guid.group(1).decode() if guid else None])
        return sorted(rows)
    finally:
        m.logout()


def cmd_append(a):
    m = imap_as(a.port, a.user)
    try:
        m.create(a.folder)           # NO if it exists already: fine
        token = uuid.uuid4().hex[:10]
        for i in range(1, a.n + 1):
            _, text = message(a.user, i, a.tag, token)
            typ, data = m.append(a.folder, None, None, text.encode())
            if typ != "OK":
                raise imaplib.IMAP4.error("APPEND %s: %s" % (a.folder, data))
        return {"appended": a.n}
    finally:
        m.logout()


def fetch_ids(port, user, folder):
    """{message-id: guid} of a folder; None if it does not exist."""
    m = imap_as(port, user)
    try:
        typ, data = m.select(folder, readonly=True)
        if typ != "OK":
            return None
        if int(data[0]) == 0:
            return {}
        typ, data = m.uid("FETCH", "1:*", "(DIGEST.SHA1 BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        out = {}
        for item in data:
            if not isinstance(item, tuple):
                continue
            guid = re.search(rb"DIGEST\.SHA1 ([0-9a-f]+)", item[0])
            mid = re.search(rb"(?im)^message-id:\s*(\S+)", item[1])
            if mid:
                out[mid.group(1).decode()] = guid.group(1).decode() if guid else None
        return out
    finally:
        m.logout()


def cmd_ids(a):
    return {u: fetch_ids(a.port, u, a.folder) for u in a.users.split(",")}


def cmd_arrived(a):
    since = time.time() if a.since is None else a.since
    wanted = {}
    with open(a.file) as f:
        for mid in f.read().split()[:a.n]:
            wanted.setdefault(user_of(mid), set()).add(mid)
    total = sum(len(v) for v in wanted.values())
    deadline = time.monotonic() + a.timeout
    while True:
        for user in list(wanted):
            try:
                found = fetch_ids(a.port, user, "INBOX") or {}
            except (imaplib.IMAP4.error, OSError):
                continue              # the server is (re)starting: ask again next round
            wanted[user] -= set(found)
            if not wanted[user]:
                del wanted[user]
        if not wanted or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    missing = sum(len(v) for v in wanted.values())
    return {"ok": not missing, "seconds": round(time.time() - since, 3), "missing": missing,
            "wanted": total}


def cmd_messages(a):
    return {u: fetch_guids(a.port, u, a.folder) for u in a.users.split(",")}


def cmd_status(a):
    m = imap_as(a.port, a.user)
    try:
        typ, data = m.status(a.folder, "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)")
        if typ != "OK":
            return None
        items = data[0].decode().split("(", 1)[1]
        res = {k.lower(): int(v) for k, v in re.findall(r"([A-Z]+) (\d+)", items)}
        # Cyrus 3.6.1 returns garbage for MAILBOXID asked together with other items: ask alone.
        typ, data = m.status(a.folder, "(MAILBOXID)")
        mid = re.search(rb"MAILBOXID \(([^)]*)\)", data[0]) if typ == "OK" else None
        res["mailboxid"] = mid.group(1).decode() if mid else None
        return res
    finally:
        m.logout()


def cmd_wait(a):
    users, t0 = a.users.split(","), time.monotonic()
    conns, counts = {}, {u: 0 for u in a.users.split(",")}
    while True:
        for u in users:
            if counts[u] >= a.count:
                continue
            try:
                if u not in conns:
                    conns[u] = imap_as(a.port, u)
                typ, data = conns[u].status(a.folder, "(MESSAGES)")
                if typ == "OK":       # NO: the mailbox does not exist (yet)
                    counts[u] = int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))
            except (imaplib.IMAP4.error, OSError):
                conns.pop(u, None)    # server restarting: reconnect on the next round
        ok = all(n >= a.count for n in counts.values())
        if ok or time.monotonic() - t0 > a.timeout:
            break
        time.sleep(0.05)
    for m in conns.values():
        try:
            m.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    return {"ok": ok, "counts": counts, "seconds": round(time.monotonic() - t0, 3)}


def port_open(port):
    try:
        socket.create_connection(endpoint(port), timeout=1).close()
        return True
    except OSError:
        return False


def cmd_port(a):
    t0 = time.monotonic()
    while True:
        ok = all(port_open(p) != a.closed for p in a.ports)
        if ok or time.monotonic() - t0 > a.timeout:
            return {"ok": ok, "seconds": round(time.monotonic() - t0, 3)}
        time.sleep(0.05)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("create")
    s.add_argument("port")
    s.add_argument("mailboxes", nargs="+")
    s = sub.add_parser("deliver")
    s.add_argument("port")
    s.add_argument("users")
    s.add_argument("n", type=int)
    s.add_argument("tag")
    s.add_argument("--sessions", type=int, default=1)
    s = sub.add_parser("stream")
    s.add_argument("port")
    s.add_argument("users")
    s.add_argument("--seconds", type=float)
    s.add_argument("--rate", type=float)
    s.add_argument("--accepted")
    s.add_argument("--tag", default="stream")
    s = sub.add_parser("messages")
    s.add_argument("port")
    s.add_argument("users")
    s.add_argument("--folder", default="INBOX")
    s = sub.add_parser("append")
    s.add_argument("port")
    s.add_argument("user")
    s.add_argument("folder")
    s.add_argument("n", type=int)
    s.add_argument("tag")
    s = sub.add_parser("ids")
    s.add_argument("port")
    s.add_argument("users")
    s.add_argument("--folder", default="INBOX")
    s = sub.add_parser("arrived")
    s.add_argument("port")
    s.add_argument("file")
    s.add_argument("n", type=int)
    s.add_argument("--since", type=float)
    s.add_argument("--timeout", type=float, default=60)
    s = sub.add_parser("status")
    s.add_argument("port")
    s.add_argument("user")
    s.add_argument("--folder", default="INBOX")
    s = sub.add_parser("wait")
    s.add_argument("port")
    s.add_argument("users")
    s.add_argument("count", type=int)
    s.add_argument("--timeout", type=float, default=30)
    s.add_argument("--folder", default="INBOX")
    s = sub.add_parser("port")
    s.add_argument("ports", nargs="+")
    s.add_argument("--closed", action="store_true")
    s.add_argument("--timeout", type=float, default=10)
    a = p.parse_args(argv)
    try:
        result = globals()["cmd_" + a.cmd](a)
    except (OSError, imaplib.IMAP4.error, smtplib.SMTPException) as e:
        # e.g. the instance is down: one clear line for the caller instead of a traceback
        json.dump({"error": "%s: %s" % (type(e).__name__, e)}, sys.stdout)
        print()
        return 3
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

