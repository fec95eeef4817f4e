#!/usr/bin/env python3
"""Worker scaling: ember-proxy --workers 1 and 2 next to HAProxy nbthread 1 and 2, one run.

What it measures
  nginx (one worker, pinned to core 1) serves a 12-byte body (/small) on 127.0.0.1. In
  front of it, each on its own port: ember-proxy --workers 1, ember-proxy --workers 2,
  HAProxy (TCP mode) with nbthread 1 and with nbthread 2, and nothing (direct, the
  ceiling). wrk (2 threads) runs on core 0; the proxies may run on both cores (taskset
  0,1), the 1-thread ones included, so the only difference between a pair is the number
  of threads. Same load for every target:

    keep-alive  wrk -t2 -c64 on /small, keep-alive connections
    fresh       wrk -t2 -c64 -H 'Connection: close': a new TCP connection per request
                (the proxy accepts a client and connects to nginx for every request)

  Per target and mode: requests/s, the ratio to the same proxy with one thread, p50, p90
  and p99 latency (wrk --latency; in fresh mode wrk starts the clock once connected), the
  proxy's CPU: utime+stime from /proc/PID/stat (every thread, kernel time included) over
  the run, as cores busy and as µs per request, and how idle the whole machine was
  (/proc/stat). CPU that neither wrk, nginx nor the proxy used (another process on a
  shared machine) is measured too; a round where it passes 0.1 core is marked disturbed
  and left out of the medians.

How
  Rounds are interleaved: every round runs every target once per mode, in an order
  rotated each round; the table gives medians over the rounds. The machine this was
  written on has 2 cores, and wrk, nginx and the proxy share them: a second proxy
  thread can only use what wrk and nginx leave (docs/operations.md says what that means
  for the numbers).

Usage
  benches/workers.py                         # 5 rounds x 5 s per target and mode
  benches/workers.py --rounds 1 --duration 2 # a smoke run
Reuses benches/proxies.py's helpers (tools, nginx, HAProxy, wrk, CPU accounting).
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxies import (  # noqa: E402
    ROOT, Target, commit, ensure_tools, fmt, haproxy_config, kill_group, log, measure_http, median_of,
    rotated, start_nginx, tree_cpu, versions)

BASE_PORT = 18600
PATH = "/small"
CONNECTIONS = 64
WRK_THREADS = 2
PROXY_CPUS = "0,1"
MODES = (("keep-alive", False), ("fresh", True))
CLK_TCK = os.sysconf("SC_CLK_TCK")
DISTURBED_CORES = 0.1  # CPU used by processes other than wrk, nginx and the proxy


def machine_cpu():
    """(busy, idle) seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, (idle + iowait) / CLK_TCK


