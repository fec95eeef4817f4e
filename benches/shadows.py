#!/usr/bin/env python3
"""Shadows never hurt production, measured (issue 12): the primary's throughput and latency
through ember-proxy with no shadow, a healthy one, a slow one, a blackholed one and a dead one.

What it measures
  Production is nginx (benches/proxies.py's start_nginx: one worker, keep-alive), GET
  /split/small (12 B, headers and body in two writes: nginx's default) unless --path.
  In front of it, ember-proxy `-r PROD --access-log off --admin ...`, with one shadow
  variant per row:

    (a)  no shadow: `-r` only. The baseline every row is held against.
    (a') the same command again, measured as if it were a variant: an A/A control that
         shows how far two identical rows drift apart on this machine.
    (b)  a healthy shadow: a second nginx, same files and settings as production.
    (c)  a shadow ten times slower: nginx with Debian's echo module
         (libnginx-mod-http-echo), `echo_sleep` then the same file (`echo_exec`), so its
         answers are byte for byte production's. The delay comes with each request
         (header X-Shadow-Delay, sent by wrk to every row of the cell alike; production
         ignores it): ten times production's p50 at that concurrency, measured directly
         on nginx before the rounds, rounded up to whole milliseconds (nginx's timers
         count milliseconds), at least 1 ms.
    (d)  a blackholed shadow: a Python listener (core 1) that accepts and never reads,
         holding every socket until the bench ends; default socket buffers.
    (e)  a dead shadow: a closed port on 127.0.0.1 (connects are refused).

  Sets of rows (--sets):
    ember-http   (b) `-d HEALTHY --compare --compare-log FILE`, (b0) `-d HEALTHY --http`
                 (the mirror without the comparison), (c) `-d SLOW --http`, (c+) `-d SLOW
                 --compare --compare-log FILE`, (d) `-d BLACKHOLE --http`, (e) `-d DEAD
                 --http`: whole requests mirrored on the shadow's own connections.
    ember-bytes  (b)-(e) with plain `-d` (byte mirroring on the client's session).
    nginx-mirror the peer: nginx (one worker, core 1) as the proxy, `proxy_pass` to
                 production with upstream keep-alive, and for (b)-(e) `mirror /m;` with
                 `location /m { internal; proxy_pass http://SHADOW$request_uri; }`
                 (keep-alive upstream, proxy_read_timeout 10s as ember's
                 --shadow-timeout). Its rows are held against its own (a).
  Envoy, teeproxy and goreplay are not in Debian and HAProxy 2.6 mirrors only through
  SPOE with contrib/spoa_mirror, which Debian does not package: nginx's mirror module is
  the one request-mirroring peer installable here.

How
  wrk --latency on core 0 (-t min(N,2) -c N, keep-alive; --fresh adds cells with a new
  connection per request); production nginx, the shadows, the blackhole and every proxy
  on core 1 (--shadow-cpus 0 moves the shadow servers to wrk's core). Each measurement starts its proxy fresh and stops it after, so no row's
  leftover work (a queue still draining, a proxy still busy) runs while another row is
  measured. Rounds rotate the order of the rows (as proxies.py does); medians over the
  rounds; "vs (a)" is the median of per-round ratios to (a) of the same round and cell.
  CPU per request is the proxy's whole process tree, user + system (/proc, kernel
  included), over the load, divided by the requests wrk got answered; production
  nginx's and the shadow server's CPU the same way. "shadow got" is the requests the shadow nginx read during
  the load (stub_status) over those answered. "CPU after" is the proxy's CPU in the
  0.5 s after the load stopped (a proxy with nothing left to do is at 0 %). ember's own
  counters come from its /metrics after the load: requests not mirrored (queue full),
  comparisons by verdict, shadow cut-offs and skips. Lines the proxy printed beyond its
  start-up banner are collected per row.

  The bar (issue 12): each of (b)-(e) within 5 % of (a) on throughput (vs (a) >= 95 %)
  and its median p99 within 5 % or 0.2 ms of (a)'s, whichever is larger.

Outputs
  Markdown on stdout and in --out (default benches/results/) shadows.md; shadows.csv
  has one row per set, variant and cell with the medians and the verdict (round
  "median") and one per measurement (round 1, 2, ...). Progress on stderr.

Usage
  benches/shadows.py                          # all sets, 3 rounds x 10 s: about 18 min
  benches/shadows.py --duration 5             # the same in about 10.5 min
  benches/shadows.py --sets ember-http --rounds 5
  benches/shadows.py --quick                  # 1 round of 2 s, a smoke run
Uses target/release/ember-proxy as it is (a private copy: a rebuild during the run
changes nothing); --build builds it first. Installs nginx-light, the echo module and wrk
with apt-get when missing.
"""

