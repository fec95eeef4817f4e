#!/usr/bin/env python3
"""Restarts under load: how many clients does handing ember-proxy's port to a new process cost?

What it measures
  nginx (one worker, core 1) serves /small on 127.0.0.1. ember-proxy (core 1) relays to
  it on a fixed port. wrk -t2 -c64 (core 0) sends requests for --duration seconds, each on a new
  TCP connection (-H 'Connection: close'): the proxy accepts thousands of clients a
  second, so its accept queue is never empty for long. Every --every seconds, a handover,
  the procedure of docs/operations.md: a new ember-proxy with the same flags starts on the
  same port (SO_REUSEPORT), prints its listening line, the old one gets SIGTERM, and we
  wait until it has exited. wrk's socket errors (connect refused, read/write errors such
  as resets, timeouts) and non-2xx answers are the clients the handovers cost.

  The run is repeated with net.ipv4.tcp_migrate_req = 0 and = 1 (Linux 5.14+, per
  network namespace; setting it needs root; the old value is put back). With 0, the
  kernel resets the connections still queued on a listener when it closes; with 1, it
  moves them to another listener of the SO_REUSEPORT group.

Usage
  benches/restart.py                          # 3 rounds x 10 s, a handover every second
  benches/restart.py --rounds 1 --duration 4  # a smoke run
  benches/restart.py --ember /tmp/other-build # another ember-proxy binary
Reuses benches/proxies.py's helpers.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxies import ROOT, commit, ensure_tools, kill_group, log, parse_wrk, start_nginx, tool  # noqa: E402

BASE_PORT = 18700
MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


class Proxy:
    """One ember-proxy process on the shared port."""

    def __init__(self, ember, port, backend, logdir, n):
        self.log = open(logdir / f"ember-{n}.log", "wb")
        self.proc = subprocess.Popen(
            ["taskset", "-c", "1", ember, "-l", f"127.0.0.1:{port}", "-r", f"127.0.0.1:{backend}",
             "--access-log", "off"],
            stdout=subprocess.PIPE, stderr=self.log, start_new_session=True)
        line = self.proc.stdout.readline().decode(errors="replace")
        if "listening on" not in line:
            raise RuntimeError(f"ember-proxy did not start: {line!r}")

    def drain(self, timeout=30):
        """SIGTERM, and wait until it has exited; returns how long the drain took."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=timeout)
        self.log.close()
        return time.monotonic() - start

    def stop(self):
        kill_group(self.proc)
        self.log.close()


def one_run(args, ember, nginx_port, logdir, migrate):
    port = BASE_PORT + 1
    cmd = ["taskset", "-c", "0", tool("wrk"), "-t2", "-c64", f"-d{args.duration:g}s", "--timeout=2s",
           "-H", "Connection: close", f"http://127.0.0.1:{port}/small"]
    current = Proxy(ember, port, nginx_port, logdir, 0)
    wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    handovers, drains = 0, []
    try:
        deadline = time.monotonic() + args.duration - args.every / 2
        while time.monotonic() + args.every < deadline:
            time.sleep(args.every)
            handovers += 1
            fresh = Proxy(ember, port, nginx_port, logdir, handovers)
            drains.append(current.drain())
            current = fresh
        out, _ = wrk.communicate(timeout=args.duration + 30)
    finally:
        current.stop()
        if wrk.poll() is None:
            wrk.kill()
    r = parse_wrk(out)
    r.update(handovers=handovers, migrate=migrate, drain_max=max(drains, default=0))
    return r


def errors_of(r):
    counts = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non-2xx": 0}
    for part in filter(None, (r.get("wrk_errors") or "").split(", ")):
        kind, n = part.rsplit(" ", 1)
        counts[kind] = int(n)
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], epilog=__doc__.split("\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10, help="seconds of load per run (default 10)")
    ap.add_argument("--every", type=float, default=1, help="seconds between handovers (default 1)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per setting (default 3)")
    ap.add_argument("--ember", help="the ember-proxy binary (default: a fresh release build)")
    args = ap.parse_args()
    ensure_tools({"nginx": "nginx-light", "wrk": "wrk"})
    ember = args.ember
    if not ember:
        subprocess.run(["cargo", "build", "--release", "--bin", "ember-proxy"], cwd=ROOT, check=True)
        ember = str(ROOT / "target" / "release" / "ember-proxy")
    before = MIGRATE_REQ.read_text().strip() if MIGRATE_REQ.exists() else None
    settings = ["0", "1"] if before is not None and os.geteuid() == 0 else [before or "absent"]
    if len(settings) == 1:
        log(f"cannot change tcp_migrate_req (not root, or an old kernel): measuring with {settings[0]} only")
    workdir = Path(tempfile.mkdtemp(prefix="ember-restart-"))
    workdir.chmod(0o755)  # nginx workers run as www-data and must read the bodies
    results, nginx = [], None
    try:
        nginx = start_nginx(workdir, BASE_PORT)
        for rnd in range(1, args.rounds + 1):
            for migrate in settings:
                if before is not None and migrate in ("0", "1"):
                    MIGRATE_REQ.write_text(migrate)
                r = one_run(args, ember, BASE_PORT, workdir, migrate)
                results.append(r)
                log(f"round {rnd} tcp_migrate_req={migrate}: {r.get('total')} requests, "
                    f"{r['handovers']} handovers, errors: {r.get('wrk_errors') or 'none'}")
    finally:
        if before is not None and os.geteuid() == 0:
            MIGRATE_REQ.write_text(before)
        kill_group(nginx)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrk -t2 -c64, a new connection per request, {args.duration:g} s per run, a handover every "
          f"{args.every:g} s; {time.strftime('%Y-%m-%d', time.gmtime())}, commit {commit()}, "
          f"kernel {os.uname().release}.\n")
    print("| tcp_migrate_req | run | requests | handovers | connect errors | read errors | write errors "
          "| timeouts | non-2xx | failed per handover | longest drain s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(results):
        if "error" in r:
            print(f"| {r['migrate']} | {i // len(settings) + 1} | ERROR {r['error']} |")
            continue
        e = errors_of(r)
        failed = sum(e.values())
        print(f"| {r['migrate']} | {i // len(settings) + 1} | {r['total']:,} | {r['handovers']} | {e['connect']} | "
              f"{e['read']} | {e['write']} | {e['timeout']} | {e['non-2xx']} | "
              f"{failed / max(r['handovers'], 1):.1f} | {r['drain_max']:.2f} |")


if __name__ == "__main__":
    main()