def wrk_cpu():
    """CPU seconds of the children this script has waited for (wrk, run through taskset)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def targets(workdir, ember, backend):
    relay = f"127.0.0.1:{backend}"

    def ember_proxy(workers, port):
        return Target(f"ember-proxy --workers {workers}", port,
                      [ember, "-l", f"127.0.0.1:{port}", "-r", relay, "--access-log", "off",
                       "--workers", str(workers)], cpus=PROXY_CPUS)

    def haproxy(threads, port):
        cmd = haproxy_config(workdir, f"haproxy-nbthread-{threads}", port, backend, False, nbthread=threads)
        return Target(f"haproxy nbthread {threads}", port, cmd, cpus=PROXY_CPUS)

    return [Target("direct", backend),
            ember_proxy(1, BASE_PORT + 1), ember_proxy(2, BASE_PORT + 2),
            haproxy(1, BASE_PORT + 3), haproxy(2, BASE_PORT + 4)]


def measure(t, nginx, args, fresh):
    """One wrk run, with the proxy's CPU, the machine's idle share, and the CPU of everything else."""
    busy0, idle0 = machine_cpu()
    wrk0, nginx0 = wrk_cpu(), tree_cpu(nginx.pid)
    r = measure_http(t, PATH, args.duration, CONNECTIONS, threads=WRK_THREADS, fresh=fresh)
    if r is None or "error" in r:
        return r
    busy, idle = machine_cpu()
    busy, idle = busy - busy0, idle - idle0
    proxy = r["cpu_us"] * r["total"] / 1e6 if r.get("cpu_us") is not None else 0
    r["cores"] = proxy / args.duration if r.get("cpu_us") is not None else None
    r["idle"] = idle / (busy + idle)
    other = busy - proxy - (wrk_cpu() - wrk0) - (tree_cpu(nginx.pid) - nginx0)
    r["other_cores"] = max(other, 0) / args.duration
    return r


def run(args, all_targets, nginx, results):
    for rnd in range(1, args.rounds + 1):
        for mode, fresh in MODES:
            for t in rotated(all_targets, rnd - 1):
                r = measure(t, nginx, args, fresh)
                if r is None:
                    continue
                results.setdefault((mode, t.name), []).append(r)
                if "error" in r:
                    log(f"round {rnd} {mode:10} {t.name:26} ERROR {r['error']}")
                    continue
                cores = f"  cpu {r['cores']:.2f} cores" if r.get("cores") is not None else ""
                flag = "  DISTURBED" if r["other_cores"] > DISTURBED_CORES else ""
                log(f"round {rnd} {mode:10} {t.name:26} {r['rps']:>9.0f} req/s  p99 {r['p99']:.0f}us{cores}"
                    f"  idle {r['idle']:.0%}  others {r['other_cores']:.2f} cores{flag}")


def table(all_targets, results, mode):
    lines = ["| target | req/s | vs 1 thread | p50 µs | p90 µs | p99 µs | proxy CPU (cores) | CPU µs/req "
             "| machine idle | rounds | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    medians, rounds = {}, {}
    for t in all_targets:
        rows = [r for r in results.get((mode, t.name), []) if "error" not in r]
        quiet = [r for r in rows if r["other_cores"] <= DISTURBED_CORES] or rows
        rounds[t.name] = f"{len(quiet)}/{len(results.get((mode, t.name), []))}"
        medians[t.name] = {k: median_of(quiet, k) for k in ("rps", "p50", "p90", "p99", "cores", "cpu_us", "idle")}
    for t in all_targets:
        m = medians[t.name]
        errors = "; ".join(sorted({r.get("error") or r.get("wrk_errors") for r in results.get((mode, t.name), [])
                                   if r.get("error") or r.get("wrk_errors")}))
        single = t.name.replace("--workers 2", "--workers 1").replace("nbthread 2", "nbthread 1")
        base = medians.get(single, {}).get("rps")
        ratio = f"{m['rps'] / base:.2f}x" if m["rps"] and base and single != t.name else ("1" if base else "–")
        if t.name == "direct":
            ratio = "–"
        lines.append(f"| {t.name} | {fmt(m['rps'], ',.0f')} | {ratio} | {fmt(m['p50'], '.0f')} | "
                     f"{fmt(m['p90'], '.0f')} | {fmt(m['p99'], '.0f')} | {fmt(m['cores'], '.2f')} | "
                     f"{fmt(m['cpu_us'], '.1f')} | {fmt(m['idle'] and m['idle'] * 100, '.0f')} % | "
                     f"{rounds[t.name]} | {errors or t.failed or ''} |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], epilog=__doc__.split("\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5, help="seconds per measurement (default 5)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/ember-proxy as it is")
    args = ap.parse_args()
    ensure_tools({"nginx": "nginx-light", "haproxy": "haproxy", "wrk": "wrk"})
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "ember-proxy"], cwd=ROOT, check=True)
    ember = str(ROOT / "target" / "release" / "ember-proxy")
    workdir = Path(tempfile.mkdtemp(prefix="ember-workers-"))
    workdir.chmod(0o755)  # nginx workers run as www-data and must read the bodies
    started = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())
    load = Path("/proc/loadavg").read_text().split()[0]
    all_targets = targets(workdir, ember, BASE_PORT)
    results, nginx = {}, None
    try:
        nginx = start_nginx(workdir, BASE_PORT)
        for t in all_targets:
            t.start(workdir)
        run(args, all_targets, nginx, results)
    finally:
        for t in all_targets:
            t.stop()
        kill_group(nginx)
        shutil.rmtree(workdir, ignore_errors=True)
    cores = len(Path("/proc/cpuinfo").read_text().split("processor")) - 1
    print(f"GET {PATH} (12 B) from nginx (1 worker, core 1), wrk -t{WRK_THREADS} -c{CONNECTIONS} on core 0, "
          f"proxies on cores {PROXY_CPUS}; {cores} cores in all. Median of {args.rounds} round(s) x "
          f"{args.duration:g} s. {started} (load average {load} before), commit {commit()}. "
          f"{versions(None)}.\n")
    print(f"Rounds: those in which other processes used at most {DISTURBED_CORES} core (all of them if none "
          "did); machine idle: the share of both cores idle during the run.\n")
    for mode, _ in MODES:
        label = "keep-alive connections" if mode == "keep-alive" else "a new connection per request"
        print(f"### {label}\n")
        print("\n".join(table(all_targets, results, mode)) + "\n")


if __name__ == "__main__":
    main()
