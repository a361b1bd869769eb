#!/usr/bin/python3
"""Benchmark 4: the idle daemon with N links (default 20): RSS and CPU over M minutes (10).

A real Cyrus 3.6 master with up to 20 real replicas (replica01..replica20, each its own Cyrus
instance; CyrusLab's ports: replica i listens on 10143+1000*i, 10024+1000*i and 10005+1000*i,
so the 20th uses 30143/30024/30005: no collisions, below the ephemeral range) in a systemd
container (the system tests' harness; needs root). With more links than replicas (issue 17:
--links 100, 20 replicas) the links are Cyrus channels link001..linkNNN of the master, spread
round-robin over the replicas (each replica serves several channels; 100 Cyrus instances do
not fit in two cores). syncwarden supervises every link with the example config's
probe.interval of 2s; once every link is live and a settling minute has passed, nothing is
delivered and a sampler inside the container reads, every 5 s:

  - the daemon process only (MainPID of syncwarden.service): /proc/<pid>/stat utime+stime and
    /proc/<pid>/status VmRSS / VmHWM (and Pss from smaps_rollup);
  - for reference, its child `journalctl --follow` (the workers' journal follower), and
  - the baseline: Cyrus's own 20 rolling `sync_client -R` processes (the workers: syncwarden
    execs sync_client in each unit, so these are exactly what plain Cyrus would run).

With --metrics, the daemon also serves Prometheus metrics (metrics.listen on 127.0.0.1) and
the sampler scrapes /metrics every 15 s, as a Prometheus would: the daemon's figures then
include building and serving each scrape (the sampler's own work is not counted).

Also timed inside the container, after the sampling: `syncwarden status` and `status --json`
(median of 9 runs each), the command an admin runs most.

Target: up to 20 links the daemon <= 40 MB RSS and <= 0.5 % of one core, with or without
metrics (issue 2); above 20, <= 60 MB and <= 1 % (issue 17's 100 links). Per link: the
daemon's figures divided by N.

Usage: bench/idle_bench.py [--minutes M] [--links N] [--replicas R] [--settle SECONDS]
                           [--metrics]
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
        if k in ("VmRSS", "VmHWM", "Threads", "RssAnon", "RssFile"):
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

def main_thread_cpu(pid):
    f = open("/proc/%d/task/%d/stat" % (pid, pid)).read().rpartition(")")[2].split()
    return (int(f[11]) + int(f[12])) / TCK

def sample():
    kids = children(daemon)
    return {"t": time.monotonic(), "cpu": cpu(daemon), "main_cpu": main_thread_cpu(daemon),
            "mem": mem(daemon),
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


# Inside the container: a command's wall time, median of n runs.
MAPS = r"""
import collections, json, re, sys
rss, env, name = collections.Counter(), {}, "[anon]"
for line in open(f"/proc/{sys.argv[1]}/smaps"):
    m = re.match(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$", line)
    if m:
        name = m.group(1) or "[anon]"
    elif line.startswith("Rss:"):
        rss[name.rsplit("/", 1)[-1]] += int(line.split()[1])
arena = open(f"/proc/{sys.argv[1]}/environ", "rb").read().split(b"\0")
print(json.dumps({"top": rss.most_common(8),
                  "env": [e.decode() for e in arena if e.startswith(b"MALLOC_")]}))
"""

TIMER = r"""
import json, statistics, subprocess, sys, time
n, argv = int(sys.argv[1]), sys.argv[2:]
took = []
for _ in range(n):
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=False)
    took.append(time.perf_counter() - t0)
print(json.dumps({"median": statistics.median(took), "min": min(took), "max": max(took)}))
"""

CHANNEL = """\
{link}_sync_host: 127.0.0.1
{link}_sync_port: {port}
{link}_sync_authname: repl
{link}_sync_password: replpw
{link}_sync_repeat_interval: 1
"""


def share_replicas(sb, lab, links: list[str]) -> dict[str, int]:
    """Make the master's channels ``links``, round-robin over the lab's replicas: rewrite its
    imapd.conf before Cyrus starts. Returns each link's sync port."""
    ports = {link: lab.port(lab.replicas[i % len(lab.replicas)], "sync")
             for i, link in enumerate(links)}
    conf = sb.host_path(lab.master_conf)
    kept = [line for line in conf.read_text().splitlines(keepends=True)
            if not line.startswith(("sync_log_channels:",) + tuple(f"{r}_" for r in lab.replicas))]
    conf.write_text("".join(kept) + f"sync_log_channels: {' '.join(links)}\n"
                    + "".join(CHANNEL.format(link=k, port=p) for k, p in ports.items()))
    return ports


