#!/usr/bin/env python3
"""Proxy benchmark: direct vs ember-proxy vs HAProxy vs em-proxy, with a concurrency sweep.

What it measures
  nginx (one worker) on 127.0.0.1 is the backend, serving a 12-byte body (/small) and a
  1 MiB body (/large). In front of it, each on its own port, run the targets: nothing
  (direct); ember-proxy with --relay-mode copy (user-space copies), with the default
  --relay-mode auto (adaptive splice; a long stream times splice against copy and keeps
  the faster), with --relay-mode splice (bulk always spliced) and with --relay-mode
  kernel (BPF sockmap: relayed bytes never enter the process); HAProxy in TCP mode without and with
  `option splice-auto`; and em-proxy when EMPROXY_DIR names a checkout of
  igrigorik/em-proxy (run by Debian's ruby-eventmachine). An ember-proxy whose --help has
  no --relay-mode runs copy as --no-splice, and the kernel rows are skipped with the
  reason printed. wrk runs on core 0; nginx and every proxy on core 1, so a proxy's cost
  shows as lost throughput.

  small, large  wrk -t1 -c50 (keep-alive) on /small and on /large.
  stream        iperf3, one stream, through each proxy: GiB/s and CPU s per GiB.
  sweep         /split/small with keep-alive connections at concurrency 1, 4, 16, 64, 256
                (wrk -c N -t min(N,2)), and with a fresh TCP connection per request
                (wrk -H 'Connection: close'; nginx closes after each answer) at 1, 16, 64.
                /split/ serves the same files with tcp_nopush off (nginx's default), so
                each answer leaves nginx in two writes, headers then body: a proxy that
                relays them as two writes without TCP_NODELAY stalls on Nagle and delayed
                ACK (up to 40 ms per request at concurrency 1). /small is corked into one
                segment and hides that; --sweep-path chooses.
  kernel-relay  (issue 14; --kernel-relay-suite, not part of the default set) keep-alive
                wrk -c N -t min(N,2) at concurrency 1, 16, 50 and 256 on /small (12 B) and
                /large (1 MiB), plus the iperf3 stream; p50/p99 and each proxy's added
                latency at 1 connection; whole-machine CPU; and the goal table of issue
                14: at 1 connection an added p50 latency at most 1/4 of HAProxy's, a
                whole-machine cost per small request at most 0.7x HAProxy's (every
                concurrency), stream throughput at least HAProxy's. "HAProxy's" is the
                better of the two HAProxy rows in each comparison.

How
  Rounds are interleaved: in each round every target runs once per cell, in an order
  rotated each round, so drift on a shared machine hits every target alike. "vs direct"
  is the median of per-round ratios to direct. p50/p99 come from wrk --latency (wrk
  starts the clock once a connection is up, so in fresh mode the connect is in the
  throughput but not in the latency). "added p50" is, per round, the proxy's p50 minus
  direct's p50 in the same cell, then the median over rounds.

  CPU is reported two ways, per request for the 12 B bodies and per GiB of body for the
  1 MiB bodies and the stream:
  - process CPU: utime+stime of the proxy from /proc/PID/stat (all its threads) plus its
    forked children, over the run. This misses everything the kernel does for the proxy
    outside its own process context: softirq processing charged to whichever task was
    running (often wrk or nginx) or to ksoftirqd, and kernel worker threads. For an
    in-kernel relay (sockmap) that is nearly all of the work, so its process-only figure
    can read "0 µs" while the machine is doing the relaying: that 0 would be false.
  - whole-machine CPU: the "cpu" line of /proc/stat (all CPUs) is read just before wrk
    or iperf3 starts and just after it exits; busy = user+nice+system+irq+softirq+steal
    (guest time is already inside user and nice; idle and iowait are not busy). The
    machine is shared with other people's builds, so the CPU that processes outside
    this benchmark used in the same window is subtracted: every /proc/PID/stat that is
    neither a kernel thread nor this script or one of its descendants, summed as
    utime+stime+cutime+cstime before and after (a child that exits in the window lands
    in its parent's cutime/cstime, so short-lived compiler processes are counted too).
    machine CPU = (busy delta - those processes' delta) / requests (or / GiB). It
    includes wrk, nginx (or iperf3), the proxy, and all kernel work: softirq, irq,
    kworkers, ksoftirqd, and steal.
  - proxy's whole-machine cost = the run's machine CPU per request (or per GiB) minus the
    direct run's machine CPU per request (or per GiB) in the same cell and the same
    round, then the median over rounds. That is everything the machine spends because
    the proxy is in the path, wherever the kernel accounted it. Where both cores are
    saturated (most cells above 1 connection) machine CPU per request is about
    2 cores / throughput, so the cost there is throughput lost, stated as CPU time.
    Kernel background (timers, RCU, ...) is not subtracted; its share per request is
    larger when throughput is lower, a small bias against slower targets.
  Other people's builds also cost latency and throughput, which subtracting their CPU
  cannot undo: a measurement during which processes outside the benchmark used more than
  --max-other-load cores (default 0.25) is taken again after a pause, at most
  --busy-retries times (default 2); the last try stands, and the header says how many
  stayed over. Peak RSS is VmHWM. The per-round CSVs keep the raw busy, steal and
  other-process CPU seconds of every window.

Outputs
  Markdown tables on stdout, progress on stderr. The sweep also writes, into --out
  (default benches/results/): sweep.csv (one row per mode, concurrency and target),
  sweep-rounds.csv (every measurement), sweep.md (the tables, with date and versions)
  and SVG charts sweep-{ratio,p99,cpu,machine-cost}-{keepalive,fresh}.svg, drawn here by
  hand. The kernel-relay suite writes kernel-relay.csv, kernel-relay-rounds.csv,
  kernel-relay.md, and the charts kernel-relay-machine-cpu.svg (whole-machine CPU per
  small request vs concurrency, direct included) and kernel-relay-machine-cost.svg (the
  same minus direct's).

Usage
  benches/proxies.py                   # small, large, stream and sweep
  benches/proxies.py --sweep           # the sweep only
  benches/proxies.py --sweep --quick --concurrency 1,16 --duration 2 --rounds 1
  benches/proxies.py --kernel-relay-suite --rounds 5 --duration 5   # issue 14, ~25 min
  benches/proxies.py --kernel-relay-suite --quick --out /tmp/smoke  # smoke run, ~1 min
  EMPROXY_DIR=/path/to/em-proxy benches/proxies.py --rounds 5 --duration 4
Hold the shared lock around any run: flock /tmp/ember-bench.lock benches/proxies.py ...
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
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_PORT = 18000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PACKAGES = {"nginx": "nginx-light", "haproxy": "haproxy", "wrk": "wrk", "iperf3": "iperf3"}
DEFAULT_TESTS = ("small", "large", "stream", "sweep")
SUITE = "kernel-relay"
ALL_TESTS = DEFAULT_TESTS + (SUITE,)
KEEPALIVE, FRESH = "keep-alive", "fresh"
DEFAULT_SWEEP_PATH = "/split/small"
DEFAULT_CONCURRENCY = "1,4,16,64,256"
DEFAULT_FRESH_CONCURRENCY = "1,16,64"
SUITE_CONCURRENCY = "1,16,50,256"
SUITE_SMALL, SUITE_LARGE, SUITE_STREAM = "suite/small", "suite/large", "suite-stream"  # result keys
BODY_BYTES = {"small": 12, "large": 1 << 20}  # by the last part of the path
GIB = 1 << 30
WRK_REQUEST_TIMEOUT_S = 2  # wrk counts a request slower than this as a timeout error
EMBER, EMBER_COPY, EMBER_KERNEL = "ember-proxy (auto)", "ember-proxy (copy)", "ember-proxy (kernel)"
EMBER_SPLICE = "ember-proxy (splice)"
HAPROXY, HAPROXY_SPLICE = "haproxy", "haproxy (splice-auto)"
HAPROXIES = (HAPROXY, HAPROXY_SPLICE)
PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread

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


def machine_busy_ticks():
    """(busy, steal) clock ticks of all CPUs since boot, from the "cpu" line of /proc/stat.

    busy = user+nice+system+irq+softirq+steal. guest and guest_nice are already inside
    user and nice; idle and iowait are time nobody used the CPU.
    """
    line = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    assert line[0] == "cpu", line
    user, nice, system, _idle, _iowait, irq, softirq, steal = ([int(v) for v in line[1:9]] + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal, steal


def other_processes_cpu_seconds():
    """utime+stime+cutime+cstime summed over every process that is neither a kernel thread
    nor this script or one of its descendants: the CPU other people's work on the shared
    machine has used. A child that exits is folded into its parent's cutime/cstime when
    reaped, so the difference of two sums counts processes that lived between them too."""
    ours = set(process_tree(os.getpid()))
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            # fields[0] is field 3 (state); flags is field 9, utime..cstime are 14..17.
            if int(fields[6]) & PF_KTHREAD:
                continue
            ticks += sum(int(v) for v in fields[11:15])
        except (OSError, IndexError, ValueError):
            pass  # exited between listing and reading
    return ticks / CLK_TCK


class MachineCpu:
    """Whole-machine CPU over one measurement window: start it just before the load
    generator, call stop() once it has exited."""

    def __init__(self):
        self.others = other_processes_cpu_seconds()
        self.busy, self.steal = machine_busy_ticks()
        self.wall = time.monotonic()

    def stop(self):
        """machine_cpu_s (busy minus other processes: what this benchmark's processes and
        the kernel used), and the raw parts: busy_s, steal_s, others_s, wall_s."""
        busy, steal = machine_busy_ticks()
        wall = time.monotonic() - self.wall
        others = max(0.0, other_processes_cpu_seconds() - self.others)
        busy_s = (busy - self.busy) / CLK_TCK
        return {"machine_cpu_s": busy_s - others, "busy_s": busy_s, "steal_s": (steal - self.steal) / CLK_TCK,
                "others_s": others, "wall_s": wall}


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


def relay_mode_flags(ember):
    """{target name: ember-proxy's relay flags} for the modes this binary has, and why any
    was left out. Without --relay-mode (an older build), copy is --no-splice and the
    kernel mode does not exist; a kernel mode the machine refuses is found out at start."""
    try:
        p = subprocess.run([ember, "--help"], capture_output=True, text=True, timeout=10)
        text = p.stdout + p.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        text = f"{type(e).__name__}: {e}"
    if "--relay-mode" in text:
        return {EMBER_COPY: ["--relay-mode", "copy"], EMBER: [], EMBER_SPLICE: ["--relay-mode", "splice"],
                EMBER_KERNEL: ["--relay-mode", "kernel"]}, []
    why = f"{EMBER_KERNEL} skipped: `ember-proxy --help` has no --relay-mode (copy runs as --no-splice)"
    return {EMBER_COPY: ["--no-splice"], EMBER: []}, [why]


def proxy_targets(workdir, ember, backend, first_port, ember_modes):
    port = lambda i: first_port + i  # noqa: E731
    relay = f"127.0.0.1:{backend}"
    targets = [
        # No access log: HAProxy here logs nothing either (ember's is on by default).
        Target(name, port(i), [ember, "-l", f"127.0.0.1:{port(i)}", "-r", relay, *flags, "--access-log", "off"])
        for i, (name, flags) in enumerate(ember_modes.items())
    ]
    n = len(targets)
    targets += [
        Target(HAPROXY, port(n), haproxy_config(workdir, f"haproxy-{first_port}", port(n), backend, False)),
        Target(HAPROXY_SPLICE, port(n + 1),
               haproxy_config(workdir, f"haproxy-splice-{first_port}", port(n + 1), backend, True)),
    ]
    emproxy = os.environ.get("EMPROXY_DIR")
    if emproxy:
        targets.append(Target("em-proxy", port(n + 2), ["ruby", "-I", f"{emproxy}/lib", "-e", EMPROXY_LAUNCHER,
                                                         str(port(n + 2)), "127.0.0.1", str(backend)]))
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


def body_bytes(path):
    """The size of the body nginx serves at `path` (/small, /split/large, ...)."""
    return BODY_BYTES[path.rstrip("/").rsplit("/", 1)[-1]]


def is_bulk(key):
    """Cells whose CPU is reported per GiB (1 MiB bodies, the stream) rather than per request."""
    return "large" in key or "stream" in key


def add_cpu(r, pid, proc_before, window, requests, gib):
    """Per request and per GiB figures of one measurement: the proxy process's CPU (None
    for direct) and the whole machine's (see the module doc), plus the window's raw parts."""
    proc_s = tree_cpu(pid) - proc_before if pid else None
    r.update(window)
    r["proc_cpu_s"] = proc_s
    if requests:
        r["cpu_us"] = proc_s / requests * 1e6 if pid else None
        r["machine_us"] = window["machine_cpu_s"] / requests * 1e6
    if gib > 0:
        r["cpu_per_gib"] = proc_s / gib if pid else None
        r["machine_per_gib"] = window["machine_cpu_s"] / gib


def measure_http(target, path, duration, connections, threads=1, fresh=False):
    """One wrk run against a target, with process and whole-machine CPU per request and
    per GiB of body; None if the target is down."""
    if not target.check_alive():
        return None
    pid = target.pid
    before = tree_cpu(pid) if pid else 0
    meter = MachineCpu()
    r = run_wrk(target.port, path, duration, connections, threads, fresh)
    window = meter.stop()
    if "error" not in r:
        gib = r["total"] * body_bytes(path) / GIB
        r["gibps"] = r["rps"] * body_bytes(path) / GIB
        add_cpu(r, pid, before, window, max(r["total"], 1), gib)
    if not target.check_alive():
        r = {"error": target.failed}
    return r


def measure_stream(target, seconds):
    """One iperf3 run through a target: GiB/s and CPU per GiB; None if the target is down."""
    if not target.check_alive():
        return None
    pid = target.pid
    before = tree_cpu(pid) if pid else 0
    meter = MachineCpu()
    r = run_iperf(target.port, seconds)
    window = meter.stop()
    if "error" not in r and r["bytes"] > 0:
        gib = r["bytes"] / GIB
        out = {"gibps": gib / r["secs"]}
        add_cpu(out, pid, before, window, 0, gib)
        r = out
    else:
        r = {"error": r.get("error", "no bytes received")}
    if not target.check_alive():
        r = {"error": target.failed}
    return r


def rotated(items, by):
    by %= len(items)
    return items[by:] + items[:by]


def describe(r, bulk=False):
    if "error" in r:
        return f"ERROR {r['error']}"
    if bulk:
        head = f"{r['gibps']:>7.2f} GiB/s" + (f" {r['rps']:>8.0f} req/s" if "rps" in r else "")
        cpu = f"  cpu {r['cpu_per_gib']:.3f} s/GiB" if r.get("cpu_per_gib") is not None else ""
        machine = f"  machine {r['machine_per_gib']:.3f} s/GiB" if r.get("machine_per_gib") is not None else ""
    else:
        head = f"{r['rps']:>10.0f} req/s"
        cpu = f"  cpu {r['cpu_us']:.1f}us/req" if r.get("cpu_us") is not None else ""
        machine = f"  machine {r['machine_us']:.1f}us/req" if r.get("machine_us") is not None else ""
    p50 = f"  p50 {r['p50']:.0f}us" if r.get("p50") is not None and not bulk else ""
    p99 = f"  p99 {r['p99']:.0f}us" if r.get("p99") is not None else ""
    others = f"  others {r['others_s'] / r['wall_s']:.2f} cores" if r.get("others_s", 0) > 0.05 * r.get("wall_s", 1) else ""
    errs = f"  [{r['wrk_errors']}]" if r.get("wrk_errors") else ""
    return f"{head}{p50}{p99}{cpu}{machine}{others}{errs}"


ROUND_FIELDS = ["mode", "concurrency", "round", "target", "rps", "requests", "gibps", "p50_us", "p99_us",
                "cpu_us_per_req", "machine_us_per_req", "cpu_s_per_gib", "machine_s_per_gib", "proxy_cpu_s",
                "machine_cpu_s", "busy_s", "steal_s", "others_s", "wall_s", "errors"]


def round_row(mode, conc, rnd, name, r):
    """One measurement as a row of ROUND_FIELDS."""
    return {"mode": mode, "concurrency": conc, "round": rnd, "target": name, "rps": r.get("rps"),
            "requests": r.get("total"), "gibps": r.get("gibps"), "p50_us": r.get("p50"), "p99_us": r.get("p99"),
            "cpu_us_per_req": r.get("cpu_us"), "machine_us_per_req": r.get("machine_us"),
            "cpu_s_per_gib": r.get("cpu_per_gib"), "machine_s_per_gib": r.get("machine_per_gib"),
            **{k: r.get(k) for k in ("proxy_cpu_s", "machine_cpu_s", "busy_s", "steal_s", "others_s", "wall_s")},
            "errors": r.get("error") or r.get("wrk_errors", "")}


def measure_quietly(args, label, measure):
    """measure(), run again (at most --busy-retries times, after a pause) while processes
    outside the benchmark used more than --max-other-load cores during it: other people's
    builds also cost latency and throughput, which subtracting their CPU cannot undo. The
    last try stands; other_load() counts those still over."""
    for attempt in range(args.busy_retries + 1):
        r = measure()
        if r is None or not r.get("wall_s"):
            return r
        load = r["others_s"] / r["wall_s"]
        if load <= args.max_other_load:
            return r
        if attempt < args.busy_retries:
            log(f"{label}: other processes used {load:.2f} cores, measuring again")
            time.sleep(2)
    return r


def run_http_tests(args, targets, paths, results):
    for rnd in range(1, args.rounds + 1):
        for path in paths:
            for t in rotated(targets, rnd - 1):
                r = measure_quietly(args, f"{path} {t.name}",
                                    partial(measure_http, t, path, args.duration, args.connections))
                if r is None:
                    continue
                r["round"] = rnd
                results.setdefault((path, args.connections, t.name), []).append(r)
                log(f"round {rnd} {path:6} {t.name:24} {describe(r, is_bulk(path))}")


def run_stream_round(args, targets, results, rnd, key="stream", rows_csv=None):
    for t in rotated(targets, rnd - 1):
        r = measure_quietly(args, f"stream {t.name}", partial(measure_stream, t, max(1, int(args.duration))))
        if r is None:
            continue
        r["round"] = rnd
        results.setdefault((key, 1, t.name), []).append(r)
        if rows_csv is not None:
            rows_csv.append(round_row(key, 1, rnd, t.name, r))
        log(f"round {rnd} stream {t.name:24} {describe(r, bulk=True)}")


def run_stream_tests(args, targets, results):
    for rnd in range(1, args.rounds + 1):
        run_stream_round(args, targets, results, rnd)


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
                r = measure_quietly(args, f"{mode} c={conc} {t.name}", partial(
                    measure_http, t, args.sweep_path, args.duration, conc, threads=min(conc, 2), fresh=(mode == FRESH)))
                if r is None:
                    continue
                r["round"] = rnd
                results.setdefault((mode, conc, t.name), []).append(r)
                rows_csv.append(round_row(mode, conc, rnd, t.name, r))
                log(f"round {rnd} {mode:10} c={conc:<4} {t.name:24} {describe(r, is_bulk(args.sweep_path))}")


def suite_cells(args):
    return [(SUITE_SMALL, c) for c in args.suite_concurrency] + [(SUITE_LARGE, c) for c in args.suite_concurrency]


def run_suite(args, targets, stream_targets, results, rows_csv):
    """Issue 14's cells: keep-alive /small and /large at each concurrency, and the stream,
    every target once per cell and round."""
    cells = suite_cells(args)
    eta = (len(cells) * len(targets) + len(stream_targets)) * args.rounds * args.duration
    log(f"kernel-relay suite: {len(cells)} cells x {len(targets)} targets + the stream x {len(stream_targets)}, "
        f"x {args.rounds} rounds x {args.duration:g} s = about {eta / 60:.1f} min")
    for rnd in range(1, args.rounds + 1):
        for mode, conc in cells:
            path = "/" + mode.split("/", 1)[1]
            for t in rotated(targets, rnd - 1):
                r = measure_quietly(args, f"{mode} c={conc} {t.name}",
                                    partial(measure_http, t, path, args.duration, conc, threads=min(conc, 2)))
                if r is None:
                    continue
                r["round"] = rnd
                results.setdefault((mode, conc, t.name), []).append(r)
                rows_csv.append(round_row(mode, conc, rnd, t.name, r))
                log(f"round {rnd} {mode:11} c={conc:<4} {t.name:24} {describe(r, is_bulk(mode))}")
        run_stream_round(args, stream_targets, results, rnd, SUITE_STREAM, rows_csv)


# --- summaries ---------------------------------------------------------------------------

def median_of(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


PAIRED = {"cost_us": "machine_us", "cost_per_gib": "machine_per_gib", "added_p50": "p50", "added_p99": "p99"}


def summarize(rows, direct_rows, value="rps", is_direct=False):
    """Medians over the rounds that worked; the median of per-round ratios to direct; and
    the median of per-round differences from direct (PAIRED: the proxy's whole-machine
    cost per request and per GiB, its added p50 and p99), each paired with direct's run
    in the same cell and round."""
    ok = [r for r in rows if "error" not in r]
    direct_ok = {d["round"]: d for d in direct_rows if "error" not in d}
    ratios = [r[value] / direct_ok[r["round"]][value] for r in ok
              if r["round"] in direct_ok and direct_ok[r["round"]][value] > 0]
    errors = []
    for r in rows:
        e = r.get("error") or r.get("wrk_errors")
        if e:
            errors.append(f"round {r['round']}: {e}")
    out = {"n": len(ok), "ratio": statistics.median(ratios) if ratios else None, "errors": "; ".join(errors),
           **{k: median_of(ok, k) for k in ("rps", "p50", "p99", "cpu_us", "gibps", "cpu_per_gib",
                                             "machine_us", "machine_per_gib")}}
    for diff, key in PAIRED.items():
        values = [r[key] - direct_ok[r["round"]][key] for r in ok
                  if not is_direct and r["round"] in direct_ok
                  and r.get(key) is not None and direct_ok[r["round"]].get(key) is not None]
        out[diff] = statistics.median(values) if values else None
    return out


def summarize_all(results, targets, keys):
    """{(mode, concurrency, target): summary} for every key and target that has results."""
    out = {}
    for mode, conc in keys:
        direct_rows = results.get((mode, conc, "direct"), [])
        value = "gibps" if "stream" in mode else "rps"
        for t in targets:
            rows = results.get((mode, conc, t.name))
            if rows:
                out[(mode, conc, t.name)] = summarize(rows, direct_rows, value, is_direct=(t.name == "direct"))
    return out


def other_load(results, limit):
    """Mean and peak cores used by processes outside this benchmark during its windows, and
    how many windows stayed over `limit` after their retries."""
    loads = [r["others_s"] / r["wall_s"] for rows in results.values() for r in rows
             if r.get("wall_s") and r.get("others_s") is not None]
    steal = [r["steal_s"] / r["wall_s"] for rows in results.values() for r in rows
             if r.get("wall_s") and r.get("steal_s") is not None]
    if not loads:
        return ""
    over = sum(1 for v in loads if v > limit)
    return (f"Other processes on the machine used {statistics.mean(loads):.2f} cores on average during the "
            f"measurements (peak {max(loads):.2f}; {over} of {len(loads)} measurements over {limit:g} cores "
            f"after retries); their CPU is subtracted from the whole-machine figures. "
            f"Steal (counted as busy): {statistics.mean(steal):.2f} cores on average.")


def fmt(value, spec, missing="–"):
    return missing if value is None else format(value, spec)


def status_of(t, s):
    if s is None:
        return t.failed or "no result"
    return s["errors"]


def cpu_headers(bulk):
    unit = "s/GiB" if bulk else "µs/req"
    return [f"proxy process CPU {unit}", f"machine CPU {unit}", f"proxy's whole-machine cost {unit}"]


def cpu_cells(s, bulk):
    """The process, whole-machine and whole-machine-minus-direct figures of a summary."""
    if bulk:
        return [fmt(s["cpu_per_gib"], ".3f"), fmt(s["machine_per_gib"], ".3f"), fmt(s["cost_per_gib"], "+.3f")]
    return [fmt(s["cpu_us"], ".1f"), fmt(s["machine_us"], ".1f"), fmt(s["cost_us"], "+.1f")]


def table(header, align, rows):
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def http_table(targets, summary, path, conc, rss):
    bulk = is_bulk(path)
    header = ["target", "req/s", "vs direct", "p50 µs", "p99 µs", *cpu_headers(bulk), "proxy peak RSS MiB", "errors"]
    rows = []
    for t in targets:
        s = summary.get((path, conc, t.name))
        if s is None or s["n"] == 0:
            rows.append([t.name] + ["–"] * (len(header) - 2) + [status_of(t, s)])
            continue
        mem = f"{rss[t.name] / 1024:.1f}" if t.name in rss else "–"
        rows.append([t.name, f"{s['rps']:.0f}", fmt(s["ratio"], ".1%"), fmt(s["p50"], ".0f"), fmt(s["p99"], ".0f"),
                     *cpu_cells(s, bulk), mem, s["errors"] or "–"])
    return table(header, ["---"] * len(header), rows)


def stream_table(targets, summary, key="stream"):
    header = ["target", "GiB/s", "vs direct", *cpu_headers(True), "errors"]
    rows = []
    for t in targets:
        s = summary.get((key, 1, t.name))
        if s is None or s["n"] == 0:
            rows.append([t.name] + ["–"] * (len(header) - 2) + [status_of(t, s)])
            continue
        rows.append([t.name, f"{s['gibps']:.2f}", fmt(s["ratio"], ".1%"), *cpu_cells(s, True), s["errors"] or "–"])
    return table(header, ["---"] + ["---:"] * (len(header) - 2) + ["---"], rows)


def sweep_table(targets, summary, mode, concs, bulk=False):
    header = ["conns", "target", "req/s", "vs direct", "p50 µs", "p99 µs", *cpu_headers(bulk), "errors"]
    rows = []
    for c in concs:
        for t in targets:
            s = summary.get((mode, c, t.name))
            if s is None or s["n"] == 0:
                rows.append([c, t.name] + ["–"] * (len(header) - 3) + [status_of(t, s)])
                continue
            rows.append([c, t.name, f"{s['rps']:.0f}", fmt(s["ratio"], ".1%"), fmt(s["p50"], ".0f"),
                         fmt(s["p99"], ".0f"), *cpu_cells(s, bulk), s["errors"] or "–"])
    return table(header, ["---:", "---"] + ["---:"] * (len(header) - 3) + ["---"], rows)


def goal_table(summary, cells):
    """ember-proxy (default) against the better HAProxy row at each cell: ratio >= and
    whole-machine cost per request < (process CPU would flatter an in-kernel relay)."""
    lines = ["| mode | conns | ember vs direct | best HAProxy vs direct | ember whole-machine cost µs/req | "
             "best HAProxy whole-machine cost µs/req | goal |", "|---|---:|---:|---:|---:|---:|---|"]
    for mode, c in cells:
        e = summary.get((mode, c, EMBER))
        hs = [h for h in (summary.get((mode, c, n)) for n in HAPROXIES)
              if h and h["ratio"] is not None and h["cost_us"] is not None]
        if not e or e["ratio"] is None or e["cost_us"] is None or not hs:
            lines.append(f"| {mode} | {c} | – | – | – | – | not measured |")
            continue
        h_ratio, h_cost = max(h["ratio"] for h in hs), min(h["cost_us"] for h in hs)
        misses = [what for what, ok in (("ratio", e["ratio"] >= h_ratio), ("CPU", e["cost_us"] < h_cost)) if not ok]
        verdict = "meets" if not misses else "misses (" + ", ".join(misses) + ")"
        if e["errors"] or any(h["errors"] for h in hs):
            verdict += "; wrk saw errors"
        lines.append(f"| {mode} | {c} | {e['ratio']:.1%} | {h_ratio:.1%} | {e['cost_us']:.1f} | {h_cost:.1f} | {verdict} |")
    return lines


# --- the kernel-relay suite (issue 14) -----------------------------------------------------

LATENCY_GOAL = 0.25  # ember's added p50 at 1 connection, as a fraction of HAProxy's at most
CPU_GOAL = 0.7  # ember's whole-machine cost per small request, as a fraction of HAProxy's at most
GOAL_TARGETS = (EMBER_KERNEL, EMBER)


def suite_small_table(targets, summary, concs):
    header = ["conns", "target", "req/s", "vs direct", "p50 µs", "p99 µs", "added p50 µs", "added p99 µs",
              *cpu_headers(False), "errors"]
    rows = []
    for c in concs:
        for t in targets:
            s = summary.get((SUITE_SMALL, c, t.name))
            if s is None or s["n"] == 0:
                rows.append([c, t.name] + ["–"] * (len(header) - 3) + [status_of(t, s)])
                continue
            rows.append([c, t.name, f"{s['rps']:.0f}", fmt(s["ratio"], ".1%"), fmt(s["p50"], ".0f"),
                         fmt(s["p99"], ".0f"), fmt(s["added_p50"], "+.0f"), fmt(s["added_p99"], "+.0f"),
                         *cpu_cells(s, False), s["errors"] or "–"])
    return table(header, ["---:", "---"] + ["---:"] * (len(header) - 3) + ["---"], rows)


def suite_large_table(targets, summary, concs):
    header = ["conns", "target", "GiB/s", "req/s", "vs direct", "p99 ms", *cpu_headers(True), "errors"]
    rows = []
    for c in concs:
        for t in targets:
            s = summary.get((SUITE_LARGE, c, t.name))
            if s is None or s["n"] == 0:
                rows.append([c, t.name] + ["–"] * (len(header) - 3) + [status_of(t, s)])
                continue
            p99 = fmt(s["p99"] / 1e3 if s["p99"] is not None else None, ".1f")
            rows.append([c, t.name, fmt(s["gibps"], ".2f"), f"{s['rps']:.0f}", fmt(s["ratio"], ".1%"), p99,
                         *cpu_cells(s, True), s["errors"] or "–"])
    return table(header, ["---:", "---"] + ["---:"] * (len(header) - 3) + ["---"], rows)


def share(value, of):
    """value / of as "0.23×", or why not: HAProxy's figure must be above zero to divide by."""
    if value is None or of is None:
        return "–"
    if of <= 0:
        return "n/a (HAProxy's ≤ 0)"
    return f"{value / of:.2f}×"


