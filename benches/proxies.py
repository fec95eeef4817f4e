#!/usr/bin/env python3
"""Proxy benchmark: direct vs ember-proxy vs HAProxy vs em-proxy, with a concurrency sweep.

What it measures
  nginx (one worker) on 127.0.0.1 is the backend, serving a 12-byte body (/small) and a
  1 MiB body (/large). In front of it, each on its own port, run the targets: nothing
  (direct), ember-proxy (the default adaptive relay, and --no-splice), HAProxy in TCP mode
  without and with `option splice-auto`, and em-proxy when EMPROXY_DIR names a checkout
  of igrigorik/em-proxy (run by Debian's ruby-eventmachine). wrk runs on core 0; nginx
  and every proxy on core 1, so a proxy's cost shows as lost throughput.

  small, large  wrk -t1 -c50 (keep-alive) on /small and on /large.
  stream        iperf3, one stream, through each proxy: GiB/s and proxy CPU s per GiB.
  sweep         /split/small with keep-alive connections at concurrency 1, 4, 16, 64, 256
                (wrk -c N -t min(N,2)), and with a fresh TCP connection per request
                (wrk -H 'Connection: close'; nginx closes after each answer) at 1, 16, 64.
                /split/ serves the same files with tcp_nopush off (nginx's default), so
                each answer leaves nginx in two writes, headers then body: a proxy that
                relays them as two writes without TCP_NODELAY stalls on Nagle and delayed
                ACK (up to 40 ms per request at concurrency 1). /small is corked into one
                segment and hides that; --sweep-path chooses.

How
  Rounds are interleaved: in each round every target runs once per cell, in an order
  rotated each round, so drift on a shared machine hits every target alike. "vs direct"
  is the median of per-round ratios to direct. p50/p99 come from wrk --latency (wrk
  starts the clock once a connection is up, so in fresh mode the connect is in the
  throughput but not in the latency). Proxy CPU µs/request is utime+stime of the proxy
  from /proc/PID/stat (which covers all its threads) plus its forked children, over
  the run, divided by the requests served. Peak RSS is VmHWM.

Outputs
  Markdown tables on stdout, progress on stderr. The sweep also writes, into --out
  (default benches/results/): sweep.csv (one row per mode, concurrency and target),
  sweep-rounds.csv (every measurement), sweep.md (the tables, with date and versions)
  and SVG charts sweep-{ratio,p99,cpu}-{keepalive,fresh}.svg, drawn here by hand.

Usage
  benches/proxies.py                   # everything: small, large, stream and sweep
  benches/proxies.py --sweep           # the sweep only
  benches/proxies.py --sweep --quick --concurrency 1,16 --duration 2 --rounds 1
  EMPROXY_DIR=/path/to/em-proxy benches/proxies.py --rounds 5 --duration 4
Installs nginx, haproxy, wrk and iperf3 with apt-get when missing (and says so).
"""

import argparse
import csv
import html
import json
import math
import os
import re
import shutil
import signal
import socket
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
ALL_TESTS = ("small", "large", "stream", "sweep")
KEEPALIVE, FRESH = "keep-alive", "fresh"
DEFAULT_SWEEP_PATH = "/split/small"
DEFAULT_CONCURRENCY = "1,4,16,64,256"
DEFAULT_FRESH_CONCURRENCY = "1,16,64"
WRK_REQUEST_TIMEOUT_S = 2  # wrk counts a request slower than this as a timeout error
EMBER, EMBER_COPY = "ember-proxy (adaptive)", "ember-proxy (copy)"
HAPROXY, HAPROXY_SPLICE = "haproxy", "haproxy (splice-auto)"

# em-proxy's own bin/em-proxy listens on 0.0.0.0; this is the same relay on 127.0.0.1.
EMPROXY_LAUNCHER = """
require "em-proxy"
port, host, backend = Integer(ARGV[0]), ARGV[1], Integer(ARGV[2])
Proxy.start(host: "127.0.0.1", port: port) do |conn|
  conn.server :relay, host: host, port: backend
  conn.on_data { |data| data }
  conn.on_response { |server, resp| resp if server == :relay }
  conn.on_finish { |server| :close if server == :relay }
end
"""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- tools and processes -----------------------------------------------------------------

