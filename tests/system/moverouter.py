#!/usr/bin/python3
"""A tiny MTA for the move tests, run INSIDE the container: it delivers a steady stream of
messages over LMTP to the store a routing map names for each user, and queues and retries what
a store refuses with a temporary error (4xx: a locked user), as a real MTA would.

  moverouter.py MAP STORES USERS --accepted FILE --stop FILE [--rate R]

MAP: lines "user store" (the move's switch hook rewrites it); a user not listed goes to the
store named "default" (the default instance's name, which the moves use for it). STORES: JSON {store: "host:port"} of LMTP endpoints. Each accepted
message is appended to the --accepted file as "message-id store" (fsynced); 5xx refusals to
FILE.failed. Once the --stop file exists, nothing new is made, and it exits when the queue is
empty (or 60 s later).
"""

import argparse
import json
import os
import smtplib
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labclient import Lmtp, message  # noqa: E402


def routes(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    out[parts[0]] = parts[1]
    except FileNotFoundError:
        pass
    return out


def main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("map")
    p.add_argument("stores")
    p.add_argument("users")
    p.add_argument("--accepted", required=True)
    p.add_argument("--stop", required=True)
    p.add_argument("--rate", type=float, default=20.0)
    a = p.parse_args(argv)
    stores = json.loads(a.stores)
    sessions = {name: Lmtp(ep) for name, ep in stores.items()}
    users = a.users.split(",")
    token = uuid.uuid4().hex[:10]
    out = open(a.accepted, "a")
    failed = open(a.accepted + ".failed", "a")
    queue, i, next_at, stop_at = [], 0, time.time(), None
    while True:
        now = time.time()
        if stop_at is None and os.path.exists(a.stop):
            stop_at = now
        if stop_at is None and now >= next_at:
            user = users[i % len(users)]
            i += 1
            mid, text = message(user, i, "routed", token)
            queue.append((user, mid, text))
            next_at = now + 1.0 / a.rate
        if stop_at is not None and (not queue or now - stop_at > 60):
            break
        table = routes(a.map)
        kept = []
        for user, mid, text in queue:
            store = table.get(user, "default")
            try:
                sessions[store].send(user, text)
            except smtplib.SMTPRecipientsRefused as exc:
                code = next(iter(exc.recipients.values()))[0]
                if code >= 500:
                    failed.write(f"{mid} {store} {code}\n")
                    failed.flush()
                else:
                    kept.append((user, mid, text))
                continue
            except (smtplib.SMTPException, OSError):
                kept.append((user, mid, text))
                continue
            out.write(f"{mid} {store}\n")
            out.flush()
            os.fsync(out.fileno())
        queue = kept
        time.sleep(0.02 if not queue else 0.1)
    for s in sessions.values():
        s.close()
    print(json.dumps({"made": i, "left": len(queue)}))


if __name__ == "__main__":
    main(sys.argv[1:])
