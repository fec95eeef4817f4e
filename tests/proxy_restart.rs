//! `ember-proxy` under a supervisor: a restart that refuses nobody (a new process on the
//! same address while the old one drains), and systemd's protocols: readiness
//! (`NOTIFY_SOCKET`: `READY=1`, `STOPPING=1`) and socket activation (`LISTEN_FDS`).
//!
//! The restart test needs `net.ipv4.tcp_migrate_req = 1` (Linux 5.14+): without it, the
//! kernel resets the connections still queued on the old process's listener when it
//! closes. The test sets it for its own run and restores it after (that takes root, as CI
//! runs the tests); if it cannot, it fails and says so, rather than skip.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use support::IO_TIMEOUT;
use support::backends::{Echo, NamedEcho, serve};
use support::child::{Child, EMBER_PROXY};
use support::clients::{connect, exchange, wait_until};
use support::reactor_thread::ReactorThread;

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
/// Enough clients at once that the accept queues are rarely empty.
const LOAD_THREADS: usize = 16;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-restart-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn lines_in(path: &Path) -> usize {
    fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

/// `ember-proxy ARGS` with stdout and stderr piped, and the address it listens on.
fn ember_proxy(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Child::spawn(
        Command::new(EMBER_PROXY)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let addr = child.listening_addr(IO_TIMEOUT);
    (child, addr)
}

/// `net.ipv4.tcp_migrate_req` set to 1 for as long as it lives, then put back.
struct MigrateReq {
    before: String,
}

impl MigrateReq {
    fn enable() -> MigrateReq {
        let before = fs::read_to_string(MIGRATE_REQ).unwrap_or_else(|e| {
            panic!(
                "{MIGRATE_REQ}: {e}: this kernel cannot migrate a closing listener's \
                 connections (Linux 5.14+ can), so a restart cannot be proven to refuse nobody"
            )
        });
        if before.trim() != "1" {
            fs::write(MIGRATE_REQ, "1").unwrap_or_else(|e| {
                panic!(
                    "cannot set net.ipv4.tcp_migrate_req=1 ({e}): this test needs it; run the \
                     tests as root, or `sysctl -w net.ipv4.tcp_migrate_req=1` first"
                )
            });
        }
        MigrateReq { before }
    }
}

impl Drop for MigrateReq {
    fn drop(&mut self) {
        let _ = fs::write(MIGRATE_REQ, self.before.trim());
    }
}

/// Why exchanges failed: refused (no listener), reset (dropped from a closed listener's
/// queue), or anything else.
#[derive(Debug, Default)]
struct Failures {
    refused: u64,
    reset: u64,
    other: Vec<String>,
}

impl Failures {
    fn total(&self) -> u64 {
        self.refused + self.reset + self.other.len() as u64
    }
}

/// Clients in a tight loop, each a fresh connection and one small exchange.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Failures>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Failures::default()));
        let threads = (0..LOAD_THREADS)
            .map(|t| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        match one_exchange(addr, &format!("{t}/{n}\n")) {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                let mut f = failures.lock().unwrap();
                                match e.kind() {
                                    ErrorKind::ConnectionRefused => f.refused += 1,
                                    // A reset before the half-close is "not connected".
                                    ErrorKind::ConnectionReset | ErrorKind::NotConnected => {
                                        f.reset += 1
                                    }
                                    _ => f.other.push(e.to_string()),
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            threads,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn finish(self) -> (u64, Failures) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a load thread panicked");
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// Connect, send `message`, half-close, read the echo to the end.
fn one_exchange(addr: SocketAddr, message: &str) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(message.as_bytes())?;
    s.shutdown(Shutdown::Write)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    if answer != message {
        return Err(io::Error::other(format!(
            "sent {message:?}, got {answer:?}"
        )));
    }
    Ok(())
}

/// How many times the port changes hands in the restart test.
const HANDOVERS: usize = 3;

#[test]
fn new_processes_take_over_the_port_while_old_ones_drain_refusing_nobody() {
    let _migrate = MigrateReq::enable();
    let echo = ReactorThread::spawn(|r| serve(r, || Echo));
    let relay = echo.value.to_string();
    let dir = temp_dir("handover");
    let logs: Vec<PathBuf> = (0..=HANDOVERS)
        .map(|i| dir.join(format!("proxy-{i}.log")))
        .collect();
    // The first process picks the port (a port merely free a moment ago may still be held
    // by another test thread's child that has not exec'd); the next ones join it.
    let proxy = |listen: &str, log: &Path| {
        ember_proxy(&[
            "-l",
            listen,
            "-r",
            &relay,
            "--access-log",
            log.to_str().unwrap(),
        ])
    };

    let (mut old, addr) = proxy("127.0.0.1:0", &logs[0]);
    let listen = addr.to_string();
    let load = Load::start(addr);
    wait_until("the first process to serve clients", IO_TIMEOUT, || {
        load.ok() >= 200
    });
    for log in &logs[1..] {
        // Same address, same flags: SO_REUSEPORT lets both listen.
        let (new, new_addr) = proxy(&listen, log);
        assert_eq!(new_addr, addr);
        wait_until("the new process to serve a client", IO_TIMEOUT, || {
            lines_in(log) >= 1
        });
        old.signal(libc::SIGTERM);
        let status = old.wait_exit(IO_TIMEOUT);
        assert!(status.success(), "{status}\n{}", old.describe());
        // Clients keep coming, all to the new process now.
        let at_exit = load.ok();
        wait_until(
            "more clients after the old process left",
            IO_TIMEOUT,
            || load.ok() >= at_exit + 300,
        );
        old = new;
    }
    let (ok, failures) = load.finish();
    old.signal(libc::SIGTERM);
    let status = old.wait_exit(IO_TIMEOUT);
    assert!(status.success(), "{status}\n{}", old.describe());

    assert_eq!(failures.total(), 0, "{failures:?} of {ok} exchanges");
    let served: Vec<usize> = logs.iter().map(|log| lines_in(log)).collect();
    assert!(
        served.iter().all(|&n| n > 0),
        "sessions per process: {served:?}"
    );
    // Every exchange was served, once, by one of them.
    assert_eq!(served.iter().sum::<usize>() as u64, ok, "{served:?}");
}

/// A datagram socket for `NOTIFY_SOCKET`; the next message it gets, within the limit.
fn next_notification(socket: &UnixDatagram) -> String {
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification from ember-proxy");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn assert_ready_then_stopping(socket: &UnixDatagram, notify_socket: &str) {
    let echo = ReactorThread::spawn(|r| serve(r, || Echo));
    let mut child = Child::spawn(
        Command::new(EMBER_PROXY)
            .args(["-l", "127.0.0.1:0", "-r", &echo.value.to_string()])
            .env("NOTIFY_SOCKET", notify_socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let ready = next_notification(socket);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means listening: a client is served at once.
    let addr = child.listening_addr(IO_TIMEOUT);
    assert!(
        ready.contains(&format!("STATUS=listening on {addr}")),
        "{ready:?}"
    );
    assert_eq!(exchange(addr, b"ready?"), b"ready?");
    child.signal(libc::SIGTERM);
    let stopping = next_notification(socket);
    assert_eq!(stopping, "STOPPING=1");
    assert!(
        child.wait_exit(IO_TIMEOUT).success(),
        "{}",
        child.describe()
    );
}

#[test]
fn readiness_and_the_drain_are_told_to_notify_socket_at_a_path() {
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    assert_ready_then_stopping(&socket, path.to_str().unwrap());
}

#[test]
fn readiness_and_the_drain_are_told_to_an_abstract_notify_socket() {
    let name = format!("ember-proxy-test/{}/notify", std::process::id());
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    assert_ready_then_stopping(&socket, &format!("@{name}"));
}

/// `ember-proxy ARGS` started the way systemd's socket activation starts it: `listeners`
/// as descriptors 3, 4, ..., `LISTEN_FDS` their count, and `LISTEN_PID` set to the
/// proxy's own pid (by a shell that then execs the proxy, keeping its pid).
fn socket_activated(listeners: &[&TcpListener], args: &[&str]) -> Child {
    let fds: Vec<i32> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    assert!(fds.len() <= 8, "at most 8 sockets");
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        "export LISTEN_PID=$$; exec \"$0\" \"$@\"",
        EMBER_PROXY,
    ])
    .args(args)
    .env("LISTEN_FDS", fds.len().to_string())
    .env_remove("LISTEN_PID")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: the closure runs between fork and exec and only calls fcntl(2), dup2(2) and
    // close(2), all async-signal-safe, on descriptor numbers; it allocates nothing (`fds`
    // was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first (a listener may sit on 3 or 4 already), then into
            // place: a descriptor made by F_DUPFD or dup2 is not close-on-exec.
            let mut moved = [-1; 8];
            for (i, &fd) in fds.iter().enumerate() {
                moved[i] = libc::fcntl(fd, libc::F_DUPFD, 900);
                if moved[i] == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, &fd) in moved[..fds.len()].iter().enumerate() {
                if libc::dup2(fd, 3 + i as i32) == -1 || libc::close(fd) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Child::spawn(&mut cmd)
}

#[test]
fn a_socket_passed_by_systemd_is_adopted_and_l_is_ignored() {
    let echo = ReactorThread::spawn(|r| serve(r, || Echo));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let passed = listener.local_addr().unwrap();
    // `-l` names a port that is taken: binding it would fail, adopting ignores it.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for workers in ["1", "2"] {
        let mut child = socket_activated(
            &[&listener],
            &[
                "-l",
                &taken,
                "-r",
                &echo.value.to_string(),
                "--workers",
                workers,
            ],
        );
        let addr = child.listening_addr(IO_TIMEOUT);
        assert_eq!(addr, passed, "{}", child.describe());
        for i in 0..50 {
            let message = format!("through the passed socket {i}");
            assert_eq!(exchange(passed, message.as_bytes()), message.as_bytes());
        }
        wait_until("the adoption to be logged", IO_TIMEOUT, || {
            child.stderr().contains("socket activation")
        });
        child.signal(libc::SIGTERM);
        assert!(
            child.wait_exit(IO_TIMEOUT).success(),
            "{}",
            child.describe()
        );
    }
}

#[test]
fn several_passed_sockets_go_to_the_listeners_on_their_addresses_and_survive_a_reload() {
    let backends = ReactorThread::spawn(|r| {
        Ok((
            serve(r, || NamedEcho("A"))?,
            serve(r, || NamedEcho("B"))?,
            serve(r, || NamedEcho("C"))?,
        ))
    });
    let (a, b, c) = backends.value;
    let first = TcpListener::bind("127.0.0.1:0").unwrap();
    let second = TcpListener::bind("127.0.0.2:0").unwrap();
    // A passed socket no listener asks for is closed with a warning.
    let stray = TcpListener::bind("127.0.0.3:0").unwrap();
    let (one, two) = (first.local_addr().unwrap(), second.local_addr().unwrap());
    let dir = support::clients::fresh_dir("restart", "several-passed");
    let file = dir.join("proxy.toml");
    let config = |to_one: SocketAddr, to_two: SocketAddr| {
        format!(
            "access_log = \"off\"\nworkers = 2\n\
             [[listener]]\nlisten = \"{one}\"\nrelay = \"{to_one}\"\n\
             [[listener]]\nlisten = \"{two}\"\nrelay = \"{to_two}\"\n\
             [[listener]]\nlisten = \"127.0.0.4:0\"\nrelay = \"{to_one}\"\n"
        )
    };
    std::fs::write(&file, config(a, b)).unwrap();
    let mut child = socket_activated(
        &[&second, &stray, &first],
        &["--config", file.to_str().unwrap()],
    );
    assert_eq!(child.listening_addr(IO_TIMEOUT), one);
    assert_eq!(child.listening_addr(IO_TIMEOUT), two);
    let own = child.listening_addr(IO_TIMEOUT);
    assert_eq!(own.ip().to_string(), "127.0.0.4", "the third binds its own");
    // The test's own copies go: only the proxy's keep the sockets listening.
    drop((first, second, stray));
    let name = |addr| {
        let mut s = connect(addr);
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).unwrap();
        byte[0]
    };
    assert_eq!((name(one), name(two), name(own)), (b'A', b'B', b'A'));
    wait_until("the stray socket's warning", IO_TIMEOUT, || {
        child.stderr().contains("no listener for the passed socket")
    });
    // The reload changes both passed listeners' backends: they keep their sockets.
    std::fs::write(&file, config(c, a)).unwrap();
    child.signal(libc::SIGHUP);
    wait_until("the reload", IO_TIMEOUT, || {
        child.stderr().contains("reloaded")
    });
    wait_until("both workers on the new backends", IO_TIMEOUT, || {
        (0..20).all(|_| (name(one), name(two)) == (b'C', b'A'))
    });
    child.signal(libc::SIGTERM);
    assert!(
        child.wait_exit(IO_TIMEOUT).success(),
        "{}",
        child.describe()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn listen_fds_meant_for_another_process_are_left_alone() {
    let echo = ReactorThread::spawn(|r| serve(r, || Echo));
    let mut child = Child::spawn(
        Command::new(EMBER_PROXY)
            .args(["-l", "127.0.0.1:0", "-r", &echo.value.to_string()])
            .env("LISTEN_FDS", "1")
            .env("LISTEN_PID", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let addr = child.listening_addr(IO_TIMEOUT);
    assert_eq!(exchange(addr, b"own socket"), b"own socket");
    assert!(!child.stderr().contains("socket activation"));
    child.signal(libc::SIGTERM);
    assert!(child.wait_exit(IO_TIMEOUT).success());
}
