#!/usr/bin/env python3
"""Failover benchmark: one of three backends killed and restarted under load, ember-proxy vs HAProxy.

What it measures
  Three nginx processes (one worker each, their own config, pid file and access log) on
  127.0.0.1 serve a 12-byte body (/small). In front of them, each on its own port:

    ember-proxy  target/release/ember-proxy -l 127.0.0.1:P -b A,B,C   (its defaults:
                 round-robin, --retries 3 on another backend, passive ejection after 3
                 failed connects, --connect-timeout 5)
    haproxy      TCP mode, balance roundrobin, retries 3, option redispatch,
                 timeout connect 5s, and `check inter 2s rise 2 fall 3` on every server

  wrk (2 threads, 16 connections by default) loads one proxy for 20 s, in two modes:
  keep-alive, and a new connection per request (-H 'Connection: close'; nginx closes
  after each answer). At t=5 s the second backend's nginx is killed (SIGKILL to its
  whole process group: its port refuses and its open connections die); at t=12 s it is
  started again on the same port. Everything else is identical for both proxies.

  Per run: requests answered, errors (wrk's connect/read/write/timeout socket errors plus
  non-2xx answers), the error rate (errors / (answered + socket errors)), answers per
  second before (1 s to the kill; second 0 is warm-up), during (kill to restart) and after
  (restart to the end, which includes the time the proxy takes to use the backend
  again), the worst second from the kill on, p99 and max latency (wrk's; in fresh mode
  wrk starts the clock once the connection is up), and the second in which the killed
  backend served again (from its access log). The proxies' stderr is captured with a
  timestamp on every line (HAProxy's "Server be/b2 is DOWN", ember's "backend ... is
  DOWN").

How
  Per-second counts come from wrk itself: a Lua script counts, per wall-clock second
  (os.time), the requests it sent and the answers it got (2xx/3xx or not), and prints the
  tables when the run is done. wrk is started on a whole second, so second N of the run
  is bucket N; the kill and the restart are timed from the same clock. wrk cannot say
  when a socket error happened (Lua sees only answers), so socket errors are totals per
  run; the per-second CSV has `sent` and `answered`, whose gap bounds them in time.
  wrk runs on core 0; the three nginx and the proxy on core 1 (as in proxies.py). Every
  run starts fresh backends and a fresh proxy, so no health state carries over. Rounds
  alternate the order of the proxies; the table gives sums (requests, errors) and medians
  over the rounds (rates, p99).

Outputs
  Markdown on stdout (also benches/results/failover.md), progress on stderr, and in
  --out (default benches/results/): failover.csv (one row per run), failover-seconds.csv
  (per run and second: sent, answered 2xx/3xx, non-2xx, requests each backend logged) and
  failover-events.log (the proxies' stderr, each line stamped with its second in the run).

Usage
  benches/failover.py                  # 3 rounds x 2 modes x 2 proxies x 20 s: about 5 min
  benches/failover.py --quick          # 1 round of 8 s (kill at 2 s, restart at 5 s)
  benches/failover.py --modes fresh --rounds 5 --connections 64
Uses target/release/ember-proxy as it is (builds it when missing, or with --build), or
--ember PATH; it runs a copy, so a rebuild during the run changes nothing.
Installs nginx, haproxy and wrk with apt-get when missing (and says so).
"""

import argparse
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxies import commit, ensure_tools, kill_group, log, port_open, tool, versions, wait_port, write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BASE_PORT = 18200  # backends 18201-18203, ember-proxy 18210, HAProxy 18211
PACKAGES = {"nginx": "nginx-light", "haproxy": "haproxy", "wrk": "wrk"}
FRESH, KEEPALIVE = "fresh", "keep-alive"
EMBER, HAPROXY = "ember-proxy", "haproxy"
KILLED = 1  # index of the backend that is killed and restarted (the second one)

# Per wall-clock second: requests sent, answers that were 2xx/3xx and answers that were not.
# Each wrk thread keeps its own tables; done() (in the main Lua state) fetches and prints them.
WRK_LUA = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) sent = {}; ok = {}; bad = {} end
function request()
  local s = os.time(); sent[s] = (sent[s] or 0) + 1
  return wrk.request()
end
function response(status, headers, body)
  local s = os.time()
  if status < 400 then ok[s] = (ok[s] or 0) + 1 else bad[s] = (bad[s] or 0) + 1 end
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for _, name in ipairs({"sent", "ok", "bad"}) do
      for s, n in pairs(t:get(name)) do io.write(string.format("SEC %s %d %d\n", name, s, n)) end
    end
  end
  local e = summary.errors
  io.write(string.format("ERR connect=%d read=%d write=%d status=%d timeout=%d\n",
                         e.connect, e.read, e.write, e.status, e.timeout))
  io.write(string.format("LAT p50=%d p99=%d max=%d requests=%d\n", latency:percentile(50),
                         latency:percentile(99), latency.max, summary.requests))