import argparse
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxies import (  # noqa: E402
    ROOT, WRK_REQUEST_TIMEOUT_S, Target, commit, ensure_tools, kill_group, log, parse_wrk, port_open,
    rotated, start_nginx, tool, tree_cpu, versions, wait_port, write_csv)

BASE_PORT = 18400  # production 18400, shadows 18401-18404 (+10: stub_status), proxies 18420+
PROD, HEALTHY, SLOW, BLACKHOLE, DEAD = (BASE_PORT + i for i in range(5))
PROXY_PORT = BASE_PORT + 20  # each row gets its own port from here; ember's admin is +100
PACKAGES = {"nginx": "nginx-light", "wrk": "wrk"}
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
DELAY_HEADER = "X-Shadow-Delay"
SETS = ("ember-http", "ember-bytes", "nginx-mirror")
KEEPALIVE, FRESH = "keep-alive", "fresh"
AFTER_LOAD_S = 0.5
BAR_RATIO, BAR_P99_REL, BAR_P99_ABS_US = 0.95, 1.05, 200.0

# The blackhole: accepts and never reads. Runs as its own process, pinned like a backend.
BLACKHOLE_PY = r"""
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(4096)
held = []
while True:
    conn, _ = s.accept()
    held.append(conn)  # never read, never closed
"""

# ember-proxy's start-up lines: everything else it prints during a row is worth a look.
BANNER = re.compile(r"listening on|admin on http|tcp_migrate_req")


# --- the servers -------------------------------------------------------------------------

def nginx_common(dirpath, body):
    return f"""
worker_processes 1;
daemon off;
pid {dirpath}/nginx.pid;
error_log {dirpath}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{body}
}}
"""


