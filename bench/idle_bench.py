#!/usr/bin/python3
"""Benchmark 4: the idle daemon with 20 links: RSS and CPU over N minutes (default 10).

A real Cyrus 3.6 master with 20 real replicas (replica01..replica20, each its own Cyrus
instance; CyrusLab's ports: replica i listens on 10143+1000*i, 10024+1000*i and 10005+1000*i,
so the 20th uses 30143/30024/30005: no collisions, below the ephemeral range) in a systemd
container (the system tests' harness; needs root). syncwarden supervises 20 links with the
example config's probe.interval of 2s; once every link is live and a settling minute has passed,
nothing is delivered and a sampler inside the container reads, every 5 s:

  - the daemon process only (MainPID of syncwarden.service): /proc/<pid>/stat utime+stime and
    /proc/<pid>/status VmRSS / VmHWM (and Pss from smaps_rollup);
  - for reference, its child `journalctl --follow` (the workers' journal follower), and
  - the baseline: Cyrus's own 20 rolling `sync_client -R` processes (the workers: syncwarden
    execs sync_client in each unit, so these are exactly what plain Cyrus would run).

With --metrics, the daemon also serves Prometheus metrics (metrics.listen on 127.0.0.1) and
the sampler scrapes /metrics every 15 s, as a Prometheus would: the daemon's figures then
include building and serving each scrape (the sampler's own work is not counted).

Target: the daemon <= 40 MB RSS and <= 0.5 % of one core, with or without metrics.

Usage: bench/idle_bench.py [--minutes M] [--links N] [--settle SECONDS] [--metrics]
"""

import argparse
import sys
import time

from benchlib import CyrusLab, Syncwarden, inner, machine_note, result_line, sandbox

