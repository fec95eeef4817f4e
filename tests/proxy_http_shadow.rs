//! `ember-proxy --http` and `--compare` as a user runs them: production and a candidate
//! ([`HttpApp`]s), clients sending real HTTP/1.1 through the proxy, and the compare log
//! read back line by line. Pairing must hold whatever the shadow does: pipelined
//! requests, a shadow slower than production, a shadow that closes after each response,
//! chunked bodies, `Expect: 100-continue`, `HEAD`.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::IO_TIMEOUT;
use support::child::{Child, EmberProxy};
use support::clients::{connect, fresh_dir, lines_of, wait_until};
use support::http_app::{Behaviour, Gate, HttpApp};
use support::toxics::{Toxic, ToxicProxy};

/// The compare log's lines, parsed.
fn compared(log: &Path) -> Vec<Value> {
    lines_of(log)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits until the compare log has `n` lines; returns them. On a timeout, the panic shows
/// the lines that did come and the proxy's stderr.
fn wait_compared(log: &Path, n: usize, proxy: &Child) -> Vec<Value> {
    let deadline = Instant::now() + IO_TIMEOUT;
    while lines_of(log).len() < n && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    let lines = lines_of(log);
    assert_eq!(
        lines.len(),
        n,
        "{n} compare-log lines expected within {IO_TIMEOUT:?}; found:\n{}\nproxy stderr:\n{}",
        lines.join("\n"),
        proxy.stderr()
    );
    compared(log)
}

/// Reads one HTTP/1.1 response with a Content-Length or chunked body from `s`; returns
/// its status line and decoded body.
fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("a response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.lines().next().unwrap().to_owned();
    if status.contains(" 100 ") {
        return read_response(s);
    }
    let header = |name: &str| {
        head.lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .map(|l| l.split_once(':').unwrap().1.trim().to_owned())
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length") {
        body.resize(len.parse().unwrap(), 0);
        s.read_exact(&mut body).unwrap();
    } else if header("transfer-encoding").is_some() {
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                s.read_exact(&mut byte).unwrap();
                line.push(byte[0]);
            }
            let size = std::str::from_utf8(&line).unwrap().trim();
            let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                let mut rest = Vec::new();
                while !rest.ends_with(b"\r\n\r\n") && rest != b"\r\n" {
                    s.read_exact(&mut byte).unwrap();
                    rest.push(byte[0]);
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            s.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..size]);
        }
    }
    (status, body)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: prod.test\r\n\r\n")
}

