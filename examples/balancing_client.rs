//! em-proxy's `balancing-client.rb`: COUNT HTTP requests at once through a forward proxy
//! (the `balancing` example), each answer's body printed under its number.
//!
//! `cargo run --example balancing_client -- [PROXY] [COUNT]` (default 127.0.0.1:9999,
//! COUNT from the `COUNT` environment variable, as in em-proxy, or 5); start
//! `cargo run --example balancing` first.
//!
//! em-proxy's client is a Ruby thread per request. Here every request is a connection on
//! one reactor, and EventMachine's `EM::Iterator` with a concurrency of COUNT
//! ([`EachLimited`]) starts them all and says when the last has ended.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use ember::em::{EachLimited, Next};
use ember::{Context, Handler, Reactor, UnbindReason};

/// The request em-proxy's client sends: `Net::HTTP::Proxy` asks for an absolute URI.
pub const REQUEST: &[u8] = b"GET http://www.example.com/ HTTP/1.1\r\n\
    Host: www.example.com\r\nConnection: close\r\n\r\n";

/// The most bytes kept of one answer; the rest is dropped (and the answer is an error).
pub const MAX_ANSWER: usize = 1024 * 1024;

/// One request's outcome, by its number (1 to COUNT).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Which request, from 1.
    pub number: usize,
    /// The answer's body, or why there is none.
    pub body: Result<String, String>,
}

/// Sends `count` requests to `proxy`, all at once, and calls `done` with their answers
/// in request order once every connection has ended.
pub fn start(
    r: &mut Reactor,
    proxy: SocketAddr,
    count: usize,
    done: impl FnOnce(&mut Reactor, Vec<Answer>) + 'static,
) {
    let answers = Rc::new(RefCell::new(Vec::with_capacity(count)));
    let collected = Rc::clone(&answers);
    EachLimited::start(
        r,
        1..=count,
        count.max(1),
        move |r, number, next| {
            let fetch = Fetch {
                number,
                response: Vec::new(),
                answers: Rc::clone(&answers),
                next: Some(next),
            };
            if let Err(e) = r.connect(proxy, fetch) {
                answers.borrow_mut().push(Answer {
                    number,
                    body: Err(format!("no socket: {e}")),
                });
            }
        },
        move |r| {
            let mut answers = collected.take();
            answers.sort_by_key(|a| a.number);
            done(r, answers);
        },
    );
}

/// One request on its own connection; its answer is recorded when the connection ends.
struct Fetch {
    number: usize,
    response: Vec<u8>,
    answers: Rc<RefCell<Vec<Answer>>>,
    /// Dropped in `unbind`: this request is finished.
    next: Option<Next>,
}

impl Handler for Fetch {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.send_data(REQUEST);
    }

    fn receive_data(&mut self, _cx: &mut Context<'_>, data: &[u8]) {
        // One byte past the limit is kept, to tell an over-long answer from a full one.
        let room = (MAX_ANSWER + 1).saturating_sub(self.response.len());
        self.response
            .extend_from_slice(&data[..data.len().min(room)]);
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        let body = body_of(&self.response, &reason);
        self.answers.borrow_mut().push(Answer {
            number: self.number,
            body,
        });
        if let Some(next) = self.next.take() {
            next.next();
        }
    }
}

/// The body of a whole `200` answer delimited by the close, or what went wrong.
fn body_of(response: &[u8], reason: &UnbindReason) -> Result<String, String> {
    if !reason.is_orderly() {
        return Err(format!("connection ended: {reason}"));
    }
    if response.len() > MAX_ANSWER {
        return Err(format!("answer over {MAX_ANSWER} bytes"));
    }
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("no whole answer: {text:?}"));
    };
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err(format!("answered {status:?}"));
    }
    Ok(body.to_owned())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let proxy = args.first().map_or("127.0.0.1:9999", String::as_str);
    let count = args
        .get(1)
        .cloned()
        .or_else(|| std::env::var("COUNT").ok())
        .unwrap_or_else(|| "5".to_owned());
    let (Ok(proxy), Ok(count)) = (proxy.parse::<SocketAddr>(), count.parse::<usize>()) else {
        eprintln!("usage: balancing_client [PROXY] [COUNT] (PROXY is IP:PORT)");
        std::process::exit(2);
    };
    let failed = Rc::new(RefCell::new(false));
    let seen = Rc::clone(&failed);
    let result = Reactor::run(|r| -> io::Result<()> {
        start(r, proxy, count, move |r, answers| {
            for answer in answers {
                match answer.body {
                    Ok(body) => println!("{body}"),
                    Err(why) => {
                        println!("(no answer: {why})");
                        *seen.borrow_mut() = true;
                    }
                }
                println!("^^^ {} {}\n", answer.number, "-".repeat(80));
            }
            r.stop();
        });
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("balancing_client: {e}");
        std::process::exit(1);
    }
    if *failed.borrow() {
        std::process::exit(1);
    }
}
