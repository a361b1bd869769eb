"""Shared pieces of the system benchmarks (resume, lag, idle, drain, isolation).

Each benchmark boots its own systemd container with the system tests' harness (tests/system:
Sandbox, CyrusLab, Syncwarden), runs plain Cyrus and syncwarden over the same lab in the same
run, and prints both. Nothing here asserts on time. Needs root, systemd-nspawn and Cyrus 3.6
(scripts/setup installs them).

Measurements that need the container's loopback (IMAP, LMTP, the sync logs' timing) run INSIDE
it as small Python scripts (`inner()`), so that nsenter's start-up cost is never in a figure.
Their LMTP deliveries use the system tests' own helper (`message` and `Lmtp` of
tests/system/labclient.py, which CyrusLab puts at /srv/cyrlab/labclient.py in the container).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from system.cyruslab import BIN, ROOT, CyrusLab  # noqa: F401
from system.sandbox import Sandbox, cleanup_stale
from system.swlab import Syncwarden, log_lines, same_messages, wait_same  # noqa: F401

SYNC_CLIENT = f"{BIN}/sync_client"
SYNC_IDENT = "lab-master/sync_client"      # sync_client's syslog identifier on the lab master


def need_root() -> None:
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root: it mounts an overlay and boots systemd-nspawn")


@contextlib.contextmanager
def sandbox(name: str, **kw):
    """A booted container named bench-<name>-<pid>, stopped and removed whatever happens: on an
    exception, Ctrl-C or SIGTERM (turned into SystemExit, so the finally below runs). A run
    that is SIGKILLed takes its container down with it (nspawn has PDEATHSIG), and the next
    run's cleanup_stale() removes the mounts it left."""
    need_root()
    cleanup_stale()
    prefix = os.environ.get("SYNCWARDEN_SANDBOX_PREFIX", "")    # as tests/system/conftest.py
    sb = Sandbox(f"{prefix}bench-{name}-{os.getpid()}", **kw)
    old = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sb.start()
        yield sb
    finally:
        try:
            sb.stop()
        finally:
            signal.signal(signal.SIGTERM, old)


def inner(sb, script: str, *args, timeout: float = 300, check: bool = True):
    """Run a Python script inside the container (as root); its last stdout line is JSON."""
    path = f"/srv/bench/{hashlib.sha1(script.encode()).hexdigest()[:12]}.py"
    sb.write_file(path, script, mode=0o755)
    r = sb.run("/usr/bin/python3", path, *args, timeout=timeout, check=check)
    lines = [x for x in r.stdout.splitlines() if x.strip()]
    if not lines:
        raise RuntimeError(f"inner script printed nothing\n{r.stderr[-3000:]}")
    return json.loads(lines[-1])


def start_bare_client(sb, lab, link: str, *args) -> int:
    """Cyrus alone: `sync_client -C <master imapd.conf> -R -n LINK ARGS` started by hand as the
    cyrus user (setsid, in the background, no supervisor of any kind). Returns its pid (as seen
    inside the container)."""
    out = sb.sh(f"mkdir -p /srv/bench; setsid setpriv --reuid=cyrus --regid=mail --init-groups {SYNC_CLIENT}"
                f" -C {lab.master_conf} -R -n {link} {' '.join(args)}"
                f" </dev/null >/srv/bench/bare-{link}.out 2>&1 & echo $!").stdout
    return int(out.split()[-1])


def stop_bare_client(sb, pid: int, timeout: float = 10) -> None:
    """SIGTERM our bare client by pid (it exits 75 and keeps log-run whole) and wait for it."""
    sb.run("kill", "-TERM", pid, check=False)
    sb.sh(f"for i in $(seq {int(timeout * 10)}); do"
          f" [ -e /proc/{pid} ] && ! grep -q '^State:.*Z' /proc/{pid}/status || exit 0;"
          f" sleep 0.1; done; exit 1", check=False)


def drain_bare(sb, lab, link: str, timeout: float = 600) -> dict:
    """Back-to-back `sync_client -R -1 -n LINK` passes as cyrus until neither log nor log-run
    is left (how cyrus-lab.md drains). Timed inside the container: {"seconds", "passes",
    "start"} (start: the wall-clock time the loop began)."""
    d = lab.sync_dir(link)
    script = (f"t0=$(date +%s.%N); n=0; while [ -e {d}/log ] || [ -e {d}/log-run ]; do"
              f" n=$((n+1)); [ $n -le 50 ] || break;"
              f" setpriv --reuid=cyrus --regid=mail --init-groups {SYNC_CLIENT}"
              f" -C {lab.master_conf} -R -1 -n {link} >/dev/null 2>&1 || true; done;"
              f" t1=$(date +%s.%N); echo \"$t0 $t1 $n\"")
    t0, t1, n = sb.sh(script, timeout=timeout).stdout.split()
    return {"seconds": float(t1) - float(t0), "passes": int(n), "start": float(t0)}


def journal_since(sb, cursor: str | None, **filters) -> list[dict]:
    return sb.journal(since_cursor=cursor, fields=True, **filters)


def realtime(entry: dict) -> float:
    """A journal entry's wall-clock time (the container shares the host's clock)."""
    return int(entry["__REALTIME_TIMESTAMP"]) / 1e6


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def pct(xs, p: float):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = max(0, min(len(xs) - 1, math.ceil(p / 100 * len(xs)) - 1))
    return xs[k]


def revision() -> str:
    """The checkout that was installed in the container (make install copies the work tree)."""
    try:
        r = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                           capture_output=True, text=True, timeout=10, check=False)
        return r.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_note() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
            f" at {time.strftime('%Y-%m-%d %H:%M:%S')}; syncwarden {revision()}")


def result_line(**kv) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v).replace(" ", "_")
    return "RESULT " + " ".join(f"{k}={fmt(v)}" for k, v in kv.items())