def configure(sb, ports: dict[str, int], extra: str = "") -> None:
    from system.swlab import BASE_CONFIG, CONFIG
    body = "\n".join(f"  {k}: {{host: 127.0.0.1, port: {p}}}" for k, p in ports.items())
    sb.write_file(CONFIG, BASE_CONFIG.format(links=body, interval="2s", drain_timeout="60s")
                  + extra)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--links", type=int, default=20)
    ap.add_argument("--replicas", type=int, default=None,
                    help="real Cyrus replicas (default: links, at most 20)")
    ap.add_argument("--settle", type=float, default=60.0,
                    help="seconds between every link live and the first sample (60)")
    ap.add_argument("--metrics", action="store_true",
                    help="serve Prometheus metrics and scrape them every 15 s")
    a = ap.parse_args()
    port = 9747
    n_replicas = a.replicas or min(a.links, 20)
    replicas = [f"replica{i:02d}" for i in range(1, n_replicas + 1)]
    names = replicas if n_replicas == a.links else [f"link{i:03d}" for i in
                                                    range(1, a.links + 1)]
    t_bench = time.monotonic()
    with sandbox("idle", tmpfs_size="8g") as sb:
        lab = CyrusLab(sb, replicas=replicas, users=("bob",))
        lab.create()
        ports = share_replicas(sb, lab, names) if names is not replicas else None
        lab.start_all()
        lab.create_mailbox("master", "user.bob")
        sw = Syncwarden(sb, lab)
        sw.install()
        extra = f"metrics: {{listen: {port}}}\n" if a.metrics else ""
        if ports:
            configure(sb, ports, extra)
        else:
            sw.configure(links=names, interval="2s", extra=extra)
        sb.systemctl("start", "syncwarden")
        deadline = time.monotonic() + 60 + a.links
        while True:
            states = {x["name"]: x["state"] for x in sw.status().get("links", [])}
            if len(states) == len(names) and set(states.values()) == {"live"}:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every link went live: {states}")
            time.sleep(1)
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
        where = inner(sb, MAPS, pid)
        pid_after = sw.main_pid()
        states = {x["state"] for x in sw.status()["links"]}
        status_t = inner(sb, TIMER, 9, "syncwarden", "status", timeout=300)
        status_json_t = inner(sb, TIMER, 9, "syncwarden", "status", "--json", timeout=300)
    took = time.monotonic() - t_bench
    first, last = samples[0], samples[-1]
    wall = last["t"] - first["t"]
    cpu_pct = (last["cpu"] - first["cpu"]) / wall * 100
    main_pct = (last["main_cpu"] - first["main_cpu"]) / wall * 100
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
    rss_max = max(rss)
    rss_target, cpu_target = (40, 0.5) if a.links <= 20 else (60, 1.0)
    print(f"idle daemon with {a.links} links over {n_replicas} replicas (each live, nothing"
          f" delivered), sampled every 5 s for {wall / 60:.1f} min")
    print(f"  ({machine_note()}; benchmark took {took:.0f} s)")
    print(f"  syncwarden daemon (pid {pid}{'' if pid == pid_after else f', then {pid_after}!'},"
          f" {last['mem'].get('Threads')} threads):")
    print(f"    RSS {rss[0]:.1f} MB at start, {rss[-1]:.1f} MB at end, max {max(rss):.1f} MB,"
          f" high-water {last['mem']['VmHWM'] / 1024:.1f} MB; Pss {pss[-1]:.1f} MB; at the end"
          f" {last['mem'].get('RssAnon', 0) / 1024:.1f} MB anonymous,"
          f" {last['mem'].get('RssFile', 0) / 1024:.1f} MB file-backed (shared libraries,"
          " the journal files sd-journal maps)"
          f"  (target <= {rss_target} MB)")
    print("    where it is (RSS by mapping, kB): " + ", ".join(f"{n} {kb}" for n, kb in where["top"])
          + f"; {' '.join(where['env']) or 'glibc malloc defaults'}")
    print(f"    CPU {cpu_pct:.3f} % of one core on average, busiest minute {max(per_min):.3f} %"
          f"  (target <= {cpu_target:g} %)")
    print(f"      of which the main thread (ticks, status, journal) {main_pct:.3f} %, the other"
          f" threads (probes, knocks) {cpu_pct - main_pct:.3f} %")
    print(f"    per link: {rss_max / a.links * 1024:.0f} kB RSS, {cpu_pct / a.links * 1000:.1f}"
          f" thousandths of a percent of a core; the baseline's rolling client per link:"
          f" {w_rss / len(workers):.1f} MB RSS, {w_pss / len(workers):.1f} MB Pss")
    print(f"  `syncwarden status` with {a.links} links: median {status_t['median']:.3f} s"
          f" (min {status_t['min']:.3f} s); `status --json`: {status_json_t['median']:.3f} s")
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
    print(result_line(daemon_rss_mb=rss_max, daemon_rss_end_mb=rss[-1],
                      daemon_cpu_pct=cpu_pct, daemon_cpu_max_minute_pct=max(per_min),
                      main_thread_cpu_pct=main_pct, follower_cpu_pct=kid_cpu, workers_cpu_pct=w_cpu, workers_rss_mb=w_rss,
                      links=a.links, replicas=n_replicas, minutes=round(wall / 60, 2),
                      metrics="on" if a.metrics else "off", scrapes=len(scrapes),
                      rss_per_link_kb=rss_max / a.links * 1024,
                      cpu_per_link_pct=cpu_pct / a.links, status_s=status_t["median"],
                      status_json_s=status_json_t["median"],
                      target_met="yes" if rss_max <= rss_target and cpu_pct <= cpu_target
                      else "no"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