fn proxy(prod: SocketAddr, shadow: SocketAddr, log: &Path, extra: &[&str]) -> EmberProxy {
    let mut args = vec![
        "-r".to_owned(),
        prod.to_string(),
        "-d".to_owned(),
        shadow.to_string(),
        "--compare".to_owned(),
        "--compare-log".to_owned(),
        log.display().to_string(),
        "--access-log".to_owned(),
        "off".to_owned(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    EmberProxy::start(&args)
}

#[test]
fn pipelined_requests_pair_with_a_slow_shadow_that_closes_after_each_response() {
    let prod = HttpApp::start(Behaviour::default());
    let shadow = HttpApp::start(Behaviour {
        delay: Duration::from_millis(20),
        close_after_each: true,
        chunked: true,
        regress: Some("/orders"),
        ..Behaviour::default()
    });
    let dir = fresh_dir("http-shadow", "pipelined");
    let log = dir.join("compare.log");
    // `n` counts requests per connection: the shadow's connections carry one each.
    let proxy = proxy(
        prod.addr,
        shadow.addr,
        &log,
        &["--compare-ignore-json", "$.n"],
    );
    // Three requests in one write, then a HEAD and a POST with 100-continue on the same
    // keep-alive connection.
    let mut s = connect(proxy.addr);
    let pipelined = format!("{}{}{}", get("/users/1"), get("/orders/2"), get("/users/3"));
    s.write_all(pipelined.as_bytes()).unwrap();
    for want in ["/users/1", "/orders/2", "/users/3"] {
        let (status, body) = read_response(&mut s);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body["path"], want,
            "the client's answers come from production, in order"
        );
    }
    s.write_all(b"HEAD /users/4 HTTP/1.1\r\nHost: prod.test\r\n\r\n")
        .unwrap();
    let (status, body) = read_response_head_only(&mut s);
    assert!(status.starts_with("HTTP/1.1 200") && body.is_empty());
    s.write_all(
        b"POST /users/5 HTTP/1.1\r\nHost: prod.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    )
    .unwrap();
    let (status, _) = read_response(&mut s);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let lines = wait_compared(&log, 5, &proxy.child);
    let by_path = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no line for {path}: {lines:?}"))
    };
    // Chunked against content-length, slow, closing: all the same but the regression.
    for path in ["/users/1", "/users/3", "/users/4", "/users/5"] {
        assert_eq!(
            by_path(path)["verdict"],
            "same",
            "{path}: {}",
            by_path(path)
        );
    }
    let orders = by_path("/orders/2");
    assert_eq!(orders["verdict"], "body", "{orders}");
    assert_eq!(orders["diff"]["json_path"], "$.user.email", "{orders}");
    assert_eq!(by_path("/users/4")["method"], "HEAD");
    assert_eq!(by_path("/users/5")["method"], "POST");
    // Each request index is its place on the client's connection.
    let mut requests: Vec<u64> = lines
        .iter()
        .map(|l| l["request"].as_u64().unwrap())
        .collect();
    requests.sort_unstable();
    assert_eq!(requests, [1, 2, 3, 4, 5]);
    // The shadow saw every request, whole, each on a connection it then closed.
    wait_until("the shadow's five requests", IO_TIMEOUT, || {
        shadow.requests().len() == 5
    });
    let post = shadow
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    assert_eq!(post.body, b"hello");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A response to HEAD: its head only.
fn read_response_head_only(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    (head.lines().next().unwrap().to_owned(), Vec::new())
}

#[test]
fn a_noisy_header_is_noise_with_a_reference_and_ignored_json_paths_are_the_same() {
    let prod = HttpApp::start(Behaviour {
        random_header: true,
        ..Behaviour::default()
    });
    let reference = HttpApp::start(Behaviour {
        random_header: true,
        ..Behaviour::default()
    });
    let shadow = HttpApp::start(Behaviour {
        random_header: true,
        regress: Some("/orders"),
        ..Behaviour::default()
    });
    let dir = fresh_dir("http-shadow", "noise");
    let log = dir.join("compare.log");
    let reference_addr = reference.addr.to_string();
    let mut proxy = proxy(
        prod.addr,
        shadow.addr,
        &log,
        &[
            "--reference",
            &reference_addr,
            "--compare-ignore-json",
            "$.user.email",
            // `n` counts requests per connection: a mirror may open a second one.
            "--compare-ignore-json",
            "$.n",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let admin = proxy.child.admin_addr(IO_TIMEOUT);
    let mut s = connect(proxy.addr);
    for path in ["/users/1", "/orders/2"] {
        s.write_all(get(path).as_bytes()).unwrap();
        read_response(&mut s);
    }
    let lines = wait_compared(&log, 2, &proxy.child);
    for line in &lines {
        // X-Random differs everywhere, production against its reference too: noise. The
        // email differs on /orders, but that path is ignored.
        assert_eq!(line["verdict"], "noise", "{line}");
        assert_eq!(line["noise_of"], "header", "{line}");
        assert_eq!(line["diff"]["header"], "x-random", "{line}");
    }
    // /metrics counts them by verdict.
    let (_, metrics) = support::clients::http_get(admin, "/metrics");
    let samples = support::clients::prometheus_samples(&metrics);
    assert_eq!(
        samples["ember_compared_total{verdict=\"noise\"}"], 2.0,
        "{metrics}"
    );
    assert_eq!(
        samples["ember_compared_total{verdict=\"same\"}"], 0.0,
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tenth_of_ten_thousand_requests_is_mirrored() {
    let prod = HttpApp::start(Behaviour::default());
    let shadow = HttpApp::start(Behaviour::default());
    let dir = fresh_dir("http-shadow", "sample");
    let log = dir.join("compare.log");
    let proxy = proxy(prod.addr, shadow.addr, &log, &["--shadow-sample", "0.1"]);
    let mut s = connect(proxy.addr);
    for i in 0..10_000 {
        s.write_all(get(&format!("/users/{i}")).as_bytes()).unwrap();
        read_response(&mut s);
    }
    // Binomial(10,000, 0.1): 1,000 ± 30; five sigmas either way.
    wait_until("the mirrored requests to be compared", IO_TIMEOUT, || {
        let n = lines_of(&log).len();
        n >= 850 && n == shadow.requests().len()
    });
    let n = shadow.requests().len();
    assert!((850..=1150).contains(&n), "{n} of 10,000 mirrored");
    assert_eq!(prod.requests().len(), 10_000);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_dead_or_blackholed_shadow_costs_production_nothing_and_is_reported() {
    let prod = HttpApp::start(Behaviour::default());
    let blackhole = HttpApp::start(Behaviour {
        blackhole: true,
        ..Behaviour::default()
    });
    let dir = fresh_dir("http-shadow", "blackhole");
    let log = dir.join("compare.log");
    let proxy = proxy(
        prod.addr,
        blackhole.addr,
        &log,
        &["--shadow-timeout", "0.5"],
    );
    let mut s = connect(proxy.addr);
    for i in 0..20 {
        s.write_all(get(&format!("/users/{i}")).as_bytes()).unwrap();
        let (status, _) = read_response(&mut s);
        assert!(status.starts_with("HTTP/1.1 200"));
    }
    let lines = wait_compared(&log, 20, &proxy.child);
    for line in &lines {
        assert_eq!(line["verdict"], "shadow_error", "{line}");
    }
    assert!(
        lines.iter().any(|l| l["shadow"]["error"] == "timeout"),
        "{lines:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// User + system CPU time of process `pid` so far.
fn cpu_of(pid: libc::pid_t) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) and its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

#[test]
fn a_dead_shadow_is_reported_refused_and_not_retried_in_a_loop() {
    let prod = HttpApp::start(Behaviour::default());
    let dead = support::clients::closed_port();
    let dir = fresh_dir("http-shadow", "dead");
    let log = dir.join("compare.log");
    let proxy = proxy(prod.addr, dead, &log, &[]);
    let mut s = connect(proxy.addr);
    for i in 0..20 {
        s.write_all(get(&format!("/users/{i}")).as_bytes()).unwrap();
        let (status, _) = read_response(&mut s);
        assert!(status.starts_with("HTTP/1.1 200"));
    }
    let lines = wait_compared(&log, 20, &proxy.child);
    for line in &lines {
        assert_eq!(line["verdict"], "shadow_error", "{line}");
        assert_eq!(line["shadow"]["error"], "refused", "{line}");
    }
    // Said once, not once per request (the log line is written off the reactor thread,
    // so it may follow the compare log's lines).
    wait_until("the unreachable shadow's log line", IO_TIMEOUT, || {
        proxy.child.stderr().contains("unreachable (refused)")
    });
    let stderr = proxy.child.stderr();
    assert_eq!(
        stderr.matches("unreachable (refused)").count(),
        1,
        "{stderr}"
    );
    // Nothing left to do: a proxy that kept reconnecting to the dead shadow would burn
    // its core. Half a second of quiet costs it next to nothing.
    let before = cpu_of(proxy.child.pid());
    std::thread::sleep(Duration::from_millis(500));
    let spent = cpu_of(proxy.child.pid()) - before;
    assert!(
        spent < Duration::from_millis(100),
        "{spent:?} of CPU while idle"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_shadow_gets_the_rewritten_host_and_the_marker_header_and_only_the_chosen_methods() {
    let prod = HttpApp::start(Behaviour::default());
    let shadow = HttpApp::start(Behaviour::default());
    let proxy = EmberProxy::start(&[
        "-r",
        &prod.addr.to_string(),
        "-d",
        &shadow.addr.to_string(),
        "--http",
        "--shadow-host",
        "staging.test",
        "--shadow-header",
        "X-Shadow: 1",
        "--shadow-methods",
        "GET",
        "--access-log",
        "off",
    ]);
    let mut s = connect(proxy.addr);
    s.write_all(get("/users/1").as_bytes()).unwrap();
    read_response(&mut s);
    s.write_all(b"DELETE /users/2 HTTP/1.1\r\nHost: prod.test\r\n\r\n")
        .unwrap();
    read_response(&mut s);
    s.write_all(get("/users/3").as_bytes()).unwrap();
    read_response(&mut s);
    wait_until("two mirrored GETs", IO_TIMEOUT, || {
        shadow.requests().len() >= 2
    });
    let seen = shadow.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for request in &seen {
        assert_eq!(request.method, "GET");
        assert_eq!(request.header("host"), Some("staging.test"));
        assert_eq!(request.header("x-shadow"), Some("1"));
    }
    // Production saw all three, as the client sent them.
    let prod_seen = prod.requests();
    assert_eq!(prod_seen.len(), 3);
    assert!(
        prod_seen
            .iter()
            .all(|r| r.header("host") == Some("prod.test"))
    );
    assert!(prod_seen.iter().all(|r| r.header("x-shadow").is_none()));
}

/// Echoes, with every `b` made `B`: a candidate with a regression on one command.
struct ShoutsB;

impl ember::Handler for ShoutsB {
    fn receive_data(&mut self, cx: &mut ember::Context<'_>, data: &[u8]) {
        let answer: Vec<u8> = data
            .iter()
            .map(|&c| if c == b'b' { b'B' } else { c })
            .collect();
        cx.send_data(&answer);
    }
}

#[test]
fn compare_tcp_finds_the_first_differing_byte_of_a_line_protocol() {
    use support::backends::{Echo, serve};
    let backends = support::reactor_thread::ReactorThread::spawn(|r| {
        Ok((
            serve(r, || Echo)?,
            serve(r, || Echo)?,
            serve(r, || ShoutsB)?,
        ))
    });
    let (prod, same, regressed) = backends.value;
    let dir = fresh_dir("http-shadow", "tcp");
    let log = dir.join("compare.log");
    let shadows = format!("{same},{regressed}");
    let proxy = EmberProxy::start(&[
        "-r",
        &prod.to_string(),
        "-d",
        &shadows,
        "--compare-tcp",
        "--compare-log",
        log.to_str().unwrap(),
        "--access-log",
        "off",
    ]);
    let mut s = connect(proxy.addr);
    s.write_all(b"get a\r\nget b\r\n").unwrap();
    let mut answer = [0u8; 14];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(
        &answer, b"get a\r\nget b\r\n",
        "the client hears production"
    );
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = s.read(&mut [0u8; 1]);
    let lines = wait_compared(&log, 2, &proxy.child);
    let of = |name: &str| lines.iter().find(|l| l["shadow_name"] == name).unwrap();
    let same_line = of("duplex_0");
    assert_eq!(same_line["mode"], "tcp");
    assert_eq!(same_line["verdict"], "same", "{same_line}");
    let differs = of("duplex_1");
    assert_eq!(differs["verdict"], "body", "{differs}");
    assert_eq!(differs["diff"]["offset"], 11, "{differs}");
    assert_eq!(differs["diff"]["primary_len"], 14);
    assert_eq!(differs["diff"]["shadow_len"], 14);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_gibibyte_answer_is_compared_by_hash_in_bounded_memory() {
    const GIB: u64 = 1 << 30;
    let prod = HttpApp::start(Behaviour::default());
    let shadow = HttpApp::start(Behaviour::default());
    let dir = fresh_dir("http-shadow", "gib");
    let log = dir.join("compare.log");
    let proxy = proxy(prod.addr, shadow.addr, &log, &[]);
    let mut s = connect(proxy.addr);
    s.write_all(get(&format!("/big/{GIB}")).as_bytes()).unwrap();
    // The head, then 1 GiB of body, read and dropped as it comes.
    let (status, _) = read_response_head_only(&mut s);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut left = GIB;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the body ended {left} bytes early");
        left -= n as u64;
    }
    let lines = wait_compared(&log, 1, &proxy.child);
    assert_eq!(lines[0]["verdict"], "same", "{}", lines[0]);
    assert_eq!(lines[0]["primary"]["bytes"], GIB);
    assert_eq!(lines[0]["shadow"]["bytes"], GIB);
    // Two gibibytes went through the proxy (to the client, from the shadow); each digest
    // keeps at most --compare-max-body (1 MiB) of it.
    let peak = support::sys::peak_rss_of(proxy.child.pid());
    assert!(peak < 64 << 20, "peak RSS {} MiB", peak >> 20);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stream_that_is_not_http_is_relayed_and_no_longer_mirrored() {
    use support::backends::{Echo, serve};
    let echo = support::reactor_thread::ReactorThread::spawn(|r| serve(r, || Echo));
    let shadow = HttpApp::start(Behaviour::default());
    let proxy = EmberProxy::start(&[
        "-r",
        &echo.value.to_string(),
        "-d",
        &shadow.addr.to_string(),
        "--http",
        "--access-log",
        "off",
    ]);
    // One request the shadow gets, then bytes no HTTP/1.1 parser accepts (a TLS record).
    let mut s = connect(proxy.addr);
    let request = get("/users/1");
    s.write_all(request.as_bytes()).unwrap();
    let mut echoed = vec![0u8; request.len()];
    s.read_exact(&mut echoed).unwrap();
    let garbage = b"\x16\x03\x01\x00\x05hello and more";
    s.write_all(garbage).unwrap();
    let mut back = [0u8; 19];
    s.read_exact(&mut back).unwrap();
    assert_eq!(
        &back, garbage,
        "the client's bytes still reach production, and back"
    );
    wait_until("the log line", IO_TIMEOUT, || {
        proxy
            .child
            .stderr()
            .contains("not HTTP/1.1 the proxy can frame (malformed)")
    });
    wait_until("the mirrored request", IO_TIMEOUT, || {
        shadow.requests().len() == 1
    });
    assert_eq!(shadow.requests()[0].target, "/users/1");
}

#[test]
fn curls_h2c_upgrade_probe_does_not_end_mirroring_when_production_declines_it() {
    // `curl --http2` on http:// asks for `Upgrade: h2c` on its first request; production
    // answers in HTTP/1.1, and the connection's next requests are mirrored as before.
    let prod = HttpApp::start(Behaviour::default());
    let shadow = HttpApp::start(Behaviour::default());
    let dir = fresh_dir("http-shadow", "h2c");
    let log = dir.join("compare.log");
    // `n` counts requests per connection: the shadow's pool may open a second one.
    let proxy = proxy(
        prod.addr,
        shadow.addr,
        &log,
        &["--compare-ignore-json", "$.n"],
    );
    let base = format!("http://{}", proxy.addr);
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_version} %{num_connects}\\n"])
        .args([1, 2, 3].map(|i| format!("{base}/users/{i}")))
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let versions = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        versions, "1.1 1\n1.1 0\n1.1 0\n",
        "one connection, HTTP/1.1 throughout"
    );
    let mut lines = wait_compared(&log, 3, &proxy.child);
    for line in &lines {
        assert_eq!(line["verdict"], "same", "{line}");
    }
    // A line is written when its shadow answers, and the shadow's pool may carry the
    // requests on two connections: the log's order is the answers', not the requests'.
    lines.sort_by_key(|l| l["request"].as_u64());
    let paths: Vec<_> = lines
        .iter()
        .map(|l| l["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["/users/1", "/users/2", "/users/3"]);
}

#[test]
fn a_shadow_answer_that_comes_after_its_client_has_gone_is_still_compared() {
    // The client has its answer and closes; the shadow answers only then. The mirrored
    // request still ends in a compare-log line (it used to vanish with the session).
    let prod = HttpApp::start(Behaviour::default());
    let gate = Gate::default();
    let shadow = HttpApp::start(Behaviour {
        hold: Some(gate.clone()),
        ..Behaviour::default()
    });
    let dir = fresh_dir("http-shadow", "client-gone");
    let log = dir.join("compare.log");
    let proxy = proxy(prod.addr, shadow.addr, &log, &["-v"]);
    let mut s = connect(proxy.addr);
    s.write_all(get("/users/1").as_bytes()).unwrap();
    let (status, _) = read_response(&mut s);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    wait_until("the mirrored request", IO_TIMEOUT, || {
        shadow.requests().len() == 1
    });
    drop(s);
    wait_until("the client's session to end", IO_TIMEOUT, || {
        proxy.child.stderr().contains("client gone")
    });
    gate.open();
    let lines = wait_compared(&log, 1, &proxy.child);
    assert_eq!(lines[0]["verdict"], "same", "{}", lines[0]);
    assert_eq!(lines[0]["path"], "/users/1", "{}", lines[0]);
    assert_eq!(lines[0]["request"], 1, "{}", lines[0]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a flooding shadow may send, on average, during one production round trip: 12 MB.
/// The proxy reads the flood as fast as it can, so this counts the loop's time spent on
/// the shadow while production waits. Measured (8 floods, 100 round trips, on a loaded
/// two-core machine, 20 runs and 8 runs): 0.3 to 6 MB with mirror connections reading
/// once per readiness event, 29 to 229 MB when they read up to ten times. A count, not a
/// clock, but it moves with the machine's load as a time would: the bound sits in the
/// middle of the gap, about 2.4 times from each side's worst.
const FLOOD_PER_ROUND_TRIP: u64 = 12_000_000;

#[test]
fn a_shadow_flooding_its_answers_does_not_take_the_loop_from_production() {
    // Eight mirrored POSTs, each answered with a body that does not end while the test
    // runs; then production's keep-alive round trips (GETs, not mirrored). What the
    // shadow gets to send during a round trip is what the loop read of it while
    // production waited: counted in bytes, not timed.
    const FLOODING: usize = 8;
    const ROUND_TRIPS: u64 = 100;
    let prod = HttpApp::start(Behaviour::default());
    let shadow = HttpApp::start(Behaviour {
        flood: Some(1 << 40),
        ..Behaviour::default()
    });
    let dir = fresh_dir("http-shadow", "flood");
    let log = dir.join("compare.log");
    let proxy = proxy(prod.addr, shadow.addr, &log, &["--shadow-methods", "POST"]);
    let mut s = connect(proxy.addr);
    for i in 0..FLOODING {
        let post =
            format!("POST /users/{i} HTTP/1.1\r\nHost: prod.test\r\nContent-Length: 0\r\n\r\n");
        s.write_all(post.as_bytes()).unwrap();
        let (status, _) = read_response(&mut s);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }
    wait_until("every flood to start", IO_TIMEOUT, || {
        shadow.requests().len() == FLOODING && shadow.body_bytes_sent() > 0
    });
    let before = shadow.body_bytes_sent();
    for i in 0..ROUND_TRIPS {
        s.write_all(get(&format!("/users/{i}")).as_bytes()).unwrap();
        let (status, body) = read_response(&mut s);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["path"], format!("/users/{i}"));
    }
    let flooded = shadow.body_bytes_sent() - before;
    assert!(flooded > 0, "the shadow was flooding all along");
    assert!(
        flooded / ROUND_TRIPS < FLOOD_PER_ROUND_TRIP,
        "the shadow sent {} MB per production round trip",
        flooded / ROUND_TRIPS / 1_000_000
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_shadow_trickling_its_answer_times_out_and_is_let_go() {
    // The shadow's 10 MB answer comes through at 10 kB/s, a hundred bytes every 10 ms:
    // never idle, never done. Past --shadow-timeout the request is a shadow timeout and
    // the proxy lets go of the connection.
    let prod = HttpApp::start(Behaviour::default());
    let shadow = HttpApp::start(Behaviour {
        flood: Some(10_000_000),
        ..Behaviour::default()
    });
    let trickle = ToxicProxy::start(shadow.addr, Toxic::Pass, Toxic::Bandwidth(10_000));
    let dir = fresh_dir("http-shadow", "trickle");
    let log = dir.join("compare.log");
    let proxy = proxy(prod.addr, trickle.addr(), &log, &["--shadow-timeout", "1"]);
    let mut s = connect(proxy.addr);
    s.write_all(get("/users/1").as_bytes()).unwrap();
    let (status, _) = read_response(&mut s);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let lines = wait_compared(&log, 1, &proxy.child);
    assert_eq!(lines[0]["verdict"], "shadow_error", "{}", lines[0]);
    assert_eq!(lines[0]["shadow"]["error"], "timeout", "{}", lines[0]);
    wait_until(
        "the proxy to close the trickling connection",
        IO_TIMEOUT,
        || trickle.live() == 0,
    );
    assert!(
        shadow.body_bytes_sent() < 10_000_000,
        "the answer was still coming"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn comparisons_waiting_for_clients_that_do_not_read_stay_within_the_memory_budget() {
    // Four clients each send 100 requests for 64 KiB answers and read nothing: production's
    // answers stall, the shadow's come in, and every comparison waits for production's.
    // Each waiting request reserves two answers (production's and the shadow's) at their
    // largest, about 200 kB each with --compare-max-body 64k: 4 MB fits about ten.
    const CLIENTS: usize = 4;
    const REQUESTS: usize = 100;
    let prod = HttpApp::start(Behaviour::default());
    let shadow = HttpApp::start(Behaviour::default());
    let dir = fresh_dir("http-shadow", "memory");
    let log = dir.join("compare.log");
    let mut proxy = proxy(
        prod.addr,
        shadow.addr,
        &log,
        &[
            "--compare-max-body",
            "64k",
            "--shadow-max-memory",
            "4M",
            // `n` counts requests per connection: the shadow's differ from production's.
            "--compare-ignore-json",
            "$.n",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let admin = proxy.child.admin_addr(IO_TIMEOUT);
    let pipelined = get("/big/65536").repeat(REQUESTS);
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(proxy.addr)).collect();
    for s in &mut clients {
        s.write_all(pipelined.as_bytes()).unwrap();
    }
    let skipped = || {
        let (_, metrics) = support::clients::http_get(admin, "/metrics");
        support::clients::prometheus_samples(&metrics)["ember_mirror_skipped_total"] as usize
    };
    wait_until("every request mirrored or skipped", IO_TIMEOUT, || {
        skipped() + shadow.requests().len() == CLIENTS * REQUESTS
    });
    let mirrored = shadow.requests().len();
    assert!(
        (1..=20).contains(&mirrored),
        "{mirrored} of {} requests mirrored within the budget",
        CLIENTS * REQUESTS
    );
    // The clients read their answers: the waiting comparisons are made and give their
    // reservations back, and the next request is mirrored again.
    for s in &mut clients {
        for _ in 0..REQUESTS {
            let (status, body) = read_response(s);
            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
            assert_eq!(body.len(), 65536);
        }
    }
    let lines = wait_compared(&log, mirrored, &proxy.child);
    assert!(lines.iter().all(|l| l["verdict"] == "same"), "{lines:?}");
    let s = &mut clients[0];
    s.write_all(get("/users/1").as_bytes()).unwrap();
    read_response(s);
    let lines = wait_compared(&log, mirrored + 1, &proxy.child);
    assert!(
        lines
            .iter()
            .any(|l| l["path"] == "/users/1" && l["verdict"] == "same"),
        "{lines:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn answers_delimited_by_the_close_of_their_connection_are_compared_on_either_side() {
    // No Content-Length, no chunks: the body ends when the server closes. Production
    // answering so, then a shadow answering so; each pair ends in a verdict.
    let plain = HttpApp::start(Behaviour::default());
    let closing = HttpApp::start(Behaviour {
        close_delimited: true,
        ..Behaviour::default()
    });
    for (side, prod, shadow) in [("primary", &closing, &plain), ("shadow", &plain, &closing)] {
        let dir = fresh_dir("http-shadow", &format!("close-delimited-{side}"));
        let log = dir.join("compare.log");
        let proxy = proxy(
            prod.addr,
            shadow.addr,
            &log,
            &["--compare-ignore-json", "$.n"],
        );
        let mut s = connect(proxy.addr);
        s.write_all(get("/users/1").as_bytes()).unwrap();
        let body = if side == "primary" {
            // Read until production's close reaches the client, then close as a client
            // does: the proxy's connection to production ends, and with it the answer.
            let answer = support::clients::read_all(&mut s);
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let at = support::clients::find(&answer, b"\r\n\r\n").expect("a head");
            answer[at + 4..].to_vec()
        } else {
            read_response(&mut s).1
        };
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["path"], "/users/1", "{side}");
        let lines = wait_compared(&log, 1, &proxy.child);
        assert_eq!(lines[0]["verdict"], "same", "{side}: {}", lines[0]);
        assert_eq!(
            lines[0]["primary"]["bytes"], lines[0]["shadow"]["bytes"],
            "{side}: {}",
            lines[0]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn answers_sent_before_the_request_body_are_compared() {
    // Production and the shadow answer a request with a body as soon as its head is in:
    // 200 to a POST, 417 to one that expects 100-continue. The client waits for that
    // answer before it sends the body, as a client does when told no early.
    let early = Behaviour {
        early_answer: true,
        ..Behaviour::default()
    };
    let prod = HttpApp::start(early.clone());
    let shadow = HttpApp::start(early);
    let dir = fresh_dir("http-shadow", "early-answer");
    let log = dir.join("compare.log");
    let proxy = proxy(
        prod.addr,
        shadow.addr,
        &log,
        &["--compare-ignore-json", "$.n"],
    );
    let mut s = connect(proxy.addr);
    for (path, expect, status) in [
        ("/users/1", "", "HTTP/1.1 200"),
        ("/users/2", "Expect: 100-continue\r\n", "HTTP/1.1 417"),
    ] {
        let head =
            format!("POST {path} HTTP/1.1\r\nHost: prod.test\r\nContent-Length: 5\r\n{expect}\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let (answer, _) = read_response(&mut s);
        assert!(answer.starts_with(status), "{path}: {answer}");
        s.write_all(b"hello").unwrap();
    }
    // The connection is still framed right after the early answers.
    s.write_all(get("/users/3").as_bytes()).unwrap();
    let (_, body) = read_response(&mut s);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["path"], "/users/3");
    let mut lines = wait_compared(&log, 3, &proxy.child);
    lines.sort_by_key(|l| l["request"].as_u64());
    let seen: Vec<_> = lines
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap(),
                l["primary"]["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("/users/1", 200), ("/users/2", 417), ("/users/3", 200)]
    );
    for line in &lines {
        assert_eq!(line["verdict"], "same", "{line}");
    }
    // The shadow got each request whole (it records one once it has read its body).
    wait_until("the shadow to read both bodies", IO_TIMEOUT, || {
        shadow.requests().len() == 3
    });
    let posts: Vec<_> = shadow
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.body)
        .collect();
    assert_eq!(posts, [b"hello".to_vec(), b"hello".to_vec()]);
    let _ = std::fs::remove_dir_all(&dir);
}
