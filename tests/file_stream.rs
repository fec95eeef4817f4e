//! Files streamed to connections (`stream_file`, `stream_file_data`, `send_file_data`):
//! 1 GiB with `sendfile(2)` to a slow reader, byte for byte and with nothing buffered in
//! user space; the file's place between bytes sent before and after it; the copying path
//! through TLS, started mid-handshake; a reader that resets; a file that shrinks; and the
//! refusals.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ember::tls::{ClientTls, Identity, ServerTls};
use ember::{Context, FileStreamFailed, FileStreamResult, Handler, UnbindReason};

use support::IO_TIMEOUT;
use support::certs::TestCa;
use support::clients::{fresh_dir, recv};
use support::pattern::Pattern;
use support::reactor_thread::{ReactorThread, run_bounded, watch_peak_queue};
use support::sys::{reset_on_close, vm_rss};

/// Writes `len` bytes of the pattern from `seed` to a fresh file.
fn pattern_file(name: &str, len: u64, seed: u64) -> PathBuf {
    let path = fresh_dir("file_stream", name).join("data");
    let mut file = io::BufWriter::new(File::create(&path).unwrap());
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        file.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    file.into_inner().unwrap().sync_all().unwrap();
    path
}

/// Reads from `stream` to EOF, checking every byte against the pattern from `seed`;
/// `pace` runs before each read (a slow reader sleeps there). Returns the bytes read.
fn check_to_eof(stream: &mut impl Read, seed: u64, mut pace: impl FnMut(u64)) -> u64 {
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut expected = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        pace(total);
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            return total;
        }
        pattern.fill(&mut expected[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != expected[i]) {
            panic!("wrong byte at offset {}", total + i as u64);
        }
        total += n as u64;
    }
}

/// Accepts connections and runs `serve` on each in `post_init`.
struct Serve<F: FnMut(&mut Context<'_>)>(F);

impl<F: FnMut(&mut Context<'_>) + 'static> Handler for Serve<F> {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        (self.0)(cx);
    }
}

/// A reactor thread serving each connection with a file stream: `path`, then
/// close-after-writing at once (so the close must wait for the file); reports each
/// stream's result.
fn file_server(
    path: PathBuf,
) -> (
    ReactorThread<(SocketAddr, Arc<std::sync::atomic::AtomicUsize>)>,
    mpsc::Receiver<FileStreamResult>,
) {
    let (tx, rx) = mpsc::channel();
    let server = ReactorThread::spawn(move |r| {
        let peak = watch_peak_queue(r);
        let id = r.start_server("127.0.0.1:0", move || {
            let path = path.clone();
            let tx = tx.clone();
            Serve(move |cx: &mut Context<'_>| {
                let tx = tx.clone();
                cx.stream_file_data(&path, move |_, result| {
                    let _ = tx.send(result);
                })
                .unwrap();
                cx.close_after_writing();
            })
        })?;
        Ok((r.server_addr(id).unwrap(), peak))
    });
    (server, rx)
}

#[test]
fn a_1_gib_file_reaches_a_slow_reader_byte_exact_with_nothing_buffered_in_user_space() {
    const LEN: u64 = 1 << 30;
    const SEED: u64 = 15;
    let path = pattern_file("one_gib", LEN, SEED);
    let (server, results) = file_server(path.clone());
    let (addr, peak_queue) = (server.value.0, Arc::clone(&server.value.1));
    let before = vm_rss();
    let mut peak_rss = before;

    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // The first 16 MiB a read every millisecond (the server's socket stays full and
    // sendfile keeps meeting EAGAIN), then as fast as it comes.
    let received = check_to_eof(&mut client, SEED, |total| {
        if total < 16 << 20 {
            thread::sleep(Duration::from_millis(1));
        }
        if total % (64 << 20) == 0 {
            peak_rss = peak_rss.max(vm_rss());
        }
    });
    assert_eq!(
        received, LEN,
        "the close after writing waited for the whole file"
    );
    match recv(&results, IO_TIMEOUT, "the stream's result") {
        Ok(sent) => assert_eq!(sent, LEN),
        Err(e) => panic!("the stream failed: {e}"),
    }
    assert_eq!(
        peak_queue.load(Ordering::Relaxed),
        0,
        "sendfile never queues the file in user space"
    );
    let grown = peak_rss.saturating_sub(before);
    assert!(grown < 32 << 20, "memory grew by {grown} bytes");
    server.stop();
    let _ = std::fs::remove_file(path);
}

