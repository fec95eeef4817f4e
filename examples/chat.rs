//! Line-based chat: every line a client sends is broadcast to everyone else, through an
//! [`ember::em::Channel`] (EventMachine's `EM::Channel`): each client subscribes when it
//! connects, pushes its lines, and unsubscribes when it goes. Lines are cut by a
//! [`Tokenizer`] (EventMachine's `BufferedTokenizer`), which also bounds them.
//! `cargo run --example chat -- [ADDR]` (default 127.0.0.1:8082), then `nc 127.0.0.1 8082`.

use std::io;
use std::net::SocketAddr;

use ember::em::{Channel, SubscriptionId};
use ember::protocols::Tokenizer;
use ember::{ConnId, Context, Handler, IntoSocketAddr, Reactor, UnbindReason};

/// Longest line kept; a client that sends more without a newline is disconnected.
const MAX_LINE: usize = 4096;

/// One message for the room, and who said it (it is not sent back to them).
struct Said {
    from: ConnId,
    text: Vec<u8>,
}

struct ChatClient {
    room: Channel<Said>,
    subscription: Option<SubscriptionId>,
    lines: Tokenizer,
    name: String,
}

impl ChatClient {
    fn new(room: Channel<Said>) -> ChatClient {
        ChatClient {
            room,
            subscription: None,
            lines: Tokenizer::new(b"\n", MAX_LINE),
            name: String::new(),
        }
    }

    fn say(&self, cx: &Context<'_>, text: Vec<u8>) {
        self.room.push(Said {
            from: cx.id(),
            text,
        });
    }
}

impl Handler for ChatClient {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        self.name = cx
            .peer_addr()
            .map_or_else(|| cx.id().to_string(), |a| a.to_string());
        cx.send_data(format!("welcome, {}\n", self.name).as_bytes());
        let me = cx.id();
        self.subscription = Some(self.room.subscribe(move |r, said| {
            if said.from != me {
                r.send_to(me, &said.text);
            }
        }));
        self.say(cx, format!("* {} joined\n", self.name).into_bytes());
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, mut data: &[u8]) {
        while let Some(line) = self.lines.next_token(&mut data) {
            let line = match line {
                Ok(line) => line,
                Err(too_long) => {
                    cx.send_data(b"line too long, bye\n");
                    cx.close_after_writing_with(too_long.into());
                    return;
                }
            };
            let mut message = format!("{}: ", self.name).into_bytes();
            message.extend_from_slice(line);
            message.push(b'\n');
            let said = Said {
                from: cx.id(),
                text: message,
            };
            self.room.push(said);
        }
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        if let Some(id) = self.subscription.take() {
            self.room.unsubscribe(id);
        }
        self.say(
            cx,
            format!("* {} left ({reason})\n", self.name).into_bytes(),
        );
    }
}

/// The chat server on `addr`, with one room; returns the address it listens on.
pub fn start(r: &mut Reactor, addr: impl IntoSocketAddr) -> io::Result<SocketAddr> {
    let room = Channel::new(r.local_handle());
    let server = r.start_server(addr, move || ChatClient::new(room.clone()))?;
    Ok(r.server_addr(server).expect("TCP server"))
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8082".to_string());
    let result = Reactor::run(|r| {
        println!("chat on {}", start(r, addr.as_str())?);
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("chat: {e}");
        std::process::exit(1);
    }
}
