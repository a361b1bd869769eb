#!/usr/bin/python3
"""Benchmark: time from the first failure of one user to the other users flowing again (issue 4).

A real Cyrus 3.6 master and replica1 in a systemd container (the system tests' harness; needs
root); 20 users u01..u20. One script inside the container does, on each side alike:

  1. delivers continuously over LMTP, round-robin to all 20 users at 20 msg/s (STEADY s), while
     polling the 19 other users' INBOXes on replica1 every 50 ms (the Subject of each new
     message: when was which message first visible);
  2. pauses delivery until the channel's `log` and `log-run` are both gone (all sent), then
     breaks u05 on replica1 as cyrus-lab.md 4c did (`chmod 000 $(mbpath user.u05)`) and
     delivers one message to u05: the next pass fails on a `log-run` that names u05 only;
  3. at the first `bailing out!` line of sync_client in the journal (the failure, time F),
     resumes the continuous round-robin delivery to all 20 users and keeps polling.

Why the pause: a spinning client re-syncs every user named in its stuck `log-run` on each spin
(cyrus-lab.md 4c), so users that happen to share the culprit's file keep flowing either way; the
pause makes the stuck file hold the culprit alone, so that every other user is one that plain
Cyrus stalls (as `user.dave` in the lab). Reported, from F:
  - first: the first message delivered after F to another user is visible on replica1;
  - all 19: every other user has a message delivered after F visible on replica1.

Sides, in the same run: Cyrus alone (a bare `sync_client -R -n replica1` started by hand as
cyrus), watched for WAIT s (default 60): the others are expected never to flow; then, with u05
repaired and the backlog drained, syncwarden (worker syncwarden-sync@replica1, quarantine).
Target: syncwarden <= 10 s; Cyrus alone: never.

Usage: bench/isolation_bench.py [--wait SECONDS] [--steady SECONDS] [--rate MSGS_PER_S]
"""

import argparse
import sys
import time

from benchlib import (
    BIN,
    SYNC_IDENT,
    CyrusLab,
    Syncwarden,
    drain_bare,
    inner,
    machine_note,
    pct,
    realtime,
    result_line,
    same_messages,
    sandbox,
    start_bare_client,
    stop_bare_client,
)

USERS = tuple(f"u{i:02d}" for i in range(1, 21))
CULPRIT = "u05"
QUARANTINED = "45c01d22db55461db7e54216c2522d47"

