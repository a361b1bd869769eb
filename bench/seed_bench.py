#!/usr/bin/python3
"""Benchmark (issue 14): seeding a new replica next to a bare `sync_client -A`, and the other
link's lag meanwhile.

A real Cyrus 3.6 master with three replicas in a systemd container (the system tests' harness;
needs root): replica1 is the live link that keeps replicating, replica2 the new replica that
`syncwarden seed` fills, replica3 an identical empty replica that a bare `sync_client -A`
fills (Cyrus alone). The master holds USERS users x MESSAGES messages (default 1,000 x 20 =
20,000), appended over IMAP before any replica but replica1 exists.

Three phases, one after the other, each with the same steady delivery (RATE/s over one LMTP
session) to a probe user whose lag on replica1 is measured as lag_bench.py does (its INBOX
polled every 50 ms, lag = first seen minus the t= in the Subject):
  A. nothing else: replica1's lag without a seed (BASELINE seconds);
  B. Cyrus alone: `sync_client -A -n replica3` as cyrus, timed inside the container;
  C. syncwarden: replica2 added to imapd.conf and to the config, `syncwarden seed replica2`
     (PARALLEL user syncs at a time; default: syncwarden's, one per CPU up to 4). The seed
     first waits for the Cyrus processes that still have the old sync_log_channels (the
     benchmark ends them, as an operator would); that wait is shown apart. Timed from the
     journal: listing + syncing, as -A lists and syncs.
Afterwards every user's INBOX is compared (UID, GUID) on the master, replica2 and replica3.

Targets: the seed faster than -A (parallel users); replica1's lag p95 during the seed within
10 % of phase A's.

Usage: bench/seed_bench.py [--users N] [--messages M] [--parallel P] [--rate R] [--baseline S]
"""

import argparse
import json
import re
import sys
import time

from benchlib import (
    BIN,
    CyrusLab,
    Syncwarden,
    inner,
    machine_note,
    pct,
    realtime,
    result_line,
    sandbox,
)

PROBE = "lagprobe"
SEED_STARTED = "8cc0ccb01d5c45ceb4e810530283c790"
SEED_PROGRESS = "d26a3e4f8de14250992ffd96628d10e1"
SEED_FINISHED = "5127795700ec42f19dbc816cf2aa1811"

# Inside: APPEND the messages as each user, 8 sessions at a time (check_bench's way).
POPULATE = r"""
import imaplib, json, socket, sys, time, uuid
from concurrent.futures import ThreadPoolExecutor
users, n = sys.argv[1].split(","), int(sys.argv[2])
def one(user):
    m = imaplib.IMAP4("127.0.0.1", 10143)
    m.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    m.authenticate("PLAIN", lambda _: f"{user}\0cyrus\0adminpw".encode())
    for i in range(n):
        body = (f"From: bench@cyrlab.test\r\nTo: {user}@cyrlab.test\r\nSubject: seed {i}\r\n"
                f"Message-ID: <{uuid.uuid4()}@bench>\r\n\r\nmessage {i} of {user}\r\n" + "x" * 700)
        typ, data = m.append("INBOX", "(\\Seen)" if i % 3 else None, None, body.encode())
        assert typ == "OK", data
    m.logout()
t0 = time.time()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(one, users))
print(json.dumps({"seconds": time.time() - t0}))
"""