def start_shadow_nginx(workdir, www, name, port, slow, cpus):
    """The healthy or the slow shadow: production's files and settings, its own process
    (so that its CPU is its own), and stub_status on port + 10 (its request count)."""
    d = workdir / name
    d.mkdir()
    if slow:
        # Sleep, then serve the same file from an internal location: the answer is
        # production's, later. The delay rides on the request (DELAY_HEADER).
        locations = f"""
        location / {{ echo_sleep $shadow_delay; echo_exec @file; }}
        location @file {{ rewrite ^ /__files$uri last; }}
        location /__files/split/ {{ internal; alias {www}/; tcp_nopush off; default_type application/octet-stream; }}
        location /__files/ {{ internal; alias {www}/; default_type application/octet-stream; }}"""
        extra = f'    map $http_{DELAY_HEADER.lower().replace("-", "_")} $shadow_delay {{ "" 0.001; default $http_{DELAY_HEADER.lower().replace("-", "_")}; }}\n'
    else:
        locations = f"""
        location / {{ default_type application/octet-stream; }}
        location /split/ {{ alias {www}/; tcp_nopush off; default_type application/octet-stream; }}"""
        extra = ""
    body = f"""{extra}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        root {www};{locations}
    }}
    server {{ listen 127.0.0.1:{port + 10}; location / {{ stub_status; }} }}"""
    conf = d / "nginx.conf"
    conf.write_text(("load_module " + str(ECHO_MODULE) + ";\n" if slow else "") + nginx_common(d, body))
    proc = subprocess.Popen(["taskset", "-c", cpus, tool("nginx"), "-c", str(conf), "-p", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(port, proc=proc)
    return proc


def stub_requests(port):
    """nginx's stub_status request count (including this request), or None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port + 10}/", timeout=2) as r:
            text = r.read().decode()
        return int(text.splitlines()[2].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def start_blackhole(port, cpus):
    proc = subprocess.Popen(["taskset", "-c", cpus, sys.executable, "-c", BLACKHOLE_PY, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(port, proc=proc)
    return proc


def nginx_mirror_cmd(workdir, name, port, shadow):
    """The peer: nginx as the proxy, mirroring every request to `shadow` (None: no mirror)."""
    d = workdir / name
    d.mkdir()
    mirror = "mirror /__mirror;" if shadow else ""
    shadow_block = f"""
    upstream shadow {{ server 127.0.0.1:{shadow}; keepalive 64; }}""" if shadow else ""
    shadow_location = """
        location = /__mirror {
            internal;
            proxy_pass http://shadow$request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 10s;
            proxy_send_timeout 10s;
            proxy_read_timeout 10s;
        }""" if shadow else ""
    body = f"""
    upstream production {{ server 127.0.0.1:{PROD}; keepalive 64; }}{shadow_block}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            {mirror}
            proxy_pass http://production;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}{shadow_location}
    }}"""
    conf = d / "nginx.conf"
    conf.write_text(nginx_common(d, body))
    return [tool("nginx"), "-c", str(conf), "-p", str(d)], d / "error.log"


# --- the rows ----------------------------------------------------------------------------

class Row:
    """One variant: a proxy command (started fresh for each measurement) and its shadow."""

    def __init__(self, set_name, key, label, shadow, target, baseline, admin=None, errlog=None):
        self.set, self.key, self.label, self.shadow = set_name, key, label, shadow
        self.target, self.baseline, self.admin, self.errlog = target, baseline, admin, errlog
        self.notes = {}  # kind of line printed -> (count, an example), over all measurements

    @property
    def name(self):
        return f"{self.set} {self.key}"


SHADOW_LABEL = {None: "no shadow", HEALTHY: "healthy", SLOW: "10× slower", BLACKHOLE: "blackhole", DEAD: "dead"}


def build_rows(args, workdir, ember):
    rows, port = [], PROXY_PORT

    def ember_row(set_name, key, label, shadow, extra, baseline):
        nonlocal port
        p = port
        port += 1
        cmd = [ember, "-l", f"127.0.0.1:{p}", "-r", f"127.0.0.1:{PROD}", "--access-log", "off",
               "--admin", f"127.0.0.1:{p + 100}", *extra]
        rows.append(Row(set_name, key, label, shadow, Target(f"{set_name} {key}", p, cmd), baseline, admin=p + 100))

    def compare_log(key):
        return ["--compare-log", str(workdir / f"compare-{key}.log")]

    base = ("ember", "(a)")
    ember_row("ember", "(a)", "`-r` only", None, [], base)
    if args.control:
        ember_row("ember", "(a')", "`-r` only, again (A/A control)", None, [], base)
    if "ember-http" in args.sets:
        for key, label, shadow, extra in (
                ("(b)", "healthy, `--compare`", HEALTHY, ["--compare", *compare_log("b")]),
                ("(b0)", "healthy, `--http`", HEALTHY, ["--http"]),
                ("(c)", "10× slower, `--http`", SLOW, ["--http"]),
                ("(c+)", "10× slower, `--compare`", SLOW, ["--compare", *compare_log("c")]),
                ("(d)", "blackhole, `--http`", BLACKHOLE, ["--http"]),
                ("(e)", "dead, `--http`", DEAD, ["--http"])):
            ember_row("ember-http", key, label, shadow, ["-d", f"127.0.0.1:{shadow}", *extra], base)
    if "ember-bytes" in args.sets:
        for key, shadow in (("(b)", HEALTHY), ("(c)", SLOW), ("(d)", BLACKHOLE), ("(e)", DEAD)):
            ember_row("ember-bytes", key, f"{SHADOW_LABEL[shadow]}, plain `-d`", shadow,
                      ["-d", f"127.0.0.1:{shadow}"], base)
    if "nginx-mirror" in args.sets:
        nbase = ("nginx-mirror", "(a)")
        for key, shadow in (("(a)", None), ("(b)", HEALTHY), ("(c)", SLOW), ("(d)", BLACKHOLE), ("(e)", DEAD)):
            cmd, errlog = nginx_mirror_cmd(workdir, f"nginx-mirror-{key.strip('()')}", port, shadow)
            label = "`proxy_pass` only" if shadow is None else f"{SHADOW_LABEL[shadow]}, `mirror`"
            rows.append(Row("nginx-mirror", key, label, shadow, Target(f"nginx-mirror {key}", port, cmd), nbase,
                            errlog=errlog))
            port += 1
    return rows


# --- one measurement ---------------------------------------------------------------------

def run_wrk(port, path, duration, connections, fresh, delay_s):
    cmd = ["taskset", "-c", "0", tool("wrk"), f"-t{min(connections, 2)}", f"-c{connections}", f"-d{duration:g}s",
           f"--timeout={WRK_REQUEST_TIMEOUT_S}s", "--latency", "-H", f"{DELAY_HEADER}: {delay_s:g}"]
    if fresh:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        return {"error": "wrk did not finish"}
    if proc.returncode != 0:
        return {"error": f"wrk exited with status {proc.returncode}"}
    return parse_wrk(proc.stdout)


def ember_metrics(admin):
    """The counters of ember's /metrics this bench reports, summed over their labels."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = re.match(r"(ember_(?:mirror_skipped|compared|shadow_cutoffs|shadows_skipped)_total)(\{[^}]*\})?\s+(\S+)",
                     line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "ember_compared_total":
            verdict = re.search(r'verdict="([^"]+)"', labels)
            if value:
                out[f"compared {verdict.group(1) if verdict else '?'}"] = int(value)
        else:
            out[name[len("ember_"):-len("_total")]] = int(value)
    return out


