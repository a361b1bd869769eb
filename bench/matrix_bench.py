#!/usr/bin/python3
"""The fault matrix's scenarios with plain Cyrus: the baseline column of the README's table.

The system tests (tests/system/test_matrix_*.py) run each scenario with syncwarden and print
`MATRIX scenario=... recover_s=X`. This runs the ones that plain Cyrus can be measured in, on the
same two-host lab (tests/system/netlab.py: a master host and replica1's host, each its own
network namespace in one systemd container) with the same mail stream (about 20 messages/s),
but no syncwarden: the Cyrus master runs the rolling client itself as a DAEMON entry
(`sync_client -r -n replica1`), restarting it whenever it exits.

Each scenario: mail flowing, the fault, its end at T; then the time until every message the
master accepted before T is on replica1 (recover_s), polled inside the container; a scenario
that has not recovered after --cap seconds prints "> CAP" and the next one starts once it has
(or after another --cap). Scenarios with no plain-Cyrus counterpart (a drain: Cyrus has none;
syncwarden's own processes killed; the repair after a hard failover; the check that finds an
emptied replica) are left to the README's words.

Usage: bench/matrix_bench.py [--cap SECONDS] [SCENARIO ...]
Scenarios: partition-5s partition-60s replica-power-off replica-hang worker-sigkill
           master-power-off replica-disk-full
"""

import argparse
import sys
import time

from benchlib import REPO, ROOT, machine_note, need_root, result_line  # noqa: F401

sys.path.insert(0, str(REPO / "tests"))
from system import netlab  # noqa: E402
from system.matrix import Pair  # noqa: E402
from system.sandbox import Sandbox, cleanup_stale  # noqa: E402

DAEMON_ENTRY = ('  syncclient cmd="sync_client -C /srv/cyrlab/master/imapd.conf -r -n replica1"'
                '\n')
SCENARIOS = ("partition-5s", "partition-60s", "replica-power-off", "replica-hang",
             "worker-sigkill", "master-power-off", "replica-disk-full")


class PlainPair(Pair):
    """The matrix's lab with Cyrus alone: no syncwarden, the master's DAEMON runs the client."""

    def setup(self) -> None:
        self.sb.start()
        self.net.create()
        self.net.join("master", ("cyrus-imapd.service",), boot=("cyrus-imapd.service",))
        for r in self.replicas:
            unit = self.lab.unit(r)
            self.net.join(r, (unit,), boot=(unit,))
        self.lab.create()
        conf = self.sb.host_path(f"{ROOT}/master/cyrus.conf")
        conf.write_text(conf.read_text().replace("DAEMON {\n", "DAEMON {\n" + DAEMON_ENTRY))
        self.lab.start_all()
        self.lab.create_mailbox("master", *(f"user.{u}" for u in self.users))


def fault(pair, name: str) -> float:
    """Cause the scenario's fault and end it; returns T, the end (epoch)."""
    net, sb, lab = pair.net, pair.sb, pair.lab
    if name.startswith("partition-"):
        net.partition("master", "replica1", "both" if name == "partition-5s" else "b>a")
        time.sleep(int(name.split("-")[1][:-1]))
        net.heal("master", "replica1")
        return time.time()
    if name == "replica-power-off":
        net.power_off("replica1")
        time.sleep(10)
        return net.power_on("replica1")
    if name == "replica-hang":
        net.hang("replica1")
        time.sleep(10)
        return net.unhang("replica1")
    if name == "worker-sigkill":
        pids = sb.run("pgrep", "-f", "sync_client .*-n replica1", check=False).stdout.split()
        t = time.time()
        sb.run("kill", "-KILL", *pids)
        return t
    if name == "master-power-off":
        net.power_off("master")
        time.sleep(5)
        return net.power_on("master")
    if name == "replica-disk-full":
        netlab.fill(sb, lab.spool("replica1"))
        time.sleep(10)
        netlab.free(sb, lab.spool("replica1"))
        return time.time()
    raise ValueError(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cap", type=float, default=180.0,
                    help="seconds to wait for a recovery (default 180)")
    ap.add_argument("scenarios", nargs="*", default=list(SCENARIOS), metavar="SCENARIO")
    a = ap.parse_args()
    for name in a.scenarios:
        if name not in SCENARIOS:
            sys.exit(f"unknown scenario {name!r} (one of: {', '.join(SCENARIOS)})")
    need_root()
    cleanup_stale()
    t_bench = time.monotonic()
    pair = PlainPair(Sandbox(f"bench-matrix-{int(time.time()) % 100000}"),
                     replicas=("replica1",), spool_sizes={"replica1": "128m"})
    rows = []
    try:
        pair.setup()
        for name in a.scenarios:
            with pair.delivering(name) as mail:
                pair.wait_accepted(mail, 20)
                end = fault(pair, name)
                n = len(pair.accepted(mail))
                r = pair.lab._client("arrived", pair.lab.endpoint("replica1"), mail.path, n,
                                     "--since", f"{end:.6f}", "--timeout", a.cap,
                                     timeout=a.cap + 60)
                pair.wait_accepted(mail, 20)
            recover = f"{r['seconds']:.1f}" if r["ok"] else f">{a.cap:g}"
            rows.append((name, len(mail.accepted), recover, r["missing"]))
            print(f"MATRIX-PLAIN scenario={name} delivered={len(mail.accepted)}"
                  f" recover_s={recover}" + ("" if r["ok"] else f" missing={r['missing']}"),
                  flush=True)
            if not r["ok"]:       # let it catch up (or not) before the next scenario
                pair.lab._client("arrived", pair.lab.endpoint("replica1"), mail.path,
                                 len(mail.accepted), "--timeout", a.cap, timeout=a.cap + 60)
    finally:
        pair.sb.stop()
    print(f"plain Cyrus (sync_client -r under the Cyrus master) in the fault matrix"
          f" ({machine_note()}; benchmark took {time.monotonic() - t_bench:.0f} s)")
    for name, delivered, recover, missing in rows:
        print(f"  {name:<20} {delivered:5d} delivered  recovered in {recover} s")
    print(result_line(bench="matrix-plain", **{n.replace("-", "_"): r for n, _, r, _ in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