SAMPLER = r"""
import json, os, sys, time, urllib.request
daemon, workers, minutes, every = int(sys.argv[1]), [int(p) for p in sys.argv[2].split(",")], \
    float(sys.argv[3]), float(sys.argv[4])
url = sys.argv[5] if len(sys.argv) > 5 else ""     # scraped every 3rd sample (15 s)
TCK = os.sysconf("SC_CLK_TCK")

def cpu(pid):
    f = open("/proc/%d/stat" % pid).read().rpartition(")")[2].split()
    return (int(f[11]) + int(f[12])) / TCK            # utime + stime (fields 14, 15)

def mem(pid):
    out = {}
    for line in open("/proc/%d/status" % pid):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "Threads"):
            out[k] = int(v.split()[0])
    try:
        for line in open("/proc/%d/smaps_rollup" % pid):
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1])
    except OSError:
        pass
    return out

def children(pid):
    kids = []
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            kids += [int(c) for c in open("/proc/%d/task/%s/children" % (pid, t)).read().split()]
        except OSError:
            pass
    return kids

def sample():
    kids = children(daemon)
    return {"t": time.monotonic(), "cpu": cpu(daemon), "mem": mem(daemon),
            "kids": {str(k): {"cpu": cpu(k), "mem": mem(k),
                              "comm": open("/proc/%d/comm" % k).read().strip()} for k in kids},
            "workers_cpu": sum(cpu(p) for p in workers),
            "workers_rss": sum(mem(p)["VmRSS"] for p in workers),
            "workers_pss": sum(mem(p).get("Pss", 0) for p in workers)}

def scrape():
    t0 = time.monotonic()
    body = urllib.request.urlopen(url, timeout=10).read()
    return {"seconds": time.monotonic() - t0, "bytes": len(body),
            "series": sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))}

scrapes = [scrape()] if url else []
samples = [sample()]
end = samples[0]["t"] + minutes * 60
while time.monotonic() < end:
    time.sleep(min(every, max(0.0, end - time.monotonic())))
    if url and len(samples) % 3 == 0:
        scrapes.append(scrape())
    samples.append(sample())
print(json.dumps({"samples": samples, "scrapes": scrapes}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--links", type=int, default=20)
    ap.add_argument("--settle", type=float, default=60.0,
                    help="seconds between every link live and the first sample (60)")
    ap.add_argument("--metrics", action="store_true",
                    help="serve Prometheus metrics and scrape them every 15 s")
    a = ap.parse_args()
    port = 9747
    names = [f"replica{i:02d}" for i in range(1, a.links + 1)]
    t_bench = time.monotonic()
    with sandbox("idle") as sb:
        lab = CyrusLab(sb, replicas=names, users=("bob",))
        lab.setup()
        sw = Syncwarden(sb, lab)
        sw.install()
        sw.configure(links=names, interval="2s",
                     extra=f"metrics: {{listen: {port}}}\n" if a.metrics else "")
        sb.systemctl("start", "syncwarden")
        for n in names:
            if not sw.wait_state(n, "live", timeout=60):
                raise RuntimeError(f"{n} never went live: {sw.link(n)}")
        time.sleep(a.settle)
        pid = sw.main_pid()
        workers = []
        for n in names:
            w = sb.run("systemctl", "show", "-p", "MainPID", "--value",
                       f"syncwarden-sync@{n}.service").stdout.strip()
            workers.append(int(w))
        comm = sb.run("cat", f"/proc/{workers[0]}/comm").stdout.strip()
        url = f"http://127.0.0.1:{port}/metrics" if a.metrics else ""
        sampled = inner(sb, SAMPLER, pid, ",".join(map(str, workers)), a.minutes, 5, url,
                        timeout=a.minutes * 60 + 120)
        samples, scrapes = sampled["samples"], sampled["scrapes"]
        pid_after = sw.main_pid()
        states = {sw.link(n)["state"] for n in names}
    took = time.monotonic() - t_bench
    first, last = samples[0], samples[-1]
    wall = last["t"] - first["t"]
    cpu_pct = (last["cpu"] - first["cpu"]) / wall * 100
    per_min, i = [], 0
    while i < len(samples) - 1:   # the busiest minute (12 samples of 5 s)
        j = min(i + 12, len(samples) - 1)
        per_min.append((samples[j]["cpu"] - samples[i]["cpu"]) / (samples[j]["t"] - samples[i]["t"])
                       * 100)
        i = j
    rss = [s["mem"]["VmRSS"] / 1024 for s in samples]
    pss = [s["mem"].get("Pss", 0) / 1024 for s in samples]
    kid_cpu, kid_rss, kid_names = 0.0, 0.0, set()
    for k, v in last["kids"].items():
        if k in first["kids"]:
            kid_cpu += (v["cpu"] - first["kids"][k]["cpu"]) / wall * 100
        kid_rss += v["mem"]["VmRSS"] / 1024
        kid_names.add(v["comm"])
    w_cpu = (last["workers_cpu"] - first["workers_cpu"]) / wall * 100
    w_rss, w_pss = last["workers_rss"] / 1024, last["workers_pss"] / 1024
    print(f"idle daemon with {a.links} links (each live, nothing delivered), sampled every 5 s"
          f" for {wall / 60:.1f} min")
    print(f"  ({machine_note()}; benchmark took {took:.0f} s)")
    print(f"  syncwarden daemon (pid {pid}{'' if pid == pid_after else f', then {pid_after}!'},"
          f" {last['mem'].get('Threads')} threads):")
    print(f"    RSS {rss[0]:.1f} MB at start, {rss[-1]:.1f} MB at end, max {max(rss):.1f} MB,"
          f" high-water {last['mem']['VmHWM'] / 1024:.1f} MB; Pss {pss[-1]:.1f} MB"
          f"  (target <= 40 MB)")
    print(f"    CPU {cpu_pct:.3f} % of one core on average, busiest minute {max(per_min):.3f} %"
          f"  (target <= 0.5 %)")
    print(f"  its child(ren) {', '.join(sorted(kid_names)) or '-'}: CPU {kid_cpu:.3f} %,"
          f" RSS {kid_rss:.1f} MB (not part of the target)")
    print(f"  baseline, Cyrus's own {len(workers)} rolling clients ({comm}): CPU {w_cpu:.3f} %"
          f" in all, RSS {w_rss:.1f} MB in all ({w_rss / len(workers):.1f} MB each), Pss"
          f" {w_pss:.1f} MB")
    if scrapes:
        took_ms = sorted(x["seconds"] * 1000 for x in scrapes)
        print(f"  metrics on: {len(scrapes)} scrapes of /metrics (every 15 s), median"
              f" {took_ms[len(took_ms) // 2]:.1f} ms, max {took_ms[-1]:.1f} ms,"
              f" {scrapes[-1]['bytes']} bytes, {scrapes[-1]['series']} series")
    else:
        print("  metrics off (--metrics serves and scrapes them)")
    print(f"  links at the end: {', '.join(sorted(states))}")
    print(result_line(daemon_rss_mb=max(rss), daemon_rss_end_mb=rss[-1],
                      daemon_cpu_pct=cpu_pct, daemon_cpu_max_minute_pct=max(per_min),
                      follower_cpu_pct=kid_cpu, workers_cpu_pct=w_cpu, workers_rss_mb=w_rss,
                      links=a.links, minutes=round(wall / 60, 2),
                      metrics="on" if a.metrics else "off", scrapes=len(scrapes),
                      target_met="yes" if max(rss) <= 40 and cpu_pct <= 0.5 else "no"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
