//! Line-based chat: every line a client sends is broadcast to everyone else.
//! `cargo run --example chat -- [ADDR]` (default 127.0.0.1:8082), then `nc 127.0.0.1 8082`.

use ember::{ConnId, Context, Handler, Reactor, UnbindReason};

/// Longest line kept; a client that sends more without a newline is disconnected.
const MAX_LINE: usize = 4096;

#[derive(Default)]
struct ChatClient {
    partial: Vec<u8>,
    name: String,
}

impl ChatClient {
    fn broadcast(cx: &mut Context<'_>, from: ConnId, line: &[u8]) {
        for id in cx.connection_ids() {
            if id != from {
                cx.reactor().send_to(id, line);
            }
        }
    }
}

impl Handler for ChatClient {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        self.name = cx
            .peer_addr()
            .map_or_else(|| cx.id().to_string(), |a| a.to_string());
        cx.send_data(format!("welcome, {}\n", self.name).as_bytes());
        let joined = format!("* {} joined\n", self.name);
        let me = cx.id();
        Self::broadcast(cx, me, joined.as_bytes());
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        self.partial.extend_from_slice(data);
        let me = cx.id();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let mut message = format!("{}: ", self.name).into_bytes();
            message.extend_from_slice(&line);
            Self::broadcast(cx, me, &message);
        }
        if self.partial.len() > MAX_LINE {
            cx.send_data(b"line too long, bye\n");
            cx.close_after_writing();
        }
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        let left = format!("* {} left ({reason})\n", self.name);
        let me = cx.id();
        Self::broadcast(cx, me, left.as_bytes());
    }
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8082".to_string());
    let result = Reactor::run(|r| {
        let server = r.start_server(addr.as_str(), ChatClient::default)?;
        println!("chat on {}", r.server_addr(server).expect("TCP server"));
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("chat: {e}");
        std::process::exit(1);
    }
}
