//! The relay in each of its modes — `kernel` (BPF sockmap: the bytes never enter the
//! process), `splice` and `copy` — through the proxy's cut-through path
//! (`relay_client().relay_server()`, so the client and the backend relay to each
//! other): 1 GiB each way byte for byte, half-close, a target that stops reading and a
//! client that stops reading (bounded, then everything arrives), a backend that resets
//! mid-stream, a linked backend that resets with its last bytes unread, thousands of
//! sessions entering and leaving the maps, and kernel-relayed sessions beside hooked
//! ones in one reactor. Where the kernel refuses the sockmap
//! (no CAP_BPF/CAP_NET_ADMIN, an old kernel) the kernel cases say why and pass.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ember::proxy::{self, Backend, Relay};
use ember::{Reactor, RelayMode};

use support::IO_TIMEOUT;
use support::backends::{Echo, serve};
use support::clients::{connect, pump, read_all, wait_until};
use support::pattern::Pattern;
use support::reactor_thread::ReactorThread;
use support::sys::{raise_fd_limit, reset_on_close};

const GIB: usize = 1 << 30;
const MODES: [RelayMode; 4] = [
    RelayMode::Kernel,
    RelayMode::Auto,
    RelayMode::Splice,
    RelayMode::Copy,
];

/// Sets `mode` on `r`; `false` (with the reason printed) if the kernel relay was asked
/// for and the kernel refused it.
fn choose(r: &mut Reactor, mode: RelayMode) -> bool {
    match r.set_relay_mode(mode) {
        Ok(()) => true,
        Err(why) => {
            eprintln!("skipped the {mode} case: {why}");
            false
        }
    }
}

/// A proxy on its own reactor thread whose one backend is `target`, cut through both
/// ways; its value is the listening address, or `None` if `mode` is unavailable.
fn relay_proxy(target: SocketAddr, mode: RelayMode) -> ReactorThread<Option<SocketAddr>> {
    ReactorThread::spawn(move |r| {
        if !choose(r, mode) {
            return Ok(None);
        }
        Ok(Some(start_cut_through(r, target)?))
    })
}

/// Starts a proxy on `r` whose one backend is `target`, cut through both ways (each end
/// the other's relay target); returns its address.
fn start_cut_through(r: &mut Reactor, target: SocketAddr) -> std::io::Result<SocketAddr> {
    let p = proxy::start(r, "127.0.0.1:0", move |conn| {
        conn.server(
            "backend",
            Backend::tcp(target).relay_client().relay_server(),
        );
    })?;
    Ok(p.local_addr().unwrap())
}

fn echo_backend() -> ReactorThread<SocketAddr> {
    ReactorThread::spawn(|r| serve(r, || Echo))
}

#[test]
fn one_gib_each_way_arrives_byte_for_byte_in_every_mode() {
    for mode in MODES {
        let echo = echo_backend();
        let proxy = relay_proxy(echo.value, mode);
        let Some(addr) = proxy.value else { continue };
        assert_eq!(pump(addr, GIB, 77), GIB, "{mode}");
        if mode == RelayMode::Kernel {
            wait_until("the pair to leave the maps", IO_TIMEOUT, || {
                proxy.on_reactor(|r| r.kernel_relay_entries()) == (0, 0)
            });
        }
    }
}

#[test]
fn half_close_passes_through_in_every_mode() {
    for mode in MODES {
        // The backend reads to EOF, then answers and closes.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let backend = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let request = read_all(&mut conn);
            conn.write_all(format!("got {} bytes", request.len()).as_bytes())
                .unwrap();
        });
        let proxy = relay_proxy(target, mode);
        let Some(addr) = proxy.value else { continue };
        let mut client = connect(addr);
        // Enough to reach the kernel relay after the first copied read.
        let request = Pattern::new(5).bytes(3 << 20);
        client.write_all(&request).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut client), b"got 3145728 bytes", "{mode}");
        backend.join().unwrap();
    }
}

