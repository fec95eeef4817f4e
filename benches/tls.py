#!/usr/bin/env python3
"""TLS termination, side by side: ember-proxy (rustls, ring) and HAProxy (OpenSSL), each
terminating TLS in front of the same nginx, with the same certificate (ECDSA P-256, made
by openssl at run time), in the same run.

Two loads, each with wrk over https:
  - handshakes: a new connection per request (`Connection: close`), GET /small (12 B):
    requests per second are full TLS handshakes per second;
  - bulk: keep-alive, GET /large (1 MiB): MiB/s, and the proxy's CPU per MiB.
The proxy's CPU is its whole process tree's user + system time (/proc, kernel included),
divided by the work done. wrk runs on core 0, nginx and the proxy on core 1.

  python3 benches/tls.py [--rounds 3] [--duration 10] [--build]

Writes benches/results/tls.md and tls.csv.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxies import (  # noqa: E402
    ROOT, Target, commit, ensure_tools, kill_group, log, parse_wrk, rotated, start_nginx, tool,
    tree_cpu, versions, write_csv)

BASE_PORT = 18700
LOADS = (
    # name, path, connections, fresh
    ("handshakes", "/small", 32, True),
    ("bulk", "/large", 8, False),
)


def certificate(workdir):
    """A self-signed ECDSA P-256 certificate for localhost: (cert, key, combined for HAProxy)."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run([tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-days", "2"],
                   check=True, capture_output=True)
    combined = workdir / "combined.pem"
    combined.write_text(cert.read_text() + key.read_text())
    return cert, key, combined


def haproxy_tls(workdir, port, backend, combined):
    conf = workdir / "haproxy-tls.cfg"
    conf.write_text(f"""
global
    maxconn 4000
    nbthread 1
    tune.ssl.default-dh-param 2048
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:{port} ssl crt {combined}
    default_backend be
backend be
    server s1 127.0.0.1:{backend}
""")
    return [tool("haproxy"), "-db", "-f", str(conf)]


def run_wrk_https(port, path, duration, connections, fresh):
    cmd = ["taskset", "-c", "0", tool("wrk"), "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout=10s",
           "--latency"]
    if fresh:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"https://localhost:{port}{path}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    if proc.returncode != 0:
        return {"error": f"wrk exited with status {proc.returncode}"}
    return parse_wrk(proc.stdout)


def measure(t, load, duration):
    name, path, connections, fresh = load
    if not t.check_alive():
        return None
    before = tree_cpu(t.pid)
    r = run_wrk_https(t.port, path, duration, connections, fresh)
    if "error" in r:
        return r
    if r.get("wrk_errors") and "non-2xx" in r["wrk_errors"]:
        return {"error": f"wrk: {r['wrk_errors']}"}
    cpu = tree_cpu(t.pid) - before
    if name == "bulk":
        mib = r["total"]  # one 1 MiB answer per request
        r["mib_s"] = mib / duration
        r["cpu_ms_per_mib"] = cpu / max(mib, 1) * 1e3
    else:
        r["cpu_us_per_handshake"] = cpu / max(r["total"], 1) * 1e6
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--build", action="store_true", help="cargo build --release --bin ember-proxy first")
    ap.add_argument("--ember", default=str(ROOT / "target" / "release" / "ember-proxy"))
    ap.add_argument("--out", type=Path, default=ROOT / "benches" / "results")
    args = ap.parse_args()
    ensure_tools()
    if args.build:
        subprocess.run(["cargo", "build", "--release", "--bin", "ember-proxy"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory(prefix="ember-tls-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # nginx's worker (not root) reads the files under it
        backend = BASE_PORT
        nginx = start_nginx(workdir, backend)
        cert, key, combined = certificate(workdir)
        targets = [
            Target("ember-proxy", BASE_PORT + 1,
                   [args.ember, "-l", f"127.0.0.1:{BASE_PORT + 1}", "-r", f"127.0.0.1:{backend}",
                    "--tls-cert", str(cert), "--tls-key", str(key), "--access-log", "off"]),
            Target("haproxy", BASE_PORT + 2, haproxy_tls(workdir, BASE_PORT + 2, backend, combined)),
        ]
        for t in targets:
            t.start(workdir)
        results = {}
        try:
            for rnd in range(1, args.rounds + 1):
                for load in LOADS:
                    for t in rotated(targets, rnd - 1):
                        r = measure(t, load, args.duration)
                        if r is None:
                            continue
                        results.setdefault((load[0], t.name), []).append(r)
                        if "error" in r:
                            log(f"round {rnd} {load[0]:10} {t.name:12} ERROR {r['error']}")
                        elif load[0] == "bulk":
                            log(f"round {rnd} bulk       {t.name:12} {r['mib_s']:8.0f} MiB/s  "
                                f"{r['cpu_ms_per_mib']:.2f} ms CPU/MiB  p99 {r['p99']:.0f}us")
                        else:
                            log(f"round {rnd} handshakes {t.name:12} {r['rps']:8.0f} /s  "
                                f"{r['cpu_us_per_handshake']:.0f} us CPU each  p99 {r['p99']:.0f}us")
        finally:
            for t in targets:
                t.stop()
            kill_group(nginx)
    rows, lines = [], []
    lines.append(f"`python3 benches/tls.py --rounds {args.rounds} --duration {args.duration:g}`, commit "
                 f"{commit()}; {versions(None)}. Medians over the rounds; wrk on core 0, nginx and the "
                 "proxy on core 1; ECDSA P-256 certificate, TLS 1.3 negotiated by wrk (OpenSSL).\n")
    lines.append("| proxy | handshakes/s (new connection per request) | CPU µs per handshake | p99 | "
                 "bulk MiB/s (keep-alive, 1 MiB answers) | CPU ms per MiB | p99 |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        hs = [r for r in results.get(("handshakes", t.name), []) if "error" not in r]
        bulk = [r for r in results.get(("bulk", t.name), []) if "error" not in r]
        med = lambda rs, k: statistics.median(r[k] for r in rs) if rs else None  # noqa: E731
        row = {"proxy": t.name, "handshakes_s": med(hs, "rps"), "cpu_us_handshake": med(hs, "cpu_us_per_handshake"),
               "handshake_p99_us": med(hs, "p99"), "bulk_mib_s": med(bulk, "mib_s"),
               "cpu_ms_mib": med(bulk, "cpu_ms_per_mib"), "bulk_p99_us": med(bulk, "p99")}
        rows.append(row)
        f = lambda v, spec: format(v, spec) if v is not None else "–"  # noqa: E731
        lines.append(f"| {t.name} | {f(row['handshakes_s'], '.0f')} | {f(row['cpu_us_handshake'], '.0f')} | "
                     f"{f(row['handshake_p99_us'], '.0f')} µs | {f(row['bulk_mib_s'], '.0f')} | "
                     f"{f(row['cpu_ms_mib'], '.2f')} | {f(row['bulk_p99_us'], '.0f')} µs |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tls.md").write_text("\n".join(lines) + "\n")
    write_csv(args.out / "tls.csv", rows, list(rows[0].keys()))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
