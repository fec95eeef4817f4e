//! A small HTTP/1.1 application on std threads (one per connection), for the shadow
//! tests: production and its candidate are two copies with different [`Behaviour`]s — a
//! deliberate regression on one route, a noisy header, chunked answers, a shadow that is
//! slow, closes after each response or answers only when the test says — and each
//! records the requests it saw.
//!
//! Every route answers JSON describing the request:
//! `{"method":"GET","path":"/users/7","user":{"id":7,"email":"u7@example.com"},"n":N}`
//! where `n` is the request's index on its connection. `HEAD` gets the headers only; a
//! request with `Expect: 100-continue` gets `100 Continue` first; `/big/N` answers N
//! bytes of the test pattern, streamed. Each copy counts the body bytes it has written
//! ([`HttpApp::body_bytes_sent`]), so a test can tell whether a flood is still going.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use super::pattern::Pattern;

/// How one copy of the application answers.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Answer with `Transfer-Encoding: chunked` (in several chunks) instead of a length.
    pub chunked: bool,
    /// Say `Connection: close` and close after each response.
    pub close_after_each: bool,
    /// Frame no body (neither a length nor chunks): the body ends when the connection
    /// closes, after each response (implies `close_after_each`).
    pub close_delimited: bool,
    /// Wait this long before each answer.
    pub delay: Duration,
    /// Send `X-Random: <a different value each time>`.
    pub random_header: bool,
    /// Routes starting with this answer a different email: the regression.
    pub regress: Option<&'static str>,
    /// Accept connections and never read them.
    pub blackhole: bool,
    /// Read each request, then hold its answer until the gate opens.
    pub hold: Option<Gate>,
    /// Answer a request that has a body as soon as its head is read, then read the body:
    /// `417 Expectation Failed` to `Expect: 100-continue`, else the usual answer.
    pub early_answer: bool,
    /// Answer every request with this many bytes of the test pattern, as `/big/N` does:
    /// a shadow that floods its answers.
    pub flood: Option<u64>,
}

/// Holds a [`Behaviour::hold`] application's answers until the test opens it: a shadow
/// that answers exactly when the test says, with no sleep.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// Lets every held answer (and every later one) go.
    pub fn open(&self) {
        let (open, opened) = &*self.0;
        *open.lock().unwrap() = true;
        opened.notify_all();
    }

    fn wait(&self) {
        let (open, opened) = &*self.0;
        let _open = opened
            .wait_while(open.lock().unwrap(), |open| !*open)
            .unwrap();
    }
}

/// One request as the application read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running copy; it serves until the test process ends.
pub struct HttpApp {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    body_bytes_sent: Arc<AtomicU64>,
}

impl HttpApp {
    pub fn start(behaviour: Behaviour) -> HttpApp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the app");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&seen);
        // Each copy counts from its own port: no two copies send the same X-Random.
        let counter = Arc::new(AtomicU64::new(u64::from(addr.port()) << 32));
        let body_bytes_sent = Arc::new(AtomicU64::new(0));
        let sent = Arc::clone(&body_bytes_sent);
        thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if behaviour.blackhole {
                    held.push(stream); // never read, never closed
                    continue;
                }
                let (behaviour, seen, counter, sent) = (
                    behaviour.clone(),
                    Arc::clone(&recorded),
                    Arc::clone(&counter),
                    Arc::clone(&sent),
                );
                thread::spawn(move || {
                    let counters = Counters {
                        noise: &counter,
                        body_bytes_sent: &sent,
                    };
                    let _ = serve(stream, &behaviour, &seen, counters);
                });
            }
        });
        HttpApp {
            addr,
            seen,
            body_bytes_sent,
        }
    }

    /// The bytes of `/big/N` (and [`Behaviour::flood`]) bodies written to sockets so far.
    pub fn body_bytes_sent(&self) -> u64 {
        self.body_bytes_sent.load(Ordering::Relaxed)
    }

    /// The requests seen so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// What every connection of one copy counts.
#[derive(Clone, Copy)]
struct Counters<'a> {
    /// For the X-Random values.
    noise: &'a AtomicU64,
    /// See [`HttpApp::body_bytes_sent`].
    body_bytes_sent: &'a AtomicU64,
}