end
"""


def spawn(cmd, **kw):
    """A process pinned to core 1 in its own process group (so that killpg takes all of it)."""
    return subprocess.Popen(["taskset", "-c", "1", *cmd], start_new_session=True, **kw)


# --- backends ----------------------------------------------------------------------------

class Backend:
    """One nginx (master + one worker) on 127.0.0.1:port; it can be killed and started again."""

    def __init__(self, workdir, www, index, port):
        self.index, self.port, self.proc = index, port, None
        self.dir = workdir / f"b{index + 1}"
        self.dir.mkdir()
        self.access_log = self.dir / "access.log"
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(f"""
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 4096; }}
http {{
    log_format t '$msec';
    access_log {self.access_log} t;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location / {{ default_type application/octet-stream; }}
    }}
}}
""")

    def start(self):
        if port_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use")
        self.proc = spawn([tool("nginx"), "-c", str(self.conf), "-p", str(self.dir)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)

    def kill(self):
        """SIGKILL to master and worker at once: no graceful close, the port refuses at once."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        deadline = time.time() + 5
        while port_open(self.port) and time.time() < deadline:
            time.sleep(0.01)

    def stop(self):
        kill_group(self.proc)

    def per_second(self, t0):
        """Requests this backend logged, per second of the run."""
        counts = {}
        if self.access_log.exists():
            for line in self.access_log.read_text().split():
                try:
                    s = math.floor(float(line)) - t0
                except ValueError:
                    continue
                counts[s] = counts.get(s, 0) + 1
        return counts


# --- proxies -----------------------------------------------------------------------------

def haproxy_cmd(workdir, listen, backends):
    conf = workdir / "haproxy.cfg"
    servers = "\n".join(f"    server b{b.index + 1} 127.0.0.1:{b.port} check inter 2s rise 2 fall 3" for b in backends)
    conf.write_text(f"""
global
    maxconn 4000
    nbthread 1
defaults
    mode tcp
    balance roundrobin
    retries 3
    option redispatch
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:{listen}
    default_backend be
backend be
{servers}
""")
    return [tool("haproxy"), "-db", "-f", str(conf)]


