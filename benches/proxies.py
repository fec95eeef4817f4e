#!/usr/bin/env python3
"""Side-by-side proxy benchmark: direct, ember-proxy (copy and splice), HAProxy (TCP mode,
with and without splice-auto), and em-proxy when EMPROXY_DIR names a checkout of it.

nginx on loopback is the backend, serving a 12-byte body (/small) and a 1 MiB body
(/large). Each target gets its own port. wrk drives each with keep-alive connections;
rounds are interleaved so drift on a shared machine hits every target alike. The load
generator is pinned to core 0 and the backend and proxies to core 1, so a proxy's cost
shows up as lost throughput instead of hiding in an idle core.

Per target and body size it reports requests/s, the ratio to direct (the median of each
round's ratio, so drift that hits a whole round cancels out), p50 and p99
latency, the proxy's CPU microseconds per request (utime+stime from /proc/PID/stat),
and its peak RSS (VmHWM). A raw stream test (iperf3) reports GiB/s and the proxy's CPU
seconds per GiB.

Usage: benches/proxies.py [--duration S] [--rounds N] [--connections C] [--quick]
Installs nginx, haproxy, wrk and iperf3 with apt-get when missing (and says so).
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_PORT = 18000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PACKAGES = {"nginx": "nginx-light", "haproxy": "haproxy", "wrk": "wrk", "iperf3": "iperf3"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ensure_tools():
    missing = [pkg for tool, pkg in PACKAGES.items() if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        log(f"installing with apt-get: {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)


def tool(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def wait_port(port, timeout=15.0):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def process_tree(pid):
    """The pid and its children (haproxy and nginx fork workers)."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        pids.extend(process_tree(int(child)))
    return pids


def tree_cpu(pid):
    return sum(cpu_seconds(p) for p in process_tree(pid) if Path(f"/proc/{p}").exists())


def tree_rss(pid):
    return sum(peak_rss_kib(p) for p in process_tree(pid) if Path(f"/proc/{p}").exists())


class Target:
    def __init__(self, name, port, cmd=None, env=None):
        self.name, self.port, self.cmd, self.env = name, port, cmd, env
        self.proc = None

    def start(self):
        if self.cmd:
            self.proc = subprocess.Popen(["taskset", "-c", "1", *self.cmd], env=self.env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        wait_port(self.port)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def stop(self):
        if self.proc:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def start_nginx(workdir, port):
    www = workdir / "www"
    www.mkdir()
    (www / "small").write_bytes(b"hello world\n")
    (www / "large").write_bytes(os.urandom(1 << 20))
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        root {www};
        location / {{ default_type application/octet-stream; }}
    }}
}}
""")
    proc = subprocess.Popen(["taskset", "-c", "1", tool("nginx"), "-c", str(conf), "-p", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(port)
    return proc


def haproxy_config(workdir, name, listen, backend, splice):
    conf = workdir / f"{name}.cfg"
    conf.write_text(f"""
global
    maxconn 4000
    nbthread 1
    {"" if splice else "nosplice"}
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    {"option splice-auto" if splice else ""}
frontend fe
    bind 127.0.0.1:{listen}
    default_backend be
backend be
    server s1 127.0.0.1:{backend}
