//! em-proxy's `duplex.rb`: fork production traffic to a test environment, answer from
//! production only.
//!
//! `cargo run --example duplex -- [LISTEN] [PROD] [TEST]` (default 0.0.0.0:8000 →
//! 127.0.0.1:8100, 127.0.0.1:8200). To try it as em-proxy suggests:
//!
//! ```text
//! cargo run --example appserver -- 127.0.0.1:8100 1
//! cargo run --example appserver -- 127.0.0.1:8200 3
//! cargo run --example duplex
//! curl localhost:8000
//! ```
//!
//! `test` is a shadow: it gets every request byte, its answers go to `on_response` (here
//! recorded) but never to the client, and it can't slow or break production.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use ember::Reactor;
use ember::proxy::{self, Backend, Finish, ProxyServer, Relay};

mod support;

/// What one client's hooks share: when it started and what each backend answered.
pub struct Duplex {
    started: Instant,
    answers: BTreeMap<String, Vec<u8>>,
}

/// The proxy: requests (with `User-Agent` rewritten) to `prod` and `test`, answers from
/// `prod` only; the client closes when `prod` is done.
pub fn start(
    r: &mut Reactor,
    listen: SocketAddr,
    prod: SocketAddr,
    test: SocketAddr,
) -> io::Result<ProxyServer> {
    let new_client = || Duplex {
        started: Instant::now(),
        answers: BTreeMap::new(),
    };
    proxy::start_with_state(r, listen, new_client, move |conn| {
        conn.server("prod", prod); // production, renders the response
        conn.server("test", Backend::tcp(test).shadow()); // testing, internal only

        conn.on_data(|_, data| Relay::All(support::rewrite_user_agent(data)));

        conn.on_response(|s, server, resp| {
            s.state()
                .answers
                .entry(server.to_owned())
                .or_default()
                .extend_from_slice(resp);
            // only render the response from production
            (server == "prod").then(|| resp.to_vec())
        });

        conn.on_finish(|s, name, reason| {
            let state = s.state();
            println!(
                "[on_finish, {name}, {reason}, {:.3?}]",
                state.started.elapsed()
            );
            for (server, answer) in &state.answers {
                println!("  {server}: {:?}", String::from_utf8_lossy(answer));
            }
            if name == "prod" {
                Finish::Close
            } else {
                Finish::Keep
            }
        });
    })
}

const USAGE: &str = "duplex [LISTEN] [PROD] [TEST]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = support::addr_arg(&args, 0, "0.0.0.0:8000", USAGE);
    let prod = support::addr_arg(&args, 1, "127.0.0.1:8100", USAGE);
    let test = support::addr_arg(&args, 2, "127.0.0.1:8200", USAGE);
    let result = Reactor::run(|r| {
        let proxy = start(r, listen, prod, test)?;
        let bound = proxy.local_addr().unwrap_or(listen);
        println!("duplex on {bound}: prod {prod}, test {test}");
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("duplex: {e}");
        std::process::exit(1);
    }
}
