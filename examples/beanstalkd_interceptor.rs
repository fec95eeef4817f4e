//! em-proxy's `beanstalkd_interceptor.rb`: answer some commands at the proxy. Jobs put
//! with a delay over ten minutes are "archived" by the proxy (here: counted) and never
//! reach beanstalkd; everything else passes through.
//!
//! `cargo run --example beanstalkd_interceptor -- [LISTEN] [BEANSTALKD]` (default
//! 0.0.0.0:11300 → 127.0.0.1:11301; run `beanstalkd -p 11301`).
//!
//! `put <pri> <delay> <ttr> <bytes>\r\n<job>\r\n`: unlike em-proxy's, this one follows the
//! protocol across chunks, so an intercepted job's body never leaks to beanstalkd as a
//! command, and a forwarded job's body is never mistaken for one.

use std::io;
use std::net::SocketAddr;

use ember::Reactor;
use ember::proxy::{self, ProxyServer, Relay, Session};

mod support;

/// Jobs further away than this are archived at the proxy.
pub const ARCHIVE_AFTER_SECONDS: u64 = 600;

/// Where one client's command stream is.
#[derive(Default)]
pub struct Beanstalk {
    unparsed: Vec<u8>,
    /// Body bytes (with the trailing CRLF) still to pass on, or to swallow.
    body_left: usize,
    swallow_body: bool,
}

/// The interceptor in front of beanstalkd at `backend`.
pub fn start(r: &mut Reactor, listen: SocketAddr, backend: SocketAddr) -> io::Result<ProxyServer> {
    proxy::start_with_state(r, listen, Beanstalk::default, move |conn| {
        conn.server("srv", backend);
        conn.on_data(|s, data| {
            s.state().unparsed.extend_from_slice(data);
            Relay::All(intercept(s))
        });
        conn.on_response(|_, _, resp| {
            println!("[resp, {:?}]", String::from_utf8_lossy(resp));
            Some(resp.to_vec())
        });
    })
}

/// Walks the complete commands received so far; returns the bytes to pass on and answers
/// the archived puts itself.
fn intercept(s: &mut Session<'_, Beanstalk>) -> Vec<u8> {
    let mut forward = Vec::new();
    loop {
        let state = s.state();
        if state.body_left > 0 {
            let n = state.body_left.min(state.unparsed.len());
            let body: Vec<u8> = state.unparsed.drain(..n).collect();
            state.body_left -= n;
            if !state.swallow_body {
                forward.extend_from_slice(&body);
            }
            if state.body_left > 0 {
                return forward;
            }
            continue;
        }
        let Some(end) = state.unparsed.windows(2).position(|w| w == b"\r\n") else {
            return forward;
        };
        let line: Vec<u8> = state.unparsed.drain(..end + 2).collect();
        match parse_put(&line) {
            Some((delay, bytes)) if delay > ARCHIVE_AFTER_SECONDS => {
                println!("[put, archive, delay {delay}s]");
                // INSERT INTO archive ...
                state.body_left = bytes + 2;
                state.swallow_body = true;
                s.send_data(b"INSERTED 9999\r\n");
            }
            Some((_, bytes)) => {
                state.body_left = bytes + 2;
                state.swallow_body = false;
                forward.extend_from_slice(&line);
            }
            None => forward.extend_from_slice(&line),
        }
    }
}

/// `put <pri> <delay> <ttr> <bytes>\r\n` → (delay, bytes).
fn parse_put(line: &[u8]) -> Option<(u64, usize)> {
    let line = std::str::from_utf8(line).ok()?.strip_suffix("\r\n")?;
    let mut words = line.split(' ');
    if words.next()? != "put" {
        return None;
    }
    let numbers: Vec<u64> = words.map(|w| w.parse().ok()).collect::<Option<_>>()?;
    match numbers[..] {
        [_pri, delay, _ttr, bytes] => Some((delay, usize::try_from(bytes).ok()?)),
        _ => None,
    }
}

const USAGE: &str = "beanstalkd_interceptor [LISTEN] [BEANSTALKD]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = support::addr_arg(&args, 0, "0.0.0.0:11300", USAGE);
    let backend = support::addr_arg(&args, 1, "127.0.0.1:11301", USAGE);
    let result = Reactor::run(|r| {
        let proxy = start(r, listen, backend)?;
        let bound = proxy.local_addr().unwrap_or(listen);
        println!("beanstalkd_interceptor on {bound} → {backend}");
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("beanstalkd_interceptor: {e}");
        std::process::exit(1);
    }
}