class Proxy:
    """A proxy process whose stderr (and stdout) lines are kept with the time they arrived."""

    def __init__(self, name, port, cmd):
        self.name, self.port, self.cmd = name, port, cmd
        self.proc, self.lines, self.reader = None, [], None

    def start(self):
        if port_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use")
        self.lines = []
        self.proc = spawn(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self.reader.start()
        wait_port(self.port, proc=self.proc)

    def _read(self, pipe):
        for raw in iter(pipe.readline, b""):
            self.lines.append((time.time(), raw.decode(errors="replace").rstrip()))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        kill_group(self.proc)
        if self.reader:
            self.reader.join(timeout=5)


# --- one run -----------------------------------------------------------------------------

def parse_wrk(out, t0):
    seconds, fields = {}, {}
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["SEC"] and len(parts) == 4:
            name, s, n = parts[1], int(parts[2]) - t0, int(parts[3])
            row = seconds.setdefault(s, {"sent": 0, "ok": 0, "bad": 0})
            row[name] += n
        elif parts[:1] in (["ERR"], ["LAT"]):
            fields.update({k: int(v) for k, v in (p.split("=") for p in parts[1:])})
    if "requests" not in fields:
        return None
    return seconds, fields


def sleep_until(t):
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def run_once(args, proxy, backends, mode, rnd, lua):
    """Start the backends and the proxy, load it with wrk, kill and restart one backend."""
    run = {"round": rnd, "mode": mode, "target": proxy.name}
    t0 = None
    try:
        for b in backends:
            b.access_log.unlink(missing_ok=True)
            b.start()
        proxy.start()
        time.sleep(args.settle)
        t0 = math.ceil(time.time() + 0.2)  # a whole second, so that bucket N is second N of the run
        cmd = ["taskset", "-c", "0", tool("wrk"), f"-t{args.threads}", f"-c{args.connections}",
               f"-d{args.duration}s", f"--timeout={args.timeout}s", "--latency", "-s", str(lua)]
        if mode == FRESH:
            cmd += ["-H", "Connection: close"]
        cmd.append(f"http://127.0.0.1:{proxy.port}{args.path}")
        sleep_until(t0)
        wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            sleep_until(t0 + args.kill_at)
            backends[KILLED].kill()
            run["killed_at"] = time.time() - t0
            sleep_until(t0 + args.restart_at)
            backends[KILLED].start()
            run["restarted_at"] = time.time() - t0
            out, err = wrk.communicate(timeout=args.duration + 30)
        except BaseException:
            kill_group(wrk)
            raise
        if not proxy.alive():
            run["error"] = f"{proxy.name} exited with status {proxy.proc.returncode} during the run"
        parsed = parse_wrk(out, t0)
        if parsed is None:
            run["error"] = run.get("error") or f"wrk: {(err.strip().splitlines() or ['no output'])[-1][:160]}"
            return run
        seconds, fields = parsed
        run.update(fields)
        run["seconds"] = seconds
        run["backend_seconds"] = [b.per_second(t0) for b in backends]
    finally:
        proxy.stop()
        for b in backends:
            b.stop()
        run["events"] = [(None if t0 is None else t - t0, line) for t, line in proxy.lines]
    return run


def analyse(args, run):
    """Phase rates, errors and when the killed backend served again, for one run."""
    sec = run["seconds"]
    ok = [sec.get(s, {}).get("ok", 0) for s in range(args.duration)]

    def mean(lo, hi):
        return statistics.mean(ok[lo:hi]) if hi > lo else None
    run["before"] = mean(1, args.kill_at)
    run["during"] = mean(args.kill_at, args.restart_at)
    run["after"] = mean(args.restart_at, args.duration)
    run["worst"] = min(ok[args.kill_at:args.duration])
    run["socket_errors"] = sum(run[k] for k in ("connect", "read", "write", "timeout"))
    run["errors"] = run["socket_errors"] + run["status"]
    run["error_rate"] = run["errors"] / max(run["requests"] + run["socket_errors"], 1)
    back = run["backend_seconds"][KILLED]
    served = [s for s in back if s >= args.restart_at]
    run["back_at"] = min(served) if served else None
    return run


def describe(run):
    if "error" in run:
        return f"ERROR {run['error']}"
    kinds = ", ".join(f"{k} {run[k]}" for k in ("connect", "read", "write", "timeout", "status") if run[k])
    back = f"{run['back_at']} s" if run["back_at"] is not None else "never"
    return (f"{run['requests']:>7} answers, {run['errors']} errors{' (' + kinds + ')' if kinds else ''}; "
            f"req/s {run['before']:.0f} / {run['during']:.0f} / {run['after']:.0f}, worst second "
            f"{run['worst']}, p99 {run['p99'] / 1000:.1f} ms, max {run['max'] / 1000:.0f} ms; "
            f"killed backend served again at {back}")


# --- report ------------------------------------------------------------------------------

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec="{:.0f}"):
    return "–" if v is None else spec.format(v)


