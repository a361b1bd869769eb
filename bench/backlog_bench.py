#!/usr/bin/python3
"""Benchmark 3: backlog accounting on a 1,000,000-line sync log.

Prints the first read (whole file) and a tick after 1,000 appended lines, plus an idle tick,
next to the naive baseline of re-reading the whole file every tick (what a size-proportional
implementation would cost). Target: the tick after 1,000 lines <= 5 ms.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.cyrus.backlog import Backlog, count_lines  # noqa: E402

LINES = 1_000_000
APPEND = 1_000


def make_log(path: Path, n: int) -> None:
    users = [f"user.u{i:04d}" for i in range(200)]
    with open(path, "wb") as f:
        for i in range(0, n, 2):
            u = users[i % 200]
            f.write(f"APPEND {u}\nMAILBOX {u}\n".encode())


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        log = d / "log"
        make_log(log, LINES)
        size = log.stat().st_size
        b = Backlog(d)
        t0 = time.perf_counter()
        snap = b.read(time.monotonic(), time.time())
        first = time.perf_counter() - t0
        assert snap.entries == LINES, snap
        ticks, idle = [], []
        for _ in range(20):
            with open(log, "ab") as f:
                f.write(b"APPEND user.bob\nMAILBOX user.bob\n" * (APPEND // 2))
            t0 = time.perf_counter()
            b.read(time.monotonic(), time.time())
            ticks.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b.read(time.monotonic(), time.time())
            idle.append(time.perf_counter() - t0)
        naive = []
        for _ in range(3):
            t0 = time.perf_counter()
            count_lines(log.read_bytes())
            naive.append(time.perf_counter() - t0)
    med = statistics.median(ticks)
    print(f"backlog accounting, {LINES:,}-line log ({size / 1e6:.1f} MB)")
    print(f"  first read (whole file):            {first * 1000:8.1f} ms")
    print(f"  tick after {APPEND:,} appended lines:   {med * 1000:8.3f} ms median,"
          f" {max(ticks) * 1000:.3f} ms max  (target <= 5 ms)")
    print(f"  idle tick (nothing appended):       {statistics.median(idle) * 1000:8.3f} ms")
    print(f"  baseline: re-read whole file/tick:  {statistics.median(naive) * 1000:8.1f} ms")
    print(f"RESULT backlog_tick_ms={med * 1000:.3f} first_read_ms={first * 1000:.1f}"
          f" naive_tick_ms={statistics.median(naive) * 1000:.1f}"
          f" target_met={'yes' if med <= 0.005 else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
