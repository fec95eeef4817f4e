//! `ember-proxy --workers N`: several reactors, one per thread, each with its own
//! `SO_REUSEPORT` listener on the same address. The kernel spreads the clients over them;
//! `/metrics` adds every worker up and says which worker served how many
//! (`ember_worker_sessions_total{worker="N"}`); each access-log line names its worker;
//! SIGTERM drains every worker before the process exits.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::IO_TIMEOUT;
use support::backends::{Echo, serve};
use support::child::{Child, EMBER_PROXY};
use support::clients::{
    connect, exchange, fresh_dir, http_get, lines_of, prometheus_samples, read_until, wait_until,
};
use support::reactor_thread::ReactorThread;

const CLIENT_THREADS: usize = 8;
const CLIENTS_PER_THREAD: usize = 250;

/// `ember-proxy -l 127.0.0.1:0 --workers N --admin 127.0.0.1:0 ARGS`: the child, the
/// address it listens on and its admin address.
fn proxy(workers: usize, args: &[&str]) -> (Child, SocketAddr, SocketAddr) {
    let mut child = Child::spawn(
        Command::new(EMBER_PROXY)
            .args(["-l", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--workers", &workers.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let addr = child.listening_addr(IO_TIMEOUT);
    let admin = child.admin_addr(IO_TIMEOUT);
    (child, addr, admin)
}

/// Every sample of `/metrics`, by its name and labels as written.
fn metrics(admin: SocketAddr) -> HashMap<String, f64> {
    let (status, page) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    prometheus_samples(&page)
}

fn sample(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(-1.0)
}

fn worker_sessions(m: &HashMap<String, f64>, worker: usize) -> f64 {
    sample(
        m,
        &format!("ember_worker_sessions_total{{worker=\"{worker}\"}}"),
    )
}

fn temp_log(name: &str) -> PathBuf {
    fresh_dir("workers", name).join("access.log")
}

/// The value of `key=` in a text access-log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn two_workers_serve_two_thousand_clients_and_both_take_a_share() {
    let echo = ReactorThread::spawn(|r| serve(r, || Echo));
    let log = temp_log("share");
    let relay = echo.value.to_string();
    let (proxy, addr, admin) = proxy(2, &["-r", &relay, "--access-log", log.to_str().unwrap()]);
    assert!(proxy.stdout().contains("; 2 workers"), "{}", proxy.stdout());

    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..CLIENTS_PER_THREAD {
                    let message = format!("client {t}/{i}\n");
                    assert_eq!(exchange(addr, message.as_bytes()), message.as_bytes());
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client thread failed");
    }
    let total = (CLIENT_THREADS * CLIENTS_PER_THREAD) as f64;
    let backend = format!("{{pool=\"relay\",backend=\"{relay}\"}}");
    let mut m = HashMap::new();
    // The pools are published every half second: wait until the last one is in.
    wait_until("the metrics to add up", IO_TIMEOUT, || {
        m = metrics(admin);
        sample(&m, "ember_sessions_total") == total
            && sample(&m, "ember_sessions_active") == 0.0
            && sample(&m, &format!("ember_backend_connects_total{backend}")) == total
            && sample(&m, &format!("ember_backend_sessions_active{backend}")) == 0.0
    });
    let (w0, w1) = (worker_sessions(&m, 0), worker_sessions(&m, 1));
    assert_eq!(w0 + w1, total, "{m:?}");
    // The kernel hashes each new connection to one of the two listeners: with 2,000
    // clients, each worker gets far more than a tenth.
    assert!(
        w0 >= total / 10.0 && w1 >= total / 10.0,
        "worker 0: {w0}, worker 1: {w1}"
    );
    assert_eq!(sample(&m, &format!("ember_backend_up{backend}")), 1.0);
    assert_eq!(
        sample(&m, "ember_bytes_total{direction=\"in\"}"),
        sample(&m, "ember_bytes_total{direction=\"out\"}")
    );

    // One access-log line per client, each naming its worker; (worker, session) names
    // one session.
    wait_until("every access-log line", IO_TIMEOUT, || {
        lines_of(&log).len() == total as usize
    });
    let lines = lines_of(&log);
    let mut by_worker = [0.0; 2];
    let mut sessions = HashSet::new();
    for line in &lines {
        let worker: usize = field(line, "worker")
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no worker in {line}"));
        by_worker[worker] += 1.0;
        let session = field(line, "session").unwrap().to_owned();
        assert!(sessions.insert((worker, session)), "twice: {line}");
        assert_eq!(field(line, "bytes_in"), field(line, "bytes_out"), "{line}");
    }
    assert_eq!(by_worker, [w0, w1]);
    // The /stats page adds the workers up too.
    let (status, page) = http_get(admin, "/stats?live");
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!("<dd id=\"sessions-total\">{total}</dd>")),
        "{page}"
    );
}

