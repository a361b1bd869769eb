#!/usr/bin/python3
"""Benchmark: `syncwarden switchover` next to today's failover + promote by hand (issue 16).

The coordination lab of the system tests (tests/system/etcdlab.py: host-a, host-b and one
etcd node, each in its own network namespace of one container). Rounds alternate, each after
M messages delivered to the current master, and each timed from the first command until the
new master accepts mail and its link to the old master is live again:

  - by hand, host-a -> host-b: `systemctl stop cyrus-imapd` on host-a, `syncwarden failover
    --yes` there (drain, IMAP verification, demote: the daemon lets the key go), `syncwarden
    promote --yes` on host-b (it takes the key), then host-a's Cyrus started again as the
    replica;
  - switchover, host-b -> host-a: `syncwarden switchover --stop-cyrus` (from host-b), then
    host-b's Cyrus started again as the replica.

Both end with the same state and every message on both sides (compared after each round).
Nothing is asserted on time.

Usage: bench/switchover_bench.py [--rounds N] [--messages M]
"""

import argparse
import sys
import time

from benchlib import machine_note, median, result_line, sandbox

from system.etcdlab import CoordLab, wait


def deliver(lab, where: str, n: int, tag: str) -> None:
    users = ("bob", "alice", "carol")
    for i, user in enumerate(users):
        lab.lab.deliver(user, n // len(users) + (i < n % len(users)), tag, instance=where)


def settled(lab, new: str, old: str) -> None:
    """The new master's link live, and both sides with the same messages."""
    assert wait(lambda: lab.link(new).get("state") == "live", 60), lab.link(new)
    for user in ("bob", "alice", "carol"):
        want = lab.lab.messages(new, user)
        wait(lambda: lab.lab.messages(old, user) == want, 60)


def by_hand(lab) -> float:
    t0 = time.monotonic()
    lab.sb.systemctl("stop", lab.lab.unit("master"))
    lab.cli("master", "failover", "--yes", timeout=300)
    lab.cli("replica1", "promote", "--yes")
    wait(lambda: lab.coordination("replica1").get("holds_key"), 60)
    lab.lab.start("master")
    assert wait(lambda: lab.link("replica1").get("state") == "live", 60)
    took = time.monotonic() - t0
    for name in ("replica1",):       # the failover held host-a's link: resume it for later
        lab.cli("master", "resume", name, check=False)
    return took


def switchover(lab) -> float:
    t0 = time.monotonic()
    lab.cli("replica1", "switchover", "--to", "host-a", "--stop-cyrus", timeout=300)
    lab.lab.start("replica1")
    assert wait(lambda: lab.link("master").get("state") == "live", 60)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=60)
    args = ap.parse_args()
    hand, sw = [], []
    with sandbox("switchover") as sb:
        lab = CoordLab(sb)
        lab.setup_started()
        assert wait(lambda: lab.link("master").get("state") == "live", 60)
        for r in range(args.rounds):
            deliver(lab, "master", args.messages, f"hand{r}")
            hand.append(by_hand(lab))
            settled(lab, "replica1", "master")
            print(f"round {r + 1}: failover + promote by hand {hand[-1]:.2f} s", flush=True)
            deliver(lab, "replica1", args.messages, f"switch{r}")
            sw.append(switchover(lab))
            settled(lab, "master", "replica1")
            print(f"round {r + 1}: switchover {sw[-1]:.2f} s", flush=True)
    for what, xs in (("failover + promote by hand", hand), ("switchover", sw)):
        print(f"{what + ':':28} median {median(xs):.2f} s"
              f" ({', '.join(f'{x:.2f}' for x in xs)})")
    print(machine_note())
    print(result_line(bench="switchover", rounds=args.rounds, messages=args.messages,
                      by_hand_s=median(hand), switchover_s=median(sw),
                      ratio=median(sw) / median(hand)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
