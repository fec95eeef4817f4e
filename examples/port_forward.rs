//! em-proxy's `port_forward.rb`: a logging port forwarder.
//!
//! `cargo run --example port_forward -- [LISTEN] [BACKEND]` (default 0.0.0.0:8080 →
//! 127.0.0.1:8081).

use std::io;
use std::net::SocketAddr;

use ember::Reactor;
use ember::proxy::{Options, ProxyServer, Relay};

mod support;

/// Forwards every byte both ways, printing each chunk.
pub fn start(r: &mut Reactor, listen: SocketAddr, backend: SocketAddr) -> io::Result<ProxyServer> {
    Options::new().verbose(true).start(r, listen, move |conn| {
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
    })
}

const USAGE: &str = "port_forward [LISTEN] [BACKEND]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = support::addr_arg(&args, 0, "0.0.0.0:8080", USAGE);
    let backend = support::addr_arg(&args, 1, "127.0.0.1:8081", USAGE);
    let result = Reactor::run(|r| {
        let proxy = start(r, listen, backend)?;
        let bound = proxy.local_addr().unwrap_or(listen);
        println!("port_forward on {bound} → {backend}");
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("port_forward: {e}");
        std::process::exit(1);
    }
}