def report(args, runs, started, ember_note):
    lines = [f"`python3 benches/failover.py{args.argv}`, {started}, commit {commit()}{ember_note}. "
             f"{versions(None)}. {args.rounds} round(s); per run wrk -t{args.threads} -c{args.connections} "
             f"for {args.duration} s on GET {args.path}, backend b{KILLED + 1} of 3 killed (SIGKILL) at "
             f"{args.kill_at} s and restarted at {args.restart_at} s; wrk on core 0, the three nginx and the "
             f"proxy on core 1.", ""]
    lines += ["| mode | proxy | answered | errors | error rate | req/s before | req/s during | req/s after "
              "| worst second | p99 | max latency | killed backend serves again at |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode in args.modes:
        for name in args.targets:
            rs = [r for r in runs if r["mode"] == mode and r["target"] == name]
            good = [r for r in rs if "error" not in r]
            failed = len(rs) - len(good)
            if not good:
                lines.append(f"| {mode} | {name} | – | – | – | – | – | – | – | – | – | {failed} run(s) failed |")
                continue
            per_run = " + ".join(str(r["errors"]) for r in good)
            kinds = {}
            for r in good:
                for k in ("connect", "read", "write", "timeout", "status"):
                    kinds[k] = kinds.get(k, 0) + r[k]
            kinds = ", ".join(f"{'non-2xx' if k == 'status' else k} {n}" for k, n in kinds.items() if n)
            errors = sum(r["errors"] for r in good)
            rate = errors / max(sum(r["requests"] + r["socket_errors"] for r in good), 1)
            backs = [r["back_at"] for r in good]
            back = " / ".join("never" if b is None else f"{b} s" for b in backs)
            lines.append(
                f"| {mode} | {name} | {sum(r['requests'] for r in good):,} | {errors} "
                f"({per_run}{'; ' + kinds if kinds else ''}) | {rate:.3%} | {fmt(median([r['before'] for r in good]))} "
                f"| {fmt(median([r['during'] for r in good]))} | {fmt(median([r['after'] for r in good]))} "
                f"| {fmt(median([r['worst'] for r in good]))} | {fmt(median([r['p99'] / 1000 for r in good]), '{:.1f}')} ms "
                f"| {fmt(max(r['max'] for r in good) / 1000, '{:.0f}')} ms | {back}"
                f"{f' ({failed} run(s) failed)' if failed else ''} |")
    lines += ["", "answered and errors are sums over the rounds (errors per round in brackets); rates, worst "
              "second and p99 are medians over the rounds; max latency is the largest in any round; the last "
              "column is per round.", ""]
    # Per second, the median over the rounds of the answers that second.
    cols = [(m, n) for m in args.modes for n in args.targets]
    lines += ["Answers per second (median over the rounds):", "",
              "| second | " + " | ".join(f"{n}, {m}" for m, n in cols) + " |",
              "|---:|" + "---:|" * len(cols)]
    for s in range(args.duration):
        mark = " (kill)" if s == args.kill_at else " (restart)" if s == args.restart_at else ""
        cells = []
        for m, n in cols:
            vals = [r["seconds"].get(s, {}).get("ok", 0) for r in runs
                    if r["mode"] == m and r["target"] == n and "error" not in r]
            cells.append(fmt(median(vals)))
        lines.append(f"| {s}{mark} | " + " | ".join(cells) + " |")
    lines += ["", "Proxy log lines about backends (second of the run, first round of each mode):", ""]
    for mode in args.modes:
        for name in args.targets:
            first = next((r for r in runs if r["mode"] == mode and r["target"] == name), None)
            if not first:
                continue
            picked = [(t, l) for t, l in first["events"] if re.search(r"\b(DOWN|UP)\b|is (down|up)", l)]
            for t, l in picked[:6]:
                lines.append(f"- {name}, {mode}, {fmt(t, '{:.1f}')} s: `{l.strip()[:150]}`")
    return "\n".join(lines) + "\n"


def write_outputs(args, runs, markdown):
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    fields = ["round", "mode", "target", "requests", "errors", "error_rate", "connect", "read", "write", "timeout",
              "status", "before", "during", "after", "worst", "p50", "p99", "max", "back_at", "killed_at",
              "restarted_at", "error"]
    write_csv(out / "failover.csv", [{k: r.get(k) for k in fields} for r in runs], fields)
    rows = []
    for r in runs:
        if "error" in r:
            continue
        for s in range(args.duration):
            row = r["seconds"].get(s, {})
            rows.append({"round": r["round"], "mode": r["mode"], "target": r["target"], "second": s,
                         "sent": row.get("sent", 0), "answered": row.get("ok", 0), "non2xx": row.get("bad", 0),
                         **{f"b{i + 1}": b.get(s, 0) for i, b in enumerate(r["backend_seconds"])}})
    write_csv(out / "failover-seconds.csv", rows,
              ["round", "mode", "target", "second", "sent", "answered", "non2xx", "b1", "b2", "b3"])
    with open(out / "failover-events.log", "w") as f:
        for r in runs:
            f.write(f"== round {r['round']}, {r['mode']}, {r['target']}"
                    f"{': ' + r['error'] if 'error' in r else ''}\n")
            for t, line in r["events"]:
                f.write(f"{fmt(t, '{:7.3f}')} s  {line}\n")
    (out / "failover.md").write_text(markdown)
    return [out / n for n in ("failover.csv", "failover-seconds.csv", "failover-events.log", "failover.md")]


# --- main --------------------------------------------------------------------------------

def parse_args():
    doc = __doc__.split("\n", 1)
    ap = argparse.ArgumentParser(description=doc[0], epilog=doc[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, help="rounds; each runs every mode and proxy once (default 3; --quick: 1)")
    ap.add_argument("--duration", type=int, help="seconds per run (default 20; --quick: 8)")
    ap.add_argument("--kill-at", type=int, help="second at which a backend is killed (default 5; --quick: 2)")
    ap.add_argument("--restart-at", type=int, help="second at which it is started again (default 12; --quick: 5)")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--timeout", type=int, default=10,
                    help="wrk's request timeout in s; slower answers count as timeout errors (default 10)")
    ap.add_argument("--modes", default=f"{FRESH},{KEEPALIVE}", help=f"{FRESH} and/or {KEEPALIVE} (default both)")
    ap.add_argument("--targets", default=f"{EMBER},{HAPROXY}", help=f"{EMBER} and/or {HAPROXY} (default both)")
    ap.add_argument("--path", default="/small", help="what wrk fetches (default /small, 12 bytes)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds between starting a proxy and the load")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 8 s")
    ap.add_argument("--build", action="store_true", help="cargo build --release --bin ember-proxy first")
    ap.add_argument("--ember", help="the ember-proxy binary to run (default target/release/ember-proxy)")
    ap.add_argument("--ember-args", default="",
                    help="more ember-proxy flags, e.g. '--check --check-interval 2 --rise 2 --fall 3'")
    ap.add_argument("--out", type=Path, default=ROOT / "benches" / "results",
                    help="directory for failover.csv, failover-seconds.csv, failover-events.log, failover.md")
    args = ap.parse_args()
    args.argv = "".join(f" {a}" if re.fullmatch(r"[\w./,=-]+", a) else f" '{a}'" for a in sys.argv[1:])
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 3)
    args.duration = args.duration or (8 if quick else 20)
    args.kill_at = args.kill_at if args.kill_at is not None else (2 if quick else 5)
    args.restart_at = args.restart_at if args.restart_at is not None else (5 if quick else 12)
    if not 1 < args.kill_at < args.restart_at < args.duration:
        ap.error("need 1 < --kill-at < --restart-at < --duration")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if set(args.modes) - {FRESH, KEEPALIVE} or not args.modes:
        ap.error(f"--modes: {FRESH} and/or {KEEPALIVE}")
    if set(args.targets) - {EMBER, HAPROXY} or not args.targets:
        ap.error(f"--targets: {EMBER} and/or {HAPROXY}")
    return args


