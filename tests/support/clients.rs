//! Blocking std clients, and waits, every one of them bounded: a client's reads and writes
//! time out after [`IO_TIMEOUT`], and a wait for an event or a condition panics, naming
//! what it waited for, once its limit has passed.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use super::IO_TIMEOUT;
use super::pattern::Pattern;

/// A blocking client whose reads and writes fail instead of hanging.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Sends `request`, half-closes, and reads until the other side closes.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr);
    stream.write_all(request).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    read_all(&mut stream)
}

/// Like [`exchange`], for a server that may close before reading: the request may not
/// all go, and a reset counts as the end. Returns what came back before the end.
pub fn exchange_with_a_closing_server(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr);
    let _ = stream.write_all(request);
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return answer,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return answer,
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
}

/// Reads until EOF; panics on an error (a reset included) or a timeout.
pub fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    stream
        .read_to_end(&mut out)
        .expect("read until the peer closes");
    out
}

/// Reads until `needle` has arrived (or EOF); returns everything read.
pub fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&out, needle).is_none() {
        let n = stream.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes `size` bytes of the pattern from `seed`, `chunk` bytes at a time.
pub fn write_pattern(
    stream: &mut impl Write,
    seed: u64,
    size: usize,
    chunk: usize,
) -> io::Result<()> {
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0; chunk];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len());
        pattern.fill(&mut buf[..n]);
        stream.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(())
}

/// Writes `size` pattern bytes and FIN on one thread, reads and checks the echo on this
/// one; returns how many bytes came back.
pub fn pump(addr: SocketAddr, size: usize, seed: u64) -> usize {
    let mut client = connect(addr);
    let mut writer_side = client.try_clone().unwrap();
    let writer = thread::spawn(move || {
        write_pattern(&mut writer_side, seed, size, 256 * 1024).unwrap();
        writer_side.shutdown(Shutdown::Write).unwrap();
    });
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0; 256 * 1024];
    let mut total = 0;
    loop {
        let n = client.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(pattern.matches(&buf[..n]), "bytes differ at offset {total}");
        total += n;
    }
    writer.join().unwrap();
    total
}

/// Whether a read or write failed only because the socket's timeout ran out.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Receives from `rx` or panics naming `what` after `limit`.
pub fn recv<T>(rx: &Receiver<T>, limit: Duration, what: &str) -> T {
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(RecvTimeoutError::Timeout) => panic!("timed out after {limit:?} waiting for {what}"),
        Err(RecvTimeoutError::Disconnected) => {
            panic!("channel closed (reactor thread gone?) while waiting for {what}")
        }
    }
}

/// Polls `cond` every millisecond until it holds; panics naming `what` after `limit`.
/// Returns how long it took.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

/// A loopback address nothing listens on (a port that was free a moment ago).
pub fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
}

/// One HTTP/1.1 `GET` with `Connection: close`: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = connect(addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// Every sample of a Prometheus text page, by its name and labels as written.
pub fn prometheus_samples(page: &str) -> std::collections::HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// A fresh, empty directory for one test (`prefix` and `name` tell tests apart).
pub fn fresh_dir(prefix: &str, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The lines of a text file (none if it does not exist yet).
pub fn lines_of(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}
