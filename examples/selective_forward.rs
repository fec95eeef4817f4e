//! em-proxy's `selective_forward.rb`: two backends connected, requests sent to one.
//!
//! `cargo run --example selective_forward -- [LISTEN] [PROD] [TEST]` (default 0.0.0.0:8080
//! → 127.0.0.1:8081, 127.0.0.1:8082).
//!
//! `Relay::To` names the backends that get a chunk; `test` is connected but gets nothing.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use ember::Reactor;
use ember::proxy::{self, Finish, ProxyServer, Relay};

mod support;

/// What one client's hooks share.
pub struct Selective {
    started: Instant,
    answers: BTreeMap<String, Vec<u8>>,
}

/// Requests (with `User-Agent` rewritten) go to `prod` only; the client sees `prod`'s
/// answers and closes when `prod` is done.
pub fn start(
    r: &mut Reactor,
    listen: SocketAddr,
    prod: SocketAddr,
    test: SocketAddr,
) -> io::Result<ProxyServer> {
    let new_client = || Selective {
        started: Instant::now(),
        answers: BTreeMap::new(),
    };
    proxy::start_with_state(r, listen, new_client, move |conn| {
        conn.server("prod", prod); // production, renders the response
        conn.server("test", test); // testing, internal only

        conn.on_data(|_, data| Relay::to(support::rewrite_user_agent(data), &["prod"]));

        conn.on_response(|s, server, resp| {
            s.state()
                .answers
                .entry(server.to_owned())
                .or_default()
                .extend_from_slice(resp);
            (server == "prod").then(|| resp.to_vec())
        });

        conn.on_finish(|s, name, _| {
            let state = s.state();
            println!(
                "[on_finish, {name}, {:.3?}, {:?}]",
                state.started.elapsed(),
                state.answers.keys()
            );
            // close the client once prod is done
            if name == "prod" {
                Finish::Close
            } else {
                Finish::Keep
            }
        });
    })
}

const USAGE: &str = "selective_forward [LISTEN] [PROD] [TEST]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = support::addr_arg(&args, 0, "0.0.0.0:8080", USAGE);
    let prod = support::addr_arg(&args, 1, "127.0.0.1:8081", USAGE);
    let test = support::addr_arg(&args, 2, "127.0.0.1:8082", USAGE);
    let result = Reactor::run(|r| {
        let proxy = start(r, listen, prod, test)?;
        let bound = proxy.local_addr().unwrap_or(listen);
        println!("selective_forward on {bound}: prod {prod}, test {test}");
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("selective_forward: {e}");
        std::process::exit(1);
    }
}
