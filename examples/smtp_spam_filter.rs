//! em-proxy's `smtp_spam_filter.rb`: hold each message at the proxy, ask a (blocking)
//! spam checker about it on the defer pool, and only then let the SMTP server have it.
//!
//! `cargo run --example smtp_spam_filter -- [LISTEN] [SMTP]` (default 0.0.0.0:2524 →
//! 127.0.0.1:2525).
//!
//! em-proxy's version refused spam after already having sent `DATA` to the server, which
//! left the server waiting for a message. Here the proxy answers the client's `DATA`
//! itself and collects the message; the check runs on the defer pool (the reactor keeps
//! serving everyone else), and the hook returns `Relay::Later`. A clean message is then
//! replayed to the server as `DATA` + message (the server's own `354` is swallowed); a
//! spam message is refused with `550` and the server never hears of it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ember::Reactor;
use ember::proxy::{self, ProxyServer, Relay, Session};

mod support;

/// Where one client's SMTP conversation is.
#[derive(Default)]
pub struct SpamFilter {
    phase: Phase,
    from: String,
    /// Commands that arrived while a message was being checked or replayed.
    queued: Vec<u8>,
}

#[derive(Default)]
enum Phase {
    #[default]
    Commands,
    /// The client is sending its message; the proxy said `354`.
    Collecting(Vec<u8>),
    /// The message is with the spam checker.
    Checking,
    /// Clean: `DATA` went to the server; the message follows its `354`.
    Replaying(Vec<u8>),
}

/// The filter in front of the SMTP server at `backend`.
pub fn start(r: &mut Reactor, listen: SocketAddr, backend: SocketAddr) -> io::Result<ProxyServer> {
    proxy::start_with_state(r, listen, SpamFilter::default, move |conn| {
        conn.server("srv", backend);
        conn.on_data(on_data);
        conn.on_response(|s, _, resp| {
            let state = s.state();
            if let Phase::Replaying(message) = &mut state.phase
                && resp.starts_with(b"354")
            {
                let message = std::mem::take(message);
                state.phase = Phase::Commands;
                let queued = std::mem::take(&mut state.queued);
                s.relay_to_servers(Relay::All(message));
                if !queued.is_empty() {
                    s.relay_to_servers(Relay::All(queued));
                }
                return None; // the client already had the proxy's 354
            }
            Some(resp.to_vec())
        });
    })
}

fn on_data(s: &mut Session<'_, SpamFilter>, data: &[u8]) -> Relay {
    let state = s.state();
    match &mut state.phase {
        Phase::Commands => {
            if data.eq_ignore_ascii_case(b"DATA\r\n") {
                state.phase = Phase::Collecting(Vec::new());
                s.send_data(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n");
                return Relay::Later;
            }
            if let Some(from) = std::str::from_utf8(data)
                .ok()
                .and_then(|l| l.strip_prefix("MAIL FROM:"))
            {
                state.from = from.trim().trim_matches(['<', '>']).to_owned();
            }
            Relay::All(data.to_vec())
        }
        Phase::Collecting(message) => {
            message.extend_from_slice(data);
            if message.ends_with(b"\r\n.\r\n") || message == b".\r\n" {
                let message = std::mem::take(message);
                state.phase = Phase::Checking;
                let from = state.from.clone();
                let suspect = message.clone();
                s.defer(
                    move || looks_like_spam(&from, &suspect),
                    move |s, verdict| {
                        verdict_arrived(s, message, verdict.unwrap_or(true));
                    },
                );
            }
            Relay::Later
        }
        Phase::Checking | Phase::Replaying(_) => {
            state.queued.extend_from_slice(data);
            Relay::Later
        }
    }
}

fn verdict_arrived(s: &mut Session<'_, SpamFilter>, message: Vec<u8>, spam: bool) {
    println!(
        "[spam check, from {:?}: {}]",
        s.state().from,
        if spam { "SPAM" } else { "clean" }
    );
    if spam {
        s.send_data(b"550 5.7.1 Message rejected as spam\r\n");
        let state = s.state();
        state.phase = Phase::Commands;
        let queued = std::mem::take(&mut state.queued);
        s.relay_to_servers(if queued.is_empty() {
            Relay::Drop
        } else {
            Relay::All(queued)
        });
    } else {
        s.state().phase = Phase::Replaying(message);
        s.relay_to_servers(Relay::All(b"DATA\r\n".to_vec()));
        // The message itself follows the server's 354: keep the client's FIN behind it.
        s.relay_to_servers(Relay::Later);
    }
}

/// The spam check: blocking, like the HTTP call to a scoring service it stands for.
pub fn looks_like_spam(from: &str, message: &[u8]) -> bool {
    std::thread::sleep(Duration::from_millis(20));
    let text = String::from_utf8_lossy(message).to_ascii_lowercase();
    from.ends_with(".invalid")
        || ["viagra", "lottery", "wire transfer"]
            .iter()
            .any(|w| text.contains(w))
}

const USAGE: &str = "smtp_spam_filter [LISTEN] [SMTP]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = support::addr_arg(&args, 0, "0.0.0.0:2524", USAGE);
    let backend = support::addr_arg(&args, 1, "127.0.0.1:2525", USAGE);
    let result = Reactor::run(|r| {
        let proxy = start(r, listen, backend)?;
        let bound = proxy.local_addr().unwrap_or(listen);
        println!("smtp_spam_filter on {bound} → {backend}");
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("smtp_spam_filter: {e}");
        std::process::exit(1);
    }
}