#[test]
fn files_keep_their_place_among_the_bytes_sent_before_between_and_after_them() {
    // Larger than loopback's socket buffers and than one turn's sending: it is still
    // streaming when the handler sends more.
    const LEN: u64 = 32 << 20;
    const SECOND: u64 = 1 << 20;
    const SKIP: u64 = 100;
    let path = pattern_file("in_order", LEN, 3);
    let second = pattern_file("in_order_second", SKIP + SECOND, 7);
    let empty = fresh_dir("file_stream", "empty_file").join("empty");
    File::create(&empty).unwrap();
    let results = Rc::new(RefCell::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let seen = Rc::clone(&results);
    let reader = thread::spawn(move || {
        let addr: SocketAddr = recv(&rx, IO_TIMEOUT, "the server's address");
        let mut client = TcpStream::connect(addr).unwrap();
        let mut all = Vec::new();
        client.read_to_end(&mut all).unwrap();
        all
    });
    let (_, stopped_by_watchdog) = run_bounded(Duration::from_secs(60), |r| {
        let id = r.start_server("127.0.0.1:0", move || {
            let (path, second, empty) = (path.clone(), second.clone(), empty.clone());
            let seen = Rc::clone(&seen);
            Serve(move |cx: &mut Context<'_>| {
                let record = |which: &'static str| {
                    let seen = Rc::clone(&seen);
                    move |r: &mut ember::Reactor, result: FileStreamResult| {
                        let mut seen = seen.borrow_mut();
                        seen.push((which, result.map_err(|e| e.to_string())));
                        if seen.len() == 2 {
                            r.stop();
                        }
                    }
                };
                cx.send_data(b"before|");
                assert_eq!(cx.stream_file_data(&path, record("first")).unwrap(), LEN);
                // While it streams: bytes wait behind it, and so does a second file, from
                // where its position was set.
                assert!(cx.send_data(b"|between|"));
                assert!(cx.outbound_size() >= b"|between|".len());
                let mut file = File::open(&second).unwrap();
                file.seek(SeekFrom::Start(SKIP)).unwrap();
                assert_eq!(cx.stream_file(file, record("second")).unwrap(), SECOND);
                assert!(cx.send_data(b"|after"));
                cx.close_after_writing();
                let late = cx.send_file_data(&empty).unwrap_err();
                assert_eq!(late.kind(), io::ErrorKind::BrokenPipe, "{late}");
            })
        })?;
        let addr = r.server_addr(id).unwrap();
        tx.send(addr).unwrap();
        Ok(())
    });
    assert!(!stopped_by_watchdog);
    let all = reader.join().unwrap();
    let mut expected = b"before|".to_vec();
    expected.extend(Pattern::new(3).bytes(LEN as usize));
    expected.extend_from_slice(b"|between|");
    expected.extend_from_slice(&Pattern::new(7).bytes((SKIP + SECOND) as usize)[SKIP as usize..]);
    expected.extend_from_slice(b"|after");
    assert_eq!(all.len(), expected.len());
    if let Some(at) = (0..all.len()).find(|&i| all[i] != expected[i]) {
        panic!("wrong byte at offset {at}");
    }
    assert_eq!(
        *results.borrow(),
        vec![("first", Ok(LEN)), ("second", Ok(SECOND))]
    );
}

#[test]
fn send_file_data_queues_small_and_empty_files_like_send_data() {
    let small = pattern_file("small", 1000, 4);
    let empty = fresh_dir("file_stream", "empty").join("empty");
    File::create(&empty).unwrap();
    let server = ReactorThread::spawn(move |r| {
        let id = r.start_server("127.0.0.1:0", move || {
            let (small, empty) = (small.clone(), empty.clone());
            Serve(move |cx: &mut Context<'_>| {
                let missing = cx.send_file_data(Path::new("/nonexistent/ember-file"));
                assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
                assert_eq!(cx.send_file_data(&empty).unwrap(), 0);
                cx.send_data(b"[");
                assert_eq!(cx.send_file_data(&small).unwrap(), 1000);
                cx.send_data(b"]");
                cx.close_after_writing();
            })
        })?;
        Ok(r.server_addr(id).unwrap())
    });
    let mut client = TcpStream::connect(server.value).unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut all = Vec::new();
    client.read_to_end(&mut all).unwrap();
    let mut expected = b"[".to_vec();
    expected.extend(Pattern::new(4).bytes(1000));
    expected.push(b']');
    assert_eq!(all, expected);
    server.stop();
}

