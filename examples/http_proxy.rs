//! em-proxy's `http_proxy.rb`: a forward HTTP proxy that picks its backend from each
//! request's `Host` (parsed with `httparse`).
//!
//! `cargo run --example http_proxy -- [LISTEN]` (default 0.0.0.0:9889), then
//! `curl --proxy localhost:9889 http://example.com/`.
//!
//! em-proxy's version opened a new backend for every request and relayed every answer
//! as it came, so on a keep-alive connection answers could arrive out of order or mixed
//! (its issues 18 and 52). Here a client has one backend at a time: requests for the same
//! host go to it in order; a request for another host waits until the current backend
//! has finished (it gets FIN after its requests and closes once it has answered them),
//! and only then opens the next one. The answers therefore reach the client in request
//! order, pipelined or not, with no parsing of the answers at all.
//!
//! Host names are resolved on the reactor's defer pool. Request bodies must carry
//! `Content-Length`; chunked request bodies get `501`.

use std::io;
use std::net::SocketAddr;

use ember::Reactor;
use ember::proxy::{self, Backend, Finish, ProxyServer, Relay, Session};

/// The largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// One client's requests and backend.
#[derive(Default)]
pub struct HttpProxy {
    unparsed: Vec<u8>,
    /// The backend answering this client now: its authority and name.
    current: Option<(String, String)>,
    /// The current backend was told to finish; the next request waits for it.
    switching: bool,
    opened: usize,
}

/// The forward proxy.
pub fn start(r: &mut Reactor, listen: SocketAddr) -> io::Result<ProxyServer> {
    proxy::start_with_state(r, listen, HttpProxy::default, |conn| {
        conn.on_data(|s, data| {
            s.state().unparsed.extend_from_slice(data);
            pump(s)
        });
        conn.on_connect(|_, name| println!("[on_connect, {name}]"));
        conn.on_finish(|s, name, reason| {
            println!("[on_finish, {name}, {reason}]");
            let state = s.state();
            if state
                .current
                .as_ref()
                .is_none_or(|(_, current)| current != name)
            {
                return Finish::WhenAllDone;
            }
            state.current = None;
            state.switching = false;
            if !reason.is_orderly() {
                s.send_data(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return Finish::Close;
            }
            let decision = pump(s);
            s.relay_to_servers(decision);
            Finish::WhenAllDone
        });
    })
}

/// What the start of the unparsed bytes holds.
enum Parsed {
    /// Not a whole request yet.
    Partial,
    /// A whole request of `len` bytes (head and body) for `authority`.
    Request { len: usize, authority: String },
    /// A request this proxy refuses, with the status line to answer.
    Refused(&'static str),
}

/// Sends every complete request it can, in order. Returns what the client's bytes are
/// waiting for: `Later` while a request is incomplete or waits for a backend switch.
fn pump(s: &mut Session<'_, HttpProxy>) -> Relay {
    loop {
        let state = s.state();
        if state.unparsed.is_empty() {
            return Relay::Drop;
        }
        if state.switching {
            return Relay::Later;
        }
        let (len, authority) = match parse(&state.unparsed) {
            Parsed::Partial => return Relay::Later,
            Parsed::Refused(status) => {
                state.unparsed.clear();
                s.send_data(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
                s.close();
                return Relay::Drop;
            }
            Parsed::Request { len, authority } => (len, authority),
        };
        match state.current.clone() {
            Some((current, name)) if current == authority => {
                let request: Vec<u8> = state.unparsed.drain(..len).collect();
                s.relay_to_servers(Relay::To(request, vec![name]));
            }
            Some((_, name)) => {
                // Another host: let the current backend answer what it has, then switch.
                state.switching = true;
                s.close_server(&name);
                return Relay::Later;
            }
            None => {
                let name = format!("{authority}#{}", state.opened);
                state.opened += 1;
                println!("[new session, {name}]");
                let target = if authority.contains(':') {
                    authority.clone()
                } else {
                    format!("{authority}:80")
                };
                if s.server(&name, Backend::from(target)).is_none() {
                    s.state().unparsed.clear();
                    s.send_data(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    s.close();
                    return Relay::Drop;
                }
                s.state().current = Some((authority, name));
            }
        }
    }
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if bytes.len() > MAX_HEAD => {
            return Parsed::Refused("431 Request Header Fields Too Large");
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Refused("400 Bad Request"),
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    if header("transfer-encoding").is_some() {
        return Parsed::Refused("501 Not Implemented");
    }
    let body = match header("content-length").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return Parsed::Refused("400 Bad Request"),
    };
    // A forward proxy gets `GET http://host:port/path`; a plain one a `Host` header.
    let from_target = request
        .path
        .and_then(|p| p.strip_prefix("http://"))
        .map(|rest| rest.split('/').next().unwrap_or(rest));
    let Some(authority) = from_target.or(header("host")).filter(|a| !a.is_empty()) else {
        return Parsed::Refused("400 Bad Request");
    };
    if bytes.len() < head_len + body {
        return Parsed::Partial;
    }
    Parsed::Request {
        len: head_len + body,
        authority: authority.to_ascii_lowercase(),
    }
}

fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "0.0.0.0:9889".into());
    let Ok(listen) = listen.parse::<SocketAddr>() else {
        eprintln!("http_proxy: `{listen}` is not IP:PORT (usage: http_proxy [LISTEN])");
        std::process::exit(2);
    };
    let result = Reactor::run(|r| {
        let proxy = start(r, listen)?;
        let bound = proxy.local_addr().unwrap_or(listen);
        println!("http_proxy listening on {bound}");
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("http_proxy: {e}");
        std::process::exit(1);
    }
}
