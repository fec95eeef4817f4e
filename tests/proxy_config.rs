//! `ember-proxy --config FILE` as an operator runs it: several listeners in one process,
//! and SIGHUP reloads that add, drop and change listeners, with one worker or several,
//! all or nothing.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use support::IO_TIMEOUT;
use support::backends::{NamedEcho, serve};
use support::child::{Child, EMBER_PROXY};
use support::clients::{connect, fresh_dir, lines_of, read_until, wait_until};
use support::reactor_thread::ReactorThread;

/// Three backends that answer with their name: A, B, C.
fn named_backends() -> ReactorThread<(SocketAddr, SocketAddr, SocketAddr)> {
    ReactorThread::spawn(|r| {
        Ok((
            serve(r, || NamedEcho("A"))?,
            serve(r, || NamedEcho("B"))?,
            serve(r, || NamedEcho("C"))?,
        ))
    })
}

/// A `[[listener]]` table.
fn listener(listen: &str, relay: SocketAddr) -> String {
    format!("\n[[listener]]\nlisten = \"{listen}\"\nrelay = \"{relay}\"\n")
}

fn start(file: &Path) -> Child {
    Child::spawn(
        Command::new(EMBER_PROXY)
            .arg("--config")
            .arg(file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// The first byte a new client through `addr` reads: the backend's name.
fn backend_of(addr: SocketAddr) -> u8 {
    let mut s = connect(addr);
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte).unwrap();
    byte[0]
}

/// Connects until `addr` refuses (a listener closed by a reload stops accepting within a
/// tick or two of the signal).
fn wait_refused(addr: SocketAddr) {
    wait_until(
        "the listener to close",
        IO_TIMEOUT,
        || matches!(TcpStream::connect(addr), Err(e) if e.kind() == ErrorKind::ConnectionRefused),
    );
}

#[test]
fn several_listeners_serve_from_one_process_and_a_reload_adds_drops_and_changes_them() {
    let backends = named_backends();
    let (a, b, c) = backends.value;
    let dir = fresh_dir("config", "listeners");
    let file = dir.join("proxy.toml");
    // Two listeners on port 0 of two loopback addresses: the first to A, the second to B.
    let first = format!(
        "access_log = \"off\"\n{}{}",
        listener("127.0.0.1:0", a),
        listener("127.0.0.2:0", b)
    );
    std::fs::write(&file, first).unwrap();
    let mut proxy = start(&file);
    let one = proxy.listening_addr(IO_TIMEOUT);
    let two = proxy.listening_addr(IO_TIMEOUT);
    assert_eq!(one.ip().to_string(), "127.0.0.1");
    assert_eq!(two.ip().to_string(), "127.0.0.2");
    assert_eq!(backend_of(one), b'A');
    assert_eq!(backend_of(two), b'B');
    // A client of the second listener, connected through the reload that drops it.
    let mut kept = connect(two);
    assert_eq!(read_until(&mut kept, b"B"), b"B");

    // The reload: the first listener now relays to C, the second is gone, a third
    // (127.0.0.3) relays to B.
    let second = format!(
        "access_log = \"off\"\n{}{}",
        listener("127.0.0.1:0", c),
        listener("127.0.0.3:0", b)
    );
    std::fs::write(&file, second).unwrap();
    proxy.signal(libc::SIGHUP);
    let three = proxy.listening_addr(IO_TIMEOUT);
    assert_eq!(three.ip().to_string(), "127.0.0.3");
    assert_eq!(backend_of(three), b'B');
    // The first keeps its port (port 0 was picked once) and sends new clients to C.
    assert_eq!(backend_of(one), b'C');
    // The second stops accepting; its client finishes on the old configuration.
    wait_refused(two);
    kept.write_all(b"still here").unwrap();
    assert_eq!(read_until(&mut kept, b"still here"), b"still here");
    drop(kept);
    // The log is written in batches: wait for the reload's lines.
    wait_until("the reload's log lines", IO_TIMEOUT, || {
        let stderr = proxy.stderr();
        stderr.contains("listener 127.0.0.2:0 closed") && stderr.contains("1 added, 1 removed")
    });
    proxy.assert_alive("the reload");
    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit(IO_TIMEOUT).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reload_whose_new_listener_cannot_start_changes_nothing() {
    let backends = named_backends();
    let (a, _, c) = backends.value;
    let dir = fresh_dir("config", "all-or-nothing");
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        format!("access_log = \"off\"\n{}", listener("127.0.0.1:0", a)),
    )
    .unwrap();
    let mut proxy = start(&file);
    let one = proxy.listening_addr(IO_TIMEOUT);
    // The reload changes the first listener and adds one on a port another program holds
    // (without SO_REUSEPORT, so the proxy cannot share it).
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    std::fs::write(
        &file,
        format!(
            "access_log = \"off\"\n{}{}",
            listener("127.0.0.1:0", c),
            listener(&taken.to_string(), c)
        ),
    )
    .unwrap();
    proxy.signal(libc::SIGHUP);
    wait_until("the refusal", IO_TIMEOUT, || {
        proxy
            .stderr()
            .contains("still serving the running configuration")
    });
    let stderr = proxy.stderr();
    assert!(
        stderr.contains(&format!("listener {taken}")),
        "the line names the listener: {stderr}"
    );
    // Nothing changed: the first listener still sends new clients to A.
    for _ in 0..20 {
        assert_eq!(backend_of(one), b'A');
    }
    proxy.assert_alive("the refused reload");
    drop(squatter);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reload_with_two_workers_moves_both_workers_to_the_new_configuration() {
    let backends = named_backends();
    let (a, b, _) = backends.value;
    let dir = fresh_dir("config", "workers");
    let file = dir.join("proxy.toml");
    let log = dir.join("access.log");
    let config = |relay| {
        format!(
            "workers = 2\naccess_log = \"{}\"\n{}",
            log.display(),
            listener("127.0.0.1:0", relay)
        )
    };
    std::fs::write(&file, config(a)).unwrap();
    let mut proxy = start(&file);
    let addr = proxy.listening_addr(IO_TIMEOUT);
    assert_eq!(backend_of(addr), b'A');
    std::fs::write(&file, config(b)).unwrap();
    proxy.signal(libc::SIGHUP);
    // Fresh connections until each worker has served one on B: the kernel spreads
    // connections over the workers' sockets, so both are reached.
    let on_b = format!("backend=relay@{b}");
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let _ = backend_of(addr);
        let lines = lines_of(&log);
        let served_b = |worker: &str| {
            lines
                .iter()
                .any(|l| l.contains(worker) && l.contains(&on_b))
        };
        if served_b(" worker=0 ") && served_b(" worker=1 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both workers never served B:\n{}\n{}",
            lines.join("\n"),
            proxy.stderr()
        );
    }
    // From now on, every new client reaches B, whichever worker takes it.
    for _ in 0..50 {
        assert_eq!(backend_of(addr), b'B');
    }
    proxy.assert_alive("the reload");
    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit(IO_TIMEOUT).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn process_wide_settings_stay_until_a_restart_and_the_reload_says_so() {
    let backends = named_backends();
    let (a, b, _) = backends.value;
    let dir = fresh_dir("config", "process-wide");
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        format!("access_log = \"off\"\n{}", listener("127.0.0.1:0", a)),
    )
    .unwrap();
    let mut proxy = start(&file);
    let addr = proxy.listening_addr(IO_TIMEOUT);
    std::fs::write(
        &file,
        format!(
            "access_log = \"off\"\ngrace = 3\nworkers = 2\n{}",
            listener("127.0.0.1:0", b)
        ),
    )
    .unwrap();
    proxy.signal(libc::SIGHUP);
    wait_until("the reload", IO_TIMEOUT, || {
        proxy.stderr().contains("reloaded")
    });
    let stderr = proxy.stderr();
    assert!(
        stderr.contains("changes workers, grace: these belong to the whole process"),
        "{stderr}"
    );
    assert_eq!(
        backend_of(addr),
        b'B',
        "the listener was reloaded all the same"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