def latency_table(targets, summary, conc):
    """Each proxy's added p50 over direct at `conc` connections, and its ratio to each HAProxy's."""
    header = ["target", "p50 µs", "p99 µs", "direct p50 µs", "added p50 µs",
              *[f"÷ {h}'s added p50" for h in HAPROXIES]]
    direct = summary.get((SUITE_SMALL, conc, "direct"))
    refs = [summary.get((SUITE_SMALL, conc, h)) for h in HAPROXIES]
    rows = []
    for t in targets:
        s = summary.get((SUITE_SMALL, conc, t.name))
        if t.name == "direct" or s is None or s["n"] == 0:
            continue
        rows.append([t.name, fmt(s["p50"], ".0f"), fmt(s["p99"], ".0f"), fmt(direct and direct["p50"], ".0f"),
                     fmt(s["added_p50"], "+.0f"), *[share(s["added_p50"], r and r["added_p50"]) for r in refs]])
    return table(header, ["---"] + ["---:"] * (len(header) - 1), rows)


def value_of(s, key):
    return s[key] if s and s["n"] else None


def best_haproxy(summary, key, conc, value, pick):
    """(value, name) of the better HAProxy row for `value` (pick: min or max), or (None, None)."""
    found = [(s[value], h) for h in HAPROXIES
             for s in [summary.get((key, conc, h))] if s and s["n"] and s[value] is not None]
    return pick(found) if found else (None, None)


