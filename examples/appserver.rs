//! em-proxy's `appserver.rb`: a test HTTP backend that answers `hello world: LABEL` after
//! DELAY seconds (LABEL defaults to DELAY, as in em-proxy).
//!
//! `cargo run --example appserver -- [ADDR] [DELAY] [LABEL]` (default 127.0.0.1:8081, 0)
//!
//! It speaks enough HTTP/1.1 to be a realistic backend: keep-alive with `Content-Length`,
//! requests answered in order even when pipelined; a request with `Connection: close` (or
//! HTTP/1.0) gets a close-delimited answer and the connection closes, like em-proxy's
//! Mongrel app. The delay is a reactor timer, so a slow answer never blocks the others.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ember::{Context, Handler, PeerClosed, Reactor};

/// Starts an app server on `addr`; returns the address it listens on.
pub fn start(
    r: &mut Reactor,
    addr: SocketAddr,
    delay: Duration,
    label: &str,
) -> io::Result<SocketAddr> {
    let label = label.to_owned();
    let id = r.start_server(addr, move || AppServer {
        delay,
        label: label.clone(),
        unparsed: Vec::new(),
        waiting: 0,
        peer_done: false,
    })?;
    Ok(r.server_addr(id).expect("TCP servers have an address"))
}

struct AppServer {
    delay: Duration,
    label: String,
    unparsed: Vec<u8>,
    /// Answers scheduled and not yet sent.
    waiting: usize,
    peer_done: bool,
}

impl AppServer {
    fn answer(&mut self, cx: &mut Context<'_>, close: bool) {
        self.waiting -= 1;
        let body = format!("hello world: {}", self.label);
        let head = if close {
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n".to_owned()
        } else {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
        };
        cx.send_data(head.as_bytes());
        cx.send_data(body.as_bytes());
        if close || (self.peer_done && self.waiting == 0) {
            cx.close_after_writing();
        }
    }
}

impl Handler for AppServer {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        self.unparsed.extend_from_slice(data);
        while let Some(end) = find(&self.unparsed, b"\r\n\r\n") {
            let head: Vec<u8> = self.unparsed.drain(..end + 4).collect();
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let close = head.contains("\r\nconnection: close") || head.contains(" http/1.0\r\n");
            println!("[serving, {}]", self.label);
            self.waiting += 1;
            if self.delay.is_zero() {
                self.answer(cx, close);
            } else {
                let id = cx.id();
                cx.add_timer(self.delay, move |r| {
                    // A client that left meanwhile gets no answer.
                    let _ = r.with_handler::<AppServer, _>(id, |app, cx| app.answer(cx, close));
                });
            }
            if close {
                break;
            }
        }
    }

    fn peer_closed(&mut self, _cx: &mut Context<'_>) -> PeerClosed {
        self.peer_done = true;
        if self.waiting > 0 {
            PeerClosed::KeepWriting
        } else {
            PeerClosed::Close
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args.first().map_or("127.0.0.1:8081", String::as_str);
    let delay = args.get(1).map_or("0", String::as_str);
    let label = args.get(2).map_or(delay, String::as_str);
    let (Ok(addr), Ok(seconds)) = (addr.parse::<SocketAddr>(), delay.parse::<f64>()) else {
        eprintln!("usage: appserver [ADDR] [DELAY_SECONDS] [LABEL]");
        std::process::exit(2);
    };
    let delay = Duration::try_from_secs_f64(seconds).unwrap_or_default();
    let result = Reactor::run(|r| {
        let bound = start(r, addr, delay, label)?;
        println!("appserver on {bound}, answering after {seconds}s");
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("appserver: {e}");
        std::process::exit(1);
    }
}
