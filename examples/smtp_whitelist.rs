//! em-proxy's `smtp_whitelist.rb`: refuse mail for recipients not on a list, at the proxy.
//!
//! `cargo run --example smtp_whitelist -- [LISTEN] [SMTP] [ALLOWED...]` (default
//! 0.0.0.0:2524 → 127.0.0.1:2525, allowing ilya@igvita.com).
//!
//! Interactive SMTP clients send one command and wait for its answer, so a refused
//! `RCPT TO` is answered by the proxy in its place and never reaches the server. The
//! client's bytes are cut into lines with EventMachine's `BufferedTokenizer`
//! ([`Tokenizer`]), so a command split across reads, or several in one read, is still
//! seen whole; a line over [`MAX_LINE`] gets `500` and the connection is closed.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use ember::Reactor;
use ember::protocols::{DEFAULT_LIMIT, Tokenizer};
use ember::proxy::{self, ProxyServer, Relay};

mod support;

/// The longest line passed on. SMTP caps lines at 1,000 bytes (RFC 5321 §4.5.3.1), so
/// this only stops a peer that is not speaking SMTP.
pub const MAX_LINE: usize = DEFAULT_LIMIT;

/// The recipient in a `RCPT TO:<name@address>` command, if `line` is one.
pub fn recipient(line: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches("\r\n");
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
    let lines = || Tokenizer::new(b"\r\n", MAX_LINE);
    proxy::start_with_state(r, listen, lines, move |conn| {
        conn.server("srv", backend);
        let allowed = Rc::clone(&allowed);
        conn.on_data(move |s, mut data| {
            let mut forward = Vec::new();
            let mut refused = 0;
            let lines = s.state();
            while let Some(line) = lines.next_token(&mut data) {
                let Ok(line) = line else {
                    s.relay_to_servers(Relay::All(forward));
                    s.send_data(b"500 5.5.2 Line too long\r\n");
                    s.close();
                    return Relay::Drop;
                };
                if let Some(rcpt) = recipient(line)
                    && !allowed.iter().any(|a| a.eq_ignore_ascii_case(rcpt))
                {
                    refused += 1;
                    continue;
                }
                forward.extend_from_slice(line);
                forward.extend_from_slice(b"\r\n");
            }
            for _ in 0..refused {
                s.send_data(b"550 No such user here\r\n");
            }
            Relay::All(forward)
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