def suite_goal_table(summary, concs, why_missing=None):
    """Issue 14's three goals for the kernel and auto rows, each against the better HAProxy row;
    why_missing: {target name: why it has no results} (a target that did not start)."""
    why_missing = why_missing or {}
    header = ["goal", "cell", "target", "measured", "HAProxy (better row)", "limit", "result"]
    rows = []

    def verdict(ok, name, *summaries):
        if ok is None:
            return "not measured" + (f": {why_missing[name]}" if why_missing.get(name) else "")
        flag = "PASS" if ok else "FAIL"
        return flag + (" (wrk or iperf3 saw errors)" if any(s and s["errors"] for s in summaries) else "")

    c1 = 1 if 1 in concs else concs[0]
    for name in GOAL_TARGETS:
        s = summary.get((SUITE_SMALL, c1, name))
        e = value_of(s, "added_p50")
        h, hname = best_haproxy(summary, SUITE_SMALL, c1, "added_p50", min)
        ok = None if e is None or h is None or h <= 0 else e <= LATENCY_GOAL * h
        rows.append([f"added p50 latency ≤ {LATENCY_GOAL:g}× HAProxy's", f"12 B, {c1} conn", name,
                     f"{fmt(e, '+.1f')} µs ({share(e, h)})", f"{fmt(h, '+.1f')} µs ({hname or '–'})",
                     f"≤ {fmt(h and LATENCY_GOAL * h, '.1f')} µs",
                     verdict(ok, name, s, summary.get((SUITE_SMALL, c1, hname))) if h is None or h > 0
                     else "n/a: HAProxy adds no measurable latency"])
    for c in concs:
        for name in GOAL_TARGETS:
            s = summary.get((SUITE_SMALL, c, name))
            e = value_of(s, "cost_us")
            h, hname = best_haproxy(summary, SUITE_SMALL, c, "cost_us", min)
            ok = None if e is None or h is None or h <= 0 else e <= CPU_GOAL * h
            rows.append([f"whole-machine CPU per request ≤ {CPU_GOAL:g}× HAProxy's", f"12 B, {c} conn{'s' if c > 1 else ''}", name,
                         f"{fmt(e, '+.1f')} µs ({share(e, h)})", f"{fmt(h, '+.1f')} µs ({hname or '–'})",
                         f"≤ {fmt(h and CPU_GOAL * h, '.1f')} µs",
                         verdict(ok, name, s, summary.get((SUITE_SMALL, c, hname))) if h is None or h > 0
                         else "n/a: HAProxy's cost not above direct"])
    for name in GOAL_TARGETS:
        s = summary.get((SUITE_STREAM, 1, name))
        e = value_of(s, "gibps")
        h, hname = best_haproxy(summary, SUITE_STREAM, 1, "gibps", max)
        ok = None if e is None or h is None else e >= h
        rows.append(["stream throughput ≥ HAProxy's", "iperf3, 1 stream", name, f"{fmt(e, '.2f')} GiB/s",
                     f"{fmt(h, '.2f')} GiB/s ({hname or '–'})", f"≥ {fmt(h, '.2f')} GiB/s",
                     verdict(ok, name, s, summary.get((SUITE_STREAM, 1, hname)))])
    return table(header, ["---", "---", "---", "---:", "---:", "---:", "---"], rows)


