//! em-proxy's `smtp_whitelist.rb`: refuse mail for recipients not on a list, at the proxy.
//!
//! `cargo run --example smtp_whitelist -- [LISTEN] [SMTP] [ALLOWED...]` (default
//! 0.0.0.0:2524 → 127.0.0.1:2525, allowing ilya@igvita.com).
//!
//! Interactive SMTP clients send one command and wait for its answer, so a refused
//! `RCPT TO` is answered by the proxy in its place and never reaches the server.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use ember::Reactor;
use ember::proxy::{self, ProxyServer, Relay};

mod support;

/// The recipient in a `RCPT TO:<name@address>` command, if `data` is one.
pub fn recipient(data: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(data).ok()?.trim_end_matches("\r\n");
    let (verb, rest) = line.split_at_checked(8)?;
    if !verb.eq_ignore_ascii_case("RCPT TO:") {
        return None;
    }
    rest.trim().strip_prefix('<')?.strip_suffix('>')
}

/// The filter in front of the SMTP server at `backend`.
pub fn start(
    r: &mut Reactor,
    listen: SocketAddr,
    backend: SocketAddr,
    allowed: Vec<String>,
) -> io::Result<ProxyServer> {
    let allowed: Rc<[String]> = allowed.into();
    proxy::start(r, listen, move |conn| {
        conn.server("srv", backend);
        let allowed = Rc::clone(&allowed);
        conn.on_data(move |s, data| {
            if let Some(rcpt) = recipient(data)
                && !allowed.iter().any(|a| a.eq_ignore_ascii_case(rcpt))
            {
                s.send_data(b"550 No such user here\r\n");
                return Relay::Drop;
            }
            Relay::All(data.to_vec())
        });
    })
}

const USAGE: &str = "smtp_whitelist [LISTEN] [SMTP] [ALLOWED...]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = support::addr_arg(&args, 0, "0.0.0.0:2524", USAGE);
    let backend = support::addr_arg(&args, 1, "127.0.0.1:2525", USAGE);
    let allowed = match args.get(2..) {
        Some(list) if !list.is_empty() => list.to_vec(),
        _ => vec!["ilya@igvita.com".to_owned()],
    };
    let result = Reactor::run(|r| {
        let proxy = start(r, listen, backend, allowed.clone())?;
        let bound = proxy.local_addr().unwrap_or(listen);
        let allowing = allowed.join(", ");
        println!("smtp_whitelist on {bound} → {backend}, allowing {allowing}");
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("smtp_whitelist: {e}");
        std::process::exit(1);
    }
}