def ensure_tools(packages=None):
    """apt-installs the packages of `packages` (command name -> package) that are missing."""
    packages = PACKAGES if packages is None else packages
    missing = [pkg for name, pkg in packages.items() if not shutil.which(name) and not Path(f"/usr/sbin/{name}").exists()]
    if missing:
        log(f"installing with apt-get: {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)


def tool(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port, timeout=15.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening on port {port}")
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout:g}s")


def cpu_seconds(pid):
    """utime+stime of a whole process: /proc/PID/stat sums over all of its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def process_tree(pid):
    """The pid and its descendants (haproxy and nginx fork workers), children of any thread."""
    pids = [pid]
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return pids
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            pids.extend(process_tree(int(child)))
    return pids


def sum_over_tree(pid, metric):
    total = 0
    for p in process_tree(pid):
        try:
            total += metric(p)
        except (OSError, IndexError, ValueError):
            pass  # exited between listing and reading
    return total


def tree_cpu(pid):
    return sum_over_tree(pid, cpu_seconds)


def tree_rss(pid):
    return sum_over_tree(pid, peak_rss_kib)


def kill_group(proc, timeout=10):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


class Target:
    """One thing wrk or iperf3 talks to: direct (no process of its own) or a proxy, run on
    the cores `cpus` (taskset's list: "1", "0,1")."""

    def __init__(self, name, port, cmd=None, cpus="1"):
        self.name, self.port, self.cmd, self.cpus = name, port, cmd, cpus
        self.proc = None
        self.failed = None  # why it did not start, or when it died
        self.logfile = None

    def start(self, logdir):
        try:
            if self.cmd:
                if port_open(self.port):
                    raise RuntimeError(f"port {self.port} is already in use")
                slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
                self.logfile = logdir / f"{slug}-{self.port}.log"
                with open(self.logfile, "wb") as out:
                    self.proc = subprocess.Popen(["taskset", "-c", self.cpus, *self.cmd], stdout=out,
                                                 stderr=subprocess.STDOUT, start_new_session=True)
            wait_port(self.port, proc=self.proc)
        except (OSError, RuntimeError) as e:
            self.failed = f"did not start: {e}{self.log_tail()}"
            log(f"{self.name}: {self.failed} (skipped)")
            self.stop()

    def log_tail(self):
        if not self.logfile or not self.logfile.exists():
            return ""
        lines = [l.strip() for l in self.logfile.read_text(errors="replace").splitlines() if l.strip()]
        if not lines:
            return ""
        telling = [l for l in lines if re.search(r"error|cannot|fail|invalid|usage|alert", l, re.I)]
        return " (" + (telling or lines)[-1 if not telling else 0][:160].replace("|", "/") + ")"

    def check_alive(self):
        if not self.failed and self.proc and self.proc.poll() is not None:
            self.failed = f"exited with status {self.proc.returncode} during the run{self.log_tail()}"
            log(f"{self.name}: {self.failed}")
        return not self.failed

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def stop(self):
        kill_group(self.proc)


# --- backends and proxies ----------------------------------------------------------------

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
        # nginx's own default: the headers go out in one write and the body (sendfile) in
        # a second, so a relay that copies each read straight on writes twice per answer.
        location /split/ {{ alias {www}/; tcp_nopush off; default_type application/octet-stream; }}
    }}
}}
""")
    proc = subprocess.Popen(["taskset", "-c", "1", tool("nginx"), "-c", str(conf), "-p", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(port, proc=proc)
    return proc


def haproxy_config(workdir, name, listen, backend, splice, nbthread=1):
    conf = workdir / f"{name}.cfg"
    conf.write_text(f"""
global
    maxconn 4000
    nbthread {nbthread}
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


def proxy_targets(workdir, ember, backend, first_port):
    port = lambda i: first_port + i  # noqa: E731
    relay = f"127.0.0.1:{backend}"
    targets = [
        # No access log: HAProxy here logs nothing either (ember's is on by default).
        Target(EMBER_COPY, port(0), [ember, "-l", f"127.0.0.1:{port(0)}", "-r", relay, "--no-splice",
                                     "--access-log", "off"]),
        Target(EMBER, port(1), [ember, "-l", f"127.0.0.1:{port(1)}", "-r", relay, "--access-log", "off"]),
        Target(HAPROXY, port(2), haproxy_config(workdir, f"haproxy-{first_port}", port(2), backend, False)),
        Target(HAPROXY_SPLICE, port(3), haproxy_config(workdir, f"haproxy-splice-{first_port}", port(3), backend, True)),
    ]
    emproxy = os.environ.get("EMPROXY_DIR")
    if emproxy:
        targets.append(Target("em-proxy", port(4), ["ruby", "-I", f"{emproxy}/lib", "-e", EMPROXY_LAUNCHER,
                                                     str(port(4)), "127.0.0.1", str(backend)]))
    return targets


