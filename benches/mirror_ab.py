#!/usr/bin/env python3
"""A/B of what mirroring costs ember-proxy itself (issue 12): the proxy's own CPU per
request, for two or more ember-proxy binaries, interleaved in the same run.

Production is nginx (benches/proxies.py's start_nginx, GET /split/small: 12 B) and the
shadow a second nginx with the same files (benches/shadows.py's healthy shadow), both on
core 1 with the proxy; wrk on core 0 (-t2 -c N, keep-alive). For each round, every
(binary, mode) pair is started fresh, loaded for --duration seconds and stopped; the order
rotates between rounds. The main figure is the proxy's user + system CPU (/proc/PID/stat,
over the load) divided by the requests wrk got answered: much less sensitive to other
load on the machine than throughput. Each measurement holds /tmp/ember-bench.lock.

Modes: `r` (-r only), `http` (--http -d SHADOW), `compare` (--compare --compare-log
FILE -d SHADOW), `compare-nolog` (--compare without a log), `bytes` (plain -d SHADOW).

Usage
  benches/mirror_ab.py BEFORE=/tmp/ember-proxy.old AFTER=target/release/ember-proxy \\
      --modes http,compare --rounds 4 --duration 4
Each binary is copied first (a rebuild during the run changes nothing).
"""

import argparse
import fcntl
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxies import CLK_TCK, ensure_tools, kill_group, log, parse_wrk, rotated, start_nginx, tool, wait_port  # noqa: E402
from shadows import start_shadow_nginx, stub_requests  # noqa: E402

BASE = 18600
PROD, SHADOW, PROXY = BASE, BASE + 1, BASE + 20
LOCK = "/tmp/ember-bench.lock"


def cpu_times(pid):
    """(user, system) seconds of a process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def mode_flags(mode, workdir, tag):
    shadow = ["-d", f"127.0.0.1:{SHADOW}"]
    return {
        "r": [],
        "http": [*shadow, "--http"],
        "compare": [*shadow, "--compare", "--compare-log", str(workdir / f"compare-{tag}.log")],
        "compare-nolog": [*shadow, "--compare"],
        "bytes": shadow,
    }[mode]


def measure(binary, mode, args, workdir, tag, port):
    cmd = ["taskset", "-c", "1", binary, "-l", f"127.0.0.1:{port}", "-r", f"127.0.0.1:{PROD}",
           "--access-log", "off", *mode_flags(mode, workdir, tag)]
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(workdir / f"{tag}.out", "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_port(port, proc=proc)
            shadow_before = stub_requests(SHADOW)
            before = cpu_times(proc.pid)
            wrk = subprocess.run(["taskset", "-c", "0", tool("wrk"), "-t2", f"-c{args.concurrency}",
                                  f"-d{args.duration:g}s", f"http://127.0.0.1:{port}/split/small"],
                                 capture_output=True, text=True, timeout=args.duration + 30)
            after = cpu_times(proc.pid)
            shadow_after = stub_requests(SHADOW)
        finally:
            kill_group(proc)
    r = parse_wrk(wrk.stdout)
    if r.get("error") or r.get("wrk_errors"):
        sys.exit(f"{tag}: wrk: {r.get('error') or r['wrk_errors']}")
    n = max(r.get("total", 0), 1)
    user, system = ((a - b) / n * 1e6 for a, b in zip(after, before))
    return {"us": user + system, "user": user, "sys": system, "rps": r.get("rps", 0), "n": n,
            "shadow": (shadow_after - shadow_before - 1) / n if mode != "r" and shadow_after else None}


def copy_binaries(specs, workdir):
    """NAME=PATH specs -> [(NAME, copy)], each binary copied into workdir first (a rebuild
    during the run changes nothing)."""
    bins = []
    for spec in specs:
        name, path = spec.split("=", 1)
        copy = workdir / f"ember-proxy-{name}"
        shutil.copy2(path, copy)
        bins.append((name, str(copy)))
    return bins


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binaries", nargs="+", help="NAME=PATH")
    p.add_argument("--modes", default="http,compare")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=4)
    p.add_argument("--concurrency", type=int, default=50)
    args = p.parse_args()
    ensure_tools({"nginx": "nginx-light", "wrk": "wrk"})
    workdir = Path(tempfile.mkdtemp(prefix="mirror-ab-"))
    workdir.chmod(0o755)  # nginx's workers are not root and read the files under it
    bins = copy_binaries(args.binaries, workdir)
    modes = args.modes.split(",")
    variants = [(name, path, mode) for mode in modes for name, path in bins]
    prod = start_nginx(workdir, PROD)
    www = workdir / "www"
    shadow = start_shadow_nginx(workdir, www, "shadow", SHADOW, False, "1")
    results = {}
    try:
        for rnd in range(args.rounds):
            for i, (name, path, mode) in enumerate(rotated(variants, rnd)):
                tag = f"{name}-{mode}-{rnd}"
                r = measure(path, mode, args, workdir, tag, PROXY + i)
                results.setdefault((name, mode), []).append(r)
                shadow_got = f", shadow got {r['shadow']:.0%}" if r["shadow"] is not None else ""
                log(f"round {rnd + 1} {name:>8} {mode:<13} {r['us']:6.1f} µs/req (user {r['user']:5.1f}, "
                    f"system {r['sys']:5.1f})  {r['rps']:8.0f} req/s{shadow_got}")
    finally:
        kill_group(shadow)
        kill_group(prod)
    print(f"\n{args.rounds} rounds x {args.duration:g} s, c={args.concurrency}; the proxy's CPU per request in µs, "
          "median [min-max] over the rounds (user, system: medians); req/s: median")
    for mode in modes:
        for name, _ in bins:
            rs = results[(name, mode)]
            us = [r["us"] for r in rs]
            med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
            print(f"{mode:<13} {name:>8}: {statistics.median(us):6.1f} µs [{min(us):.1f}-{max(us):.1f}] "
                  f"(user {med('user'):5.1f}, system {med('sys'):5.1f})  {med('rps'):8.0f} req/s")
    if len(bins) > 1:
        first = bins[0][0]
        print(f"\npaired by round, against {first}: the median of the per-round differences in µs [min-max]")
        for mode in modes:
            for name, _ in bins[1:]:
                d = [b["us"] - a["us"] for a, b in zip(results[(first, mode)], results[(name, mode)])]
                print(f"{mode:<13} {name:>8} - {first}: {statistics.median(d):+6.1f} µs [{min(d):+.1f} to {max(d):+.1f}]")

if __name__ == "__main__":
    main()
