//! What an operator reads: one access-log line per client session (text and JSON), its
//! byte counts checked against what the clients sent and got; SIGUSR1 reopening the
//! access log after logrotate renamed it; session ids tying every line about a session
//! together; backend failures visible without `-v`, rate-limited; a long relay's
//! splice-or-copy verdict with `-v`; and a log nobody reads (stderr a full pipe) never
//! keeping the process from exiting on SIGTERM.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::IO_TIMEOUT;
use support::backends::{Echo, serve};
use support::child::{Child, EMBER_PROXY, EmberProxy};
use support::clients::{closed_port, exchange, fresh_dir, lines_of, pump, wait_until};
use support::pattern::Pattern;
use support::reactor_thread::ReactorThread;

/// A fresh access-log path for this test.
fn temp_path(name: &str) -> PathBuf {
    fresh_dir("logs", name).join("access.log")
}

/// `key=value` pairs of a text access-log line (the timestamp first, unnamed).
fn fields(line: &str) -> HashMap<String, String> {
    line.split(' ')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn echo_backend() -> ReactorThread<std::net::SocketAddr> {
    ReactorThread::spawn(|r| serve(r, || Echo))
}

#[test]
fn every_session_leaves_one_access_line_with_its_byte_counts() {
    let echo = echo_backend();
    let log = temp_path("text");
    let proxy = EmberProxy::start(&[
        "-r",
        &echo.value.to_string(),
        "--access-log",
        log.to_str().unwrap(),
    ]);
    let sizes = [1, 1000, 250_000];
    let mut clients = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let request = Pattern::new(i as u64).bytes(size);
        let answer = exchange(proxy.addr, &request);
        assert_eq!(answer.len(), size);
        clients.push(size);
    }
    wait_until("three access-log lines", IO_TIMEOUT, || {
        lines_of(&log).len() == sizes.len()
    });
    let lines = lines_of(&log);
    let mut sessions = Vec::new();
    for (line, size) in lines.iter().zip(sizes) {
        let f = fields(line);
        assert!(line.ends_with('Z') || line.contains("Z session="), "{line}");
        assert_eq!(f["bytes_in"], size.to_string(), "{line}");
        assert_eq!(f["bytes_out"], size.to_string(), "{line}");
        assert_eq!(f["backend"], format!("relay@{}", echo.value), "{line}");
        assert_eq!(f["retries"], "0");
        assert_eq!(f["listener"], proxy.addr.to_string());
        assert!(f["client"].starts_with("127.0.0.1:"));
        assert!(f["connect_ms"].parse::<f64>().is_ok(), "{line}");
        assert!(f["duration_ms"].parse::<f64>().is_ok(), "{line}");
        sessions.push(f["session"].clone());
    }
    assert_eq!(sessions, ["1", "2", "3"]);
}

