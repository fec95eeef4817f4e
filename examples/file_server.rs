//! A static file server: HTTP/1.1 `GET` and `HEAD` for the files of one directory, with
//! keep-alive and pipelining, each body sent by `stream_file` (`sendfile(2)`): the
//! program EventMachine users wrote around `stream_file_data`. Request heads are cut into
//! lines by a [`Tokenizer`], whose limit closes a client that sends an endless line.
//!
//! `cargo run --release --example file_server -- [DIR] [ADDR]` (default `.` and
//! 127.0.0.1:8083), then `curl -O http://127.0.0.1:8083/NAME`.
//!
//! Only plain names in the directory are served (`/NAME`: no `/` inside, no leading
//! `.`); anything else is 404. A pipelined request's answer queues behind the file before
//! it, so answers go out in order without the handler waiting for any of them.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use ember::protocols::Tokenizer;
use ember::{Context, Handler, Reactor, UnbindReason};

/// Longest request or header line.
const MAX_LINE: usize = 8 * 1024;

/// Starts serving `dir` on `addr`; returns the address it listens on.
pub fn start(r: &mut Reactor, dir: PathBuf, addr: SocketAddr) -> io::Result<SocketAddr> {
    let dir = Rc::new(dir);
    let id = r.start_server(addr, move || FileClient {
        dir: Rc::clone(&dir),
        lines: Tokenizer::new(b"\n", MAX_LINE),
        request: None,
    })?;
    r.set_default_nodelay(true);
    Ok(r.server_addr(id).expect("TCP servers have an address"))
}

/// A request line read, its headers not yet all.
struct Request {
    head_only: bool,
    name: Option<String>,
    close: bool,
}

struct FileClient {
    dir: Rc<PathBuf>,
    lines: Tokenizer,
    request: Option<Request>,
}

impl Handler for FileClient {
    fn receive_data(&mut self, cx: &mut Context<'_>, mut data: &[u8]) {
        while let Some(line) = self.lines.next_token(&mut data) {
            let line = match line {
                Ok(line) => line.strip_suffix(b"\r").unwrap_or(line),
                Err(too_long) => {
                    cx.send_data(b"HTTP/1.1 431 Request Header Fields Too Large\r\n");
                    cx.send_data(b"Content-Length: 0\r\nConnection: close\r\n\r\n");
                    cx.close_after_writing_with(too_long.into());
                    return;
                }
            };
            let line = String::from_utf8_lossy(line);
            match self.request.as_mut() {
                None if line.is_empty() => {} // a stray CRLF between requests
                None => match request_line(&line) {
                    Some(request) => self.request = Some(request),
                    None => {
                        cx.send_data(b"HTTP/1.1 400 Bad Request\r\n");
                        cx.send_data(b"Content-Length: 0\r\nConnection: close\r\n\r\n");
                        let why = format!("not an HTTP request line: {line:?}");
                        cx.close_after_writing_with(UnbindReason::ProtocolError(why.into()));
                        return;
                    }
                },
                Some(_) if line.is_empty() => {
                    let request = self.request.take().expect("matched Some");
                    answer(cx, &self.dir, &request);
                    if request.close {
                        cx.close_after_writing();
                        return;
                    }
                }
                Some(request) => {
                    let (name, value) = line.split_once(':').unwrap_or((&line, ""));
                    if name.eq_ignore_ascii_case("connection")
                        && value.trim().eq_ignore_ascii_case("close")
                    {
                        request.close = true;
                    }
                }
            }
        }
    }
}

/// `GET /NAME HTTP/1.1` or `HEAD ...`; `None` for anything else. HTTP/1.0 closes after
/// the answer.
fn request_line(line: &str) -> Option<Request> {
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let name = target
        .strip_prefix('/')
        .filter(|n| !n.is_empty() && !n.contains('/') && !n.starts_with('.'))
        .map(str::to_owned);
    Some(Request {
        head_only,
        name,
        close: version == "HTTP/1.0",
    })
}

/// Sends the head, then the file (or nothing, for `HEAD` and 404).
fn answer(cx: &mut Context<'_>, dir: &Path, request: &Request) {
    let found = request
        .name
        .as_ref()
        .and_then(|name| File::open(dir.join(name)).ok())
        .and_then(|file| {
            let meta = file.metadata().ok()?;
            meta.is_file().then_some((file, meta.len()))
        });
    let Some((file, len)) = found else {
        cx.send_data(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    );
    cx.send_data(head.as_bytes());
    if !request.head_only {
        // A file that fails to read closes the connection: the client sees a short body.
        let _ = cx.stream_file(file, |_, _| {});
    }
}

#[allow(dead_code)] // tests include this file as a module and call `start` only
fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8083".into());
    let result = Reactor::run(|r| {
        let addr = addr
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
        let addr = start(r, dir.clone(), addr)?;
        println!("serving {} on http://{addr}/", dir.display());
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("file_server: {e}");
        std::process::exit(1);
    }
}
