//! Echo server: `cargo run --example echo -- [ADDR] [--demo]`.
//!
//! Serves on ADDR (default 127.0.0.1:8081) until Ctrl-C. With `--demo` it instead listens
//! on a free port (or ADDR if given), connects an embedded client from the same reactor,
//! sends a few lines, prints what came back, and exits.

use std::time::Instant;

use ember::{Context, Handler, PeerClosed, Reactor, UnbindReason};

struct Echo;

impl Handler for Echo {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        cx.send_data(data);
    }
}

/// The embedded client: sends its lines, half-closes, collects the echo.
struct DemoClient {
    lines: Vec<&'static str>,
    received: Vec<u8>,
    started: Instant,
}

impl Handler for DemoClient {
    fn connection_completed(&mut self, cx: &mut Context<'_>) {
        for line in &self.lines {
            println!("client -> {line}");
            cx.send_data(line.as_bytes());
            cx.send_data(b"\n");
        }
        cx.close_write();
    }

    fn receive_data(&mut self, _cx: &mut Context<'_>, data: &[u8]) {
        self.received.extend_from_slice(data);
    }

    fn peer_closed(&mut self, _cx: &mut Context<'_>) -> PeerClosed {
        PeerClosed::Close
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        for line in String::from_utf8_lossy(&self.received).lines() {
            println!("client <- {line}");
        }
        let sent: usize = self.lines.iter().map(|l| l.len() + 1).sum();
        let ok = self.received.len() == sent;
        println!(
            "{} of {sent} bytes came back in {:.2?} ({reason}){}",
            self.received.len(),
            self.started.elapsed(),
            if ok { "" } else { " — MISMATCH" }
        );
        cx.stop();
    }
}

fn main() {
    let mut args = std::env::args().skip(1).collect::<Vec<_>>();
    let demo = args.iter().any(|a| a == "--demo");
    args.retain(|a| a != "--demo");
    if let Some(bad) = args.iter().find(|a| a.starts_with('-')) {
        eprintln!("echo: unknown flag `{bad}` (usage: echo [ADDR] [--demo])");
        std::process::exit(2);
    }
    let default = if demo {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:8081"
    };
    let addr = args.first().map_or(default, String::as_str).to_string();
    let result = Reactor::run(|r| {
        let server = r.start_server(addr.as_str(), || Echo)?;
        let bound = r.server_addr(server).expect("a TCP server has an address");
        println!("echo server listening on {bound}");
        if demo {
            r.connect(
                bound,
                DemoClient {
                    lines: vec!["hello, reactor", "one thread, many connections", "bye"],
                    received: Vec::new(),
                    started: Instant::now(),
                },
            )?;
        }
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("echo: {e}");
        std::process::exit(1);
    }
}