# --- SVG charts (hand-written, no plotting library) --------------------------------------

COLORS = {"direct": ("#7f7f7f", "6 4"), EMBER: ("#d95f02", None), EMBER_COPY: ("#fdae6b", "7 3"),
          EMBER_KERNEL: ("#a50f15", "2 3"), EMBER_SPLICE: ("#e6550d", "1 2"),
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
        lo = min(0, min(ys)) if yzero else min(ys)  # a difference from direct can be below 0
        hi = max(ys) * 1.05 if max(ys) > 0 else 0
        yt = linear_ticks(lo, hi if hi > lo else lo + 1)
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
             ("cpu", "Proxy process CPU per request", "proxy process CPU µs per request (lower is better)",
              lambda s: s["cpu_us"], False, lambda v: f"{v:g}", None),
             ("machine-cost", "Proxy's whole-machine cost per request",
              "machine CPU µs per request minus direct's (lower is better)",
              lambda s: s["cost_us"], False, lambda v: f"{v:g}", None)]
    for mode, concs in concs_by_mode.items():
        if not concs:
            continue
        label = "keep-alive connections" if mode == KEEPALIVE else "a new connection per request"
        for key, title, ylabel, value, ylog, yfmt, ref in specs:
            series = []
            for t in targets:
                if key in ("cpu", "machine-cost") and t.name == "direct":
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


