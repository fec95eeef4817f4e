//! em-proxy's `relay_port_forward.rb`: a port forwarder on the cut-through relay.
//!
//! `cargo run --example relay_port_forward -- [LISTEN] [BACKEND]` (default 0.0.0.0:8080 →
//! 127.0.0.1:8081).
//!
//! With `relay_client` and `relay_server` the reactor moves the bytes itself (with
//! `splice(2)` on Linux): no hook sees them, which is the point when only the connection,
//! not its content, matters.

use std::io;
use std::net::SocketAddr;

use ember::Reactor;
use ember::proxy::{self, Backend, ProxyServer, Relay};

mod support;

/// Forwards on the relay; `on_connect` still runs, `on_data`/`on_response` never do.
pub fn start(r: &mut Reactor, listen: SocketAddr, backend: SocketAddr) -> io::Result<ProxyServer> {
    proxy::start(r, listen, move |conn| {
        conn.server("srv", Backend::tcp(backend).relay_client().relay_server());

        conn.on_connect(|s, backend| {
            let peer = s.peer().map_or_else(|| "?".into(), |p| p.to_string());
            println!("[on_connect, {backend}: {peer} connected]");
        });

        // not called: relay_client passes the client's bytes straight to srv
        conn.on_data(|_, data| {
            println!("[on_data, {:?}]", String::from_utf8_lossy(data));
            Relay::All(data.to_vec())
        });

        // not called: relay_server passes srv's bytes straight to the client
        conn.on_response(|_, backend, resp| {
            println!(
                "[on_response, {backend}, {:?}]",
                String::from_utf8_lossy(resp)
            );
            Some(resp.to_vec())
        });
    })
}

const USAGE: &str = "relay_port_forward [LISTEN] [BACKEND]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = support::addr_arg(&args, 0, "0.0.0.0:8080", USAGE);
    let backend = support::addr_arg(&args, 1, "127.0.0.1:8081", USAGE);
    let result = Reactor::run(|r| {
        let proxy = start(r, listen, backend)?;
        let bound = proxy.local_addr().unwrap_or(listen);
        println!("relay_port_forward on {bound} → {backend}");
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("relay_port_forward: {e}");
        std::process::exit(1);
    }
}