def note_lines(row):
    """What the proxy printed beyond its banner in this measurement, counted into
    row.notes by kind (the line with its timestamp dropped and every number masked)."""
    for path in (row.target.logfile, row.errlog):
        if not path or not Path(path).exists():
            continue
        for line in Path(path).read_text(errors="replace").splitlines():
            line = line.strip()
            if not line or BANNER.search(line):
                continue
            line = re.sub(r"^\S*\d{4}[-/]\d\d[-/]\d\d[T ]\S+\s*", "", line)[:300]  # the timestamp
            kind = re.sub(r"\d+", "N", line)
            count, example = row.notes.get(kind, (0, line))
            row.notes[kind] = (count + 1, example)
        if path == row.errlog:
            Path(path).write_text("")  # nginx appends: the next measurement starts empty


def measure(row, args, workdir, servers, conns, fresh, delay_s):
    t = row.target
    if row.shadow == DEAD and port_open(DEAD):
        return {"error": f"port {DEAD} (the dead shadow) is open"}
    t.failed = None
    t.start(workdir)
    if t.failed:
        return {"error": t.failed}
    try:
        shadow_proc = servers.get(row.shadow)
        stub_before = stub_requests(row.shadow) if row.shadow in (HEALTHY, SLOW) else None
        shadow_before = tree_cpu(shadow_proc.pid) if shadow_proc else 0
        prod_before = tree_cpu(servers["prod"].pid)
        before = tree_cpu(t.pid)
        r = run_wrk(t.port, args.path, args.duration, conns, fresh, delay_s)
        after = tree_cpu(t.pid)
        prod_after = tree_cpu(servers["prod"].pid)
        shadow_after = tree_cpu(shadow_proc.pid) if shadow_proc else 0
        stub_after = stub_requests(row.shadow) if stub_before is not None else None
        time.sleep(AFTER_LOAD_S)
        idle = tree_cpu(t.pid) - after
        metrics = ember_metrics(row.admin) if row.admin else {}
        if not t.check_alive():
            return {"error": t.failed}
        if "error" in r:
            return r
        n = max(r["total"], 1)
        r["cpu_us"] = (after - before) / n * 1e6
        r["prod_cpu_us"] = (prod_after - prod_before) / n * 1e6
        r["shadow_cpu_us"] = (shadow_after - shadow_before) / n * 1e6 if shadow_proc else None
        r["shadow_got"] = (stub_after - stub_before - 1) / n if stub_after is not None and stub_before is not None else None
        r["cpu_after"] = idle / AFTER_LOAD_S
        r["metrics"] = metrics
        return r
    finally:
        t.stop()
        note_lines(row)