def ember_binary(args, workdir):
    """A private copy of the binary, so that a rebuild during the run changes nothing."""
    built = Path(args.ember) if args.ember else ROOT / "target" / "release" / "ember-proxy"
    if args.build or (not args.ember and not built.exists()):
        subprocess.run(["cargo", "build", "--release", "--bin", "ember-proxy"], cwd=ROOT, check=True)
    copy = workdir / "ember-proxy"
    shutil.copy2(built, copy)
    when = time.strftime("%H:%M UTC", time.gmtime(built.stat().st_mtime))
    extra = f" {args.ember_args}" if args.ember_args else ""
    return str(copy), f"; ember-proxy: {built} (built {when}) -b A,B,C{extra}"


def main():
    args = parse_args()
    ensure_tools(PACKAGES)
    workdir = Path(tempfile.mkdtemp(prefix="ember-failover-"))
    workdir.chmod(0o755)  # nginx workers do not run as root and must read the body
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks on SIGTERM too
    backends, proxies, runs = [], {}, []
    started = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())
    try:
        ember, ember_note = ember_binary(args, workdir)
        www = workdir / "www"
        www.mkdir()
        (www / "small").write_bytes(b"hello world\n")
        backends = [Backend(workdir, www, i, BASE_PORT + 1 + i) for i in range(3)]
        addrs = ",".join(f"127.0.0.1:{b.port}" for b in backends)
        proxies = {EMBER: Proxy(EMBER, BASE_PORT + 10, [ember, "-l", f"127.0.0.1:{BASE_PORT + 10}", "-b", addrs,
                                                          *shlex.split(args.ember_args)]),
                   HAPROXY: Proxy(HAPROXY, BASE_PORT + 11, haproxy_cmd(workdir, BASE_PORT + 11, backends))}
        lua = workdir / "failover.lua"
        lua.write_text(WRK_LUA)
        per_run = args.duration + args.settle + 2
        log(f"failover: {args.rounds} round(s) x {len(args.modes)} mode(s) x {len(args.targets)} proxies x "
            f"{args.duration} s = about {args.rounds * len(args.modes) * len(args.targets) * per_run / 60:.1f} min")
        for rnd in range(1, args.rounds + 1):
            for mode in args.modes:
                order = args.targets if rnd % 2 else args.targets[::-1]
                for name in order:
                    try:
                        run = run_once(args, proxies[name], backends, mode, rnd, lua)
                    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                        run = {"round": rnd, "mode": mode, "target": name, "error": str(e), "events": []}
                    if "error" not in run:
                        analyse(args, run)
                    runs.append(run)
                    log(f"round {rnd} {mode:10} {name:12} {describe(run)}")
    finally:
        for p in proxies.values():
            p.stop()
        for b in backends:
            b.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    markdown = report(args, runs, started, ember_note)
    print(markdown)
    for path in write_outputs(args, runs, markdown):
        log(f"wrote {path}")


if __name__ == "__main__":
    main()
