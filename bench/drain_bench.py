#!/usr/bin/python3
"""Benchmark: drain of 10,000 sync log entries over 20 users (issue 3).

A real Cyrus 3.6 master and replica1 in a systemd container (the system tests' harness; needs
root); users u01..u20. A backlog is 250 messages per user delivered over LMTP while nothing
replicates: 5,000 messages, one APPEND and one MAILBOX line each, so exactly 10,000 entries in
the channel's `log` (checked before each drain). Rounds alternate, each over a fresh backlog of
the same shape, the two sides taking turns to go first (ABBA: each round makes the mailboxes
larger, and a pass slower):

  - Cyrus alone: back-to-back `sync_client -C <imapd.conf> -R -1 -n replica1` passes as the
    cyrus user until neither `log` nor `log-run` is left (the drain of cyrus-lab.md 4b), timed
    inside the container; syncwarden is not running;
  - syncwarden: the link held (`syncwarden hold replica1`) while the backlog is queued, then
    `systemctl stop syncwarden` timed inside the container (the daemon drains: one-shot passes
    as syncwarden-drain@replica1 units until both files are gone, then exits).

After each drain every user's (UID, GUID) list on replica1 is compared with the master.
Target: syncwarden / Cyrus alone <= 1.10.

Usage: bench/drain_bench.py [--rounds N] [--per-user M]
"""

import argparse
import sys
import time

from benchlib import (
    SYNC_IDENT,
    CyrusLab,
    Syncwarden,
    drain_bare,
    log_lines,
    machine_note,
    median,
    realtime,
    result_line,
    same_messages,
    sandbox,
)

USERS = tuple(f"u{i:02d}" for i in range(1, 21))
DRAIN_FINISHED = "581662cb1fa54a15a0fc686c70a56e53"


def queue(sb, lab, per_user: int, tag: str) -> int:
    t0 = time.monotonic()
    accepted = lab.deliver_many(USERS, per_user, tag, sessions=4)
    n = sum(len(v) for v in accepted.values())
    if n != per_user * len(USERS):
        raise RuntimeError(f"only {n} of {per_user * len(USERS)} messages accepted")
    lines = log_lines(sb, lab, "replica1")
    print(f"  queued {n:,} messages in {time.monotonic() - t0:.0f} s: log {lines['log']:,}"
          f" lines, log-run {lines['log-run']:,}", flush=True)
    return lines["log"] + lines["log-run"]


def verify(lab) -> str:
    diff = same_messages(lab, "replica1", USERS)
    return "replica1 == master for all 20 users" if not diff else f"DIFFERENT: {diff}"


def timed_stop(sb) -> tuple[float, float]:
    """(seconds, wall-clock start) of `systemctl stop syncwarden`, timed inside."""
    out = sb.sh("t0=$(date +%s.%N); systemctl stop syncwarden; t1=$(date +%s.%N);"
                " echo $t0 $t1", timeout=1200).stdout.split()
    return float(out[1]) - float(out[0]), float(out[0])


def timeline(sb, cursor, t0: float) -> list[str]:
    """Where the stop's time went: the daemon's own entries and systemd's for both units."""
    units = ("syncwarden.service", "syncwarden-drain@replica1.service")
    out = []
    for e in sb.journal(since_cursor=cursor, fields=True):
        unit = e.get("UNIT") or e.get("_SYSTEMD_UNIT")
        t = realtime(e) - t0
        if t < -0.001 or unit not in units:
            continue
        ident = e.get("SYSLOG_IDENTIFIER", "?")
        if ident == "syncwarden" and "MESSAGE_ID" not in e:
            continue
        out.append(f"+{t:6.3f}  {ident}: {str(e.get('MESSAGE'))[:110]}")
    return out


