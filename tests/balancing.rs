//! `ember-proxy -b` as a child process in front of three echo backends that count their
//! connections: weights split fresh clients as given, and `--strategy source` keeps a
//! client's connections on one backend.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

use support::IO_TIMEOUT;
use support::backends::StdEcho;
use support::child::EmberProxy;

fn three_backends() -> [StdEcho; 3] {
    [StdEcho::start(), StdEcho::start(), StdEcho::start()]
}

fn counts(backends: &[StdEcho; 3]) -> [usize; 3] {
    backends.each_ref().map(StdEcho::accepted)
}

/// One fresh connection: a ping, its echo, then close.
fn ping(mut stream: TcpStream) {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
}

/// A connection to `to` from `source` (any 127.x.y.z works on Linux loopback): std has no
/// bind-before-connect, tokio's `TcpSocket` does.
fn connect_from(rt: &tokio::runtime::Runtime, source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        socket.connect(to).await.unwrap().into_std().unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    stream
}

#[test]
fn weights_split_fresh_clients() {
    let backends = three_backends();
    let [a, b, c] = backends.each_ref().map(|b| b.addr);
    let list = format!("{a} weight=5,{b} weight=3,{c} weight=2");
    let proxy = EmberProxy::start(&["-b", &list]);
    for _ in 0..300 {
        ping(TcpStream::connect(proxy.addr).unwrap());
    }
    let got = counts(&backends);
    for (count, want) in got.iter().zip([150, 90, 60]) {
        assert!(count.abs_diff(want) <= 6, "{got:?}, weights 5:3:2");
    }
}

#[test]
fn weighted_random_follows_the_weights_and_p2c_reaches_every_backend() {
    for strategy in ["random", "p2c"] {
        let backends = three_backends();
        let [a, b, c] = backends.each_ref().map(|b| b.addr);
        let list = format!("{a} weight=4,{b},{c}");
        let proxy = EmberProxy::start(&["-b", &list, "--strategy", strategy]);
        for _ in 0..300 {
            ping(TcpStream::connect(proxy.addr).unwrap());
        }
        let got = counts(&backends);
        assert_eq!(got.iter().sum::<usize>(), 300, "{strategy}: {got:?}");
        if strategy == "random" {
            // Expected 200, 50, 50: loose bounds, the draws are random.
            assert!(
                got[0] > 150 && got[1] > 15 && got[2] > 15,
                "{strategy}: {got:?}"
            );
        } else {
            // p2c weighs live leases, and one client at a time leaves few of them: all
            // that is sure is that no backend is starved.
            assert!(got.iter().all(|&n| n > 15), "{strategy}: {got:?}");
        }
    }
}

#[test]
fn source_keeps_a_clients_connections_together() {
    let backends = three_backends();
    let list = backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let proxy = EmberProxy::start(&["-b", &list, "--strategy", "source"]);
    for _ in 0..30 {
        ping(TcpStream::connect(proxy.addr).unwrap());
    }
    let got = counts(&backends);
    assert!(
        got.contains(&30) && got.iter().sum::<usize>() == 30,
        "{got:?}"
    );

    // Other source addresses: each sticks to its backend, and together they use all three.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let mut used = [false; 3];
    for host in 2..42 {
        let source = Ipv4Addr::new(127, 0, 0, host);
        let before = counts(&backends);
        for _ in 0..3 {
            ping(connect_from(&rt, source, proxy.addr));
        }
        let after = counts(&backends);
        let grew: Vec<usize> = (0..3).filter(|&i| after[i] != before[i]).collect();
        assert!(
            grew.len() == 1 && after[grew[0]] == before[grew[0]] + 3,
            "{source}: {before:?} -> {after:?}"
        );
        used[grew[0]] = true;
    }
    assert_eq!(used, [true; 3]);
}