ISO = r"""
import imaplib, json, os, re, smtplib, socket, subprocess, sys, threading, time, uuid
sys.path.insert(0, "/srv/cyrlab")
from labclient import Lmtp, message
(lmtp_port, imap_port, users, culprit, rate, steady, wait, sync_dir, replica_conf, mbpath,
 ident, stop_early) = sys.argv[1:]
lmtp_port, imap_port, rate, steady, wait = int(lmtp_port), int(imap_port), float(rate), \
    float(steady), float(wait)
users, stop_early = users.split(","), stop_early == "yes"
others = [u for u in users if u != culprit]
token = uuid.uuid4().hex[:8]
tag = "iso-" + token                      # this run's messages only (the users are reused)
sent, seen, errors = [], {}, []          # sent: [user, i, t]; seen: "user i" -> t
go = threading.Event()                    # set: deliver; clear: pause
quit_ = threading.Event()

def deliverer():
    lm, i, k = Lmtp(lmtp_port), 0, 0
    while not quit_.is_set():
        if not go.is_set():
            go.wait(0.05)
            continue
        t_next = time.time() + 1 / rate
        user = users[k % len(users)]
        k += 1
        i += 1
        mid, text = message(user, i, tag, token)
        try:
            lm.send(user, text)
            sent.append([user, i, float(re.search(r"t=([\d.]+)", text).group(1))])
        except (smtplib.SMTPException, OSError) as e:
            errors.append(str(e))
        delay = t_next - time.time()
        if delay > 0:
            time.sleep(delay)

def monitor():
    conns, last = {}, {u: 0 for u in others}
    pat = re.compile(tag.encode() + rb" (\d+) t=")
    while not quit_.is_set():
        for u in others:
            try:
                if u not in conns:
                    m = imaplib.IMAP4("127.0.0.1", imap_port, timeout=10)
                    m.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    m.authenticate("PLAIN", lambda _: ("%s\0cyrus\0adminpw" % u).encode())
                    m.select("INBOX", readonly=True)
                    conns[u] = m
                typ, data = conns[u].uid("FETCH", "%d:*" % (last[u] + 1),
                                         "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                now = time.time()
                for item in data:
                    if isinstance(item, tuple):
                        uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                        if uid > last[u]:
                            last[u] = uid
                            s = pat.search(item[1])
                            if s:
                                seen.setdefault("%s %s" % (u, int(s.group(1))), now)
            except (OSError, imaplib.IMAP4.error) as e:
                errors.append("poll %s: %s" % (u, e))
                conns.pop(u, None)
        time.sleep(0.05)

threads = [threading.Thread(target=deliverer), threading.Thread(target=monitor)]
for t in threads:
    t.start()
go.set()
time.sleep(steady)
go.clear()
t_pause = time.time()
while (os.path.exists(sync_dir + "/log") or os.path.exists(sync_dir + "/log-run")) \
        and time.time() - t_pause < 60:
    time.sleep(0.05)
time.sleep(0.3)
caught_up = time.time() - t_pause
path = subprocess.run(["setpriv", "--reuid=cyrus", "--regid=mail", "--init-groups", mbpath,
                       "-C", replica_conf, "user." + culprit], capture_output=True, text=True,
                      check=True).stdout.strip()
follow = subprocess.Popen(["journalctl", "--follow", "--output=json", "--no-pager",
                           "--since", "@%d" % int(time.time() - 2), "-t", ident],
                          stdout=subprocess.PIPE, text=True)
journal = []                              # [t, message] of sync_client from the break on

def reader():
    for line in follow.stdout:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        journal.append([int(e["__REALTIME_TIMESTAMP"]) / 1e6, e.get("MESSAGE")])

threading.Thread(target=reader, daemon=True).start()
os.chmod(path, 0)
t_break = time.time()
mid, text = message(culprit, 0, "trigger", token)
trigger = Lmtp(lmtp_port)
trigger.send(culprit, text)
trigger.close()
t_fail = None
deadline = time.time() + 30
while t_fail is None and time.time() < deadline:
    for t, msg in list(journal):
        if t >= t_break and "bailing out" in str(msg):
            t_fail = t
            break
    else:
        time.sleep(0.005)
go.set()                                     # the continuous delivery resumes
t_resumed = time.time()
stuck = ""
try:
    stuck = open(sync_dir + "/log-run").read()
except OSError as e:
    stuck = "(%s)" % e.strerror

def flowing():
    firsts = {}
    for u, i, t in sent:
        if u != culprit and t > (t_fail or 0) and u not in firsts:
            firsts[u] = i
    return all(u in firsts and ("%s %s" % (u, firsts[u])) in seen for u in others)

end = time.time() + wait
while time.time() < end:
    if stop_early and t_fail and flowing():
        end = min(end, time.time() + 3)
    time.sleep(0.2)
quit_.set()
go.set()
for t in threads:
    t.join()
follow.terminate()
print(json.dumps({"sent": sent, "seen": seen, "errors": errors[:20], "t_break": t_break,
                  "t_fail": t_fail, "t_resumed": t_resumed, "caught_up": caught_up,
                  "journal": [x for x in journal if x[0] >= t_break], "stuck": stuck, "mailbox_path": path}))
"""


def run_side(sb, lab, a, stop_early: bool) -> dict:
    return inner(sb, ISO, lab.port("master", "lmtp"), lab.port("replica1", "imap"),
                 ",".join(USERS), CULPRIT, a.rate, a.steady, a.wait, lab.sync_dir("replica1"),
                 lab.conf("replica1"), f"{BIN}/mbpath", SYNC_IDENT,
                 "yes" if stop_early else "no", timeout=a.steady + a.wait + 200)


