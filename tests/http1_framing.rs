//! HTTP/1.1 framing (`ember::proxy::http1`) on bytes a real server wrote: nginx, run in the
//! foreground for each test with a configuration that makes it answer with every framing
//! it has: `Content-Length`, none for `HEAD`, chunked with a trailer (gzip without a known
//! length), read-until-close (gzip with chunked turned off), and `100 Continue`.
//!
//! nginx is found on `PATH` or at `/usr/sbin/nginx`; without it these tests fail, saying so.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ember::proxy::http1::{Framing, Piece, RequestSplitter, ResponseHead, ResponseSplitter};

/// How long a test waits on nginx (to listen, to answer) before it fails.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// The static file nginx serves as is, with a `Content-Length`.
const SMALL_FILE: &[u8] = b"hello static file\n";

/// A running nginx, killed and reaped, its directory removed, when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    fn start(test: &str) -> Nginx {
        let binary = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join("nginx"))
            .chain([PathBuf::from("/usr/sbin/nginx")])
            .find(|candidate| candidate.is_file())
            .expect("nginx is not installed (not on PATH nor /usr/sbin): `apt-get install nginx`");
        let dir = std::env::temp_dir().join(format!("ember-http1-{}-{test}", std::process::id()));
        // A directory left by an earlier run under the same pid holds a stale pid file.
        let _ = std::fs::remove_dir_all(&dir);
        let html = dir.join("html");
        std::fs::create_dir_all(&html).unwrap();
        std::fs::write(html.join("small.txt"), SMALL_FILE).unwrap();
        std::fs::write(html.join("big.txt"), "compressible line\n".repeat(200)).unwrap();
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        let d = dir.display();
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\n\
             error_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               default_type text/plain;\n\
               server {{\n\
                 listen {addr};\n\
                 root {d}/html;\n\
                 location /chunked/ {{ alias {d}/html/; gzip on; gzip_min_length 1;\n\
                   gzip_types text/plain; add_trailer X-Trailer done; }}\n\
                 location /close/ {{ alias {d}/html/; gzip on; gzip_min_length 1;\n\
                   gzip_types text/plain; chunked_transfer_encoding off; }}\n\
                 location /upload {{ proxy_pass http://{addr}/uploaded; }}\n\
                 location /uploaded {{ return 200 \"posted\\n\"; }}\n\
               }}\n\
             }}\n"
        );
        let config_path = dir.join("nginx.conf");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        Nginx { child, addr, dir }
    }

    /// A connection to nginx, once it listens.
    ///
    /// nginx writes its pid file after it has bound its port, so the test waits for the
    /// file rather than for the first connection that succeeds: the port was free a moment
    /// ago, but another test thread's child, forked while this thread held the port and
    /// not yet exec'd, can still hold that listener. A connection queued there is reset
    /// when the child execs (and nginx, retrying its bind meanwhile, says so only on the
    /// discarded stderr).
    fn connect(&mut self) -> TcpStream {
        let deadline = Instant::now() + IO_TIMEOUT;
        while !self.dir.join("nginx.pid").exists() {
            let exited = self.child.try_wait().ok().flatten();
            assert!(
                exited.is_none(),
                "nginx exited ({exited:?}): {}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "nginx not listening on {} after {IO_TIMEOUT:?}: {}",
                self.addr,
                self.log()
            );
            thread::sleep(Duration::from_millis(5));
        }
        let stream = TcpStream::connect(self.addr).expect("nginx listens once its pid file exists");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Everything `stream` sends until it closes.
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => bytes,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!(
                "nginx did not close within {IO_TIMEOUT:?}; sent {}",
                bytes.escape_ascii()
            )
        }
        Err(e) => panic!("reading from nginx: {e}"),
    }
}

/// A piece with its bytes copied; consecutive body pieces merged (their cut depends on
/// the slices fed, not on the stream).
#[derive(Debug, PartialEq)]
enum Seen<H> {
    Head(H),
    Body { raw: Vec<u8>, data: Vec<u8> },
    End,
    Other(String),
}

fn record<L: std::fmt::Debug>(
    seen: &mut Vec<Seen<ember::proxy::http1::Head<L>>>,
    piece: Piece<'_, L>,
) {
    match piece {
        Piece::Head(head) => seen.push(Seen::Head(head)),
        Piece::Body { raw, data } => match seen.last_mut() {
            Some(Seen::Body { raw: r, data: d }) => {
                r.extend_from_slice(raw);
                d.extend_from_slice(data);
            }
            _ => seen.push(Seen::Body {
                raw: raw.to_vec(),
                data: data.to_vec(),
            }),
        },
        Piece::End => seen.push(Seen::End),
        other => seen.push(Seen::Other(format!("{other:?}"))),
    }
}

fn raw_of<L>(seen: &[Seen<ember::proxy::http1::Head<L>>]) -> Vec<u8> {
    let mut raw = Vec::new();
    for piece in seen {
        match piece {
            Seen::Head(head) => raw.extend_from_slice(head.as_bytes()),
            Seen::Body { raw: bytes, .. } => raw.extend_from_slice(bytes),
            Seen::End | Seen::Other(_) => {}
        }
    }
    raw
}

/// Slice lengths for `len` bytes: whole, a byte at a time, and a few fixed-seed random cuts.
fn ways_to_cut(len: usize) -> Vec<Vec<usize>> {
    let mut ways = vec![vec![len], vec![1; len]];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for longest in [3, 17, 200, 1500] {
        let mut lengths = Vec::new();
        let mut left = len;
        while left > 0 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let next = (1 + (state % longest) as usize).min(left);
            lengths.push(next);
            left -= next;
        }
        ways.push(lengths);
    }
    ways
}

/// Splits `stream` as responses to `methods`, ended by the end of the stream, every way
/// of cutting it; checks the ways agree and cover the stream; returns the pieces.
fn split_responses(stream: &[u8], methods: &[&str]) -> Vec<Seen<ResponseHead>> {
    let mut first: Option<Vec<Seen<ResponseHead>>> = None;
    for lengths in ways_to_cut(stream.len()) {
        let mut splitter = ResponseSplitter::new();
        for method in methods {
            splitter.expect(method);
        }
        let mut seen = Vec::new();
        let mut rest = stream;
        for len in lengths {
            let (mut slice, tail) = rest.split_at(len);
            rest = tail;
            while let Some(piece) = splitter.next_piece(&mut slice) {
                record(&mut seen, piece);
            }
        }
        splitter.finish();
        while let Some(piece) = splitter.next_piece(&mut &b""[..]) {
            record(&mut seen, piece);
        }
        assert!(
            raw_of(&seen) == stream,
            "the pieces' raw bytes are what nginx sent"
        );
        match &first {
            None => first = Some(seen),
            Some(first) => assert!(first == &seen, "every way of cutting agrees"),
        }
    }
    first.unwrap_or_default()
}

fn heads(seen: &[Seen<ResponseHead>]) -> Vec<&ResponseHead> {
    seen.iter()
        .filter_map(|piece| match piece {
            Seen::Head(head) => Some(head),
            _ => None,
        })
        .collect()
}

#[test]
fn nginx_pipelined_responses_are_framed_as_nginx_framed_them() {
    let mut nginx = Nginx::start("pipelined");
    let request_bytes: &[u8] = b"GET /small.txt HTTP/1.1\r\nHost: a\r\n\r\n\
        HEAD /small.txt HTTP/1.1\r\nHost: a\r\n\r\n\
        GET /chunked/big.txt HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n\
        GET /missing HTTP/1.1\r\nHost: a\r\n\r\n\
        GET /close/big.txt HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n";

    // The client's side: the methods, in order, for the response splitter.
    let mut requests = RequestSplitter::new();
    let mut methods = Vec::new();
    let mut input = request_bytes;
    while let Some(piece) = requests.next_piece(&mut input) {
        if let Piece::Head(head) = piece {
            methods.push(head.method().to_owned());
        }
    }
    assert_eq!(methods, ["GET", "HEAD", "GET", "GET", "GET"]);

    let mut stream = nginx.connect();
    stream.write_all(request_bytes).unwrap();
    let response_bytes = read_to_close(&mut stream);
    let methods: Vec<&str> = methods.iter().map(String::as_str).collect();
    let seen = split_responses(&response_bytes, &methods);

    let heads = heads(&seen);
    let statuses: Vec<u16> = heads.iter().map(|head| head.status()).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 404, 200],
        "{}",
        response_bytes.escape_ascii()
    );
    let framings: Vec<Framing> = heads.iter().map(|head| head.framing()).collect();
    let not_found_length = heads[3]
        .header("content-length")
        .and_then(|value| std::str::from_utf8(value).ok()?.parse().ok())
        .expect("nginx's 404 has a length");
    assert_eq!(
        framings,
        [
            Framing::Length(SMALL_FILE.len() as u64),
            Framing::NoBody,
            Framing::Chunked,
            Framing::Length(not_found_length),
            Framing::UntilClose,
        ]
    );
    assert!(
        heads[4].closes_connection(),
        "nginx closes after a body without length"
    );
    assert!(!heads[0].closes_connection());

    // Every message ends, the last one with the stream; nothing is given up.
    assert_eq!(
        seen.iter()
            .filter(|piece| matches!(piece, Seen::End))
            .count(),
        5
    );
    assert!(
        !seen.iter().any(|piece| matches!(piece, Seen::Other(_))),
        "{seen:?}"
    );

    let bodies: Vec<(&[u8], &[u8])> = seen
        .iter()
        .filter_map(|piece| match piece {
            Seen::Body { raw, data } => Some((&raw[..], &data[..])),
            _ => None,
        })
        .collect();
    assert_eq!(bodies.len(), 4, "HEAD's response has no body");
    assert_eq!(bodies[0], (SMALL_FILE, SMALL_FILE));
    let (chunked_raw, chunked_data) = bodies[1];
    assert!(
        chunked_data.starts_with(b"\x1f\x8b"),
        "the decoded payload is nginx's gzip"
    );
    assert!(
        chunked_raw.ends_with(b"0\r\nX-Trailer: done\r\n\r\n"),
        "the trailer is in the raw bytes"
    );
    assert!(chunked_data.len() < chunked_raw.len());
    assert!(
        bodies[3].1.starts_with(b"\x1f\x8b"),
        "read until close: {:?}",
        bodies[3]
    );
    assert_eq!(bodies[3].0, bodies[3].1);
}