/// A client that got its first echo through the proxy and stays.
fn staying_client(addr: SocketAddr, i: usize) -> TcpStream {
    let mut client = connect(addr);
    let hello = format!("hello {i}\n");
    client.write_all(hello.as_bytes()).unwrap();
    assert_eq!(read_until(&mut client, b"\n"), hello.as_bytes());
    client
}

#[test]
fn sigterm_drains_every_worker_before_the_process_exits() {
    let echo = ReactorThread::spawn(|r| serve(r, || Echo));
    let (mut proxy, addr, admin) = proxy(
        2,
        &[
            "-r",
            &echo.value.to_string(),
            "--grace",
            "60",
            "--access-log",
            "off",
        ],
    );
    // Clients that stay, until both workers have some.
    let mut staying = Vec::new();
    let active = |m: &HashMap<String, f64>, w: usize| {
        sample(
            m,
            &format!("ember_worker_sessions_active{{worker=\"{w}\"}}"),
        )
    };
    while staying.len() < 64 {
        staying.push(staying_client(addr, staying.len()));
        let m = metrics(admin);
        if active(&m, 0) >= 1.0 && active(&m, 1) >= 1.0 {
            break;
        }
    }
    let m = metrics(admin);
    assert!(active(&m, 0) >= 1.0 && active(&m, 1) >= 1.0, "{m:?}");
    assert_eq!(active(&m, 0) + active(&m, 1), staying.len() as f64, "{m:?}");

    let signalled = Instant::now();
    proxy.signal(libc::SIGTERM);
    // Neither worker accepts any more: a new client is refused, whichever listener
    // the kernel would have picked.
    wait_until("new clients to be refused", IO_TIMEOUT, || {
        (0..16).all(|_| {
            matches!(
                TcpStream::connect(addr),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused
            )
        })
    });
    assert_eq!(http_get(admin, "/health"), (503, "draining\n".into()));
    // Every staying client, on either worker, is still served.
    for (i, client) in staying.iter_mut().enumerate() {
        let again = format!("still here {i}\n");
        client.write_all(again.as_bytes()).unwrap();
        assert_eq!(read_until(client, b"\n"), again.as_bytes());
    }
    proxy.assert_alive("SIGTERM with clients left");
    for mut client in staying {
        client.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
    let status = proxy.wait_exit(IO_TIMEOUT);
    assert!(status.success(), "{status}\n{}", proxy.describe());
    // It left when the last client did, not at the end of the grace period.
    assert!(signalled.elapsed() < Duration::from_secs(30));
    assert!(proxy.stderr().contains("stopping"), "{}", proxy.stderr());
}

/// The shadow limits count the shadows of every worker: the workers share one count.
#[test]
fn the_shadow_memory_limit_is_the_whole_process_s_not_each_worker_s() {
    let prod = ReactorThread::spawn(|r| serve(r, || Echo));
    let shadow = ReactorThread::spawn(|r| serve(r, || Echo));
    // Each shadow reserves its 1 MiB buffer: 4 MiB is room for four shadows in all.
    const ROOM: f64 = 4.0;
    const CLIENTS: usize = 12;
    let (_proxy, addr, admin) = proxy(
        2,
        &[
            "-r",
            &prod.value.to_string(),
            "-d",
            &shadow.value.to_string(),
            "--shadow-buffer",
            "1M",
            "--shadow-max-memory",
            "4M",
            "--access-log",
            "off",
        ],
    );
    let staying: Vec<TcpStream> = (0..CLIENTS).map(|i| staying_client(addr, i)).collect();
    let m = metrics(admin);
    let served: f64 = (0..2).map(|w| worker_sessions(&m, w)).sum();
    assert_eq!(served, CLIENTS as f64, "{m:?}");
    let skipped = sample(&m, "ember_shadows_skipped_total");
    assert_eq!(
        CLIENTS as f64 - skipped,
        ROOM,
        "clients with a shadow: {m:?}"
    );
    assert_eq!(sample(&m, "ember_shadows_active"), ROOM, "{m:?}");
    drop(staying);
}