# --- load generators ---------------------------------------------------------------------

def parse_wrk(out):
    """requests/s, requests, p50 and p99 in µs, and any errors wrk reported, from its output."""
    def number(pattern, cast=float):
        m = re.search(pattern, out)
        return cast(m.group(1)) if m else None

    def percentile(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\b", out, re.M)
        return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)] if m else None

    errors = []
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += [f"{kind} {n}" for kind, n in zip(("connect", "read", "write", "timeout"), m.groups()) if n != "0"]
    non2xx = number(r"Non-2xx or 3xx responses: (\d+)", int)
    if non2xx:
        errors.append(f"non-2xx {non2xx}")
    rps, total = number(r"Requests/sec:\s+([\d.]+)"), number(r"(\d+) requests in", int)
    if rps is None or total is None:
        return {"error": "could not parse wrk output"}
    return {"rps": rps, "total": total, "p50": percentile(50), "p90": percentile(90), "p99": percentile(99),
            "wrk_errors": ", ".join(errors)}


def run_wrk(port, path, duration, connections, threads=1, fresh=False):
    cmd = ["taskset", "-c", "0", tool("wrk"), f"-t{threads}", f"-c{connections}", f"-d{duration:g}s",
           f"--timeout={WRK_REQUEST_TIMEOUT_S}s", "--latency"]
    if fresh:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    limit = duration + 30
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"error": f"wrk did not finish within {limit:g}s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"wrk exited with status {proc.returncode}: {last[:120]}"}
    return parse_wrk(proc.stdout)