/// The client pushes into a backend that reads nothing: the client's writes must stall
/// within a bound (the kernel relay included: its budget), and every byte arrive once
/// the backend reads.
#[test]
fn a_backend_that_stops_reading_pushes_back_on_the_client_in_every_mode() {
    for mode in MODES {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let backend = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            release_rx.recv().unwrap();
            let mut pattern = Pattern::new(9);
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0usize;
            loop {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    return total;
                }
                assert!(pattern.matches(&buf[..n]), "bytes differ at {total}");
                total += n;
            }
        });
        let proxy = relay_proxy(target, mode);
        let Some(addr) = proxy.value else { continue };
        let pushed = push_until_stalled(&mut connect(addr), 9, Shutdown::Write);
        release_tx.send(()).unwrap();
        assert_eq!(backend.join().unwrap(), pushed, "{mode}: bytes lost");
    }
}

/// The same the other way: the backend pushes into a client that reads nothing.
#[test]
fn a_client_that_stops_reading_pushes_back_on_the_backend_in_every_mode() {
    for mode in MODES {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let (pushed_tx, pushed_rx) = mpsc::channel();
        let backend = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // Read what the client sent first: closing a socket with unread bytes
            // resets it, which would throw away what still waits in its send buffer.
            let mut start = [0u8; 5];
            conn.read_exact(&mut start).unwrap();
            let pushed = push_until_stalled(&mut conn, 11, Shutdown::Both);
            pushed_tx.send(pushed).unwrap();
        });
        let proxy = relay_proxy(target, mode);
        let Some(addr) = proxy.value else { continue };
        let mut client = connect(addr);
        client.write_all(b"start").unwrap();
        let pushed = pushed_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        let mut pattern = Pattern::new(11);
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            let n = client.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            assert!(
                pattern.matches(&buf[..n]),
                "{mode}: bytes differ at {total}"
            );
            total += n;
        }
        assert_eq!(total, pushed, "{mode}: bytes lost");
        backend.join().unwrap();
    }
}

/// Writes pattern bytes until a write stalls for half a second (at most 2 GiB), then
/// shuts `how` down; returns the bytes written, and checks they are bounded.
fn push_until_stalled(stream: &mut TcpStream, seed: u64, how: Shutdown) -> usize {
    /// What the kernel may hold along the way: socket buffers (a few MiB each at most
    /// on loopback), the relay's bound (1 MiB) or the kernel relay's budget (4 MiB).
    const BOUND: usize = 64 << 20;
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut pattern = Pattern::new(seed);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut pushed = 0usize;
    let mut pending: &[u8] = &[];
    while pushed < 2 * GIB {
        if pending.is_empty() {
            pattern.fill(&mut chunk);
            pending = &chunk;
        }
        match stream.write(pending) {
            Ok(n) => {
                pushed += n;
                pending = &pending[n..];
            }
            Err(e) if support::clients::is_timeout(&e) => break,
            Err(e) => panic!("write failed after {pushed} bytes: {e}"),
        }
    }
    assert!(
        pushed < BOUND,
        "{pushed} bytes went in while the far side read nothing: no backpressure"
    );
    stream.set_write_timeout(None).unwrap();
    // Unwritten rest of a chunk: the reader checks a prefix of the pattern only.
    stream.shutdown(how).unwrap();
    pushed
}

/// The backend writes, then resets: the client gets every byte written before the
/// reset, then the end of the connection.
#[test]
fn a_backend_reset_mid_stream_loses_none_of_its_earlier_bytes_in_every_mode() {
    const SENT: usize = 8 << 20;
    for mode in MODES {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let backend = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut hello = [0u8; 5];
            conn.read_exact(&mut hello).unwrap();
            conn.write_all(&Pattern::new(13).bytes(SENT)).unwrap();
            support::sys::wait_until_peer_kernel_has_everything(&conn, IO_TIMEOUT);
            reset_on_close(&conn);
        });
        let proxy = relay_proxy(target, mode);
        let Some(addr) = proxy.value else { continue };
        let mut client = connect(addr);
        client.write_all(b"hello").unwrap();
        let mut pattern = Pattern::new(13);
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    assert!(
                        pattern.matches(&buf[..n]),
                        "{mode}: bytes differ at {total}"
                    );
                    total += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("{mode}: {e}"),
            }
        }
        assert_eq!(total, SENT, "{mode}: the bytes before the reset");
        backend.join().unwrap();
    }
}