# Inside, in the background: paced LMTP delivery to the probe user and a 50 ms poller of its
# INBOX on replica1, until the stop file exists; then the lags as JSON on stdout.
LAG = r"""
import imaplib, json, os, re, smtplib, socket, sys, threading, time, uuid
sys.path.insert(0, "/srv/cyrlab")
from labclient import Lmtp, message
lmtp_port, imap_port, user, rate, tag, stop = sys.argv[1:]
lmtp_port, imap_port, rate = int(lmtp_port), int(imap_port), float(rate)
sent, failed, token, done = {}, [], uuid.uuid4().hex[:10], threading.Event()

def deliver():
    lm = Lmtp(lmtp_port)
    t0, i = time.time(), 0
    while not os.path.exists(stop):
        i += 1
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
    done.set()

m = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
m.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
m.authenticate("PLAIN", lambda _: ("%s\0cyrus\0adminpw" % user).encode())
m.select("INBOX", readonly=True)
typ, data = m.uid("SEARCH", "ALL")
last = max([int(x) for x in data[0].split()] or [0])
seen = {}
pat = re.compile(re.escape(tag).encode() + rb" (\d+) t=([\d.]+)")
threading.Thread(target=deliver).start()
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
        last = uid
        s = pat.search(item[1])
        if s and int(s.group(1)) not in seen:
            seen[int(s.group(1))] = now - float(s.group(2))
    if done.is_set():
        deadline = deadline or time.time() + 60
        if len(seen) >= len(sent) or time.time() > deadline:
            break
    time.sleep(0.05)
print(json.dumps({"lags": [seen[i] for i in sorted(seen)], "sent": len(sent),
                  "failed": len(failed)}))
"""


class LagProbe:
    """The LAG script as a transient unit, its JSON in a file, stopped by a stop file."""

    def __init__(self, sb, lab, name, rate):
        self.sb, self.name = sb, name
        self.stop_file, self.out = f"/srv/bench/{name}.stop", f"/srv/bench/{name}.json"
        script = "/srv/bench/lagprobe.py"
        sb.write_file(script, LAG, mode=0o755)
        sb.run("systemd-run", f"--unit=bench-{name}", "--quiet",
               f"--property=StandardOutput=file:{self.out}", "/usr/bin/python3", script,
               lab.port("master", "lmtp"), lab.port("replica1", "imap"), PROBE, rate, name,
               self.stop_file)

    def stop(self) -> dict:
        self.sb.write_file(self.stop_file, "")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            r = self.sb.systemctl("is-active", "-q", f"bench-{self.name}", check=False)
            if r.returncode != 0:
                break
            time.sleep(0.2)
        lags = json.loads(self.sb.read_file(self.out).splitlines()[-1])
        xs = lags["lags"]
        return {"n": len(xs), "sent": lags["sent"], "p50": pct(xs, 50), "p95": pct(xs, 95),
                "max": max(xs) if xs else float("nan")}


def set_channels(sb, lab, channels: str) -> None:
    conf = sb.host_path(lab.master_conf)
    conf.write_text("\n".join(f"sync_log_channels: {channels}"
                              if x.startswith("sync_log_channels:") else x
                              for x in conf.read_text().splitlines()) + "\n")


def config(lab, links) -> str:
    rows = "\n".join(f"  {n}: {{host: 127.0.0.1, port: {lab.port(n, 'sync')}}}" for n in links)
    return ("cyrus: {imapd_conf: /srv/cyrlab/master/imapd.conf}\nlinks:\n" + rows +
            "\nprobe: {interval: 2s, timeout: 1s}\nlive: {max_backlog: 1000, max_lag: 30s}\n")


def seed_status(sw, field="seed"):
    """replica2's seed (or another field of it) as status shows it; {} while the daemon
    restarts or reloads."""
    try:
        value = sw.link("replica2").get(field)
        return value if field != "seed" else (value or {})
    except (ValueError, KeyError, StopIteration):
        return {}


def end_old_writers(sb, sw, timeout=120) -> float:
    """SIGHUP to Cyrus's master, then end what status still names. Returns the wait."""
    t0 = time.monotonic()
    sb.systemctl("kill", "--signal=HUP", "--kill-who=main", "cyrus-imapd")
    while time.monotonic() - t0 < timeout:
        seed = seed_status(sw)
        if seed.get("state") not in (None, "waiting-for-writers"):
            return time.monotonic() - t0
        for pid in re.findall(r"\bpid (\d+)", seed.get("detail", "")):
            sb.run("kill", pid, check=False)
        time.sleep(1.0)
    raise RuntimeError(f"the seed still waits: {seed_status(sw)}")


