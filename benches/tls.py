#!/usr/bin/env python3
"""TLS termination, side by side: ember-proxy (rustls, ring) and HAProxy (OpenSSL), each
terminating TLS in front of the same nginx, with the same certificate (ECDSA P-256, made
by openssl at run time), in the same run.

Three loads:
  - handshakes (wrk): a new connection per request (`Connection: close`), GET /small
    (12 B). wrk resumes its TLS sessions, so these are resumed handshakes (PSK with a
    fresh X25519 exchange, no certificate, no signature), as returning browsers make;
  - full handshakes (`openssl s_time -new`, 4 processes): a full handshake per connection
    (certificate, ECDSA P-256 signature, X25519) and nothing else, as new visitors make;
  - bulk (wrk): keep-alive, GET /large (1 MiB): MiB/s, and the proxy's CPU per MiB.
The proxy's CPU is its whole process tree's user + system time (/proc, kernel included),
divided by the work done. wrk runs on core 0, nginx and the proxy on core 1.

  python3 benches/tls.py [--rounds 3] [--duration 10] [--build] [--profile]

Writes benches/results/tls.md and tls.csv. With --profile, also samples each proxy with
`perf record` through one more handshake run and writes where its CPU went, by kind of
work, to benches/results/tls-profile.md.
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
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


FULL_CLIENTS = 4


def run_s_time(port, duration):
    """FULL_CLIENTS `openssl s_time -new` loops on core 0: full handshakes completed."""
    procs = [subprocess.Popen(["taskset", "-c", "0", tool("openssl"), "s_time", "-connect", f"127.0.0.1:{port}",
                               "-new", "-time", f"{max(int(duration), 1)}"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(FULL_CLIENTS)]
    total = 0
    for proc in procs:
        out = proc.communicate(timeout=duration + 60)[0]
        m = re.search(r"(\d+) connections in [\d.]+ real seconds", out) or \
            re.search(r"(\d+) connections in", out)
        if proc.returncode != 0 or not m:
            return {"error": f"openssl s_time: {out.strip()[-200:]}"}
        total += int(m.group(1))
    return {"total": total}


def measure_full(t, duration):
    if not t.check_alive():
        return None
    before, start = tree_cpu(t.pid), time.monotonic()
    r = run_s_time(t.port, duration)
    if "error" in r:
        return r
    elapsed = time.monotonic() - start
    r["rate"] = r["total"] / elapsed
    r["cpu_us_per_full"] = (tree_cpu(t.pid) - before) / max(r["total"], 1) * 1e6
    return r


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


# Where a handshake's CPU goes, by the symbol (or object) a sample landed in. First match
# wins; the kernel's share is everything in [kernel.kallsyms].
KINDS = (
    ("ECDSA P-256 signature", re.compile(r"p256|nistz256|ecdsa|ec_GFp|ecp_|bn_|BN_", re.I)),
    ("X25519 key exchange", re.compile(r"x25519|25519|fiat_", re.I)),
    ("hashing, HKDF, AEAD", re.compile(r"sha256|sha512|sha2|sha3|hmac|hkdf|aes|gcm|ghash|chacha|poly1305|"
                                       r"keccak|md_", re.I)),
    ("TLS library (state machine, records, buffers)", re.compile(r"rustls|ssl|tls|SSL|EVP_|ERR_|OSSL|ossl|"
                                                                  r"CRYPTO_|ASN1|asn1|X509|x509|OPENSSL", re.I)),
    ("memory (malloc, free, memcpy, memmove)", re.compile(r"malloc|free|memcpy|memmove|memset|realloc|calloc|"
                                                          r"_int_|alloc::", re.I)),
)


def perf_profile(pid, port, duration, workdir, name, full):
    """Samples `pid` with perf while clients make handshakes (full ones with s_time, or
    wrk's resumed ones); returns ({kind: share}, top symbols)."""
    data = workdir / f"perf-{name}.data"
    rec = subprocess.Popen([tool("perf"), "record", "-F", "1999", "-q", "-o", str(data), "-p", str(pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if full:
        run_s_time(port, duration)
    else:
        run_wrk_https(port, "/small", duration, LOADS[0][2], True)
    rec.send_signal(2)
    rec.wait(timeout=60)
    rep = subprocess.run([tool("perf"), "report", "-i", str(data), "--no-children", "--sort", "dso,symbol",
                          "--stdio", "-q", "--percent-limit", "0"], capture_output=True, text=True)
    shares, top = {}, []
    for line in rep.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)$", line)
        if not m:
            continue
        pct, dso = float(m.group(1)), m.group(2)
        sym = re.sub(r"\s+-\s+-\s*$", "", m.group(3)).strip()
        if dso == "[kernel.kallsyms]":
            kind = "kernel (TCP, accept, epoll, the syscalls)"
        elif "libcrypto" in dso or "libssl" in dso:
            kind = "OpenSSL (stripped: all its work)"
        else:
            kind = next((k for k, pat in KINDS if pat.search(sym) or pat.search(dso)), "other (reactor, proxy, libc)")
        shares[kind] = shares.get(kind, 0.0) + pct
        if len(top) < 12:
            top.append((pct, dso, sym[:90]))
    return shares, top


def write_profile(out, profiles, duration):
    lines = [f"`python3 benches/tls.py --profile`, commit {commit()}: `perf record -F 1999 -p PID` over one "
             f"{duration:g} s run of each handshake load (resumed: wrk, a new connection per request; full: "
             "`openssl s_time -new`; ECDSA P-256, TLS 1.3), share of the proxy's samples by kind of work "
             "(kernel included). Only ember-proxy's binary has symbols; Debian's HAProxy and libcrypto are "
             "stripped, so their rows are by object only (see the top symbols).\n"]
    kinds = [k for k, _ in KINDS] + ["OpenSSL (stripped: all its work)", "kernel (TCP, accept, epoll, the syscalls)",
                                     "other (reactor, proxy, libc)"]
    names = list(profiles)
    lines.append("| where | " + " | ".join(names) + " |")
    lines.append("|---|" + "---:|" * len(names))
    for k in kinds:
        lines.append(f"| {k} | " + " | ".join(f"{profiles[n][0].get(k, 0.0):.1f} %" for n in names) + " |")
    for n in names:
        lines.append(f"\nTop symbols, {n}:\n")
        lines.append("| share | object | symbol |")
        lines.append("|---:|---|---|")
        for pct, dso, sym in profiles[n][1]:
            lines.append(f"| {pct:.1f} % | {dso} | `{sym}` |")
    (out / "tls-profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--build", action="store_true", help="cargo build --release --bin ember-proxy first")
    ap.add_argument("--ember", default=str(ROOT / "target" / "release" / "ember-proxy"))
    ap.add_argument("--out", type=Path, default=ROOT / "benches" / "results")
    ap.add_argument("--profile", action="store_true",
                    help="also sample each proxy with perf during a handshake run (tls-profile.md)")
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
        results, profiles = {}, {}
        try:
            if args.profile:
                for full in (False, True):
                    for t in targets:
                        label = f"{t.name}, {'full' if full else 'resumed'}"
                        profiles[label] = perf_profile(t.pid, t.port, args.duration, workdir, t.name, full)
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
                for t in rotated(targets, rnd - 1):
                    r = measure_full(t, args.duration)
                    if r is None:
                        continue
                    results.setdefault(("full", t.name), []).append(r)
                    if "error" in r:
                        log(f"round {rnd} full       {t.name:12} ERROR {r['error']}")
                    else:
                        log(f"round {rnd} full       {t.name:12} {r['rate']:8.0f} /s  "
                            f"{r['cpu_us_per_full']:.0f} us CPU each")
        finally:
            for t in targets:
                t.stop()
            kill_group(nginx)
    rows, lines = [], []
    lines.append(f"`python3 benches/tls.py --rounds {args.rounds} --duration {args.duration:g}`, commit "
                 f"{commit()}; {versions(None)}. Medians over the rounds; wrk on core 0, nginx and the "
                 "proxy on core 1; ECDSA P-256 certificate, TLS 1.3 negotiated by wrk (OpenSSL).\n")
    lines.append("| proxy | resumed handshakes/s (wrk, new connection per request) | CPU µs each | p99 | "
                 "full handshakes/s (s_time -new) | CPU µs each | "
                 "bulk MiB/s (keep-alive, 1 MiB answers) | CPU ms per MiB | p99 |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        ok = lambda load: [r for r in results.get((load, t.name), []) if "error" not in r]  # noqa: E731
        hs, full, bulk = ok("handshakes"), ok("full"), ok("bulk")
        med = lambda rs, k: statistics.median(r[k] for r in rs) if rs else None  # noqa: E731
        row = {"proxy": t.name, "handshakes_s": med(hs, "rps"), "cpu_us_handshake": med(hs, "cpu_us_per_handshake"),
               "handshake_p99_us": med(hs, "p99"), "full_s": med(full, "rate"),
               "cpu_us_full": med(full, "cpu_us_per_full"), "bulk_mib_s": med(bulk, "mib_s"),
               "cpu_ms_mib": med(bulk, "cpu_ms_per_mib"), "bulk_p99_us": med(bulk, "p99")}
        rows.append(row)
        f = lambda v, spec: format(v, spec) if v is not None else "–"  # noqa: E731
        lines.append(f"| {t.name} | {f(row['handshakes_s'], '.0f')} | {f(row['cpu_us_handshake'], '.0f')} | "
                     f"{f(row['handshake_p99_us'], '.0f')} µs | {f(row['full_s'], '.0f')} | "
                     f"{f(row['cpu_us_full'], '.0f')} | {f(row['bulk_mib_s'], '.0f')} | "
                     f"{f(row['cpu_ms_mib'], '.2f')} | {f(row['bulk_p99_us'], '.0f')} µs |")
    args.out.mkdir(parents=True, exist_ok=True)
    if profiles:
        write_profile(args.out, profiles, args.duration)
    (args.out / "tls.md").write_text("\n".join(lines) + "\n")
    write_csv(args.out / "tls.csv", rows, list(rows[0].keys()))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