/// The backend's last bytes reach the proxy's socket once the pair is linked in the
/// sockmap but before that direction is redirected (they were waiting when it was
/// linked, so the ordinary relay has them), and the backend resets before the proxy
/// reads them: the client still gets every one of them, then the end. A linked socket's
/// `FIONREAD` counts only the sockmap's queue, so these bytes must be found otherwise.
#[test]
fn a_linked_source_that_resets_still_delivers_its_unread_bytes() {
    /// Small enough for the proxy's socket to take while nobody reads it.
    const LAST_BYTES: usize = 16 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let (linked_tx, linked_rx) = mpsc::channel();
    let proxy = ReactorThread::spawn(move |r| {
        if !choose(r, RelayMode::Kernel) {
            return Ok(None);
        }
        let mut listener = Some(listener);
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server(
                "backend",
                Backend::tcp(target).relay_client().relay_server(),
            );
            let mut listener = listener.take();
            let linked_tx = linked_tx.clone();
            conn.on_connect(move |session, _| {
                let Some(listener) = listener.take() else {
                    return;
                };
                // The reactor waits here, inside the backend's connect completion:
                // the backend's bytes are in the proxy's socket before the pair is
                // linked (which comes next), and no read of them is due.
                let (mut backend, _) = listener.accept().unwrap();
                backend.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                backend
                    .write_all(&Pattern::new(17).bytes(LAST_BYTES))
                    .unwrap();
                support::sys::wait_until_peer_kernel_has_everything(&backend, IO_TIMEOUT);
                // The reset comes at the end of this tick: after the link, before the
                // next poll could report the bytes alone.
                let linked_tx = linked_tx.clone();
                session.reactor().next_tick(move |r| {
                    let (linked, _) = r.kernel_relay_entries();
                    reset_on_close(&backend);
                    drop(backend);
                    let _ = linked_tx.send(linked);
                });
            });
        })?;
        Ok(Some(p.local_addr().unwrap()))
    });
    let Some(addr) = proxy.value else { return };
    let mut client = connect(addr);
    let linked = support::clients::recv(&linked_rx, IO_TIMEOUT, "the backend's reset");
    assert_eq!(
        linked, 2,
        "the pair was not linked when the backend reset: not the case under test"
    );
    let mut pattern = Pattern::new(17);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                assert!(pattern.matches(&buf[..n]), "bytes differ at {total}");
                total += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("after {total} bytes: {e}"),
        }
    }
    assert_eq!(
        total, LAST_BYTES,
        "the bytes the backend sent before its reset"
    );
}

