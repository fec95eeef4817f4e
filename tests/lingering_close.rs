//! Closing after writing while the peer has sent input we never read must not reset the
//! connection: the reset would destroy the response the peer has not read yet.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ember::{ConnId, Context, Handler, Reactor, UnbindReason};

struct NeverReads {
    accepted: mpsc::Sender<ConnId>,
    unbound: mpsc::Sender<UnbindReason>,
}

impl Handler for NeverReads {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.pause();
        let _ = self.accepted.send(cx.id());
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        let _ = self.unbound.send(reason);
    }
}

/// Unacknowledged bytes in a socket's send queue (`TIOCOUTQ`).
fn unacked(stream: &TcpStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int into the live variable.
    unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    n
}

#[test]
fn close_after_writing_with_unread_input_delivers_everything_then_fin_not_reset() {
    let (accepted_tx, accepted_rx) = mpsc::channel();
    let (unbound_tx, unbound_rx) = mpsc::channel();
    let (addr_tx, addr_rx) = mpsc::channel();
    let reactor = std::thread::spawn(move || {
        Reactor::run(|r| {
            let server = r.start_server("127.0.0.1:0", move || NeverReads {
                accepted: accepted_tx.clone(),
                unbound: unbound_tx.clone(),
            })?;
            addr_tx
                .send((r.server_addr(server).unwrap(), r.handle()))
                .unwrap();
            Ok(())
        })
        .unwrap();
    });
    let (addr, handle) = addr_rx.recv().unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    let id = accepted_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // Input the server will never read, acknowledged by its kernel before it closes.
    client.write_all(&[b'x'; 4096]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while unacked(&client) > 0 {
        assert!(
            Instant::now() < deadline,
            "the server's kernel never took our bytes"
        );
        std::thread::yield_now();
    }
    let response: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let sent = response.clone();
    handle.schedule(move |r| {
        assert!(r.send_to(id, &sent));
        r.close_connection_after_writing(id);
    });
    let mut got = Vec::new();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let outcome = client.read_to_end(&mut got);
    assert!(
        outcome.is_ok(),
        "expected FIN after the response, got {outcome:?}"
    );
    assert_eq!(got.len(), response.len());
    assert!(got == response);
    drop(client); // our FIN ends the server's lingering close
    let reason = unbound_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(reason, UnbindReason::ClosedByUs);
    handle.stop();
    reactor.join().unwrap();
}
