//! em-proxy's `balancing.rb`: spread clients over backends — round-robin, least
//! connections (em-proxy's `balanced`) or random — with a hook for every event.
//!
//! `cargo run --example balancing -- [LISTEN] [STRATEGY] [BACKEND...]` (default
//! 0.0.0.0:9999, round-robin). Without backends it starts three `appserver`s in this
//! process, as em-proxy's example forks three web servers; then
//! `curl localhost:9999` a few times.
//!
//! The choice is per client connection. A [`Lease`] counts as one live connection on its
//! backend; it sits in the client's state and is released when the client is gone,
//! which is what least-connections balances on.

#[allow(dead_code)] // only `start` is used here
#[path = "appserver.rs"]
pub mod appserver;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ember::Reactor;
use ember::proxy::{self, Backend, Balancer, Lease, ProxyServer, Relay, Strategy, Target};

/// The balancing proxy over `backends`.
pub fn start(
    r: &mut Reactor,
    listen: SocketAddr,
    backends: &[SocketAddr],
    strategy: Strategy,
) -> io::Result<ProxyServer> {
    let balancer = Balancer::new(backends.iter().map(|a| Target::Tcp(*a)).collect(), strategy);
    proxy::start_with_state(
        r,
        listen,
        || None::<Lease>,
        move |conn| {
            let lease = balancer.pick();
            println!(
                "[on_select, {} ({strategy}), load {:?}]",
                lease.target(),
                loads(&balancer)
            );
            conn.server(
                &format!("backend_{}", lease.index()),
                Backend::new(lease.target().clone()),
            );
            *conn.state() = Some(lease);

            conn.on_connect(|_, backend| println!("[on_connect, {backend}]"));
            conn.on_data(|_, data| {
                println!("[on_data, {} bytes]", data.len());
                Relay::All(data.to_vec())
            });
            conn.on_response(|_, backend, resp| {
                println!("[on_response, {backend}, {} bytes]", resp.len());
                Some(resp.to_vec())
            });
            conn.on_finish(|_, backend, reason| {
                println!("[on_finish, {backend}, {reason}]");
                proxy::Finish::WhenAllDone
            });
        },
    )
}

fn loads(balancer: &Balancer) -> Vec<usize> {
    (0..balancer.targets().len())
        .map(|i| balancer.active(i))
        .collect()
}

/// Addresses as they are typed: `127.0.0.1:3000, 127.0.0.1:3001`.
fn list(addrs: &[SocketAddr]) -> String {
    let addrs: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
    addrs.join(", ")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = args.first().map_or("0.0.0.0:9999", String::as_str);
    let strategy = args.get(1).map_or("round-robin", String::as_str);
    let (Ok(listen), Ok(strategy)) = (listen.parse::<SocketAddr>(), strategy.parse::<Strategy>())
    else {
        eprintln!("usage: balancing [LISTEN] [round-robin|least-conn|random] [BACKEND...]");
        std::process::exit(2);
    };
    let mut backends = Vec::new();
    for text in args.iter().skip(2) {
        match text.parse::<SocketAddr>() {
            Ok(addr) => backends.push(addr),
            Err(_) => {
                eprintln!("balancing: `{text}` is not IP:PORT");
                std::process::exit(2);
            }
        }
    }
    let result = Reactor::run(|r| {
        if backends.is_empty() {
            for (i, label) in ["3000", "3001", "3002"].into_iter().enumerate() {
                let addr = SocketAddr::from(([127, 0, 0, 1], 3000 + i as u16));
                backends.push(appserver::start(r, addr, Duration::ZERO, label)?);
            }
            println!("started appservers on {}", list(&backends));
        }
        let proxy = start(r, listen, &backends, strategy)?;
        let bound = proxy.local_addr().unwrap_or(listen);
        println!("balancing on {bound} over {} ({strategy})", list(&backends));
        r.stop_on_signals()
    });
    if let Err(e) = result {
        eprintln!("balancing: {e}");
        std::process::exit(1);
    }
}