def analyse(r: dict) -> dict:
    """From F: first and all-19 'flowing' times, and the post-F lag of the other users."""
    f = r["t_fail"]
    out = {"t_fail": f, "first": None, "all": None, "flowing_users": 0, "post_lags": [],
           "post_sent": 0, "post_seen": 0}
    if f is None:
        return out
    firsts = {}
    for u, i, t in r["sent"]:
        if u == CULPRIT or t <= f:
            continue
        out["post_sent"] += 1
        key = f"{u} {i}"
        if key in r["seen"]:
            out["post_seen"] += 1
            out["post_lags"].append(r["seen"][key] - t)
        firsts.setdefault(u, key)
    vis = {u: r["seen"][k] - f for u, k in firsts.items() if k in r["seen"]}
    out["flowing_users"] = len(vis)
    out["first"] = min(vis.values()) if vis else None
    out["all"] = max(vis.values()) if len(vis) == len(USERS) - 1 else None
    # steady phase (before the break): normal lag, for reference
    pre = [r["seen"][f"{u} {i}"] - t for u, i, t in r["sent"]
           if t < r["t_break"] and f"{u} {i}" in r["seen"]]
    out["pre_p50"] = pct(pre, 50) if pre else None
    stuck_users = sorted({w.split()[1] for w in r["stuck"].splitlines() if len(w.split()) > 1})
    out["stuck"] = stuck_users if not r["stuck"].startswith("(") else r["stuck"]
    return out


def follower_since(sb, pid: int) -> list[tuple[int, float]]:
    """(pid, wall-clock start) of the daemon's `journalctl --follow` children."""
    script = (f"now=$(date +%s.%N); up=$(cut -d' ' -f1 /proc/uptime); tck=$(getconf CLK_TCK);"
              f" for c in $(cat /proc/{pid}/task/*/children); do"
              f" [ \"$(cat /proc/$c/comm)\" = journalctl ] || continue;"
              f" st=$(sed 's/.*) //' /proc/$c/stat | awk '{{print $20}}');"
              f" echo $c $(echo \"$now - $up + $st / $tck\" | bc -l); done")
    out = sb.sh(script, check=False).stdout.split()
    return [(int(out[i]), float(out[i + 1])) for i in range(0, len(out) - 1, 2)]


def collapse(entries, origin):
    """[(first, last, count, message)] with runs of the same message folded into one."""
    out = []
    for e in entries:
        msg, t = str(e.get("MESSAGE")), realtime(e) - origin
        if out and out[-1][3] == msg:
            out[-1][1], out[-1][2] = t, out[-1][2] + 1
        else:
            out.append([t, t, 1, msg])
    return out


