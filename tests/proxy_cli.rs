//! The `ember-proxy` binary as a child process: usage, every command-line mistake (one
//! line, non-zero exit, no panic), relay + duplex, Unix socket relay, balancing, graceful
//! SIGTERM, and the self-checking demo.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use ember::{ConnId, Context, Handler};

use support::IO_TIMEOUT;
use support::backends::{Echo, NamedEcho, NeverReads, record_of, serve, serve_recorder};
use support::child::{Child, EMBER_PROXY, EmberProxy};
use support::clients::{closed_port, connect, exchange, read_all, read_until};
use support::pattern::Pattern;
use support::reactor_thread::ReactorThread;

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the binary to completion; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let mut child = Child::spawn(
        Command::new(EMBER_PROXY)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let status = child.wait_exit(EXIT_TIMEOUT);
    (status.code().unwrap_or(-1), child.stdout(), child.stderr())
}

#[test]
fn no_arguments_print_the_usage_and_exit_2() {
    let (code, stdout, stderr) = run(&[]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert!(stderr.starts_with("Usage: ember-proxy"), "{stderr}");
    for flag in [
        "--listen",
        "--relay",
        "--socket",
        "--duplex",
        "--verbose",
        "--help",
    ] {
        assert!(stderr.contains(flag), "usage lacks {flag}");
    }
}

#[test]
fn help_prints_the_usage_and_exits_0() {
    for flag in ["-h", "--help"] {
        let (code, stdout, _) = run(&[flag]);
        assert_eq!(code, 0);
        assert!(stdout.starts_with("Usage: ember-proxy"), "{stdout}");
    }
}

#[test]
fn version_prints_the_package_version_and_exits_0() {
    for flag in ["-V", "--version"] {
        let (code, stdout, stderr) = run(&[flag]);
        assert_eq!(code, 0, "{flag}: {stderr}");
        assert_eq!(
            stdout,
            format!("ember-proxy {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
        assert!(stderr.is_empty(), "{flag}: {stderr}");
    }
}

#[test]
fn combined_short_flags_start_the_proxy() {
    let backend = ReactorThread::spawn(|r| serve(r, || Echo));
    let relay = backend.value.to_string();
    for cluster in [
        vec!["-vl", "127.0.0.1:0", "-r", &relay],
        vec!["-vl127.0.0.1:0", "-r", &relay],
    ] {
        let mut child = Child::spawn(
            Command::new(EMBER_PROXY)
                .args(&cluster)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let addr = child.listening_addr(IO_TIMEOUT);
        assert_eq!(exchange(addr, b"clustered"), b"clustered", "{cluster:?}");
        // `-v` took effect too: the session's events are logged.
        let deadline = Instant::now() + IO_TIMEOUT;
        while !child.stderr().contains("connected") {
            assert!(
                Instant::now() < deadline,
                "{cluster:?}: no verbose log: {}",
                child.stderr()
            );
            thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn sizes_that_are_not_sizes_are_named_with_what_a_size_is() {
    for value in ["0", "-1"] {
        let (code, stdout, stderr) = run(&[
            "-l",
            "127.0.0.1:0",
            "-r",
            "127.0.0.1:1",
            "--shadow-buffer",
            value,
        ]);
        assert_eq!(code, 2, "{value}: {stderr}");
        assert!(stdout.is_empty(), "{value}: {stdout}");
        assert_eq!(
            stderr,
            format!(
                "ember-proxy: --shadow-buffer `{value}` is not a size: give bytes with an \
                 optional K, M or G suffix, at least 1 (see ember-proxy --help)\n"
            )
        );
    }
}

#[test]
fn every_mistake_is_one_clear_line_and_a_nonzero_exit() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--bogus"], 2, "unknown flag `--bogus`"),
        (vec!["-x"], 2, "unknown flag `-x`"),
        (vec!["-vx"], 2, "unknown flag `-x` in `-vx`"),
        (vec!["-r", "127.0.0.1:1", "-vl"], 2, "-l needs a value"),
        (vec!["-é"], 2, "unknown flag `-é`"),
        (vec!["-lé"], 2, "`é` is not a port number"),
        (
            vec!["-l", "abc", "-r", "127.0.0.1:1"],
            2,
            "`abc` is not a port number",
        ),
        (vec!["-l", "99999", "-r", "127.0.0.1:1"], 2, "out of range"),
        (vec!["-l", "8080", "-r"], 2, "-r needs a value"),
        (vec!["-l", "-r", "127.0.0.1:1"], 2, "-l needs a value"),
        (vec!["-r", "127.0.0.1:1"], 2, "missing -l/--listen"),
        (vec!["-l", "8080"], 2, "missing a relay"),
        (
            vec!["-l", "8080", "-d", "127.0.0.1:1"],
            2,
            "missing a relay",
        ),
        (vec!["-l", "8080", "-r", "localhost"], 2, "is not HOST:PORT"),
        (vec!["-l", "8080", "-r", "127.0.0.1:0"], 2, "port 0"),
        (
            vec!["-l", "8080", "-r", "127.0.0.1:x"],
            2,
            "not a port number",
        ),
        (
            vec!["-l", "8080", "-r", "a:1", "-s", "/tmp/x"],
            2,
            "choose one",
        ),
        (
            vec!["-l", "8080", "-r", "a:1", "-d", "b:1,"],
            2,
            "empty entry",
        ),
        (
            vec!["-l", "8080", "-b", "a:1", "--strategy", "fastest"],
            2,
            "unknown strategy",
        ),
        (
            vec!["-l", "8080", "-r", "a:1", "--grace", "soon"],
            2,
            "not a number of seconds",
        ),
        (
            vec!["-l", "8080", "-r", "a:1", "--grace", "-1"],
            2,
            "--grace `-1` is not a number of seconds, like 5 or 0.2",
        ),
        (
            vec!["-l", "8080", "-r", "a:1", "stray"],
            2,
            "unexpected argument `stray`",
        ),
        (
            vec!["-l", "127.0.0.1:0", "-r", "no-such-host.invalid:80"],
            1,
            "--relay: cannot resolve host `no-such-host.invalid`",
        ),
        (
            vec![
                "-l",
                "127.0.0.1:0",
                "-r",
                "127.0.0.1:1",
                "-d",
                "no-such-host.invalid:80",
            ],
            1,
            "--duplex: cannot resolve host `no-such-host.invalid`",
        ),
        (
            vec!["-l", &taken, "-r", "127.0.0.1:1"],
            1,
            "cannot listen on",
        ),
    ];
    for (args, want_code, want_text) in cases {
        let (code, stdout, stderr) = run(&args);
        let line = stderr.trim_end();
        assert_eq!(code, want_code, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?} printed {stdout:?}");
        assert!(
            !line.contains('\n'),
            "{args:?}: more than one line: {stderr:?}"
        );
        assert!(line.starts_with("ember-proxy: "), "{args:?}: {line}");
        assert!(
            line.contains(want_text),
            "{args:?}: {line:?} lacks {want_text:?}"
        );
        assert!(!line.contains("panicked"), "{args:?}: {line}");
    }
}

#[test]
fn a_non_utf8_argument_is_a_mistake_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let mut child = Child::spawn(
        Command::new(EMBER_PROXY)
            .arg(std::ffi::OsStr::from_bytes(b"-l\xff"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    assert_eq!(child.wait_exit(EXIT_TIMEOUT).code(), Some(2));
    let stderr = child.stderr();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn relays_and_duplexes_answering_from_the_relay_only() {
    let backends = ReactorThread::spawn(|r| {
        let (prod, prod_record) = serve_recorder(r, "prod")?;
        let (shadow, shadow_record) = serve_recorder(r, "shadow")?;
        Ok((prod, shadow, prod_record, shadow_record))
    });
    let (prod, shadow, prod_record, shadow_record) = backends.value.clone();
    let dead = closed_port();
    let proxy = EmberProxy::start(&[
        "-r",
        &prod.to_string(),
        "-d",
        &format!("{shadow},{dead}"),
        "-v",
    ]);
    let request = Pattern::new(41).bytes(300_000);
    let reply = String::from_utf8(exchange(proxy.addr, &request)).unwrap();
    assert!(reply.lines().all(|l| l.starts_with("prod:")), "{reply}");
    assert!(
        reply.ends_with(&format!("prod:{}\nprod:end\n", request.len())),
        "{reply}"
    );
    let deadline = Instant::now() + IO_TIMEOUT;
    while record_of(&shadow_record).len() < request.len() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    assert!(record_of(&prod_record) == request);
    assert!(record_of(&shadow_record) == request);
    let deadline = Instant::now() + IO_TIMEOUT;
    while !proxy
        .child
        .stderr()
        .contains("`duplex_1` finished: connection refused")
    {
        assert!(
            Instant::now() < deadline,
            "verbose log: {}",
            proxy.child.stderr()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn relays_to_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("ember-proxy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let _ = std::fs::remove_file(&path);
    let socket = path.clone();
    let _backend = ReactorThread::spawn(move |r| r.start_unix_server(&socket, || Echo).map(drop));
    let proxy = EmberProxy::start(&["-s", path.to_str().unwrap()]);
    assert_eq!(
        exchange(proxy.addr, b"to the socket and back"),
        b"to the socket and back"
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Answers every request with its name and closes.
struct Named(&'static str);

impl Handler for Named {
    fn receive_data(&mut self, cx: &mut Context<'_>, _data: &[u8]) {
        cx.send_data(self.0.as_bytes());
        cx.close_after_writing();
    }
}

#[test]
fn balances_clients_round_robin() {
    let backends =
        ReactorThread::spawn(|r| Ok((serve(r, || Named("A"))?, serve(r, || Named("B"))?)));
    let (a, b) = backends.value;
    let proxy = EmberProxy::start(&["-b", &format!("{a},{b}"), "--strategy", "round-robin"]);
    let answers: Vec<Vec<u8>> = (0..4).map(|_| exchange(proxy.addr, b"who?")).collect();
    assert_eq!(answers, [b"A", b"B", b"A", b"B"]);
}

/// Reports its connection id when a request arrives; answers only when told to.
struct Held(mpsc::Sender<ConnId>);

impl Handler for Held {
    fn receive_data(&mut self, cx: &mut Context<'_>, _data: &[u8]) {
        let _ = self.0.send(cx.id());
    }
}

#[test]
fn sigterm_stops_accepting_and_lets_live_connections_finish() {
    let (tx, requests) = mpsc::channel();
    let tx = Mutex::new(tx);
    let backend = ReactorThread::spawn(move |r| {
        let tx = tx.into_inner().unwrap();
        serve(r, move || Held(tx.clone()))
    });
    let proxy = EmberProxy::start(&["-r", &backend.value.to_string()]);
    let mut live = connect(proxy.addr);
    live.write_all(b"request").unwrap();
    let held = requests
        .recv_timeout(IO_TIMEOUT)
        .expect("the request reached the backend");
    proxy.child.signal(libc::SIGTERM);
    // New connections are refused once the signal is handled.
    let deadline = Instant::now() + IO_TIMEOUT;
    while TcpStream::connect(proxy.addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        thread::sleep(Duration::from_millis(5));
    }
    backend.on_reactor(move |r| {
        r.send_to(held, b"answered after the signal");
        r.close_connection_after_writing(held);
    });
    assert_eq!(read_all(&mut live), b"answered after the signal");
    let mut proxy = proxy;
    let status = proxy.child.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", proxy.child.stderr());
    assert!(
        proxy.child.stderr().contains("stopping"),
        "{}",
        proxy.child.stderr()
    );
}

#[test]
fn the_grace_period_bounds_how_long_a_stuck_connection_delays_exit() {
    let backend = ReactorThread::spawn(|r| serve(r, || NeverReads));
    let mut proxy = EmberProxy::start(&["-r", &backend.value.to_string(), "--grace", "0.2"]);
    let mut stuck = connect(proxy.addr);
    stuck.write_all(b"never answered").unwrap();
    // Wait until the proxy has this client for sure: its relay connection is up.
    let deadline = Instant::now() + IO_TIMEOUT;
    while backend.connection_count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the proxy never connected to the backend"
        );
        thread::sleep(Duration::from_millis(1));
    }
    let started = Instant::now();
    proxy.child.signal(libc::SIGINT);
    let status = proxy.child.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_demo_checks_itself_and_exits_0() {
    let (code, stdout, stderr) = run(&["demo", "-n", "40"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for check in [
        "[ok  ] the clients got prod's answers only (120 of 120)",
        "[ok  ] every request was mirrored to the candidate and the reference and compared (120 comparisons in the log",
        "[ok  ] GET /orders/{id} is the worst route and the only one that regressed (16 of 40 differ)",
        "[ok  ] the noise was cancelled by the reference: 0 header regressions, 104 answers",
    ] {
        assert!(stdout.contains(check), "{check}\n{stdout}");
    }
    // The report's own summary: the verdict names the regressed route, the noisy header
    // is counted apart, and the page's path comes last.
    let verdict = stdout.lines().find(|l| l.starts_with("REGRESSIONS: "));
    assert_eq!(
        verdict,
        Some("REGRESSIONS: 13.3% of requests differ, worst route GET /orders/{id} 40%"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\n         16  body at $.total_cents\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\nnoise (not counted):\n        104  header x-served-at\n"),
        "{stdout}"
    );
    let page = stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("HTML: "))
        .unwrap_or_else(|| panic!("the page's path last:\n{stdout}"));
    let page = std::path::Path::new(page);
    let html = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
    assert!(html.contains("worst route GET /orders/{id} 40%"), "{html}");
    let dir = page.parent().expect("the demo's directory");
    assert!(dir.starts_with(std::env::temp_dir()), "{}", dir.display());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_config_file_runs_like_its_flags_and_a_mistake_names_file_line_and_key() {
    let backend = ReactorThread::spawn(|r| serve(r, || Echo));
    let dir = std::env::temp_dir().join(format!("ember-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        format!(
            "connect_timeout = 2\naccess_log = \"off\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\nrelay = \"{}\"\n",
            backend.value
        ),
    )
    .unwrap();
    let mut proxy = Child::spawn(
        Command::new(EMBER_PROXY)
            .arg("--config")
            .arg(&good)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let addr = proxy.listening_addr(IO_TIMEOUT);
    assert_eq!(exchange(addr, b"from the file"), b"from the file");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nrelay = \"127.0.0.1:1\"\nretries = \"many\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&["--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "ember-proxy: {}:4: retries: --retries `many` is not a number from 0 to 100",
            bad.display()
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_reloads_the_config_for_new_clients_and_refuses_a_bad_file() {
    let backends =
        ReactorThread::spawn(|r| Ok((serve(r, || NamedEcho("A"))?, serve(r, || NamedEcho("B"))?)));
    let (a, b) = backends.value;
    let dir = std::env::temp_dir().join(format!("ember-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.toml");
    let config = |relay: SocketAddr| {
        format!(
            "access_log = \"off\"\nadmin = \"127.0.0.1:0\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\nrelay = \"{relay}\"\n"
        )
    };
    std::fs::write(&file, config(a)).unwrap();
    let mut proxy = Child::spawn(
        Command::new(EMBER_PROXY)
            .arg("--config")
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let addr = proxy.listening_addr(IO_TIMEOUT);
    let admin = proxy.admin_addr(IO_TIMEOUT);
    // A client of the old configuration, still connected through the reload.
    let mut old = connect(addr);
    assert_eq!(read_until(&mut old, b"A"), b"A");
    // Only the relay changes; the listener stays where it is (the port 0 it asked for
    // was resolved once, at start).
    std::fs::write(&file, config(b)).unwrap();
    proxy.signal(libc::SIGHUP);
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let mut s = connect(addr);
        let mut byte = [0u8; 1];
        if std::io::Read::read_exact(&mut s, &mut byte).is_ok() && &byte == b"B" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new clients never reached B:\n{}",
            proxy.stderr()
        );
    }
    // The admin pages show the new backend.
    let (_, metrics) = support::clients::http_get(admin, "/metrics");
    assert!(metrics.contains(&format!("backend=\"{b}\"")), "{metrics}");
    // The old client still talks to A.
    old.write_all(b"still here").unwrap();
    assert_eq!(read_until(&mut old, b"still here"), b"still here");
    // A broken file is refused; the running configuration stays.
    std::fs::write(&file, "[[listener]]\nlisten = \n").unwrap();
    proxy.signal(libc::SIGHUP);
    support::clients::wait_until("the refusal", IO_TIMEOUT, || {
        proxy
            .stderr()
            .contains("still serving the running configuration")
    });
    let mut s = connect(addr);
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(&mut s, &mut byte).unwrap();
    assert_eq!(&byte, b"B");
    proxy.assert_alive("two reloads");
    let _ = std::fs::remove_dir_all(&dir);
}
