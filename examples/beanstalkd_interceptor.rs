//! em-proxy's `beanstalkd_interceptor.rb`: answer some commands at the proxy. Jobs put
//! with a delay over ten minutes are "archived" by the proxy (here: counted) and never
//! reach beanstalkd; everything else passes through.
//!
//! `cargo run --example beanstalkd_interceptor -- [LISTEN] [BEANSTALKD]` (default
//! 0.0.0.0:11300 → 127.0.0.1:11301; run `beanstalkd -p 11301`).
//!
//! `put <pri> <delay> <ttr> <bytes>\r\n<job>\r\n`: unlike em-proxy's, this one follows the
//! protocol across chunks, so an intercepted job's body never leaks to beanstalkd as a
//! command, and a forwarded job's body is never mistaken for one. The framing is
//! EventMachine's `LineText2` ([`LineProtocol`]): a `put` line switches it to binary mode
//! for the job's body, which may be in the same read as the line, and lines resume after
//! it. A command line over [`MAX_LINE`] gets `BAD_FORMAT` and the connection is closed.

use std::io;
use std::net::SocketAddr;

use ember::Reactor;
use ember::protocols::{Frame, LineProtocol};
use ember::proxy::{self, ProxyServer, Relay, Session};

mod support;

/// Jobs further away than this are archived at the proxy.
pub const ARCHIVE_AFTER_SECONDS: u64 = 600;

/// The longest command line accepted, far above any beanstalkd command (a job's body is
/// not a line, and is not limited here).
pub const MAX_LINE: usize = 1024;

/// Where one client's command stream is.
pub struct Beanstalk {
    /// Command lines, and each job's body (with its trailing CRLF) as a binary block.
    protocol: LineProtocol,
    /// The body being read is an archived job's: swallow it instead of passing it on.
    swallow_body: bool,
}

impl Default for Beanstalk {
    fn default() -> Self {
        Beanstalk {
            protocol: LineProtocol::with_delimiter(b"\r\n", MAX_LINE),
            swallow_body: false,
        }
    }
}

/// The interceptor in front of beanstalkd at `backend`.
pub fn start(r: &mut Reactor, listen: SocketAddr, backend: SocketAddr) -> io::Result<ProxyServer> {
    proxy::start_with_state(r, listen, Beanstalk::default, move |conn| {
        conn.server("srv", backend);
        conn.on_data(intercept);
        conn.on_response(|_, _, resp| {
            println!("[resp, {:?}]", String::from_utf8_lossy(resp));
            Some(resp.to_vec())
        });
    })
}

/// Walks the commands in `data`: passes on the bytes of every command and body except
/// the archived puts, which it answers itself.
fn intercept(s: &mut Session<'_, Beanstalk>, mut data: &[u8]) -> Relay {
    let mut forward = Vec::new();
    let mut answer = Vec::new();
    let state = s.state();
    while let Some(frame) = state.protocol.next_frame(&mut data) {
        match frame {
            Ok(Frame::Line(line)) => match parse_put(line) {
                Some((delay, bytes)) if delay > ARCHIVE_AFTER_SECONDS => {
                    println!("[put, archive, delay {delay}s]");
                    // INSERT INTO archive ...
                    answer.extend_from_slice(b"INSERTED 9999\r\n");
                    state.swallow_body = true;
                    state.protocol.set_binary_mode(bytes.saturating_add(2));
                }
                Some((_, bytes)) => {
                    forward.extend_from_slice(line);
                    forward.extend_from_slice(b"\r\n");
                    state.swallow_body = false;
                    state.protocol.set_binary_mode(bytes.saturating_add(2));
                }
                None => {
                    forward.extend_from_slice(line);
                    forward.extend_from_slice(b"\r\n");
                }
            },
            Ok(Frame::Binary(body)) if !state.swallow_body => forward.extend_from_slice(body),
            Ok(Frame::Binary(_) | Frame::BinaryEnd) => {}
            Err(too_long) => {
                println!("[closing: command line {too_long}]");
                s.relay_to_servers(Relay::All(forward));
                s.send_data(&answer);
                s.send_data(b"BAD_FORMAT\r\n");
                s.close();
                return Relay::Drop;
            }
        }
    }
    if !answer.is_empty() {
        s.send_data(&answer);
    }
    Relay::All(forward)
}

/// `put <pri> <delay> <ttr> <bytes>` → (delay, bytes).
fn parse_put(line: &[u8]) -> Option<(u64, u64)> {
    let mut words = std::str::from_utf8(line).ok()?.split(' ');
    if words.next()? != "put" {
        return None;
    }
    let numbers: Vec<u64> = words.map(|w| w.parse().ok()).collect::<Option<_>>()?;
    match numbers[..] {
        [_pri, delay, _ttr, bytes] => Some((delay, bytes)),
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
