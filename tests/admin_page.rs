//! `ember-proxy --admin`: `/metrics` parsed and its counters checked after known
//! traffic, the `/stats` page rendered by a real headless Chromium (Debian's `chromium`,
//! installed by `.ci/run`) and its numbers checked against the same traffic, and
//! `/health` turning 503 once SIGTERM starts the drain.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use support::IO_TIMEOUT;
use support::backends::{Echo, serve};
use support::child::{Child, EmberProxy};
use support::clients::{connect, exchange, http_get, prometheus_samples, read_until, wait_until};
use support::pattern::Pattern;
use support::reactor_thread::ReactorThread;

/// `ember-proxy` with `--admin 127.0.0.1:0`, and the admin address it printed.
fn proxy_with_admin(args: &[&str]) -> (EmberProxy, SocketAddr) {
    let mut all = args.to_vec();
    all.extend(["--admin", "127.0.0.1:0", "--access-log", "off"]);
    let mut proxy = EmberProxy::start(&all);
    let admin = proxy.child.admin_addr(IO_TIMEOUT);
    (proxy, admin)
}

#[test]
fn metrics_and_the_stats_page_in_chromium_show_the_traffic_sent() {
    let backends = ReactorThread::spawn(|r| Ok((serve(r, || Echo)?, serve(r, || Echo)?)));
    let (a, b) = backends.value;
    let shadow = ReactorThread::spawn(|r| serve(r, || Echo));
    let (proxy, admin) = proxy_with_admin(&[
        "-b",
        &format!("{a},{b} maxconn=50"),
        "-d",
        &shadow.value.to_string(),
    ]);
    // Six sessions of 1,000 bytes each way: three on each backend (round-robin).
    const SESSIONS: usize = 6;
    for i in 0..SESSIONS {
        let request = Pattern::new(i as u64).bytes(1000);
        assert_eq!(exchange(proxy.addr, &request), request);
    }
    let metrics = wait_until_metrics(admin, |m| {
        m["ember_sessions_active"] == 0.0 && m["ember_session_duration_seconds_count"] == 6.0
    });
    assert_eq!(metrics["ember_sessions_total"], SESSIONS as f64);
    assert_eq!(metrics["ember_bytes_total{direction=\"in\"}"], 6000.0);
    assert_eq!(metrics["ember_bytes_total{direction=\"out\"}"], 6000.0);
    for backend in [a, b] {
        let labels = format!("pool=\"relay\",backend=\"{backend}\"");
        assert_eq!(metrics[&format!("ember_backend_up{{{labels}}}")], 1.0);
        assert_eq!(
            metrics[&format!("ember_backend_connects_total{{{labels}}}")],
            3.0
        );
        assert_eq!(
            metrics[&format!("ember_backend_bytes_total{{{labels},direction=\"sent\"}}")],
            3000.0
        );
        assert_eq!(
            metrics[&format!("ember_backend_bytes_total{{{labels},direction=\"received\"}}")],
            3000.0
        );
    }
    assert_eq!(
        metrics["ember_shadow_bytes_total{direction=\"sent\"}"],
        6000.0
    );
    assert!(metrics["process_resident_memory_bytes"] > 0.0);
    assert!(metrics["process_open_fds"] > 0.0);

    // The page as a person sees it: rendered by Chromium, scripts run.
    let dom = chromium_dom(&format!("http://{admin}/stats"));
    for (id, value) in [
        ("sessions-total", "6"),
        ("sessions-active", "0"),
        ("bytes-in", "6000"),
        ("bytes-out", "6000"),
    ] {
        let shown = format!("id=\"{id}\">{value}<");
        assert!(
            dom.contains(&shown),
            "{shown} not in the rendered page:\n{dom}"
        );
    }
    for backend in [a, b] {
        let row = format!(
            "<tr><td>{backend}</td><td class=\"up\">UP</td><td>0</td><td>{}</td><td>1</td><td>3</td><td>0</td><td>3000</td><td>3000</td>",
            if backend == b { "50" } else { "-" }
        );
        assert!(dom.contains(&row), "{row} not in the rendered page:\n{dom}");
    }
    assert!(dom.contains("<h2>duplex_0</h2>"), "{dom}");
    assert_eq!(http_get(admin, "/health"), (200, "serving\n".into()));
}

#[test]
fn health_answers_503_while_draining_after_sigterm() {
    let echo = ReactorThread::spawn(|r| serve(r, || Echo));
    let (proxy, admin) = proxy_with_admin(&["-r", &echo.value.to_string(), "--grace", "30"]);
    // A client that stays: the drain waits for it.
    let mut staying = connect(proxy.addr);
    staying.write_all(b"ping\n").unwrap();
    assert_eq!(read_until(&mut staying, b"\n"), b"ping\n");
    assert_eq!(http_get(admin, "/health").0, 200);
    proxy.child.signal(libc::SIGTERM);
    wait_until("/health to say draining", IO_TIMEOUT, || {
        http_get(admin, "/health") == (503, "draining\n".into())
    });
    drop(staying);
}

fn wait_until_metrics(
    admin: SocketAddr,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let mut metrics = HashMap::new();
    wait_until("the metrics to settle", IO_TIMEOUT, || {
        let (status, page) = http_get(admin, "/metrics");
        assert_eq!(status, 200);
        metrics = prometheus_samples(&page);
        done(&metrics)
    });
    metrics
}

/// The DOM of `url` after Chromium loaded it and ran its scripts for a while.
fn chromium_dom(url: &str) -> String {
    let profile = std::env::temp_dir().join(format!("ember-chromium-{}", std::process::id()));
    let mut child = Child::spawn(
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--dump-dom", url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let status = child.wait_exit(std::time::Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(&profile);
    assert!(status.success(), "chromium: {}", child.describe());
    child.stdout()
}