/// A TLS server that streams a file from `post_init`, while its handshake has not
/// started, so the first chunk waits in TLS's held plaintext.
struct TlsFileServer {
    config: Arc<ember::tls::rustls::ServerConfig>,
    path: PathBuf,
    result: Rc<RefCell<Option<FileStreamResult>>>,
}

impl Handler for TlsFileServer {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.start_tls_server(Arc::clone(&self.config)).unwrap();
        let result = Rc::clone(&self.result);
        cx.stream_file_data(&self.path, move |_, r| *result.borrow_mut() = Some(r))
            .unwrap();
        cx.close_after_writing();
    }
}

/// A TLS client that checks what it receives against the pattern.
struct TlsChecker {
    config: Arc<ember::tls::rustls::ClientConfig>,
    pattern: Pattern,
    received: Rc<RefCell<u64>>,
    mismatch: Rc<RefCell<Option<u64>>>,
    unbound: Rc<RefCell<Option<UnbindReason>>>,
}

impl Handler for TlsChecker {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.start_tls_client(Arc::clone(&self.config), "localhost")
            .unwrap();
    }

    fn receive_data(&mut self, _cx: &mut Context<'_>, data: &[u8]) {
        let expected = self.pattern.bytes(data.len());
        let mut received = self.received.borrow_mut();
        if expected != data && self.mismatch.borrow().is_none() {
            let at = (0..data.len()).find(|&i| expected[i] != data[i]).unwrap();
            *self.mismatch.borrow_mut() = Some(*received + at as u64);
        }
        *received += data.len() as u64;
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        *self.unbound.borrow_mut() = Some(reason);
        cx.reactor().stop();
    }
}