def write_suite_charts(outdir, targets, summary, concs, subtitle):
    """Whole-machine CPU per 12 B request against concurrency, for every target (direct is
    the floor), and the same minus direct: what each proxy costs the machine."""
    written = []
    specs = [("machine-cpu", "Whole-machine CPU per request, 12 B body, keep-alive",
              "machine CPU µs per request (lower is better)", "machine_us", True),
             ("machine-cost", "Proxy's whole-machine cost per request, 12 B body, keep-alive",
              "machine CPU µs per request minus direct's (lower is better)", "cost_us", False)]
    for slug, title, ylabel, key, with_direct in specs:
        series = []
        for t in targets:
            if t.name == "direct" and not with_direct:
                continue
            series.append((t.name, [(c, value_of(summary.get((SUITE_SMALL, c, t.name)), key)) for c in concs]))
        svg = svg_chart(title, subtitle, "concurrent connections (log scale)", ylabel, series,
                        yfmt=lambda v: f"{v:g}")
        if svg:
            path = outdir / f"kernel-relay-{slug}.svg"
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


SUMMARY_FIELDS = ["mode", "concurrency", "target", "rounds_ok", "rps", "gibps", "ratio_to_direct", "p50_us",
                  "p99_us", "added_p50_us", "added_p99_us", "cpu_us_per_req", "machine_us_per_req",
                  "machine_cost_us_per_req", "cpu_s_per_gib", "machine_s_per_gib", "machine_cost_s_per_gib",
                  "errors"]