def run_iperf(port, seconds):
    cmd = ["taskset", "-c", "0", tool("iperf3"), "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
        end = json.loads(proc.stdout)["end"]["sum_received"]
        return {"bytes": end["bytes"], "secs": end["seconds"]}
    except (subprocess.TimeoutExpired, ValueError, KeyError) as e:
        return {"error": f"iperf3 failed: {type(e).__name__}"}


def measure_http(target, path, duration, connections, threads=1, fresh=False):
    """One wrk run against a target, with the proxy's CPU per request; None if it is down."""
    if not target.check_alive():
        return None
    pid = target.pid
    before = tree_cpu(pid) if pid else 0
    r = run_wrk(target.port, path, duration, connections, threads, fresh)
    if "error" not in r:
        r["cpu_us"] = (tree_cpu(pid) - before) / max(r["total"], 1) * 1e6 if pid else None
    if not target.check_alive():
        r = {"error": target.failed}
    return r


def rotated(items, by):
    by %= len(items)
    return items[by:] + items[:by]


def describe(r):
    if "error" in r:
        return f"ERROR {r['error']}"
    cpu = f"  cpu {r['cpu_us']:.1f}us/req" if r.get("cpu_us") is not None else ""
    p99 = f"  p99 {r['p99']:.0f}us" if r.get("p99") is not None else ""
    errs = f"  [{r['wrk_errors']}]" if r.get("wrk_errors") else ""
    return f"{r['rps']:>10.0f} req/s{p99}{cpu}{errs}"


def run_http_tests(args, targets, paths, results):
    for rnd in range(1, args.rounds + 1):
        for path in paths:
            for t in rotated(targets, rnd - 1):
                r = measure_http(t, path, args.duration, args.connections)
                if r is None:
                    continue
                r["round"] = rnd
                results.setdefault((path, args.connections, t.name), []).append(r)
                log(f"round {rnd} {path:6} {t.name:24} {describe(r)}")


def run_stream_tests(args, targets, results):
    for rnd in range(1, args.rounds + 1):
        for t in targets:
            if not t.check_alive():
                continue
            pid = t.pid
            before = tree_cpu(pid) if pid else 0
            r = run_iperf(t.port, max(1, int(args.duration)))
            if "error" not in r and r["bytes"] > 0:
                gib = r["bytes"] / (1 << 30)
                r = {"gibps": gib / r["secs"], "cpu_per_gib": (tree_cpu(pid) - before) / gib if pid else None}
                log(f"round {rnd} stream {t.name:24} {r['gibps']:.2f} GiB/s"
                    + (f"  cpu {r['cpu_per_gib']:.3f} s/GiB" if pid else ""))
            else:
                r = {"error": r.get("error", "no bytes received")}
                log(f"round {rnd} stream {t.name:24} ERROR {r['error']}")
            r["round"] = rnd
            results.setdefault(("stream", 1, t.name), []).append(r)


def sweep_cells(args):
    return [(KEEPALIVE, c) for c in args.concurrency] + [(FRESH, c) for c in args.fresh_concurrency]


def run_sweep(args, targets, results, rows_csv):
    cells = sweep_cells(args)
    eta = len(cells) * len(targets) * args.rounds * args.duration
    log(f"sweep: {len(cells)} cells x {len(targets)} targets x {args.rounds} rounds x {args.duration:g} s "
        f"= about {eta / 60:.1f} min")
    for rnd in range(1, args.rounds + 1):
        for mode, conc in cells:
            for t in rotated(targets, rnd - 1):
                r = measure_http(t, args.sweep_path, args.duration, conc, threads=min(conc, 2), fresh=(mode == FRESH))
                if r is None:
                    continue
                r["round"] = rnd
                results.setdefault((mode, conc, t.name), []).append(r)
                rows_csv.append({"mode": mode, "concurrency": conc, "round": rnd, "target": t.name,
                                 "rps": r.get("rps"), "requests": r.get("total"), "p50_us": r.get("p50"),
                                 "p99_us": r.get("p99"), "cpu_us_per_req": r.get("cpu_us"),
                                 "errors": r.get("error") or r.get("wrk_errors", "")})
                log(f"round {rnd} {mode:10} c={conc:<4} {t.name:24} {describe(r)}")


# --- summaries ---------------------------------------------------------------------------

def median_of(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(rows, direct_rows, value="rps"):
    """Medians over the rounds that worked, and the median of per-round ratios to direct."""
    ok = [r for r in rows if "error" not in r]
    direct = {d["round"]: d[value] for d in direct_rows if "error" not in d and d[value] > 0}
    ratios = [r[value] / direct[r["round"]] for r in ok if r["round"] in direct]
    errors = []
    for r in rows:
        e = r.get("error") or r.get("wrk_errors")
        if e:
            errors.append(f"round {r['round']}: {e}")
    return {"n": len(ok), "ratio": statistics.median(ratios) if ratios else None,
            "errors": "; ".join(errors), **{k: median_of(ok, k) for k in ("rps", "p50", "p99", "cpu_us", "gibps", "cpu_per_gib")}}


def summarize_all(results, targets, keys):
    """{(mode, concurrency, target): summary} for every key and target that has results."""
    out = {}
    for mode, conc in keys:
        direct_rows = results.get((mode, conc, "direct"), [])
        value = "gibps" if mode == "stream" else "rps"
        for t in targets:
            rows = results.get((mode, conc, t.name))
            if rows:
                out[(mode, conc, t.name)] = summarize(rows, direct_rows, value)
    return out


def fmt(value, spec, missing="–"):
    return missing if value is None else format(value, spec)


def status_of(t, s):
    if s is None:
        return t.failed or "no result"
    return s["errors"]


def http_table(targets, summary, path, conc, rss):
    lines = ["| target | req/s | vs direct | p50 µs | p99 µs | proxy CPU µs/req | proxy peak RSS MiB | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for t in targets:
        s = summary.get((path, conc, t.name))
        if s is None or s["n"] == 0:
            lines.append(f"| {t.name} | – | – | – | – | – | – | {status_of(t, s)} |")
            continue
        mem = f"{rss[t.name] / 1024:.1f}" if t.name in rss else "–"
        lines.append(f"| {t.name} | {s['rps']:.0f} | {fmt(s['ratio'], '.1%')} | {fmt(s['p50'], '.0f')} | "
                     f"{fmt(s['p99'], '.0f')} | {fmt(s['cpu_us'], '.1f')} | {mem} | {s['errors'] or '–'} |")
    return lines


def stream_table(targets, summary):
    lines = ["| target | GiB/s | vs direct | proxy CPU s/GiB | errors |", "|---|---|---|---|---|"]
    for t in targets:
        s = summary.get(("stream", 1, t.name))
        if s is None or s["n"] == 0:
            lines.append(f"| {t.name} | – | – | – | {status_of(t, s)} |")
            continue
        lines.append(f"| {t.name} | {s['gibps']:.2f} | {fmt(s['ratio'], '.1%')} | "
                     f"{fmt(s['cpu_per_gib'], '.3f')} | {s['errors'] or '–'} |")
    return lines


def sweep_table(targets, summary, mode, concs):
    lines = ["| conns | target | req/s | vs direct | p50 µs | p99 µs | proxy CPU µs/req | errors |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    for c in concs:
        for t in targets:
            s = summary.get((mode, c, t.name))
            if s is None or s["n"] == 0:
                lines.append(f"| {c} | {t.name} | – | – | – | – | – | {status_of(t, s)} |")
                continue
            lines.append(f"| {c} | {t.name} | {s['rps']:.0f} | {fmt(s['ratio'], '.1%')} | {fmt(s['p50'], '.0f')} | "
                         f"{fmt(s['p99'], '.0f')} | {fmt(s['cpu_us'], '.1f')} | {s['errors'] or '–'} |")
    return lines


def goal_table(summary, cells):
    """ember-proxy (default) against the better HAProxy row at each cell: ratio >= and CPU <."""
    lines = ["| mode | conns | ember vs direct | best HAProxy vs direct | ember CPU µs/req | "
             "best HAProxy CPU µs/req | goal |", "|---|---:|---:|---:|---:|---:|---|"]
    for mode, c in cells:
        e = summary.get((mode, c, EMBER))
        hs = [h for h in (summary.get((mode, c, n)) for n in (HAPROXY, HAPROXY_SPLICE))
              if h and h["ratio"] is not None and h["cpu_us"] is not None]
        if not e or e["ratio"] is None or e["cpu_us"] is None or not hs:
            lines.append(f"| {mode} | {c} | – | – | – | – | not measured |")
            continue
        h_ratio, h_cpu = max(h["ratio"] for h in hs), min(h["cpu_us"] for h in hs)
        misses = [what for what, ok in (("ratio", e["ratio"] >= h_ratio), ("CPU", e["cpu_us"] < h_cpu)) if not ok]
        verdict = "meets" if not misses else "misses (" + ", ".join(misses) + ")"
        if e["errors"] or any(h["errors"] for h in hs):
            verdict += "; wrk saw errors"
        lines.append(f"| {mode} | {c} | {e['ratio']:.1%} | {h_ratio:.1%} | {e['cpu_us']:.1f} | {h_cpu:.1f} | {verdict} |")
    return lines


# --- SVG charts (hand-written, no plotting library) --------------------------------------

COLORS = {"direct": ("#7f7f7f", "6 4"), EMBER: ("#d95f02", None), EMBER_COPY: ("#fdae6b", "7 3"),
          HAPROXY: ("#1f78b4", None), HAPROXY_SPLICE: ("#8ec1e6", "7 3"), "em-proxy": ("#6a3d9a", None)}


def nice_step(span, ticks=6):
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def linear_ticks(lo, hi):
    step = nice_step(hi - lo)
    first = math.floor(lo / step) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(v)
        v += step
    if ticks[-1] < hi:
        ticks.append(ticks[-1] + step)
    return ticks


def log_ticks(lo, hi):
    ticks = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        ticks += [m * 10 ** k for m in (1, 2, 5)]
    below = [t for t in ticks if t <= lo]
    above = [t for t in ticks if t >= hi]
    return [t for t in ticks if (below[-1] if below else ticks[0]) <= t <= (above[0] if above else ticks[-1])]


def fmt_duration_us(us):
    if us >= 1e6:
        return f"{us / 1e6:g} s"
    if us >= 1e3:
        return f"{us / 1e3:g} ms"
    return f"{us:g} µs"


def svg_chart(title, subtitle, xlabel, ylabel, series, ylog=False, yfmt=str, yzero=True, ref=None):
    """A line chart, log-scale x (concurrency); series is [(name, [(x, y or None), ...])]."""
    W, H, L, R, T, B = 820, 440, 78, 600, 66, 370  # canvas, then the plot area's edges
    points = [(x, y) for _, pts in series for x, y in pts if y is not None and (not ylog or y > 0)]
    if not points:
        return None
    xs = sorted({x for _, pts in series for x, _ in pts})
    x_lo, x_hi = (xs[0] / 2, xs[0] * 2) if len(xs) == 1 else (xs[0], xs[-1])
    ys = [y for _, y in points] + ([ref] if ref is not None else [])
    if ylog:
        yt = log_ticks(min(ys), max(ys))
    else:
        yt = linear_ticks(0 if yzero else min(ys), max(ys) * 1.05 or 1)
    y_lo, y_hi = yt[0], yt[-1]
    if y_hi == y_lo:
        y_hi = y_lo + 1

    def px(x):
        span = math.log(x_hi) - math.log(x_lo)
        return L + 20 + (math.log(x) - math.log(x_lo)) / span * (R - L - 40)

    def py(y):
        if ylog:
            return B - (math.log(y) - math.log(y_lo)) / (math.log(y_hi) - math.log(y_lo)) * (B - T)
        return B - (y - y_lo) / (y_hi - y_lo) * (B - T)

    esc = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="17" font-weight="bold">{esc(title)}</text>',
           f'<text x="{W / 2}" y="44" text-anchor="middle" font-size="12" fill="#444">{esc(subtitle)}</text>']
    for y in yt:
        out.append(f'<line x1="{L}" x2="{R}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{L - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{esc(yfmt(y))}</text>')
    for x in xs:
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{T}" y2="{B}" stroke="#efefef"/>')
        out.append(f'<text x="{px(x):.1f}" y="{B + 18}" text-anchor="middle">{x}</text>')
    out.append(f'<rect x="{L}" y="{T}" width="{R - L}" height="{B - T}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{(L + R) / 2}" y="{B + 42}" text-anchor="middle" font-size="13">{esc(xlabel)}</text>')
    out.append(f'<text transform="translate(18 {(T + B) / 2}) rotate(-90)" text-anchor="middle" '
               f'font-size="13">{esc(ylabel)}</text>')
    for i, (name, pts) in enumerate(series):
        color, dash = COLORS.get(name, ("#000000", None))
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        segment = []
        for x, y in pts + [(None, None)]:  # a missing point breaks the line
            if y is not None and (not ylog or y > 0):
                segment.append(f"{px(x):.1f},{py(y):.1f}")
                continue
            if len(segment) > 1:
                out.append(f'<polyline points="{" ".join(segment)}" fill="none" stroke="{color}" '
                           f'stroke-width="2.4"{dash_attr}/>')
            segment = []
        for x, y in pts:
            if y is not None and (not ylog or y > 0):
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.8" fill="{color}"/>')
        ly = T + 10 + i * 22
        out.append(f'<line x1="{R + 16}" x2="{R + 46}" y1="{ly}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="2.4"{dash_attr}/>')
        out.append(f'<circle cx="{R + 31}" cy="{ly}" r="3.8" fill="{color}"/>')
        out.append(f'<text x="{R + 54}" y="{ly + 4}">{esc(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_charts(outdir, targets, summary, concs_by_mode, subtitle_for):
    written = []
    specs = [("ratio", "Throughput relative to direct", "throughput vs direct (higher is better)",
              lambda s: s["ratio"], False, lambda v: f"{v:.0%}", 1.0),
             ("p99", "p99 latency", "p99 latency, log scale (lower is better)",
              lambda s: s["p99"], True, fmt_duration_us, None),
             ("cpu", "Proxy CPU per request", "proxy CPU µs per request (lower is better)",
              lambda s: s["cpu_us"], False, lambda v: f"{v:g}", None)]
    for mode, concs in concs_by_mode.items():
        if not concs:
            continue
        label = "keep-alive connections" if mode == KEEPALIVE else "a new connection per request"
        for key, title, ylabel, value, ylog, yfmt, ref in specs:
            series = []
            for t in targets:
                if key == "cpu" and t.name == "direct":
                    continue
                pts = []
                for c in concs:
                    s = summary.get((mode, c, t.name))
                    pts.append((c, value(s) if s and s["n"] else None))
                series.append((t.name, pts))
            svg = svg_chart(f"{title}, {label}", subtitle_for(mode), "concurrent connections (log scale)",
                            ylabel, series, ylog=ylog, yfmt=yfmt, ref=ref)
            if svg:
                path = outdir / f"sweep-{key}-{mode.replace('-', '')}.svg"
                path.write_text(svg)
                written.append(path)
    return written


# --- outputs -----------------------------------------------------------------------------

def versions(emproxy):
    def first_line(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return ((p.stdout or p.stderr).strip().splitlines() or ["?"])[0]
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    out = [first_line([tool("nginx"), "-v"]), first_line([tool("haproxy"), "-v"]), first_line([tool("wrk"), "-v"])]
    if emproxy:
        out.append(first_line(["ruby", "-v"]))
    return "; ".join(out)


def commit():
    def git(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + uncommitted changes" if git("status", "--porcelain", "--", "src", "Cargo.toml") else "")


def write_csv(path, rows, fields):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_sweep_outputs(args, targets, summary, rows_csv, markdown):
    outdir = args.out
    outdir.mkdir(parents=True, exist_ok=True)
    fields = ["mode", "concurrency", "target", "rounds_ok", "rps", "ratio_to_direct", "p50_us", "p99_us",
              "cpu_us_per_req", "errors"]
    rows = []
    for mode, c in sweep_cells(args):
        for t in targets:
            s = summary.get((mode, c, t.name))
            rows.append({"mode": mode, "concurrency": c, "target": t.name, "rounds_ok": s["n"] if s else 0,
                         "rps": s and s["rps"], "ratio_to_direct": s and s["ratio"], "p50_us": s and s["p50"],
                         "p99_us": s and s["p99"], "cpu_us_per_req": s and s["cpu_us"],
                         "errors": status_of(t, s)})
    write_csv(outdir / "sweep.csv", rows, fields)
    write_csv(outdir / "sweep-rounds.csv", rows_csv,
              ["mode", "concurrency", "round", "target", "rps", "requests", "p50_us", "p99_us", "cpu_us_per_req",
               "errors"])
    (outdir / "sweep.md").write_text(markdown)

    def subtitle(mode):
        return (f"GET {args.sweep_path} from nginx, wrk on core 0, backend and proxy on core 1; "
                f"median of {args.rounds} round(s) x {args.duration:g} s")
    charts = write_charts(outdir, targets, summary,
                          {KEEPALIVE: args.concurrency, FRESH: args.fresh_concurrency}, subtitle)
    return [outdir / "sweep.csv", outdir / "sweep-rounds.csv", outdir / "sweep.md", *charts]


# --- main --------------------------------------------------------------------------------

def int_list(text):
    if text.strip().lower() in ("", "none"):
        return []
    values = [int(v) for v in text.split(",") if v.strip()]
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("concurrency must be >= 1")
    return sorted(set(values))


def parse_args():
    doc = __doc__.split("\n", 1)
    ap = argparse.ArgumentParser(description=doc[0], epilog=doc[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, help="seconds per measurement (default 5; --quick: 1)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick: 1)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections for small/large (default 50)")
    ap.add_argument("--quick", action="store_true", help="1 round of 1 s: a smoke run")
    ap.add_argument("--no-build", action="store_true", help="use target/release/ember-proxy as it is")
    ap.add_argument("--tests", help="comma-separated, from: small, large, stream, sweep (default: all)")
    ap.add_argument("--sweep", action="store_true", help="run the sweep (alone, unless --tests names others)")
    ap.add_argument("--concurrency", type=int_list, help=f"keep-alive sweep concurrencies (default {DEFAULT_CONCURRENCY})")
    ap.add_argument("--fresh-concurrency", type=int_list,
                    help=f"fresh-connection concurrencies, or 'none' (default {DEFAULT_FRESH_CONCURRENCY}; "
                         "with --concurrency given, those of the two lists in common, or --concurrency's smallest)")
    ap.add_argument("--sweep-path", default=DEFAULT_SWEEP_PATH,
                    help="what the sweep fetches: /split/small (default: 12 B, headers and body in "
                         "two writes) or /small (12 B in one corked write), /split/large, /large")
    ap.add_argument("--out", type=Path, default=ROOT / "benches" / "results",
                    help="directory for the sweep's CSV, markdown and SVG files (default benches/results)")
    args = ap.parse_args()
    args.duration = args.duration or (1 if args.quick else 5)
    args.rounds = args.rounds or (1 if args.quick else 3)
    tests = set(args.tests.split(",")) if args.tests else (set() if args.sweep else set(ALL_TESTS))
    if args.sweep:
        tests.add("sweep")
    unknown = tests - set(ALL_TESTS)
    if unknown:
        ap.error(f"unknown tests: {', '.join(sorted(unknown))}")
    args.tests = tests
    if args.fresh_concurrency is None:
        fresh = int_list(DEFAULT_FRESH_CONCURRENCY)
        if args.concurrency is not None:
            fresh = [c for c in fresh if c in args.concurrency] or args.concurrency[:1]
        args.fresh_concurrency = fresh
    if args.concurrency is None:
        args.concurrency = int_list(DEFAULT_CONCURRENCY)
    return args


def main():
    args = parse_args()
    ensure_tools()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "ember-proxy"], cwd=ROOT, check=True)
    ember = str(ROOT / "target" / "release" / "ember-proxy")
    emproxy = os.environ.get("EMPROXY_DIR")
    if not emproxy:
        log("EMPROXY_DIR not set: em-proxy rows skipped")
    workdir = Path(tempfile.mkdtemp(prefix="ember-bench-"))
    workdir.chmod(0o755)  # nginx workers run as www-data and must read the bodies
    nginx_port, iperf_port = BASE_PORT, BASE_PORT + 1
    paths = [f"/{t}" for t in ("small", "large") if t in args.tests]
    http_targets = [Target("direct", nginx_port)] + proxy_targets(workdir, ember, nginx_port, BASE_PORT + 10)
    stream_targets = []
    if "stream" in args.tests:
        stream_targets = [Target("direct", iperf_port)] + proxy_targets(workdir, ember, iperf_port, BASE_PORT + 20)
    results, rows_csv, rss = {}, [], {}
    nginx = iperf = None
    started = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())
    try:
        nginx = start_nginx(workdir, nginx_port)
        if stream_targets:
            iperf = subprocess.Popen(["taskset", "-c", "1", tool("iperf3"), "-s", "-B", "127.0.0.1", "-p", str(iperf_port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            wait_port(iperf_port, proc=iperf)
        for t in http_targets + stream_targets:
            t.start(workdir)
        if paths:
            run_http_tests(args, http_targets, paths, results)
        if stream_targets:
            run_stream_tests(args, stream_targets, results)
        if "sweep" in args.tests:
            run_sweep(args, http_targets, results, rows_csv)
        rss = {t.name: tree_rss(t.pid) for t in http_targets if t.pid and t.check_alive()}
    finally:
        for t in http_targets + stream_targets:
            t.stop()
        for p in (nginx, iperf):
            kill_group(p)
        shutil.rmtree(workdir, ignore_errors=True)

    keys = [(p, args.connections) for p in paths] + [("stream", 1)] + sweep_cells(args)
    summary = summarize_all(results, http_targets, [k for k in keys if k[0] != "stream"])
    summary.update(summarize_all(results, stream_targets, [("stream", 1)]))
    if paths or stream_targets:
        print(f"Rounds: {args.rounds} × {args.duration:g} s per target, load on core 0, "
              f"backend and proxy on core 1. {started}, commit {commit()}.\n")
    for path, label in (("/small", "12 B body"), ("/large", "1 MiB body")):
        if path in paths:
            print(f"### HTTP, {label} (wrk -t1 -c{args.connections}, keep-alive)\n")
            print("\n".join(http_table(http_targets, summary, path, args.connections, rss)) + "\n")
    if stream_targets:
        print("### Raw stream (iperf3)\n")
        print("\n".join(stream_table(stream_targets, summary)) + "\n")
    if "sweep" in args.tests:
        md = [f"Sweep: GET {args.sweep_path}, {args.rounds} round(s) × {args.duration:g} s per target and cell, "
              f"wrk -c N -t min(N,2) on core 0, nginx and proxy on core 1. {started}, commit {commit()}. "
              f"{versions(emproxy)}.\n"]
        for mode, concs, label in ((KEEPALIVE, args.concurrency, "keep-alive connections"),
                                   (FRESH, args.fresh_concurrency, "a new connection per request")):
            if concs:
                md += [f"### Sweep, {label}\n", "\n".join(sweep_table(http_targets, summary, mode, concs)) + "\n"]
        md += ["### Goal: ember-proxy (adaptive) at or above the better HAProxy row's ratio, "
               "and below its CPU per request\n", "\n".join(goal_table(summary, sweep_cells(args))) + "\n"]
        markdown = "\n".join(md)
        print(markdown)
        for path in write_sweep_outputs(args, http_targets, summary, rows_csv, markdown):
            log(f"wrote {path}")


if __name__ == "__main__":
    main()
