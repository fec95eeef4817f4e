//! em-proxy's `simple.rb`: one backend, and every hook saying what it sees.
//!
//! `cargo run --example simple -- [LISTEN] [BACKEND]` (default 0.0.0.0:8080 → 127.0.0.1:8081;
//! try `cargo run --example appserver` as the backend and `curl localhost:8080`).

use std::io;
use std::net::SocketAddr;

use ember::Reactor;
use ember::proxy::{self, Finish, ProxyServer, Relay};

mod support;

/// The proxy: client bytes go to `srv` unchanged, answers come back unchanged, and the
/// client is closed when `srv` is done.
pub fn start(r: &mut Reactor, listen: SocketAddr, backend: SocketAddr) -> io::Result<ProxyServer> {
    proxy::start(r, listen, move |conn| {
        conn.server("srv", backend);

        // modify / process the request stream
        conn.on_data(|_, data| {
            println!("[on_data, {:?}]", String::from_utf8_lossy(data));
            Relay::All(data.to_vec())
        });

        // modify / process the response stream
        conn.on_response(|_, backend, resp| {
            println!(
                "[on_response, {backend}, {:?}]",
                String::from_utf8_lossy(resp)
            );
            Some(resp.to_vec())
        });

        // termination logic
        conn.on_finish(|_, backend, reason| {
            println!("[on_finish, {backend}, {reason}]");
            // in duplex mode you can close the client when prod is done
            if backend == "srv" {
                Finish::Close
            } else {
                Finish::WhenAllDone
            }
        });
    })
}

const USAGE: &str = "simple [LISTEN] [BACKEND]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = support::addr_arg(&args, 0, "0.0.0.0:8080", USAGE);
    let backend = support::addr_arg(&args, 1, "127.0.0.1:8081", USAGE);
    let result = Reactor::run(|r| {
        let proxy = start(r, listen, backend)?;
        let bound = proxy.local_addr().unwrap_or(listen);
        println!("simple proxy on {bound} → {backend}");
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("simple: {e}");
        std::process::exit(1);
    }
}