def calibrate(args, cells):
    """Production's own p50 per cell (wrk straight to nginx), and the slow shadow's delay:
    ten times that, rounded up to whole milliseconds, at least 1 ms."""
    direct, delays = {}, {}
    for mode, conns in cells:
        r = run_wrk(PROD, args.path, args.calibrate, conns, mode == FRESH, 0.001)
        direct[(mode, conns)] = r
        if args.slow_delay_ms is not None:
            delays[(mode, conns)] = args.slow_delay_ms / 1000
        elif "error" in r or not r.get("p50"):
            delays[(mode, conns)] = 0.010
            log(f"calibration at {mode} c={conns} failed ({r.get('error')}): slow shadow delay 10 ms")
        else:
            delays[(mode, conns)] = max(1, math.ceil(10 * r["p50"] / 1000)) / 1000
        log(f"production direct, {mode} c={conns}: {r.get('rps', 0):.0f} req/s, p50 {r.get('p50')} µs, "
            f"p99 {r.get('p99')} µs -> slow shadow delay {delays[(mode, conns)] * 1000:g} ms")
    return direct, delays


# --- summaries ---------------------------------------------------------------------------

def summarize(results, rows, cells):
    """{(row name, cell): summary}: medians over the rounds that worked, the median of
    per-round throughput ratios to the row's baseline, and the verdict against the bar."""
    by_name = {r.name: r for r in rows}
    out = {}
    for row in rows:
        base = by_name[" ".join(row.baseline)]
        for cell in cells:
            runs = results.get((row.name, cell), [])
            ok = [r for r in runs if "error" not in r]
            base_ok = {r["round"]: r for r in results.get((base.name, cell), []) if "error" not in r}
            med = lambda k, rs=ok: (statistics.median([r[k] for r in rs if r.get(k) is not None])  # noqa: E731
                                    if any(r.get(k) is not None for r in rs) else None)
            ratios = [r["rps"] / base_ok[r["round"]]["rps"] for r in ok if r["round"] in base_ok]
            s = {"n": len(ok), "rps": med("rps"), "p50": med("p50"), "p99": med("p99"), "cpu_us": med("cpu_us"),
                 "prod_cpu_us": med("prod_cpu_us"), "shadow_cpu_us": med("shadow_cpu_us"), "shadow_got": med("shadow_got"),
                 "cpu_after": med("cpu_after"), "ratio": statistics.median(ratios) if ratios else None,
                 "p99_min": min((r["p99"] for r in ok if r.get("p99")), default=None),
                 "p99_max": max((r["p99"] for r in ok if r.get("p99")), default=None)}
            counters = {}
            for r in ok:
                for k, v in r.get("metrics", {}).items():
                    counters.setdefault(k, []).append(v)
            s["counters"] = {k: statistics.median(v) for k, v in counters.items()}
            s["errors"] = "; ".join(f"round {r['round']}: {r.get('error') or r.get('wrk_errors')}"
                                    for r in runs if r.get("error") or r.get("wrk_errors"))
            base_p99 = med("p99", list(base_ok.values()))
            s["base_p99"] = base_p99
            if row is base:
                s["verdict"] = "baseline"
            elif s["ratio"] is None or s["p99"] is None or base_p99 is None:
                s["verdict"] = "not measured"
            else:
                allowed = max(base_p99 * BAR_P99_REL, base_p99 + BAR_P99_ABS_US)
                misses = [what for what, good in (("throughput", s["ratio"] >= BAR_RATIO),
                                                  ("p99", s["p99"] <= allowed)) if not good]
                s["verdict"] = "PASS" if not misses else "FAIL (" + ", ".join(misses) + ")"
                if s["errors"]:
                    s["verdict"] += "; wrk errors"
            out[(row.name, cell)] = s
    return out


def fmt(v, spec, missing="–"):
    return missing if v is None else format(v, spec)


def fmt_rps(v):
    return fmt(v, ".0f" if v is None or v >= 100 else ".2g")


def fmt_us(us):
    if us is None:
        return "–"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def counters_text(c):
    parts = []
    for k in sorted(c):
        v = c[k]
        if not v:
            continue
        name = {"mirror_skipped": "not mirrored (busy)", "shadow_cutoffs": "cut off",
                "shadows_skipped": "shadows skipped"}.get(k, k)
        parts.append(f"{name} {v:.0f}")
    return ", ".join(parts) or "–"