SUMMARY_KEYS = {"rps": "rps", "gibps": "gibps", "ratio_to_direct": "ratio", "p50_us": "p50", "p99_us": "p99",
                "added_p50_us": "added_p50", "added_p99_us": "added_p99", "cpu_us_per_req": "cpu_us",
                "machine_us_per_req": "machine_us", "machine_cost_us_per_req": "cost_us",
                "cpu_s_per_gib": "cpu_per_gib", "machine_s_per_gib": "machine_per_gib",
                "machine_cost_s_per_gib": "cost_per_gib"}


def summary_rows(cells, targets, summary):
    """One row of SUMMARY_FIELDS per cell and target (machine_cost_*: minus direct, paired by round)."""
    rows = []
    for mode, c in cells:
        for t in targets:
            s = summary.get((mode, c, t.name))
            rows.append({"mode": mode, "concurrency": c, "target": t.name, "rounds_ok": s["n"] if s else 0,
                         **{field: s and s[key] for field, key in SUMMARY_KEYS.items()}, "errors": status_of(t, s)})
    return rows


def write_sweep_outputs(args, targets, summary, rows_csv, markdown):
    outdir = args.out
    outdir.mkdir(parents=True, exist_ok=True)
    write_csv(outdir / "sweep.csv", summary_rows(sweep_cells(args), targets, summary), SUMMARY_FIELDS)
    write_csv(outdir / "sweep-rounds.csv", rows_csv, ROUND_FIELDS)
    (outdir / "sweep.md").write_text(markdown)

    def subtitle(mode):
        return (f"GET {args.sweep_path} from nginx, wrk on core 0, backend and proxy on core 1; "
                f"median of {args.rounds} round(s) x {args.duration:g} s")
    charts = write_charts(outdir, targets, summary,
                          {KEEPALIVE: args.concurrency, FRESH: args.fresh_concurrency}, subtitle)
    return [outdir / "sweep.csv", outdir / "sweep-rounds.csv", outdir / "sweep.md", *charts]


