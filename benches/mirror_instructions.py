#!/usr/bin/env python3
"""User-space instructions per request of ember-proxy binaries (issue 12), under
valgrind's callgrind: deterministic where benches/mirror_ab.py's CPU time is not (on a
shared machine the CPU time of one measurement moves by a quarter with the load, which
hides any change of a few per cent).

Production and a healthy shadow are the nginx pair of mirror_ab.py. For each mode and
each binary, the proxy runs under `valgrind --tool=callgrind`; wrk (-t1 -c10, GET
/split/small) loads it for --duration seconds; the proxy is stopped and the Ir of the
whole run, start-up and shutdown included (about 0.7 M, negligible), is divided by the
requests wrk got answered. The count covers the proxy's own code and libc's, never the
kernel's. Each run holds /tmp/ember-bench.lock, so as not to disturb someone's timing.

Usage
  benches/mirror_instructions.py BEFORE=/tmp/ember-proxy.base AFTER=target/release/ember-proxy \\
      --modes http,compare,r --duration 3
The callgrind files stay in the printed work directory (callgrind_annotate FILE).
"""

import argparse
import fcntl
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mirror_ab  # noqa: E402
from proxies import ensure_tools, kill_group, log, parse_wrk, start_nginx, tool, wait_port  # noqa: E402
from shadows import start_shadow_nginx  # noqa: E402

BASE = 18800
PROD, SHADOW, PROXY = BASE, BASE + 1, BASE + 20
# mode_flags points the shadow at mirror_ab's port: make it ours.
mirror_ab.PROD, mirror_ab.SHADOW = PROD, SHADOW


def instructions(path):
    """The total Ir of a callgrind output file."""
    found = re.search(r"^(?:summary|totals): (\d+)", Path(path).read_text(errors="replace"), re.M)
    return int(found.group(1)) if found else 0


def measure(binary, mode, args, workdir, tag, port):
    out = workdir / f"callgrind-{tag}.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary,
           "-l", f"127.0.0.1:{port}", "-r", f"127.0.0.1:{PROD}", "--access-log", "off",
           *mirror_ab.mode_flags(mode, workdir, tag)]
    with open(mirror_ab.LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            wait_port(port, timeout=60, proc=proc)
            wrk = subprocess.run([tool("wrk"), "-t1", "-c10", f"-d{args.duration:g}s", "--timeout", "10s",
                                  f"http://127.0.0.1:{port}/split/small"],
                                 capture_output=True, text=True, timeout=args.duration + 60)
            time.sleep(0.5)
        finally:
            kill_group(proc, timeout=60)
    requests = parse_wrk(wrk.stdout).get("total", 0)
    return instructions(out), requests


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binaries", nargs="+", help="NAME=PATH")
    p.add_argument("--modes", default="http,compare,r")
    p.add_argument("--duration", type=float, default=3)
    args = p.parse_args()
    ensure_tools({"nginx": "nginx-light", "wrk": "wrk", "valgrind": "valgrind"})
    workdir = Path(tempfile.mkdtemp(prefix="mirror-instructions-"))
    workdir.chmod(0o755)  # nginx's workers are not root and read the files under it
    bins = mirror_ab.copy_binaries(args.binaries, workdir)
    prod = start_nginx(workdir, PROD)
    shadow = start_shadow_nginx(workdir, workdir / "www", "shadow", SHADOW, False, "1")
    rows = []
    try:
        for mode in args.modes.split(","):
            for i, (name, path) in enumerate(bins):
                ir, requests = measure(path, mode, args, workdir, f"{name}-{mode}", PROXY + i)
                per = ir / max(requests, 1)
                log(f"{mode:<13} {name:>8}: {requests:7d} requests, {ir:13,d} Ir, {per:9,.0f} Ir/req")
                rows.append((mode, name, per))
    finally:
        kill_group(shadow)
        kill_group(prod)
    print(f"\nuser-space instructions per request (callgrind, wrk -c10 {args.duration:g} s); files in {workdir}")
    first = bins[0][0]
    for mode, name, per in rows:
        base = next(b for m, n, b in rows if m == mode and n == first)
        change = f" ({(per - base) / base:+.1%} against {first})" if name != first else ""
        print(f"{mode:<13} {name:>8}: {per:9,.0f} Ir/req{change}")


if __name__ == "__main__":
    main()
