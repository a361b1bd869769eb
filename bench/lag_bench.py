#!/usr/bin/python3
"""Benchmark 2: steady-state replication lag, p50/p95, for 2,000 messages.

A real Cyrus 3.6 master and replica1 in a systemd container (the system tests' harness; needs
root). Inside the container one script delivers N messages over LMTP at a steady pace (one
session; each Subject carries `t=<epoch>` as labclient.py writes it) and, at the same time,
polls the user's INBOX on the replica every 50 ms (UID FETCH of the new UIDs' Subjects), as
cyrus-lab.md 4e did with lagmon; a message's lag is the time it was first seen on the replica
minus the t= in its Subject.

Measured in the same run, one after the other, over the same lab (a different user each):
  - Cyrus alone: a bare `sync_client -C <imapd.conf> -R -n replica1` started by hand as the
    cyrus user (setsid, no supervisor), stopped afterwards;
  - syncwarden: the supervised worker syncwarden-sync@replica1 (the same binary and mode, plus
    -F <shutdown file>), link live.
Both use the channel's repeat interval of 1 s (replica1_sync_repeat_interval in the lab), which
dominates the lag. Target: syncwarden within 5 % of Cyrus alone.

Usage: bench/lag_bench.py [--messages N] [--rate MSGS_PER_S]
"""

import argparse
import sys
import time

from benchlib import (
    CyrusLab,
    Syncwarden,
    inner,
    log_lines,
    machine_note,
    pct,
    result_line,
    sandbox,
    start_bare_client,
    stop_bare_client,
)

# Inside the container: a paced LMTP deliverer thread and a 50 ms replica poller.
LAG = r"""
import imaplib, json, re, smtplib, socket, sys, threading, time, uuid
sys.path.insert(0, "/srv/cyrlab")
from labclient import Lmtp, message
lmtp_port, imap_port, user, n, rate, tag = sys.argv[1:]
lmtp_port, imap_port, n, rate = int(lmtp_port), int(imap_port), int(n), float(rate)
sent, failed = {}, []
token = uuid.uuid4().hex[:10]

def deliver():
    lm = Lmtp(lmtp_port)
    lm.connect()                           # before t0: the first message is paced like the rest
    t0 = time.time()
    for i in range(1, n + 1):
        delay = t0 + (i - 1) / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        mid, text = message(user, i, tag, token)
        try:
            lm.send(user, text)
            sent[i] = True
        except (smtplib.SMTPException, OSError) as e:
            failed.append(str(e))
    lm.close()

m = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
m.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
m.authenticate("PLAIN", lambda _: ("%s\0cyrus\0adminpw" % user).encode())
typ, data = m.select("INBOX", readonly=True)
assert typ == "OK", data
typ, data = m.uid("SEARCH", "ALL")
last = max([int(x) for x in data[0].split()] or [0])
seen = {}
pat = re.compile(re.escape(tag).encode() + rb" (\d+) t=([\d.]+)")
th = threading.Thread(target=deliver)
t_start = time.time()
th.start()
deadline = None
while True:
    typ, data = m.uid("FETCH", "%d:*" % (last + 1), "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    now = time.time()
    for item in data:
        if not isinstance(item, tuple):
            continue
        uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
        if uid <= last:
            continue
        last = max(last, uid)
        s = pat.search(item[1])
        if s and int(s.group(1)) not in seen:
            seen[int(s.group(1))] = now - float(s.group(2))
    if not th.is_alive():
        deadline = deadline or time.time() + 60
        if len(seen) >= len(sent) or time.time() > deadline:
            break
    time.sleep(0.05)
t_end = time.time()
m.logout()
print(json.dumps({"lags": [seen[i] for i in sorted(seen)], "sent": len(sent),
                  "failed": failed[:5], "seconds": t_end - t_start}))
"""


def measure(sb, lab, user, n, rate, tag) -> dict:
    return inner(sb, LAG, lab.port("master", "lmtp"), lab.port("replica1", "imap"), user, n,
                 rate, tag, timeout=n / rate + 240)


def wait_empty(sb, lab, timeout=60) -> None:
    deadline = time.monotonic() + timeout
    while sum(log_lines(sb, lab, "replica1").values()) and time.monotonic() < deadline:
        time.sleep(0.2)


def summary(r) -> dict:
    lags = r["lags"]
    return {"n": len(lags), "sent": r["sent"], "p50": pct(lags, 50), "p95": pct(lags, 95),
            "max": max(lags), "min": min(lags), "mean": sum(lags) / len(lags),
            "seconds": r["seconds"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=50.0, help="deliveries per second (50)")
    a = ap.parse_args()
    t_bench = time.monotonic()
    users = ("bare", "supervised")
    with sandbox("lag") as sb:
        lab = CyrusLab(sb, replicas=("replica1",), users=users)
        lab.setup()
        # Cyrus alone: a bare rolling client, started by hand as cyrus.
        pid = start_bare_client(sb, lab, "replica1")
        try:
            wait_empty(sb, lab)
            if any(lab.status("replica1", u) is None for u in users):
                raise RuntimeError("the users' INBOXes never reached replica1")
            bare = summary(measure(sb, lab, "bare", a.messages, a.rate, "lag-bare"))
        finally:
            stop_bare_client(sb, pid)
        # syncwarden: its worker on the same channel (the bare client is gone).
        sw = Syncwarden(sb, lab)
        sw.setup(interval="2s")
        if not sw.wait_state("replica1", "live", timeout=30):
            raise RuntimeError(f"replica1 never went live: {sw.link('replica1')}")
        wait_empty(sb, lab)
        sup = summary(measure(sb, lab, "supervised", a.messages, a.rate, "lag-sw"))
        workers = sw.sync_clients("replica1")
    took = time.monotonic() - t_bench
    print(f"steady-state lag: {a.messages:,} messages over LMTP at {a.rate:g}/s to one mailbox;"
          f" replica polled every 50 ms")
    print(f"  ({machine_note()}; benchmark took {took:.0f} s)")
    for name, s in (("Cyrus alone (bare sync_client -R)", bare),
                    ("syncwarden (worker unit)", sup)):
        print(f"  {name:<34} p50 {s['p50']:.3f} s  p95 {s['p95']:.3f} s  max {s['max']:.3f} s"
              f"  mean {s['mean']:.3f} s  min {s['min']:.3f} s  ({s['n']}/{s['sent']} seen,"
              f" {s['seconds']:.0f} s)")
    d50 = (sup["p50"] / bare["p50"] - 1) * 100
    d95 = (sup["p95"] / bare["p95"] - 1) * 100
    print(f"  syncwarden vs Cyrus alone: p50 {d50:+.1f} %, p95 {d95:+.1f} % (target within 5 %);"
          f" {len(workers)} worker process(es)")
    print(result_line(sw_p50_s=sup["p50"], sw_p95_s=sup["p95"], bare_p50_s=bare["p50"],
                      bare_p95_s=bare["p95"], p50_diff_pct=d50, p95_diff_pct=d95,
                      sw_seen=sup["n"], bare_seen=bare["n"], messages=a.messages, rate=a.rate,
                      target_met="yes" if abs(d50) <= 5 and abs(d95) <= 5 else "no"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
