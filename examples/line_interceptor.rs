//! em-proxy's `line_interceptor.rb`: an intercepting proxy that rewrites answers,
//! `hello` → `good bye`.
//!
//! `cargo run --example line_interceptor -- [LISTEN] [BACKEND]` (default 0.0.0.0:8080 →
//! 127.0.0.1:8081; with `cargo run --example appserver`, `curl -H 'Connection: close'
//! localhost:8080` prints `good bye world: 0`).
//!
//! Unlike em-proxy's, the rewrite is right across chunk boundaries: a chunk ending in
//! `hel` keeps those bytes back until the next chunk (or the backend's end) decides.
//! Changing a body's length breaks `Content-Length`, so use it on close-delimited answers.

use std::io;
use std::net::SocketAddr;

use ember::Reactor;
use ember::proxy::{self, Finish, ProxyServer};

mod support;

const FROM: &[u8] = b"hello";
const TO: &[u8] = b"good bye";

/// Answers from the backend with every `hello` replaced.
pub fn start(r: &mut Reactor, listen: SocketAddr, backend: SocketAddr) -> io::Result<ProxyServer> {
    proxy::start_with_state(r, listen, Vec::<u8>::new, move |conn| {
        conn.server("srv", backend);

        conn.on_response(|s, _, resp| {
            let held = s.state();
            held.extend_from_slice(resp);
            let (out, keep) = replace_all(held);
            let tail = held.split_off(held.len() - keep);
            *held = tail;
            Some(out)
        });

        // The backend is done: what was held back can't become a `hello` any more.
        conn.on_finish(|s, _, _| {
            let rest = std::mem::take(s.state());
            s.send_data(&rest);
            Finish::WhenAllDone
        });
    })
}

/// Replaces every `FROM` in `data`; returns the output for all bytes except a tail that
/// could still be the start of a `FROM`, and that tail's length.
fn replace_all(data: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(FROM) {
            out.extend_from_slice(TO);
            i += FROM.len();
        } else if FROM.starts_with(&data[i..]) {
            return (out, data.len() - i); // a partial match at the very end
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    (out, 0)
}

const USAGE: &str = "line_interceptor [LISTEN] [BACKEND]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = support::addr_arg(&args, 0, "0.0.0.0:8080", USAGE);
    let backend = support::addr_arg(&args, 1, "127.0.0.1:8081", USAGE);
    let result = Reactor::run(|r| {
        let proxy = start(r, listen, backend)?;
        let bound = proxy.local_addr().unwrap_or(listen);
        println!("line_interceptor on {bound} → {backend}");
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("line_interceptor: {e}");
        std::process::exit(1);
    }
}