fn serve(
    stream: TcpStream,
    behaviour: &Behaviour,
    seen: &Mutex<Vec<Seen>>,
    counters: Counters<'_>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    for n in 1.. {
        let Some(mut request) = read_head(&mut reader)? else {
            return Ok(());
        };
        let expects_continue = request
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        let has_body = request.header("transfer-encoding").is_some()
            || request
                .header("content-length")
                .is_some_and(|l| l.trim() != "0");
        if behaviour.early_answer && has_body {
            if expects_continue {
                out.write_all(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")?;
            } else {
                answer(&mut out, &request, behaviour, n, counters)?;
            }
            read_body(&mut reader, &mut request)?;
            seen.lock().unwrap().push(request);
            continue;
        }
        if expects_continue {
            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        read_body(&mut reader, &mut request)?;
        seen.lock().unwrap().push(request.clone());
        if let Some(gate) = &behaviour.hold {
            gate.wait();
        }
        if !behaviour.delay.is_zero() {
            thread::sleep(behaviour.delay);
        }
        answer(&mut out, &request, behaviour, n, counters)?;
        let client_closes = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if behaviour.close_after_each || behaviour.close_delimited || client_closes {
            let _ = out.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
    Ok(())
}

/// Reads one request's head; `None` at EOF before a request starts.
fn read_head(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Seen>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed
        .parse(&head)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let seen = Seen {
        method: parsed.method.unwrap_or("").to_owned(),
        target: parsed.path.unwrap_or("").to_owned(),
        headers: parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: Vec::new(),
    };
    Ok(Some(seen))
}

/// Reads the body of the request whose head `seen` is: a Content-Length or chunked one.
fn read_body(reader: &mut BufReader<TcpStream>, seen: &mut Seen) -> io::Result<()> {
    if seen
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if size == 0 {
                let mut trailer = String::new();
                while reader.read_line(&mut trailer)? > 2 {
                    trailer.clear();
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            seen.body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = seen.header("content-length") {
        let length: usize = length
            .trim()
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        seen.body = vec![0; length];
        reader.read_exact(&mut seen.body)?;
    }
    Ok(())
}

fn answer(
    out: &mut TcpStream,
    request: &Seen,
    behaviour: &Behaviour,
    n: u64,
    counters: Counters<'_>,
) -> io::Result<()> {
    let path = request.target.split('?').next().unwrap_or("");
    let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n");
    if behaviour.random_header {
        // A value no two responses share (an LCG over a process-wide counter).
        let x = counters.noise.fetch_add(1, Ordering::Relaxed);
        let noise = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        head.push_str(&format!("X-Random: {noise:016x}\r\n"));
    }
    if behaviour.close_after_each || behaviour.close_delimited {
        head.push_str("Connection: close\r\n");
    }
    let big = path
        .strip_prefix("/big/")
        .and_then(|n| n.parse::<u64>().ok());
    if let Some(size) = behaviour.flood.or(big) {
        head = head.replace("application/json", "application/octet-stream");
        head.push_str(&format!("Content-Length: {size}\r\n\r\n"));
        out.write_all(head.as_bytes())?;
        if request.method != "HEAD" {
            let mut pattern = Pattern::new(5);
            let mut left = size;
            let mut buf = vec![0; 64 * 1024];
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                pattern.fill(&mut buf[..n]);
                out.write_all(&buf[..n])?;
                counters
                    .body_bytes_sent
                    .fetch_add(n as u64, Ordering::Relaxed);
                left -= n as u64;
            }
        }
        return out.flush();
    }
    let id: String = path.chars().filter(char::is_ascii_digit).collect();
    let regressed = behaviour
        .regress
        .is_some_and(|prefix| path.starts_with(prefix));
    let email = if regressed {
        format!("user{id}@example.com")
    } else {
        format!("u{id}@example.com")
    };
    let body = format!(
        "{{\"method\":\"{}\",\"path\":\"{path}\",\"user\":{{\"id\":\"{id}\",\"email\":\"{email}\"}},\"n\":{n},\"body\":{}}}",
        request.method,
        request.body.len()
    );
    if behaviour.close_delimited {
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if request.method != "HEAD" {
            out.write_all(body.as_bytes())?;
        }
    } else if behaviour.chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        out.write_all(head.as_bytes())?;
        if request.method != "HEAD" {
            let (a, b) = body.as_bytes().split_at(body.len() / 2);
            for part in [a, b] {
                write!(out, "{:x};ext=1\r\n", part.len())?;
                out.write_all(part)?;
                out.write_all(b"\r\n")?;
            }
            out.write_all(b"0\r\nX-Trailer: t\r\n\r\n")?;
        }
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        out.write_all(head.as_bytes())?;
        if request.method != "HEAD" {
            out.write_all(body.as_bytes())?;
        }
    }
    out.flush()
}
