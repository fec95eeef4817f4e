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
//!
//! The client's bytes are cut into lines with EventMachine's `BufferedTokenizer`
//! ([`Tokenizer`]), so commands pipelined into one read are each seen (a `DATA` among
//! them switches to collecting the message from the very next byte), and what the client
//! sends while its message is checked is read as commands afterwards, not passed on
//! unread. A line over [`MAX_LINE`] gets `500` and the connection is closed.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ember::Reactor;
use ember::protocols::{DEFAULT_LIMIT, Tokenizer};
use ember::proxy::{self, ProxyServer, Relay, Session};

mod support;

/// The longest line read. SMTP caps lines at 1,000 bytes (RFC 5321 §4.5.3.1), so this
/// only stops a peer that is not speaking SMTP.
pub const MAX_LINE: usize = DEFAULT_LIMIT;

/// Where one client's SMTP conversation is.
pub struct SpamFilter {
    /// The client's bytes, cut into lines (commands, then the message's lines).
    lines: Tokenizer,
    phase: Phase,
    from: String,
    /// What the client sent while a message was being checked or replayed, unread: it is
    /// read as commands once the message is dealt with.
    queued: Vec<u8>,
}

impl Default for SpamFilter {
    fn default() -> Self {
        SpamFilter {
            lines: Tokenizer::new(b"\r\n", MAX_LINE),
            phase: Phase::Commands,
            from: String::new(),
            queued: Vec::new(),
        }
    }
}

enum Phase {
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
                let relay = on_data(s, &queued);
                s.relay_to_servers(relay);
                return None; // the client already had the proxy's 354
            }
            Some(resp.to_vec())
        });
    })
}

/// Reads the client's lines: passes commands on, answers `DATA` itself and collects the
/// message, and sends a complete message to the checker. What comes after a message (in
/// the same read or later ones) waits, unread, until the message is dealt with.
fn on_data(s: &mut Session<'_, SpamFilter>, mut data: &[u8]) -> Relay {
    let mut forward = Vec::new();
    let mut said_354 = false;
    let mut complete = None;
    let state = s.state();
    while let Phase::Commands | Phase::Collecting(_) = state.phase {
        let Some(line) = state.lines.next_token(&mut data) else {
            break;
        };
        let Ok(line) = line else {
            s.relay_to_servers(Relay::All(forward));
            s.send_data(b"500 5.5.2 Line too long\r\n");
            s.close();
            return Relay::Drop;
        };
        match &mut state.phase {
            Phase::Commands if line.eq_ignore_ascii_case(b"DATA") => {
                state.phase = Phase::Collecting(Vec::new());
                said_354 = true;
            }
            Phase::Commands => {
                if let Some(from) = std::str::from_utf8(line)
                    .ok()
                    .and_then(|l| l.strip_prefix("MAIL FROM:"))
                {
                    state.from = from.trim().trim_matches(['<', '>']).to_owned();
                }
                forward.extend_from_slice(line);
                forward.extend_from_slice(b"\r\n");
            }
            Phase::Collecting(message) => {
                message.extend_from_slice(line);
                message.extend_from_slice(b"\r\n");
                if line == b"." {
                    complete = Some(std::mem::take(message));
                    state.phase = Phase::Checking;
                }
            }
            Phase::Checking | Phase::Replaying(_) => unreachable!("the loop stops first"),
        }
    }
    if let Phase::Checking | Phase::Replaying(_) = state.phase {
        state.queued.extend_from_slice(data);
    }
    let from = state.from.clone();
    let commands_only = matches!(state.phase, Phase::Commands);
    if said_354 {
        s.send_data(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n");
    }
    if let Some(message) = complete {
        let suspect = message.clone();
        s.defer(
            move || looks_like_spam(&from, &suspect),
            move |s, verdict| {
                verdict_arrived(s, message, verdict.unwrap_or(true));
            },
        );
    }
    if commands_only {
        return Relay::All(forward);
    }
    // A message is held at the proxy: keep the client's FIN behind it.
    if !forward.is_empty() {
        s.relay_to_servers(Relay::All(forward));
    }
    Relay::Later
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
        let relay = on_data(s, &queued);
        s.relay_to_servers(relay);
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