def table(rows, summary, set_names, cells):
    lines = ["| conns | row | shadow | req/s | vs (a) | p50 | p99 | proxy CPU µs/req | production CPU µs/req | "
             "shadow CPU µs/req | shadow got | CPU after | ember's counters | bar |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for cell in cells:
        for row in rows:
            if row.set not in set_names:
                continue
            s = summary.get((row.name, cell))
            if not s or not s["n"]:
                lines.append(f"| {cell[1]} | {row.key} | {row.label} | – | – | – | – | – | – | – | – | – | – | "
                             f"{(s or {}).get('errors') or row.target.failed or 'no result'} |")
                continue
            verdict = s["verdict"]
            if s["errors"]:
                verdict += f" ({s['errors']})"
            lines.append(
                f"| {cell[1]} | {row.key} | {row.label} | {fmt_rps(s['rps'])} | {fmt(s['ratio'], '.1%')} | "
                f"{fmt_us(s['p50'])} | {fmt_us(s['p99'])} | {fmt(s['cpu_us'], '.1f')} | {fmt(s['prod_cpu_us'], '.1f')} | "
                f"{fmt(s['shadow_cpu_us'], '.1f')} | {fmt(s['shadow_got'], '.0%')} | {fmt(s['cpu_after'], '.0%')} | "
                f"{counters_text(s['counters'])} | {verdict} |")
    return lines


def verdict_table(rows, summary, cells):
    """Each row against the bar, one column per cell: the verdict, vs (a), and p99 against (a)'s."""
    lines = ["| set | row | shadow | " + " | ".join(f"{m} c={c}" for m, c in cells) + " |",
             "|---|---|---|" + "---|" * len(cells)]
    for row in rows:
        if " ".join(row.baseline) == row.name:
            continue
        cols = []
        for cell in cells:
            s = summary.get((row.name, cell))
            if not s or s["ratio"] is None or s["p99"] is None or s["base_p99"] is None:
                cols.append("not measured")
                continue
            mark = "**PASS**" if s["verdict"].startswith("PASS") else "**FAIL**"
            wrk = "; wrk errors" if s["errors"] else ""
            cols.append(f"{mark} {s['ratio']:.0%}, p99 {fmt_us(s['p99'])} vs {fmt_us(s['base_p99'])}{wrk}")
        lines.append(f"| {row.set} | {row.key} | {row.label} | " + " | ".join(cols) + " |")
    return lines


def report(args, rows, summary, cells, direct, delays, started, loads, ember_note):
    md = [f"`python3 benches/shadows.py{args.cmdline}`: {args.rounds} round(s) × {args.duration:g} s per row and "
          f"cell, GET {args.path}, wrk -t min(N,2) -c N on core 0, production nginx and the proxy on core 1, "
          f"the shadow servers on core {args.shadow_cpus}. {started}{ember_note}; {versions(None)}.",
          f"Load average (1/5/15 min) before: {loads[0]}; after: {loads[1]}.\n",
          "Production direct (wrk straight to nginx, before the rounds) and the slow shadow's delay:\n",
          "| cell | req/s | p50 | p99 | slow shadow delay |", "|---|---:|---:|---:|---:|"]
    for cell in cells:
        r = direct.get(cell, {})
        md.append(f"| {cell[0]} c={cell[1]} | {fmt(r.get('rps'), '.0f')} | {fmt_us(r.get('p50'))} | "
                  f"{fmt_us(r.get('p99'))} | {delays[cell] * 1000:g} ms |")
    for mode in (KEEPALIVE, FRESH):
        mcells = [c for c in cells if c[0] == mode]
        if not mcells:
            continue
        label = "keep-alive" if mode == KEEPALIVE else "a new connection per request"
        for set_name, shown, title in (("ember-http", ("ember", "ember-http"), "ember-proxy, HTTP mirroring"),
                                       ("ember-bytes", ("ember", "ember-bytes"), "ember-proxy, byte mirroring"),
                                       ("nginx-mirror", ("nginx-mirror",), "the peer: nginx `mirror`")):
            if set_name in args.sets:
                md += [f"\n### {title}, {label}\n", "\n".join(table(rows, summary, shown, mcells))]
    md += ["\n### Against the bar (throughput vs (a); p99 against (a)'s)\n", "\n".join(verdict_table(rows, summary, cells))]
    noted = [row for row in rows if row.notes]
    if noted:
        md.append("\n### What the proxies printed beyond their start-up banner (all measurements)\n")
        for row in noted:
            md.append(f"- {row.name}:")
            kinds = sorted(row.notes.values(), key=lambda v: -v[0])
            for n, example in kinds[:6]:
                md.append(f"  - {n}× like `{example.replace('`', chr(39))}`")
            if len(kinds) > 6:
                md.append(f"  - and {len(kinds) - 6} other kind(s) of line")
    md.append("\nBar: vs (a) ≥ 95 % and p99 ≤ max(1.05 × p99 of (a), p99 of (a) + 0.2 ms), on the medians; "
              "(a') is (a) again, so its verdict is what this machine's noise alone does to the bar. "
              "The nginx-mirror rows are held against nginx's own (a).")
    return "\n".join(md) + "\n"


def csv_rows(rows, summary, results, cells):
    out = []
    for row in rows:
        for cell in cells:
            s = summary.get((row.name, cell))
            if s:
                out.append({"set": row.set, "row": row.key, "shadow": row.label, "mode": cell[0],
                            "concurrency": cell[1], "round": "median", "rps": s["rps"], "ratio_to_a": s["ratio"],
                            "p50_us": s["p50"], "p99_us": s["p99"], "proxy_cpu_us_per_req": s["cpu_us"],
                            "production_cpu_us_per_req": s["prod_cpu_us"],
                            "shadow_cpu_us_per_req": s["shadow_cpu_us"], "shadow_got": s["shadow_got"],
                            "proxy_cpu_after": s["cpu_after"], "counters": counters_text(s["counters"]),
                            "verdict": s["verdict"], "errors": s["errors"]})
            for r in results.get((row.name, cell), []):
                out.append({"set": row.set, "row": row.key, "shadow": row.label, "mode": cell[0],
                            "concurrency": cell[1], "round": r["round"], "rps": r.get("rps"), "ratio_to_a": None,
                            "p50_us": r.get("p50"), "p99_us": r.get("p99"), "proxy_cpu_us_per_req": r.get("cpu_us"),
                            "production_cpu_us_per_req": r.get("prod_cpu_us"),
                            "shadow_cpu_us_per_req": r.get("shadow_cpu_us"), "shadow_got": r.get("shadow_got"),
                            "proxy_cpu_after": r.get("cpu_after"), "counters": counters_text(r.get("metrics", {})),
                            "verdict": "", "errors": r.get("error") or r.get("wrk_errors", "")})
    return out


# --- main --------------------------------------------------------------------------------

def parse_args():
    doc = __doc__.split("\n", 1)
    ap = argparse.ArgumentParser(description=doc[0], epilog=doc[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, help="rounds (default 3; --quick: 1)")
    ap.add_argument("--duration", type=float, help="seconds per measurement (default 10; --quick: 2)")
    ap.add_argument("--concurrency", default="1,50", help="keep-alive connections per cell (default 1,50)")
    ap.add_argument("--fresh", default="", help="also cells with a new connection per request at these "
                                                "concurrencies, e.g. 50 (default none)")
    ap.add_argument("--sets", default=",".join(SETS), help=f"which rows besides (a): {', '.join(SETS)} (default all)")
    ap.add_argument("--no-control", dest="control", action="store_false", help="leave out the A/A control row (a')")
    ap.add_argument("--shadow-cpus", default="1", help="taskset's cores for the shadow servers (default 1, "
                                                        "with production; 0 puts them with wrk)")
    ap.add_argument("--path", default="/split/small", help="what wrk fetches (default /split/small)")
    ap.add_argument("--slow-delay-ms", type=float, help="the slow shadow's delay, instead of 10x production's p50")
    ap.add_argument("--calibrate", type=float, default=3, help="seconds of the direct run that sets the delay (default 3)")
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s: a smoke run")
    ap.add_argument("--build", action="store_true", help="cargo build --release --bin ember-proxy first")
    ap.add_argument("--ember", help="the ember-proxy binary (default target/release/ember-proxy)")
    ap.add_argument("--out", type=Path, default=ROOT / "benches" / "results")
    args = ap.parse_args()
    args.cmdline = "".join(f" {a}" for a in sys.argv[1:])
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 10)
    args.sets = [s for s in args.sets.split(",") if s]
    unknown = set(args.sets) - set(SETS)
    if unknown:
        ap.error(f"unknown sets: {', '.join(sorted(unknown))}")
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]  # noqa: E731
    args.cells = [(KEEPALIVE, c) for c in ints(args.concurrency)] + [(FRESH, c) for c in ints(args.fresh)]
    return args