def fmt(x, never):
    return f"{x:.2f} s" if x is not None else never


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wait", type=float, default=60.0,
                    help="how long to watch after the failure (default 60)")
    ap.add_argument("--steady", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=20.0)
    a = ap.parse_args()
    t_bench = time.monotonic()
    with sandbox("isolation") as sb:
        lab = CyrusLab(sb, replicas=("replica1",), users=USERS)
        lab.setup()
        # Cyrus alone.
        pid = start_bare_client(sb, lab, "replica1")
        try:
            bare_raw = run_side(sb, lab, a, stop_early=False)
        finally:
            stop_bare_client(sb, pid)
        bare_spins = sum("Reprocessing sync log file" in str(m) for _, m in bare_raw["journal"])
        # Repair u05 on the replica, send what was left (the stuck log-run, then log).
        sb.run("chmod", "700", bare_raw["mailbox_path"])
        drained = drain_bare(sb, lab, "replica1")
        diff = same_messages(lab, "replica1", USERS)
        if diff:
            raise RuntimeError(f"replica1 differs after the repair and drain: {diff}")
        # syncwarden.
        sw = Syncwarden(sb, lab)
        sw.setup(interval="2s")
        if not sw.wait_state("replica1", "live", timeout=30):
            raise RuntimeError(f"replica1 never went live: {sw.link('replica1')}")
        cursor = sb.journal_cursor()
        sw_raw = run_side(sb, lab, a, stop_early=True)
        time.sleep(1)
        daemon = sb.journal(since_cursor=cursor, unit="syncwarden.service", fields=True)
        worker = sb.journal(since_cursor=cursor, unit="syncwarden-sync@replica1.service",
                            fields=True)
        qlist = sw.cli("quarantine", "list", check=False)
        follower = follower_since(sb, sw.main_pid())
        link = sw.link("replica1")
    took = time.monotonic() - t_bench
    bare, sup = analyse(bare_raw), analyse(sw_raw)
    never = f"never within {a.wait:g} s"
    print(f"isolation: 20 users, {a.rate:g} msg/s round-robin; {CULPRIT} broken on replica1"
          f" (chmod 000 on its mailbox directory); F = first `bailing out!` of sync_client")
    print(f"  ({machine_note()}; benchmark took {took:.0f} s)")
    for name, r, raw in (("Cyrus alone (bare sync_client -R)", bare, bare_raw),
                         ("syncwarden (quarantine)", sup, sw_raw)):
        print(f"  {name}:")
        if r["t_fail"] is None:
            print("    no `bailing out!` within 30 s of the break: nothing measured")
            continue
        print(f"    failure F {r['t_fail'] - raw['t_break']:.2f} s after the break; stuck log-run"
              f" named: {r['stuck']}; delivery resumed {raw['t_resumed'] - r['t_fail']:.2f} s"
              f" after F")
        print(f"    first other user's post-F message visible: {fmt(r['first'], never)};"
              f" all 19 other users flowing: {fmt(r['all'], never)}"
              f" ({r['flowing_users']}/19 users flowed)")
        lag = (f"p50 {pct(r['post_lags'], 50):.2f} s, max {max(r['post_lags']):.2f} s"
               if r["post_lags"] else "-")
        print(f"    post-F messages to the others: {r['post_seen']}/{r['post_sent']} visible"
              f" ({lag}); steady-state lag before the break p50 "
              f"{fmt(r['pre_p50'], '-')}")
    window = (bare_raw["journal"][-1][0] - bare["t_fail"]) if bare["t_fail"] else 0
    print(f"  Cyrus alone's client: {bare_spins} `Reprocessing sync log file` spins in"
          f" {window:.0f} s after F ({bare_spins / max(window, 1e-9):.0f}/s); after"
          f" `chmod 700` the drain took {drained['passes']} passes")
    print("  Cyrus alone's client, its first lines from F on:")
    for t, msg in [x for x in bare_raw["journal"] if bare["t_fail"] and x[0] >= bare["t_fail"]][:6]:
        print(f"    F{t - bare['t_fail']:+7.3f} s  {msg}")
    print("  syncwarden daemon journal after the break (repeats collapsed):")
    for t0, t1, n, msg in collapse(daemon, sup["t_fail"] or sw_raw["t_break"]):
        times = f"F{t0:+7.2f} s" + (f" .. F{t1:+.2f} s, {n} times:" if n > 1 else "")
        print(f"    {times}  {msg[:200]}")
    fails = [e for e in worker if "bailing out" in str(e.get("MESSAGE"))
             or "update failed" in str(e.get("MESSAGE"))]
    print(f"  worker journal: {len(fails)} failure lines, first ones:")
    for e in fails[:4]:
        print(f"    F{realtime(e) - (sup['t_fail'] or 0):+7.2f} s  {e.get('MESSAGE')}")
    print("  syncwarden quarantine list:")
    for line in (qlist.stdout + qlist.stderr).strip().splitlines():
        print(f"    {line}")
    print(f"  link replica1: state {link['state']}; the daemon's journal follower: "
          + (", ".join(f"journalctl pid {p} running since F{t - (sup['t_fail'] or 0):+.2f} s"
                       for p, t in follower) or "none found"))
    print(result_line(sw_first_s=sup["first"] if sup["first"] is not None else "never",
                      sw_all_s=sup["all"] if sup["all"] is not None else "never",
                      sw_flowing_users=sup["flowing_users"],
                      bare_first_s=bare["first"] if bare["first"] is not None else "never",
                      bare_all_s=bare["all"] if bare["all"] is not None else "never",
                      bare_flowing_users=bare["flowing_users"], wait_s=a.wait,
                      target_met="yes" if sup["all"] is not None and sup["all"] <= 10 else "no"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
