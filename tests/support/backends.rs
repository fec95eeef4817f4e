//! Small servers for a test to talk to. Ember handlers, and [`serve`] to start one on a
//! free loopback port: an echo, a recorder that answers with running totals, a server that
//! never reads, and one that answers the client's FIN with a stream of pattern bytes. And
//! [`StdEcho`], an echo on std threads for a test that must not depend on ember to serve.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use ember::{Context, Handler, PeerClosed, Reactor};

use super::pattern::Pattern;

/// Starts a TCP server on a free loopback port and returns its address.
pub fn serve<H: Handler>(
    r: &mut Reactor,
    factory: impl FnMut() -> H + 'static,
) -> io::Result<SocketAddr> {
    let id = r.start_server("127.0.0.1:0", factory)?;
    Ok(r.server_addr(id).expect("TCP servers have an address"))
}

/// Echoes everything; on FIN, finishes writing and closes.
pub struct Echo;

impl Handler for Echo {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        cx.send_data(data);
    }
}

/// Bytes a recorder saw, shared with the test thread.
pub type Record = Arc<Mutex<Vec<u8>>>;

pub fn record_of(record: &Record) -> Vec<u8> {
    record.lock().unwrap().clone()
}

/// Records every byte; answers each chunk with `PREFIX:<bytes so far>\n`; on FIN, sends
/// `PREFIX:end` and closes.
pub struct Recorder {
    pub prefix: &'static str,
    pub record: Record,
}

impl Handler for Recorder {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        let total = {
            let mut record = self.record.lock().unwrap();
            record.extend_from_slice(data);
            record.len()
        };
        cx.send_data(format!("{}:{total}\n", self.prefix).as_bytes());
    }

    fn peer_closed(&mut self, cx: &mut Context<'_>) -> PeerClosed {
        cx.send_data(format!("{}:end\n", self.prefix).as_bytes());
        PeerClosed::Close
    }
}

/// Serves a [`Recorder`] answering with `prefix`; returns its address and its record.
pub fn serve_recorder(r: &mut Reactor, prefix: &'static str) -> io::Result<(SocketAddr, Record)> {
    let record = Record::default();
    let shared = Arc::clone(&record);
    let addr = serve(r, move || Recorder {
        prefix,
        record: Arc::clone(&shared),
    })?;
    Ok((addr, record))
}

/// Accepts and never reads a byte.
pub struct NeverReads;

impl Handler for NeverReads {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.pause();
    }

    fn receive_data(&mut self, _cx: &mut Context<'_>, _data: &[u8]) {}
}

/// Waits for the client's FIN, then sends `size` pattern bytes (seed 7) and closes.
pub struct AnswerAfterFin {
    pub size: usize,
    pub received: Arc<AtomicUsize>,
}

impl Handler for AnswerAfterFin {
    fn receive_data(&mut self, _cx: &mut Context<'_>, data: &[u8]) {
        self.received.fetch_add(data.len(), Ordering::SeqCst);
    }

    fn peer_closed(&mut self, cx: &mut Context<'_>) -> PeerClosed {
        let mut pattern = Pattern::new(7);
        let mut left = self.size;
        let mut chunk = vec![0; 64 * 1024];
        while left > 0 {
            let n = left.min(chunk.len());
            pattern.fill(&mut chunk[..n]);
            cx.send_data(&chunk[..n]);
            left -= n;
        }
        PeerClosed::Close
    }
}

/// An echo server on std threads, one per connection: echoes until its client's FIN, then
/// sends its own. Counts the connections it accepted and the bytes it echoed.
pub struct StdEcho {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl StdEcho {
    /// On a free loopback port.
    pub fn start() -> StdEcho {
        StdEcho::on(TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
    }

    pub fn on(listener: TcpListener) -> StdEcho {
        let addr = listener.local_addr().expect("listener address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let (count, total) = (Arc::clone(&accepted), Arc::clone(&bytes));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let total = Arc::clone(&total);
                thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        total.fetch_add(n, Ordering::SeqCst);
                    }
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
        });
        StdEcho {
            addr,
            accepted,
            bytes,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Bytes echoed so far.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// Answers every connection with its name, then keeps the connection open and echoes:
/// the first byte a client reads says which backend it reached.
pub struct NamedEcho(pub &'static str);

impl Handler for NamedEcho {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.send_data(self.0.as_bytes());
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        cx.send_data(data);
    }
}