#[test]
fn over_tls_a_file_is_copied_a_chunk_at_a_time_byte_exact() {
    const LEN: u64 = 24 << 20;
    const SEED: u64 = 24;
    let path = pattern_file("tls", LEN, SEED);
    let ca = TestCa::new("file stream CA");
    let leaf = ca.server(&["localhost"]);
    let server_config = ServerTls::new(
        Identity::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap(),
    )
    .build()
    .unwrap();
    let client_config = ClientTls::with_ca(ca.cert_pem.as_bytes())
        .unwrap()
        .build()
        .unwrap();
    let result = Rc::new(RefCell::new(None));
    let received = Rc::new(RefCell::new(0));
    let mismatch = Rc::new(RefCell::new(None));
    let unbound = Rc::new(RefCell::new(None));
    let mut peak = None;
    let (_, stopped_by_watchdog) = run_bounded(Duration::from_secs(60), |r| {
        peak = Some(watch_peak_queue(r));
        let (result, path) = (Rc::clone(&result), path.clone());
        let id = r.start_server("127.0.0.1:0", move || TlsFileServer {
            config: Arc::clone(&server_config),
            path: path.clone(),
            result: Rc::clone(&result),
        })?;
        let addr = r.server_addr(id).unwrap();
        r.connect(
            addr,
            TlsChecker {
                config: client_config,
                pattern: Pattern::new(SEED),
                received: Rc::clone(&received),
                mismatch: Rc::clone(&mismatch),
                unbound: Rc::clone(&unbound),
            },
        )?;
        Ok(())
    });
    assert!(!stopped_by_watchdog);
    assert_eq!(*mismatch.borrow(), None, "first wrong byte");
    assert_eq!(*received.borrow(), LEN);
    assert!(
        matches!(*result.borrow(), Some(Ok(LEN))),
        "{:?}",
        result.borrow()
    );
    assert!(
        unbound
            .borrow()
            .as_ref()
            .is_some_and(UnbindReason::is_orderly)
    );
    // One 64 KiB chunk of plaintext at a time, plus its records' overhead.
    let peak = peak.unwrap().load(Ordering::Relaxed);
    assert!(peak <= 80 * 1024, "{peak} bytes queued at the peak");
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_reader_that_resets_mid_file_ends_the_stream_with_the_connections_reason() {
    const LEN: u64 = 256 << 20;
    let path = pattern_file("reset", LEN, 5);
    let (server, results) = file_server(path.clone());
    let mut client = TcpStream::connect(server.value.0).unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    client.read_exact(&mut buf).unwrap();
    reset_on_close(&client);
    drop(client);
    match recv(&results, IO_TIMEOUT, "the stream's result") {
        Err(FileStreamFailed::ConnectionClosed { sent, reason }) => {
            assert!((1 << 20..LEN).contains(&sent), "sent {sent}");
            assert_eq!(reason, UnbindReason::Reset);
        }
        other => panic!("expected the connection's end, got {other:?}"),
    }
    assert!(
        results.recv_timeout(Duration::from_millis(200)).is_err(),
        "told exactly once"
    );
    server.stop();
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_file_that_shrinks_while_it_streams_closes_the_connection_with_a_read_error() {
    const LEN: u64 = 64 << 20;
    const KEPT: u64 = 1 << 20;
    let path = pattern_file("shrinks", LEN, 6);
    let (server, results) = file_server(path.clone());
    let mut client = TcpStream::connect(server.value.0).unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // The server opened the file once the connection was accepted: the first bytes
    // prove it; then the file loses all but its first MiB.
    let mut first = [0u8; 1];
    client.read_exact(&mut first).unwrap();
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(KEPT)
        .unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    let received = 1 + rest.len() as u64;
    assert!(
        received < LEN,
        "the peer got {received} bytes, not the whole file"
    );
    match recv(&results, IO_TIMEOUT, "the stream's result") {
        Err(FileStreamFailed::Read(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
        other => panic!("expected a read error, got {other:?}"),
    }
    server.stop();
    let _ = std::fs::remove_file(path);
}

#[path = "../examples/file_server.rs"]
mod file_server;

/// Reads one HTTP/1.1 answer's head; returns the status line and Content-Length.
fn read_head(stream: &mut impl Read) -> (String, u64) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.lines().next().unwrap().to_owned();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |n| n.parse().unwrap());
    (status, length)
}

#[test]
fn the_file_server_example_answers_pipelined_requests_in_order_with_whole_files() {
    const BIG: u64 = 48 << 20;
    let big = pattern_file("server_big", BIG, 8);
    let dir = big.parent().unwrap().to_path_buf();
    std::fs::write(dir.join("small"), b"small file\n").unwrap();
    let server =
        ReactorThread::spawn(move |r| file_server::start(r, dir, "127.0.0.1:0".parse().unwrap()));
    let mut client = TcpStream::connect(server.value).unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // Four requests at once, in 1-byte segments; the big file's answer is still going out
    // when the later ones are answered, so theirs queue behind it.
    let requests = "GET /data HTTP/1.1\r\nHost: x\r\n\r\n\
                    HEAD /small HTTP/1.1\r\nHost: x\r\n\r\n\
                    GET /../data HTTP/1.1\r\nHost: x\r\n\r\n\
                    GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    client.set_nodelay(true).unwrap();
    for byte in requests.as_bytes() {
        client.write_all(std::slice::from_ref(byte)).unwrap();
    }
    let (status, length) = read_head(&mut client);
    assert_eq!((status.as_str(), length), ("HTTP/1.1 200 OK", BIG));
    let mut body = (&mut client).take(BIG);
    assert_eq!(check_to_eof(&mut body, 8, |_| {}), BIG);
    assert_eq!(
        read_head(&mut client),
        ("HTTP/1.1 200 OK".into(), 11),
        "HEAD"
    );
    assert_eq!(read_head(&mut client), ("HTTP/1.1 404 Not Found".into(), 0));
    assert_eq!(read_head(&mut client), ("HTTP/1.1 200 OK".into(), 11));
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"small file\n", "then closed, as asked");
    server.stop();
}
