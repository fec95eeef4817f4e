//! Volume: 1 GiB each way through the proxy byte for byte, on the hook (copying) path and
//! on the cut-through relay path, and 2000 clients at once.
//!
//! The proxy and the echo backend run on separate reactor threads, so the proxy is
//! measured doing only proxy work; bytes are checked against a deterministic stream as
//! they arrive, never buffered whole.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::Instant;

use ember::proxy::{self, Backend, Relay};

use support::IO_TIMEOUT;
use support::backends::{Echo, serve};
use support::clients::{connect, pump, read_all};
use support::reactor_thread::ReactorThread;
use support::sys::raise_fd_limit;

const GIB: usize = 1 << 30;

fn echo_backend() -> ReactorThread<SocketAddr> {
    ReactorThread::spawn(|r| serve(r, || Echo))
}

fn one_gib_each_way(backend: impl Fn(SocketAddr) -> Backend + Send + 'static, hooked: bool) {
    let echo = echo_backend();
    let target = echo.value;
    let proxy = ReactorThread::spawn(move |r| {
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("echo", backend(target));
            if hooked {
                // A hook that inspects every byte keeps the proxy on the copying path.
                conn.on_data(|_, data| Relay::All(data.to_vec()));
            }
        })?;
        Ok(p.local_addr().unwrap())
    });
    let started = Instant::now();
    let total = pump(proxy.value, GIB, 31);
    assert_eq!(total, GIB);
    eprintln!(
        "1 GiB each way through the proxy in {:.2?}",
        started.elapsed()
    );
}

#[test]
fn one_gib_each_way_through_the_hook_path_arrives_byte_for_byte() {
    one_gib_each_way(Backend::tcp, true);
}

#[test]
fn one_gib_each_way_through_the_cut_through_relay_arrives_byte_for_byte() {
    one_gib_each_way(
        |addr| Backend::tcp(addr).relay_client().relay_server(),
        false,
    );
}

#[test]
fn two_thousand_concurrent_clients_each_get_their_own_bytes_back() {
    const CLIENTS: usize = 2000;
    let limit = raise_fd_limit();
    // Each client costs four descriptors in this process: client, proxy's client side,
    // proxy's backend side, backend.
    assert!(
        limit >= (CLIENTS * 4 + 100) as u64,
        "descriptor limit {limit} too low"
    );
    let echo = echo_backend();
    let target = echo.value;
    let proxy = ReactorThread::spawn(move |r| {
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("echo", target);
        })?;
        Ok((p.local_addr().unwrap(), p.stats().clone()))
    });
    let (addr, stats) = proxy.value.clone();
    // Connect in waves no larger than the listen backlog (128), each wave once the proxy
    // has accepted the previous one, so a descheduled reactor thread cannot make the
    // kernel drop SYNs (and the test wait a second per retransmit).
    let mut clients: Vec<TcpStream> = Vec::with_capacity(CLIENTS);
    while clients.len() < CLIENTS {
        let wave = (CLIENTS - clients.len()).min(64);
        clients.extend((0..wave).map(|_| connect(addr)));
        let deadline = Instant::now() + IO_TIMEOUT;
        while stats.clients_accepted() < clients.len() as u64 {
            assert!(
                Instant::now() < deadline,
                "proxy stopped accepting at {}",
                stats.clients_accepted()
            );
            thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .write_all(format!("client {i:04}\n").as_bytes())
            .unwrap();
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let mut reply = [0u8; 12];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, format!("client {i:04}\n").as_bytes());
    }
    assert_eq!(
        stats.clients_active(),
        CLIENTS as u64,
        "all clients open at once"
    );
    for client in &mut clients {
        client.shutdown(Shutdown::Write).unwrap();
    }
    for client in &mut clients {
        assert_eq!(read_all(client), b"");
    }
    assert_eq!(stats.clients_accepted(), CLIENTS as u64);
}