def first_line(sb, cursor, t0: float) -> float | None:
    """Seconds from t0 to sync_client's first line (it has connected and logged in)."""
    return min((t for e in sb.journal(since_cursor=cursor, fields=True)
                if e.get("SYSLOG_IDENTIFIER") == SYNC_IDENT and (t := realtime(e) - t0) >= 0),
               default=None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="rounds per side (default 2)")
    ap.add_argument("--per-user", type=int, default=250)
    a = ap.parse_args()
    t_bench = time.monotonic()
    bare, sup = [], []
    with sandbox("drain", tmpfs_size="6g") as sb:
        lab = CyrusLab(sb, replicas=("replica1",), users=USERS)
        lab.setup()
        drain_bare(sb, lab, "replica1")        # the users' INBOXes reach the replica
        sw = Syncwarden(sb, lab)
        sw.install()
        sw.configure(links=["replica1"], interval="2s", drain_timeout="15m")
        held = []

        def cyrus_alone(k):
            print(f"round {k}: Cyrus alone", flush=True)
            entries = queue(sb, lab, a.per_user, f"bare{k}")
            cursor = sb.journal_cursor()
            r = drain_bare(sb, lab, "replica1")
            left = log_lines(sb, lab, "replica1")
            bare.append({"entries": entries, **r, "left": sum(left.values()),
                         "verify": verify(lab), "first_line": first_line(sb, cursor, r["start"])})
            print(f"  drained in {r['seconds']:.2f} s, {r['passes']} passes;"
                  f" {bare[-1]['verify']}", flush=True)

        def syncwarden(k):
            print(f"round {k}: syncwarden", flush=True)
            cursor = sb.journal_cursor()
            sb.systemctl("start", "syncwarden")
            if not held:
                sw.cli("hold", "replica1")
                held.append(True)
            if not sw.wait_state("replica1", "down", timeout=30) or not sw.link("replica1")["held"]:
                raise RuntimeError(f"replica1 not held: {sw.link('replica1')}")
            entries = queue(sb, lab, a.per_user, f"sw{k}")
            took, t0 = timed_stop(sb)
            left = log_lines(sb, lab, "replica1")
            fin = [e for e in sb.journal(since_cursor=cursor, fields=True,
                                         unit="syncwarden.service")
                   if e.get("MESSAGE_ID") == DRAIN_FINISHED]
            sup.append({"entries": entries, "seconds": took, "left": sum(left.values()),
                        "verify": verify(lab),
                        "daemon": fin[0]["MESSAGE"] if fin else "no drain-finished entry",
                        "passes": int(fin[0]["SYNCWARDEN_PASSES"]) if fin else None,
                        "own": float(fin[0]["SYNCWARDEN_DURATION"]) if fin else None,
                        "timeline": timeline(sb, cursor, t0),
                        "first_line": first_line(sb, cursor, t0)})
            print(f"  systemctl stop syncwarden took {took:.2f} s; journal: {sup[-1]['daemon']};"
                  f" {sup[-1]['verify']}", flush=True)

        # Every round adds 250 messages to each INBOX, and a pass takes longer the larger the
        # mailboxes it syncs: the sides take turns going first (ABBA), so that neither always
        # drains into the larger mailboxes.
        for k in range(1, a.rounds + 1):
            for side in ((cyrus_alone, syncwarden) if k % 2 else (syncwarden, cyrus_alone)):
                side(k)
    took = time.monotonic() - t_bench
    b, s = median([x["seconds"] for x in bare]), median([x["seconds"] for x in sup])
    ratio = s / b
    print(f"drain of {bare[0]['entries']:,} entries over {len(USERS)} users"
          f" ({a.per_user} messages each), {a.rounds} round(s) per side")
    print(f"  ({machine_note()}; benchmark took {took:.0f} s)")
    for name, xs in (("Cyrus alone (sync_client -R -1 loop)", bare),
                     ("syncwarden (systemctl stop)", sup)):
        print(f"  {name:<38} " + ", ".join(f"{x['seconds']:.2f} s" for x in xs)
              + f"  median {median([x['seconds'] for x in xs]):.2f} s"
              + f"  ({sum(x['entries'] for x in xs) / len(xs):,.0f} entries,"
              f" {sum(x['left'] for x in xs)} left)")
    print("  syncwarden's own drain time (journal): "
          + ", ".join(f"{x['own']:.2f} s in {x['passes']} passes" for x in sup if x["own"]))
    print(f"  ratio syncwarden / Cyrus alone: {ratio:.3f} (target <= 1.10)")
    print("  each round's own ratio (same mailbox sizes, give or take one backlog): "
          + ", ".join(f"{x['seconds'] / y['seconds']:.3f}" for x, y in zip(sup, bare)))
    print("  where the time of the last `systemctl stop syncwarden` went (from its start):")
    for line in sup[-1]["timeline"]:
        print(f"    {line}")
    print("  Cyrus alone, from the loop's start to sync_client's first line (login done): "
          + ", ".join(f"+{x['first_line']:.3f}" for x in bare if x["first_line"] is not None)
          + "; syncwarden, from `systemctl stop`: "
          + ", ".join(f"+{x['first_line']:.3f}" for x in sup if x["first_line"] is not None))
    ok = all(x["verify"].startswith("replica1 ==") and x["left"] == 0 for x in bare + sup)
    print(result_line(sw_stop_s=s, bare_drain_s=b, ratio=ratio, entries=bare[0]["entries"],
                      rounds=a.rounds, all_delivered="yes" if ok else "no",
                      target_met="yes" if ratio <= 1.10 else "no"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