/// 2,000 sessions, 200 at a time, each exchanging bytes through the kernel relay: every
/// one leaves the maps when it closes.
#[test]
fn thousands_of_kernel_relayed_sessions_leave_no_map_entries() {
    const SESSIONS: usize = 2000;
    const AT_ONCE: usize = 200;
    raise_fd_limit();
    let echo = echo_backend();
    let proxy = relay_proxy(echo.value, RelayMode::Kernel);
    let Some(addr) = proxy.value else { return };
    let mut most_linked = 0;
    for wave in 0..SESSIONS / AT_ONCE {
        let mut clients: Vec<TcpStream> = (0..AT_ONCE).map(|_| connect(addr)).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(format!("first {wave:02}.{i:03}\n").as_bytes())
                .unwrap();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let mut reply = [0u8; 13];
            c.read_exact(&mut reply).unwrap();
            assert_eq!(&reply, format!("first {wave:02}.{i:03}\n").as_bytes());
        }
        // The second exchange of each goes through the kernel: the pairs are linked.
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(format!("again {wave:02}.{i:03}\n").as_bytes())
                .unwrap();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let mut reply = [0u8; 13];
            c.read_exact(&mut reply).unwrap();
            assert_eq!(&reply, format!("again {wave:02}.{i:03}\n").as_bytes());
        }
        let (linked, _) = proxy.on_reactor(|r| r.kernel_relay_entries());
        most_linked = most_linked.max(linked);
        for c in &mut clients {
            c.shutdown(Shutdown::Write).unwrap();
        }
        for c in &mut clients {
            assert_eq!(read_all(c), b"");
        }
    }
    assert!(
        most_linked >= AT_ONCE,
        "at most {most_linked} sockets were linked: the kernel relay was not used"
    );
    wait_until("every session to leave the maps", IO_TIMEOUT, || {
        proxy.on_reactor(|r| r.kernel_relay_entries()) == (0, 0)
    });
}

/// One reactor, two proxies: one cut through (kernel relayed), one with a hook that
/// sees every byte (copied through the process). Both run at once, byte for byte.
#[test]
fn kernel_relayed_and_hooked_sessions_share_one_reactor() {
    let echo = echo_backend();
    let target = echo.value;
    let proxies = ReactorThread::spawn(move |r| {
        if !choose(r, RelayMode::Kernel) {
            return Ok(None);
        }
        let relayed = start_cut_through(r, target)?;
        let hooked = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("backend", target);
            conn.on_data(|_, data| Relay::All(data.to_vec()));
        })?;
        Ok(Some((relayed, hooked.local_addr().unwrap())))
    });
    let Some((relayed, hooked)) = proxies.value else {
        return;
    };
    let workers: Vec<_> = [(relayed, 21), (hooked, 22), (relayed, 23), (hooked, 24)]
        .into_iter()
        .map(|(addr, seed)| thread::spawn(move || pump(addr, 64 << 20, seed)))
        .collect();
    for w in workers {
        assert_eq!(w.join().unwrap(), 64 << 20);
    }
    wait_until("the relayed pairs to leave the maps", IO_TIMEOUT, || {
        proxies.on_reactor(|r| r.kernel_relay_entries()) == (0, 0)
    });
}

/// How many times the calling thread has blocked (`voluntary_ctxt_switches`): for the
/// reactor thread, its wake-ups from `epoll_wait` (and little else).
fn voluntary_switches_of_this_thread() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("voluntary_ctxt_switches in /proc/thread-self/status")
}

/// Once the kernel carries both directions of a session, the reactor is out of its
/// path: 2,000 request/response exchanges wake it (nearly) never — not for the bytes,
/// nor for the acknowledgements of what the kernel writes.
#[test]
fn a_session_the_kernel_carries_both_ways_does_not_wake_the_reactor() {
    let echo = echo_backend();
    let proxy = relay_proxy(echo.value, RelayMode::Kernel);
    let Some(addr) = proxy.value else { return };
    let mut client = connect(addr);
    let mut answer = [0u8; 64];
    let mut exchange = |client: &mut TcpStream| {
        client.write_all(&[7u8; 64]).unwrap();
        client.read_exact(&mut answer).unwrap();
        assert_eq!(answer, [7u8; 64]);
    };
    // The first exchanges go through the relay until each direction's read finds its
    // socket drained; then both are the kernel's.
    wait_until("both directions to go to the kernel", IO_TIMEOUT, || {
        exchange(&mut client);
        proxy.on_reactor(|r| r.kernel_relay_entries()).1 >= 8
    });
    let before = proxy.on_reactor(|_| voluntary_switches_of_this_thread());
    for _ in 0..2000 {
        exchange(&mut client);
    }
    let after = proxy.on_reactor(|_| voluntary_switches_of_this_thread());
    assert!(
        after - before < 100,
        "the reactor woke {} times for 2,000 exchanges",
        after - before
    );
}