#[test]
fn nginx_answers_expect_100_continue_before_the_final_response() {
    let mut nginx = Nginx::start("continue");
    let head: &[u8] =
        b"POST /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
    let mut requests = RequestSplitter::new();
    let mut responses = ResponseSplitter::new();
    let mut input = head;
    match requests.next_piece(&mut input) {
        Some(Piece::Head(request)) => {
            assert!(request.expects_continue());
            responses.expect(request.method());
        }
        other => panic!("no request head: {other:?}"),
    }

    let mut stream = nginx.connect();
    stream.write_all(head).unwrap();

    // Read as the proxy would: pieces as bytes arrive, the body sent on `100 Continue`,
    // until the final response ends.
    let mut seen = Vec::new();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let mut final_response = false;
    // An interim response ends too (`Head`, `End`): wait for the final one's end.
    while !(final_response && matches!(seen.last(), Some(Seen::End))) {
        let n = stream
            .read(&mut buf)
            .expect("nginx answers within the timeout");
        assert!(
            n > 0,
            "nginx closed early after {}",
            received.escape_ascii()
        );
        received.extend_from_slice(&buf[..n]);
        let mut slice = &buf[..n];
        while let Some(piece) = responses.next_piece(&mut slice) {
            if let Piece::Head(head) = &piece {
                if head.status() == 100 {
                    stream.write_all(b"hello").unwrap();
                }
                final_response |= !head.is_interim();
            }
            record(&mut seen, piece);
        }
    }

    let statuses: Vec<(u16, bool)> = heads(&seen)
        .iter()
        .map(|head| (head.status(), head.is_interim()))
        .collect();
    assert_eq!(
        statuses,
        [(100, true), (200, false)],
        "{}",
        received.escape_ascii()
    );
    assert!(matches!(
        &seen[..],
        [
            Seen::Head(_),
            Seen::End,
            Seen::Head(_),
            Seen::Body { .. },
            Seen::End
        ]
    ));
    assert!(matches!(&seen[3], Seen::Body { data, .. } if data == b"posted\n"));
    assert_eq!(raw_of(&seen), received);
    assert_eq!(responses.waiting(), 0);
}