def write_suite_outputs(args, targets, stream_targets, summary, rows_csv, markdown):
    outdir = args.out
    outdir.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(suite_cells(args), targets, summary) + \
        summary_rows([(SUITE_STREAM, 1)], stream_targets, summary)
    write_csv(outdir / "kernel-relay.csv", rows, SUMMARY_FIELDS)
    write_csv(outdir / "kernel-relay-rounds.csv", rows_csv, ROUND_FIELDS)
    (outdir / "kernel-relay.md").write_text(markdown)
    subtitle = (f"GET /small from nginx, wrk on core 0, backend and proxy on core 1; "
                f"median of {args.rounds} round(s) x {args.duration:g} s")
    charts = write_suite_charts(outdir, targets, summary, args.suite_concurrency, subtitle)
    return [outdir / "kernel-relay.csv", outdir / "kernel-relay-rounds.csv", outdir / "kernel-relay.md", *charts]


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
    ap.add_argument("--tests", help=f"comma-separated, from: {', '.join(ALL_TESTS)} "
                                    f"(default: {', '.join(DEFAULT_TESTS)})")
    ap.add_argument("--sweep", action="store_true", help="run the sweep (alone, unless --tests names others)")
    ap.add_argument("--kernel-relay-suite", action="store_true",
                    help=f"run issue 14's cells ({SUITE}: 12 B and 1 MiB at concurrency {SUITE_CONCURRENCY}, "
                         "the stream, added latency, whole-machine CPU, goal table), alone unless --tests "
                         "names others")
    ap.add_argument("--concurrency", type=int_list,
                    help=f"keep-alive concurrencies of the sweep (default {DEFAULT_CONCURRENCY}) and of the "
                         f"kernel-relay suite (default {SUITE_CONCURRENCY})")
    ap.add_argument("--fresh-concurrency", type=int_list,
                    help=f"fresh-connection concurrencies, or 'none' (default {DEFAULT_FRESH_CONCURRENCY}; "
                         "with --concurrency given, those of the two lists in common, or --concurrency's smallest)")
    ap.add_argument("--sweep-path", default=DEFAULT_SWEEP_PATH,
                    help="what the sweep fetches: /split/small (default: 12 B, headers and body in "
                         "two writes) or /small (12 B in one corked write), /split/large, /large")
    ap.add_argument("--max-other-load", type=float, default=0.25,
                    help="measure again when processes outside the benchmark (other people's builds) used "
                         "more than this many cores during a measurement (default 0.25)")
    ap.add_argument("--busy-retries", type=int, default=2,
                    help="how many times to measure again for --max-other-load, after a 2 s pause each "
                         "(default 2; 0: never)")
    ap.add_argument("--out", type=Path, default=ROOT / "benches" / "results",
                    help="directory for the sweep's and the kernel-relay suite's CSV, markdown and SVG files "
                         "(default benches/results)")
    args = ap.parse_args()
    args.duration = args.duration or (1 if args.quick else 5)
    args.rounds = args.rounds or (1 if args.quick else 3)
    alone = args.sweep or args.kernel_relay_suite
    tests = set(args.tests.split(",")) if args.tests else (set() if alone else set(DEFAULT_TESTS))
    if args.sweep:
        tests.add("sweep")
    if args.kernel_relay_suite:
        tests.add(SUITE)
    unknown = tests - set(ALL_TESTS)
    if unknown:
        ap.error(f"unknown tests: {', '.join(sorted(unknown))}")
    args.tests = tests
    if args.fresh_concurrency is None:
        fresh = int_list(DEFAULT_FRESH_CONCURRENCY)
        if args.concurrency is not None:
            fresh = [c for c in fresh if c in args.concurrency] or args.concurrency[:1]
        args.fresh_concurrency = fresh
    args.suite_concurrency = args.concurrency or int_list(SUITE_CONCURRENCY)
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
    notes = [] if emproxy else ["EMPROXY_DIR not set: em-proxy rows skipped"]
    ember_modes, skipped = relay_mode_flags(ember)
    notes += skipped
    for note in notes:
        log(note)
    workdir = Path(tempfile.mkdtemp(prefix="ember-bench-"))
    workdir.chmod(0o755)  # nginx workers run as www-data and must read the bodies
    nginx_port, iperf_port = BASE_PORT, BASE_PORT + 1
    paths = [f"/{t}" for t in ("small", "large") if t in args.tests]
    http_targets = [Target("direct", nginx_port)] + proxy_targets(workdir, ember, nginx_port, BASE_PORT + 10,
                                                                  ember_modes)
    stream_targets = []
    if "stream" in args.tests or SUITE in args.tests:
        stream_targets = [Target("direct", iperf_port)] + proxy_targets(workdir, ember, iperf_port, BASE_PORT + 20,
                                                                        ember_modes)
    results, rows_csv, suite_rows, rss = {}, [], [], {}
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
        if "stream" in args.tests:
            run_stream_tests(args, stream_targets, results)
        if "sweep" in args.tests:
            run_sweep(args, http_targets, results, rows_csv)
        if SUITE in args.tests:
            run_suite(args, http_targets, stream_targets, results, suite_rows)
        rss = {t.name: tree_rss(t.pid) for t in http_targets if t.pid and t.check_alive()}
    finally:
        for t in http_targets + stream_targets:
            t.stop()
        for p in (nginx, iperf):
            kill_group(p)
        shutil.rmtree(workdir, ignore_errors=True)

    http_keys = [(p, args.connections) for p in paths] + sweep_cells(args) + suite_cells(args)
    summary = summarize_all(results, http_targets, http_keys)
    summary.update(summarize_all(results, stream_targets, [("stream", 1), (SUITE_STREAM, 1)]))
    load = other_load(results, args.max_other_load)
    header = (f"{started}, commit {commit()}. {versions(emproxy)}. "
              + "".join(f"{n}. " for n in notes) + load)
    if paths or "stream" in args.tests:
        print(f"Rounds: {args.rounds} × {args.duration:g} s per target, load on core 0, "
              f"backend and proxy on core 1. {header}\n")
    for path, label in (("/small", "12 B body"), ("/large", "1 MiB body")):
        if path in paths:
            print(f"### HTTP, {label} (wrk -t1 -c{args.connections}, keep-alive)\n")
            print("\n".join(http_table(http_targets, summary, path, args.connections, rss)) + "\n")
    if "stream" in args.tests:
        print("### Raw stream (iperf3)\n")
        print("\n".join(stream_table(stream_targets, summary)) + "\n")
    if "sweep" in args.tests:
        md = [f"Sweep: GET {args.sweep_path}, {args.rounds} round(s) × {args.duration:g} s per target and cell, "
              f"wrk -c N -t min(N,2) on core 0, nginx and proxy on core 1. {header}\n"]
        for mode, concs, label in ((KEEPALIVE, args.concurrency, "keep-alive connections"),
                                   (FRESH, args.fresh_concurrency, "a new connection per request")):
            if concs:
                md += [f"### Sweep, {label}\n",
                       "\n".join(sweep_table(http_targets, summary, mode, concs, is_bulk(args.sweep_path))) + "\n"]
        md += [f"### Goal: {EMBER} at or above the better HAProxy row's ratio, "
               "and below its whole-machine cost per request\n", "\n".join(goal_table(summary, sweep_cells(args))) + "\n"]
        markdown = "\n".join(md)
        print(markdown)
        for path in write_sweep_outputs(args, http_targets, summary, rows_csv, markdown):
            log(f"wrote {path}")
    if SUITE in args.tests:
        markdown = "\n".join(suite_markdown(args, http_targets, stream_targets, summary, header))
        print(markdown)
        for path in write_suite_outputs(args, http_targets, stream_targets, summary, suite_rows, markdown):
            log(f"wrote {path}")