def ember_binary(args, workdir):
    """A private copy of the binary, so that a rebuild during the run changes nothing."""
    built = Path(args.ember) if args.ember else ROOT / "target" / "release" / "ember-proxy"
    if args.build or not built.exists():
        subprocess.run(["cargo", "build", "--release", "--bin", "ember-proxy"], cwd=ROOT, check=True)
    copy = workdir / "ember-proxy"
    shutil.copy2(built, copy)
    return str(copy), f" (ember-proxy built {time.strftime('%H:%M UTC', time.gmtime(built.stat().st_mtime))})"


def loadavg():
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def main():
    args = parse_args()
    ensure_tools(PACKAGES)
    if not ECHO_MODULE.exists():
        log("installing with apt-get: libnginx-mod-http-echo")
        subprocess.run(["apt-get", "install", "-y", "-qq", "libnginx-mod-http-echo"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)
    workdir = Path(tempfile.mkdtemp(prefix="ember-shadows-"))
    workdir.chmod(0o755)  # nginx's workers are not root and read the files under it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ember, ember_note = ember_binary(args, workdir)
    ember_note = f", commit {commit()} when the run began{ember_note}"
    servers, results = {}, {}
    started = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())
    loads = [loadavg(), None]
    rows = []
    try:
        (workdir / "prod").mkdir()
        servers["prod"] = start_nginx(workdir / "prod", PROD)
        www = workdir / "prod" / "www"
        servers[HEALTHY] = start_shadow_nginx(workdir, www, "healthy", HEALTHY, False, args.shadow_cpus)
        servers[SLOW] = start_shadow_nginx(workdir, www, "slow", SLOW, True, args.shadow_cpus)
        servers[BLACKHOLE] = start_blackhole(BLACKHOLE, args.shadow_cpus)
        if port_open(DEAD):
            raise RuntimeError(f"port {DEAD} should be closed (the dead shadow) but something listens there")
        rows = build_rows(args, workdir, ember)
        direct, delays = calibrate(args, args.cells)
        eta = len(rows) * len(args.cells) * args.rounds * (args.duration + AFTER_LOAD_S + 0.4)
        log(f"{len(rows)} rows x {len(args.cells)} cells x {args.rounds} rounds x {args.duration:g} s: "
            f"about {eta / 60:.1f} min; load average {loads[0]}")
        stride = max(1, len(rows) // args.rounds)  # each round starts a third (of 3) further on
        for rnd in range(1, args.rounds + 1):
            for cell in args.cells:
                for row in rotated(rows, (rnd - 1) * stride):
                    r = measure(row, args, workdir, servers, cell[1], cell[0] == FRESH, delays[cell])
                    r["round"] = rnd
                    results.setdefault((row.name, cell), []).append(r)
                    if "error" in r:
                        log(f"round {rnd} {cell[0]} c={cell[1]:<3} {row.name:18} ERROR {r['error']}")
                    else:
                        errs = f"  [{r['wrk_errors']}]" if r.get("wrk_errors") else ""
                        log(f"round {rnd} {cell[0]} c={cell[1]:<3} {row.name:18} {r['rps']:>8.0f} req/s  "
                            f"p50 {r['p50']:.0f}us  p99 {r['p99']:.0f}us  cpu {r['cpu_us']:.1f}us/req  "
                            f"after {r['cpu_after']:.0%}  {counters_text(r['metrics'])}{errs}")
            log(f"end of round {rnd}: load average {loadavg()}")
    finally:
        for row in rows:
            row.target.stop()
        for p in servers.values():
            kill_group(p)
        shutil.rmtree(workdir, ignore_errors=True)
    loads[1] = loadavg()
    summary = summarize(results, rows, args.cells)
    markdown = report(args, rows, summary, args.cells, direct, delays, started, loads, ember_note)
    print(markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shadows.md").write_text(markdown)
    write_csv(args.out / "shadows.csv", csv_rows(rows, summary, results, args.cells),
              ["set", "row", "shadow", "mode", "concurrency", "round", "rps", "ratio_to_a", "p50_us", "p99_us",
               "proxy_cpu_us_per_req", "production_cpu_us_per_req", "shadow_cpu_us_per_req", "shadow_got", "proxy_cpu_after", "counters",
               "verdict", "errors"])
    log(f"wrote {args.out / 'shadows.md'} and {args.out / 'shadows.csv'}")


if __name__ == "__main__":
    main()