#[test]
fn json_access_lines_carry_the_shadows_too() {
    let echo = echo_backend();
    let shadow = echo_backend();
    let log = temp_path("json");
    let proxy = EmberProxy::start(&[
        "-r",
        &echo.value.to_string(),
        "-d",
        &shadow.value.to_string(),
        "--access-log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    let request = Pattern::new(7).bytes(5000);
    assert_eq!(exchange(proxy.addr, &request).len(), 5000);
    wait_until("an access-log line", IO_TIMEOUT, || {
        !lines_of(&log).is_empty()
    });
    let line = &lines_of(&log)[0];
    assert!(
        line.starts_with("{\"time\":\"") && line.ends_with("]}"),
        "{line}"
    );
    for part in [
        "\"session\":1,",
        "\"bytes_in\":5000,",
        "\"bytes_out\":5000,",
        &format!("\"target\":\"{}\"", echo.value),
        &format!(
            "\"shadows\":[{{\"name\":\"duplex_0\",\"target\":\"{}\"",
            shadow.value
        ),
        "\"bytes_sent\":5000,",
        "\"cut_off\":false}]}",
    ] {
        assert!(line.contains(part), "{part} missing from {line}");
    }
}

#[test]
fn sigusr1_reopens_the_access_log_after_a_rename() {
    let echo = echo_backend();
    let log = temp_path("rotate");
    let mut proxy = EmberProxy::start(&[
        "-r",
        &echo.value.to_string(),
        "--access-log",
        log.to_str().unwrap(),
    ]);
    assert_eq!(exchange(proxy.addr, b"before"), b"before");
    wait_until("the first line", IO_TIMEOUT, || lines_of(&log).len() == 1);
    let rotated = log.with_extension("log.1");
    fs::rename(&log, &rotated).unwrap();
    proxy.child.signal(libc::SIGUSR1);
    // The signal is handled between ticks: sessions go on landing in the renamed file
    // until it is, then in the new one.
    let mut sessions = 1;
    wait_until("a line in the reopened file", IO_TIMEOUT, || {
        assert_eq!(exchange(proxy.addr, b"after"), b"after");
        sessions += 1;
        !lines_of(&log).is_empty()
    });
    wait_until("every session logged once", IO_TIMEOUT, || {
        lines_of(&rotated).len() + lines_of(&log).len() == sessions
    });
    assert!(lines_of(&rotated)[0].contains("bytes_in=6 "));
    proxy.child.assert_alive("SIGUSR1");
}

#[test]
fn backend_failures_are_warnings_without_verbose_and_are_rate_limited() {
    let dead = closed_port();
    let proxy = EmberProxy::start(&["-r", &dead.to_string(), "--access-log", "off"]);
    for _ in 0..200 {
        // Closed at once: the write or the shutdown may fail, and that is the answer.
        let mut client = TcpStream::connect(proxy.addr).unwrap();
        client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let _ = client
            .write_all(b"x")
            .and_then(|()| client.shutdown(Shutdown::Write));
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer);
        assert!(answer.is_empty());
    }
    wait_until("a refusal logged", IO_TIMEOUT, || {
        proxy
            .child
            .stderr()
            .contains("closed: every backend is down")
    });
    let stderr = proxy.child.stderr();
    assert!(stderr.contains(" WARN "), "{stderr}");
    assert!(
        stderr.contains("failed to connect (connection refused)"),
        "{stderr}"
    );
    assert!(stderr.contains("is DOWN"), "{stderr}");
    // 200 refused clients, a few dozen lines: the rest are counted, not written.
    let lines = stderr.lines().count();
    assert!(lines < 60, "{lines} lines:\n{stderr}");
}

#[test]
fn verbose_lines_of_one_session_share_its_id() {
    let echo = echo_backend();
    let proxy = EmberProxy::start(&["-r", &echo.value.to_string(), "-v"]);
    assert_eq!(exchange(proxy.addr, b"one"), b"one");
    assert_eq!(exchange(proxy.addr, b"two"), b"two");
    wait_until("the second session's access line", IO_TIMEOUT, || {
        proxy.child.stderr().contains("session=2 ")
    });
    let stderr = proxy.child.stderr();
    for id in ["#1:", "#2:"] {
        let about: Vec<&str> = stderr.lines().filter(|l| l.contains(id)).collect();
        assert!(
            about.iter().any(|l| l.contains("client 127.0.0.1:"))
                && about.iter().any(|l| l.contains("server `relay` connected"))
                && about.iter().any(|l| l.contains("server `relay` finished")),
            "{id}: {about:#?}"
        );
    }
}

#[test]
fn a_long_relay_says_with_verbose_whether_it_splices_or_copies() {
    // Past 64 MiB a relay times both paths over 6 stretches of 48 MiB (the reactor's
    // path_trial.rs); 448 MiB each way is past the end of the first trial.
    const BYTES: usize = 448 << 20;
    let echo = echo_backend();
    let proxy = EmberProxy::start(&["-r", &echo.value.to_string(), "-v", "--access-log", "off"]);
    assert_eq!(pump(proxy.addr, BYTES, 11), BYTES);
    wait_until("both directions' verdicts", IO_TIMEOUT, || {
        proxy.child.stderr().matches("splicing moved").count() >= 2
    });
    for line in proxy
        .child
        .stderr()
        .lines()
        .filter(|l| l.contains("splicing moved"))
    {
        assert!(line.contains(" DEBUG "), "{line}");
        assert!(
            line.ends_with("Splice it is") || line.ends_with("Copy it is"),
            "{line}"
        );
    }
    // Without -v: none, once the session's access line (written after) is out.
    let quiet = EmberProxy::start(&["-r", &echo.value.to_string(), "--access-log", "-"]);
    assert_eq!(pump(quiet.addr, BYTES, 12), BYTES);
    wait_until("the session's access line", IO_TIMEOUT, || {
        quiet.child.stderr().contains("bytes_in=")
    });
    assert!(
        !quiet.child.stderr().contains("splicing moved"),
        "debug lines only with -v"
    );
}

#[test]
fn a_unix_socket_backend_that_is_not_there_is_warned_about_at_start() {
    let proxy = EmberProxy::start(&["-s", "/nonexistent/ember.sock", "--access-log", "off"]);
    wait_until("the warning", IO_TIMEOUT, || {
        proxy
            .child
            .stderr()
            .contains("backend unix:/nonexistent/ember.sock cannot be reached now")
    });
}

/// Nobody reads the proxy's stderr, where its access log goes: the pipe fills and the
/// log's writer thread blocks in `write`. SIGTERM must still end the process (the lines
/// that cannot go out are given up after a bounded wait), and with status 0.
#[test]
fn sigterm_exits_though_nobody_reads_stderr() {
    /// Access-log lines are over 100 bytes: several times what a pipe holds.
    const SESSIONS: usize = 1000;
    /// Far longer than the proxy waits for its log, and than its drain with no client.
    const EXIT_LIMIT: Duration = Duration::from_secs(30);
    let echo = echo_backend();
    let mut spawned = Command::new(EMBER_PROXY)
        .args(["-l", "127.0.0.1:0", "-r", &echo.value.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember-proxy");
    // Held open and never read while the proxy runs.
    let mut stderr = spawned.stderr.take().expect("stderr is piped");
    let mut proxy = Child::adopt(spawned);
    let addr = proxy.listening_addr(IO_TIMEOUT);
    for i in 0..SESSIONS {
        let request = format!("session {i}");
        assert_eq!(exchange(addr, request.as_bytes()), request.as_bytes());
    }
    proxy.signal(libc::SIGTERM);
    wait_until(
        "ember-proxy to exit after SIGTERM with nobody reading its stderr",
        EXIT_LIMIT,
        || proxy.has_exited(),
    );
    let status = proxy.wait_exit(IO_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{status}");
    // What reached stderr before the exit: a pipe's worth of access lines, not them all.
    let mut written = String::new();
    stderr.read_to_string(&mut written).unwrap();
    let logged = written.lines().filter(|l| l.contains(" session=")).count();
    assert!(
        logged > 0 && logged < SESSIONS,
        "{logged} of {SESSIONS} access lines reached stderr: the pipe never filled, \
         not the case under test"
    );
}