def suite_markdown(args, targets, stream_targets, summary, header):
    concs = args.suite_concurrency
    c1 = 1 if 1 in concs else concs[0]
    how = ("machine CPU: /proc/stat busy (user+nice+system+irq+softirq+steal, all CPUs) over the run, "
           "minus other people's processes, per request or per GiB of body; proxy's whole-machine cost: "
           "that minus direct's in the same cell and round (median over rounds); process CPU: the proxy's "
           "own /proc/PID/stat, which an in-kernel relay bypasses")
    return [
        "## Issue 14: kernel relay, added latency and whole-machine CPU\n",
        f"{args.rounds} round(s) × {args.duration:g} s per target and cell, wrk -c N -t min(N,2) keep-alive "
        f"on core 0, nginx and proxy on core 1. {header}\n",
        f"CPU columns — {how}.\n",
        "### 12 B body (GET /small), keep-alive\n", "\n".join(suite_small_table(targets, summary, concs)) + "\n",
        f"### Added latency at {c1} connection{'s' if c1 > 1 else ''} (p50 proxy − p50 direct, per round)\n",
        "\n".join(latency_table(targets, summary, c1)) + "\n",
        "### 1 MiB body (GET /large), keep-alive\n", "\n".join(suite_large_table(targets, summary, concs)) + "\n",
        "### Raw stream (iperf3, one stream)\n", "\n".join(stream_table(stream_targets, summary, SUITE_STREAM)) + "\n",
        f"### Goals of issue 14 ({', '.join(GOAL_TARGETS)}; HAProxy = the better of its two rows)\n",
        "\n".join(suite_goal_table(summary, concs, {t.name: t.failed for t in targets})) + "\n",
    ]


if __name__ == "__main__":
    main()