def timeline(sb, listing: float, finished: float) -> dict:
    """Where the seed's time went, from systemd's lines about the batch units: each batch from
    "Starting" to "Deactivated" (or "Failed"), per slot, and the slots' idle time between the
    listing and the end (waiting for a tick, or for the last batches to end)."""
    runs: dict[str, list] = {}
    for e in sb.journal(unit="syncwarden-user@replica2.*", fields=True):
        msg, unit = str(e.get("MESSAGE", "")), e.get("UNIT", "")
        if e.get("_PID") != "1" or not unit:
            continue
        if msg.startswith("Starting "):
            runs.setdefault(unit, []).append([realtime(e), None])
        elif ("Deactivated" in msg or "Failed with" in msg) and runs.get(unit) \
                and runs[unit][-1][1] is None:
            runs[unit][-1][1] = realtime(e)
    seconds, idle = [], 0.0
    last_end: dict[str, float] = {}
    for unit, spans in runs.items():
        slot = unit.split(".")[1].lstrip("seedhar")
        for start, end in spans:
            if end is None:
                continue
            seconds.append(round(end - start, 2))
            idle += start - last_end.get(slot, listing)
            last_end[slot] = end
    idle += sum(finished - x for x in last_end.values())
    return {"batches": len(seconds), "seconds": sorted(seconds), "slot_idle_s": idle}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--parallel", type=int, default=None,
                    help="user syncs at a time (default: syncwarden's own default)")
    ap.add_argument("--rate", type=float, default=20.0, help="probe deliveries per second")
    ap.add_argument("--baseline", type=float, default=30.0, help="seconds of phase A")
    a = ap.parse_args()
    users = [f"u{i:04d}" for i in range(a.users)]
    t_bench = time.monotonic()
    with sandbox("seed", tmpfs_size="6g") as sb:
        lab = CyrusLab(sb, replicas=("replica1", "replica2", "replica3"), users=())
        lab.create()
        set_channels(sb, lab, "replica1")
        lab.start_all()
        lab.create_mailbox("master", *(f"user.{u}" for u in users + [PROBE]))
        populated = inner(sb, POPULATE, ",".join(users), a.messages, timeout=3600)
        sb.run("rm", "-f", f"{lab.sync_dir('replica1')}/log")      # -A below sends it all
        t0 = time.monotonic()
        lab.sync_client("replica1", "-A", timeout=3600)
        first_a = time.monotonic() - t0
        sw = Syncwarden(sb, lab)
        sw.install()
        sb.write_file("/etc/syncwarden/syncwarden.yaml", config(lab, ["replica1"]))
        sb.systemctl("start", "syncwarden")
        if not sw.wait_state("replica1", "live", timeout=60):
            raise RuntimeError(f"replica1 never went live: {sw.link('replica1')}")

        # A: the live link's lag with nothing else going on
        probe = LagProbe(sb, lab, "lag-a", a.rate)
        time.sleep(a.baseline)
        lag_a = probe.stop()

        # B: Cyrus alone, a bare sync_client -A to the empty replica3
        probe = LagProbe(sb, lab, "lag-b", a.rate)
        t0, t1 = sb.sh(f"t0=$(date +%s.%N); setpriv --reuid=cyrus --regid=mail --init-groups"
                       f" {BIN}/sync_client -C {lab.master_conf} -n replica3 -A"
                       f" >/srv/bench/bare-A.out 2>&1; echo \"$t0 $(date +%s.%N) $?\"",
                       timeout=7200).stdout.split()[:2]
        bare = float(t1) - float(t0)
        lag_b = probe.stop()

        # C: syncwarden seeds replica2, added to imapd.conf and to the config
        probe = LagProbe(sb, lab, "lag-c", a.rate)
        time.sleep(3)
        set_channels(sb, lab, "replica1 replica2")
        sb.write_file("/etc/syncwarden/syncwarden.yaml", config(lab, ["replica1", "replica2"]))
        sb.systemctl("reload", "syncwarden")
        deadline = time.monotonic() + 30
        while seed_status(sw, "seeded") is not False and time.monotonic() < deadline:
            time.sleep(0.2)
        sw.cli("seed", "replica2", "--no-wait",
               *(["--parallel", str(a.parallel)] if a.parallel else []))
        wait_writers = end_old_writers(sb, sw)
        deadline = time.monotonic() + 7200
        while seed_status(sw).get("state") not in ("done", "incomplete"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the seed did not end: {seed_status(sw)}")
            time.sleep(0.5)
        lag_c = probe.stop()
        seed = seed_status(sw)
        parallel = seed.get("parallel")
        journal = sw.journal_messages()
        listing = next(realtime(e) for e in journal if e.get("MESSAGE_ID") == SEED_PROGRESS
                       and e.get("SYNCWARDEN_PHASE") == "listing")
        finished = next(realtime(e) for e in journal if e.get("MESSAGE_ID") == SEED_FINISHED)
        started = next(realtime(e) for e in journal if e.get("MESSAGE_ID") == SEED_STARTED)
        seeded = finished - listing
        where = timeline(sb, listing, finished)
        check = {}
        for name in ("replica2", "replica3"):
            diff = {}
            for i in range(0, len(users), 250):
                part = users[i:i + 250]
                m, r = lab.messages_many("master", part), lab.messages_many(name, part)
                diff.update({u: (len(m[u]), len(r[u])) for u in part if m[u] != r[u]})
            check[name] = diff
        live = sw.wait_state("replica2", "live", timeout=60)
    took = time.monotonic() - t_bench
    msgs = a.users * a.messages
    print(f"seeding an empty replica: {a.users:,} users x {a.messages} messages = {msgs:,}"
          f" messages (appended in {populated['seconds']:.0f} s); probe deliveries"
          f" {a.rate:g}/s to replica1 in every phase")
    print(f"  ({machine_note()}; benchmark took {took:.0f} s)")
    print(f"  (setup: sync_client -A to replica1 with no other load: {first_a:.1f} s)")
    print(f"  Cyrus alone, sync_client -A to empty replica3:   {bare:8.1f} s"
          f"  {a.users / bare:6.1f} users/s  {msgs / bare:7.0f} messages/s;"
          f" users differing afterwards: {len(check['replica3'])}")
    print(f"  syncwarden seed replica2, {parallel} at a time:        {seeded:8.1f} s"
          f"  {a.users / seeded:6.1f} users/s  {msgs / seeded:7.0f} messages/s"
          f" (listing + syncing; waiting for old Cyrus processes {wait_writers:.1f} s, from"
          f" `seed` to done {finished - started:.1f} s); state {seed.get('state')},"
          f" {seed.get('done')}/{seed.get('total')}, failed {len(seed.get('failed', []))};"
          f" users differing afterwards: {len(check['replica2'])}; live afterwards: {live}")
    print(f"  the seed's {where['batches']} batches took {where['seconds']} s; slots idle"
          f" {where['slot_idle_s']:.1f} s of {parallel} x {seeded:.1f} s")
    for name, s in (("A: no seed", lag_a), ("B: during bare -A", lag_b),
                    ("C: during the seed", lag_c)):
        print(f"  replica1 lag, {name:<19} p50 {s['p50']:.3f} s  p95 {s['p95']:.3f} s"
              f"  max {s['max']:.3f} s  ({s['n']}/{s['sent']} seen)")
    speedup = bare / seeded
    d95 = (lag_c["p95"] / lag_a["p95"] - 1) * 100
    print(f"  seed vs -A: {speedup:.2f}x faster (target > 1); replica1 lag p95 during the seed"
          f" {d95:+.1f} % (target within 10 %)")
    ok = speedup > 1 and d95 <= 10 and not check["replica2"] and seed.get("state") == "done"
    print(result_line(seed_s=seeded, bare_A_s=bare, speedup=speedup, users=a.users,
                      messages=msgs, parallel=parallel, lag_p95_base_s=lag_a["p95"],
                      lag_p95_seed_s=lag_c["p95"], lag_p95_bareA_s=lag_b["p95"],
                      lag_p95_diff_pct=d95, writers_wait_s=wait_writers,
                      seed_differs=len(check["replica2"]),
                      target_met="yes" if ok else "no"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