""")
    return [tool("haproxy"), "-db", "-f", str(conf)]


def run_wrk(port, path, duration, connections):
    out = subprocess.run(
        ["taskset", "-c", "0", tool("wrk"), "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency",
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    reqs = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]

    if errors:
        raise RuntimeError(f"wrk against port {port}{path} saw errors: {errors.group(0)}")
    return {"rps": reqs, "total": total, "p50": pct(50), "p99": pct(99)}


def run_iperf(port, seconds):
    out = subprocess.run(
        ["taskset", "-c", "0", tool("iperf3"), "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
        capture_output=True, text=True, check=True).stdout
    import json
    end = json.loads(out)["end"]
    received = end["sum_received"]["bytes"]
    return received, end["sum_received"]["seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="1 round of 1 s: a smoke run")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--tests", default="small,large,stream",
                    help="which measurements, comma-separated: small, large, stream")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rounds = 1, 1
    ensure_tools()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "ember-proxy"], cwd=ROOT, check=True)
    ember = str(ROOT / "target" / "release" / "ember-proxy")
    workdir = Path(tempfile.mkdtemp(prefix="ember-bench-"))
    workdir.chmod(0o755)  # nginx workers run as www-data and must read the bodies
    nginx_port, iperf_port = BASE_PORT, BASE_PORT + 1
    nginx = start_nginx(workdir, nginx_port)
    iperf = subprocess.Popen(["taskset", "-c", "1", tool("iperf3"), "-s", "-p", str(iperf_port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(iperf_port)

    def proxies(backend, offset):
        port = lambda i: BASE_PORT + offset + i  # noqa: E731
        targets = [
            Target("ember-proxy (copy)", port(0), [ember, "-l", f"127.0.0.1:{port(0)}", "-r", f"127.0.0.1:{backend}", "--no-splice"]),
            Target("ember-proxy (splice)", port(1), [ember, "-l", f"127.0.0.1:{port(1)}", "-r", f"127.0.0.1:{backend}"]),
            Target("haproxy", port(2), haproxy_config(workdir, f"haproxy-{offset}", port(2), backend, False)),
            Target("haproxy (splice-auto)", port(3), haproxy_config(workdir, f"haproxy-splice-{offset}", port(3), backend, True)),
        ]
        emproxy = os.environ.get("EMPROXY_DIR")
        if emproxy:
            targets.append(Target("em-proxy", port(4), ["ruby", "-I", f"{emproxy}/lib", f"{emproxy}/bin/em-proxy",
                                                         "-l", str(port(4)), "-r", f"127.0.0.1:{backend}"]))
        return targets

    http_targets = [Target("direct", nginx_port)] + proxies(nginx_port, 10)
    stream_targets = [Target("direct", iperf_port)] + proxies(iperf_port, 20)
    if not os.environ.get("EMPROXY_DIR"):
        log("EMPROXY_DIR not set: em-proxy rows skipped")
    results = {}
    try:
        for t in http_targets + stream_targets:
            t.start()
        for rnd in range(1, args.rounds + 1):
            for path in [f"/{t}" for t in args.tests.split(",") if t in ("small", "large")]:
                for t in http_targets:
                    pid = t.pid
                    before = tree_cpu(pid) if pid else 0
                    r = run_wrk(t.port, path, args.duration, args.connections)
                    r["cpu_us"] = (tree_cpu(pid) - before) / max(r["total"], 1) * 1e6 if pid else 0
                    results.setdefault((path, t.name), []).append(r)
                    log(f"round {rnd} {path:6} {t.name:24} {r['rps']:>10.0f} req/s  p50 {r['p50']:.0f}us  "
                        f"cpu {r['cpu_us']:.1f}us/req")
            for t in stream_targets if "stream" in args.tests.split(",") else []:
                pid = t.pid
                before = tree_cpu(pid) if pid else 0
                received, secs = run_iperf(t.port, max(1, int(args.duration)))
                gib = received / (1 << 30)
                cpu = (tree_cpu(pid) - before) / gib if pid else 0
                results.setdefault(("stream", t.name), []).append({"gibps": gib / secs, "cpu_per_gib": cpu})
                log(f"round {rnd} stream {t.name:24} {gib / secs:.2f} GiB/s  cpu {cpu:.3f} s/GiB")
        rss = {t.name: tree_rss(t.pid) for t in http_targets if t.pid}
    finally:
        for t in http_targets + stream_targets:
            t.stop()
        for p in (nginx, iperf):
            os.killpg(p.pid, signal.SIGTERM)
        shutil.rmtree(workdir, ignore_errors=True)

    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    print(f"Rounds: {args.rounds} × {args.duration:g} s per target, wrk -t1 -c{args.connections}, "
          f"load on core 0, backend and proxy on core 1.\n")
    for path, label in (("/small", "12 B body"), ("/large", "1 MiB body")):
        if (path, "direct") not in results:
            continue
        direct_rows = results[(path, "direct")]
        print(f"### HTTP, {label}\n")
        print("| target | req/s | vs direct | p50 µs | p99 µs | proxy CPU µs/req | proxy peak RSS MiB |")
        print("|---|---|---|---|---|---|---|")
        for t in http_targets:
            rows = results[(path, t.name)]
            cpu = f"{med(rows, 'cpu_us'):.1f}" if t.pid else "–"
            mem = f"{rss[t.name] / 1024:.1f}" if t.name in rss else "–"
            # Each round's ratio to direct in the same round, then the median: the
            # machine's speed drifts, and this cancels what drift hits both alike.
            ratio = statistics.median(r["rps"] / d["rps"] for r, d in zip(rows, direct_rows))
            print(f"| {t.name} | {med(rows, 'rps'):.0f} | {ratio:.1%} | "
                  f"{med(rows, 'p50'):.0f} | {med(rows, 'p99'):.0f} | {cpu} | {mem} |")
        print()
    if ("stream", "direct") not in results:
        return
    direct_rows = results[("stream", "direct")]
    print("### Raw stream (iperf3)\n")
    print("| target | GiB/s | vs direct | proxy CPU s/GiB |")
    print("|---|---|---|---|")
    for t in stream_targets:
        rows = results[("stream", t.name)]
        cpu = f"{med(rows, 'cpu_per_gib'):.3f}" if t.pid else "–"
        ratio = statistics.median(r["gibps"] / d["gibps"] for r, d in zip(rows, direct_rows))
        print(f"| {t.name} | {med(rows, 'gibps'):.2f} | {ratio:.1%} | {cpu} |")


if __name__ == "__main__":
    main()
