//! Fault injection on the model of toxiproxy: a [`ToxicProxy`] listens on 127.0.0.1:0,
//! forwards every connection it accepts to one upstream address, and applies one
//! [`Toxic`] to each direction: *upstream* (towards the server) and *downstream* (towards
//! the client). Put one between a client and the proxy, or between the proxy and a
//! backend.
//!
//! A `ToxicProxy` owns its listener thread, one thread per direction of every connection,
//! and every socket they use. Each blocking call either has a timeout ([`TICK`]) or waits
//! on the proxy's stop signal, so dropping it stops and joins every thread and closes
//! every socket: with a FIN, or a reset where a toxic reset. [`ToxicProxy::live`] counts
//! the connections whose sockets are still open, so a test can wait for closes.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::clients::is_timeout;
use super::pattern::Pattern;
use super::sys::{shrink_accept_queue, try_reset_on_close, unacked_outbound};

/// How often a blocked read or write looks up to see whether to stop.
pub const TICK: Duration = Duration::from_millis(20);
/// How long the connect to the upstream address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `ResetAfter` waits for the peer's kernel to acknowledge the bytes it let
/// through before it resets (a peer that stopped reading gets the reset regardless).
const ACK_WAIT: Duration = Duration::from_secs(5);
/// Long enough to stand for "until the proxy stops".
const FOREVER: Duration = Duration::from_secs(3600);

/// What happens to the bytes going one way through a [`ToxicProxy`].
#[derive(Clone, Debug, PartialEq)]
pub enum Toxic {
    /// Bytes and FIN pass unchanged.
    Pass,
    /// Each chunk is passed on this long after it was read.
    Latency(Duration),
    /// At most this many bytes per second.
    Bandwidth(u64),
    /// Each chunk goes out as segments of `min..=max` bytes, one write each; the sockets
    /// are `TCP_NODELAY`, so each write leaves as a segment of its own.
    Slicer { min: usize, max: usize },
    /// After this many bytes, once the peer's kernel has acknowledged them, both sockets of
    /// the connection are closed with `SO_LINGER` 0: a reset each way.
    ResetAfter(usize),
    /// Bytes are read and discarded and the FIN is not passed on: the connection stays
    /// open, silent, until the `ToxicProxy` is dropped.
    Blackhole,
    /// The FIN is passed on this long after it arrived.
    SlowClose(Duration),
    /// In either direction: connects to the `ToxicProxy` never complete. Its listener's
    /// accept queue (backlog 0) is held full by one connection it never accepts, and Linux
    /// drops every SYN that arrives at a full accept queue, so the connector retransmits
    /// until its own timeout gives up. (A socket bound but not listening is no good: the
    /// kernel answers its SYNs with a reset, a refused connect.)
    SynDrop,
}

/// A fault-injecting TCP relay; stops and closes everything when dropped.
pub struct ToxicProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Option<JoinHandle<()>>,
    /// For `SynDrop`: the listener and the connection that fills its accept queue.
    plugged: Option<(TcpListener, TcpStream)>,
}

impl ToxicProxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream`, with `up` applied to the bytes
    /// going there and `down` to the bytes coming back.
    pub fn start(upstream: SocketAddr, up: Toxic, down: Toxic) -> ToxicProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("toxic proxy: bind");
        let addr = listener.local_addr().expect("toxic proxy: local address");
        let shared = Arc::new(Shared::default());
        if up == Toxic::SynDrop || down == Toxic::SynDrop {
            let plug = fill_accept_queue(&listener, addr);
            return ToxicProxy {
                addr,
                shared,
                listener: None,
                plugged: Some((listener, plug)),
            };
        }
        let accepting = Arc::clone(&shared);
        let thread = thread::spawn(move || accept_loop(listener, upstream, [up, down], accepting));
        ToxicProxy {
            addr,
            shared,
            listener: Some(thread),
            plugged: None,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted whose sockets are not closed yet.
    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }
}

impl Drop for ToxicProxy {
    fn drop(&mut self) {
        self.shared.stop();
        if let Some(listener) = self.listener.take() {
            // Wake the blocking accept with a connection to ourselves: the loop sees the
            // stop and ends. Without that connection it may never wake: leave it.
            if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok() {
                let _ = listener.join();
            }
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock().unwrap());
        for thread in threads {
            let _ = thread.join();
        }
        self.plugged = None;
    }
}

/// What the threads of one `ToxicProxy` share: the stop signal, the live count and the
/// connection threads (joined on drop).
#[derive(Default)]
struct Shared {
    stopped: Mutex<bool>,
    wake: Condvar,
    live: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn stop(&self) {
        *self.stopped.lock().unwrap() = true;
        self.wake.notify_all();
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap()
    }

    /// Waits `limit`, or less if the proxy stops or `cut_short` holds when a waiter is
    /// woken ([`Shared::nudge`]); returns whether the proxy stopped.
    fn pause(&self, limit: Duration, cut_short: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut stopped = self.stopped.lock().unwrap();
        while !*stopped && !cut_short() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            stopped = self.wake.wait_timeout(stopped, left).unwrap().0;
        }
        *stopped
    }

    /// Wakes every `pause` to look at its `cut_short` again.
    fn nudge(&self) {
        let _held = self.stopped.lock().unwrap();
        self.wake.notify_all();
    }
}

/// Counts a connection as live from accept until its sockets are closed.
struct Live(Arc<Shared>);

impl Live {
    fn new(shared: &Arc<Shared>) -> Live {
        shared.live.fetch_add(1, Ordering::SeqCst);
        Live(Arc::clone(shared))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Shrinks the accept queue to one (listen backlog 0) and fills it with a connection
/// that is never accepted; returns that connection.
fn fill_accept_queue(listener: &TcpListener, addr: SocketAddr) -> TcpStream {
    shrink_accept_queue(listener);
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).expect("plug the accept queue")
}

fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    toxics: [Toxic; 2],
    shared: Arc<Shared>,
) {
    for client in listener.incoming() {
        if shared.is_stopped() {
            return;
        }
        let Ok(client) = client else {
            thread::sleep(TICK); // out of descriptors, say: back off, don't spin
            continue;
        };
        let live = Live::new(&shared);
        let (toxics, conn_shared) = (toxics.clone(), Arc::clone(&shared));
        let thread = thread::spawn(move || serve(client, upstream, toxics, conn_shared, live));
        shared.threads.lock().unwrap().push(thread);
    }
}

/// Connects upstream, then pumps upstream on this thread and downstream on another.
fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    toxics: [Toxic; 2],
    shared: Arc<Shared>,
    live: Live,
) {
    let Ok(server) = TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT) else {
        return; // the client is closed, as toxiproxy does
    };
    for socket in [&client, &server] {
        socket.set_nodelay(true).expect("TCP_NODELAY");
        socket.set_read_timeout(Some(TICK)).expect("read timeout");
        socket.set_write_timeout(Some(TICK)).expect("write timeout");
    }
    let conn = Arc::new(Conn {
        client,
        server,
        aborted: AtomicBool::new(false),
        _live: live,
    });
    let [up, down] = toxics;
    let (down_conn, down_shared) = (Arc::clone(&conn), Arc::clone(&shared));
    let downstream = thread::spawn(move || {
        Pump::new(&down_conn, Direction::Down, down, &down_shared).run();
    });
    Pump::new(&conn, Direction::Up, up, &shared).run();
    let _ = downstream.join();
}

/// One relayed connection: both sockets, closed when both directions are done.
struct Conn {
    client: TcpStream,
    server: TcpStream,
    aborted: AtomicBool,
    _live: Live, // last: the count drops once the sockets are closed
}

impl Conn {
    /// Makes the close of both sockets a reset and wakes the other direction to end it.
    fn abort(&self, shared: &Shared) {
        self.aborted.store(true, Ordering::SeqCst);
        for socket in [&self.client, &self.server] {
            let _ = try_reset_on_close(socket);
            // Wakes a blocked read (it returns 0); sends nothing.
            let _ = socket.shutdown(Shutdown::Read);
        }
        shared.nudge();
    }

    fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::SeqCst)
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// One direction of a connection, with its toxic's running state.
struct Pump<'a> {
    conn: &'a Conn,
    from: &'a TcpStream,
    to: &'a TcpStream,
    toxic: Toxic,
    shared: &'a Shared,
    /// Bytes passed on so far.
    sent: usize,
    started: Instant,
    /// Where the slicer draws its segment sizes from.
    sizes: Pattern,
}

enum Next {
    Go,
    Reset,
}

impl<'a> Pump<'a> {
    fn new(conn: &'a Conn, direction: Direction, toxic: Toxic, shared: &'a Shared) -> Pump<'a> {
        let (from, to) = match direction {
            Direction::Up => (&conn.client, &conn.server),
            Direction::Down => (&conn.server, &conn.client),
        };
        Pump {
            conn,
            from,
            to,
            toxic,
            shared,
            sent: 0,
            started: Instant::now(),
            sizes: Pattern::new(direction as u64),
        }
    }

    fn run(mut self) {
        let mut buf = vec![0; 64 * 1024];
        while !self.shared.is_stopped() && !self.conn.is_aborted() {
            match self.from.read(&mut buf) {
                Ok(0) => return self.pass_fin(),
                Ok(n) => match self.forward(&buf[..n], Instant::now()) {
                    Ok(Next::Go) => {}
                    Ok(Next::Reset) => return self.conn.abort(self.shared),
                    Err(_) => return self.fail(),
                },
                Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.fail(), // a reset: passed on as one
            }
        }
    }

    /// A read or write failed: reset both sides, unless the proxy is stopping.
    fn fail(&self) {
        if !self.shared.is_stopped() {
            self.conn.abort(self.shared);
        }
    }

    fn forward(&mut self, data: &[u8], arrived: Instant) -> io::Result<Next> {
        match self.toxic.clone() {
            Toxic::Pass | Toxic::SlowClose(_) | Toxic::SynDrop => self.write(data)?,
            Toxic::Latency(delay) => {
                let left = (arrived + delay).saturating_duration_since(Instant::now());
                self.wait(left)?;
                self.write(data)?;
            }
            Toxic::Bandwidth(rate) => self.throttle(data, rate.max(1))?,
            Toxic::Slicer { min, max } => self.slice(data, min.max(1), max.max(min).max(1))?,
            Toxic::ResetAfter(limit) => {
                let n = limit.saturating_sub(self.sent).min(data.len());
                self.write(&data[..n])?;
                if self.sent >= limit {
                    self.wait_until_acknowledged();
                    return Ok(Next::Reset);
                }
            }
            Toxic::Blackhole => {}
        }
        Ok(Next::Go)
    }

    /// Writes in pieces of a hundredth of a second each, none before its time.
    fn throttle(&mut self, data: &[u8], rate: u64) -> io::Result<()> {
        let piece = (rate / 100).max(1) as usize;
        for chunk in data.chunks(piece) {
            let due = self.started + Duration::from_secs_f64(self.sent as f64 / rate as f64);
            self.wait(due.saturating_duration_since(Instant::now()))?;
            self.write(chunk)?;
        }
        Ok(())
    }

    fn slice(&mut self, mut data: &[u8], min: usize, max: usize) -> io::Result<()> {
        while !data.is_empty() {
            let n = (min + self.next_random() % (max - min + 1)).min(data.len());
            self.write(&data[..n])?;
            data = &data[n..];
        }
        Ok(())
    }

    fn next_random(&mut self) -> usize {
        self.sizes.next_u64() as usize
    }

    /// Writes all of `data`, looking up every `TICK` whether to give up.
    fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            self.check()?;
            match self.to.write(data) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    data = &data[n..];
                    self.sent += n;
                }
                Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sleeps `delay`, unless the proxy stops or the connection is reset meanwhile.
    fn wait(&self, delay: Duration) -> io::Result<()> {
        if !delay.is_zero() {
            self.shared.pause(delay, || self.conn.is_aborted());
        }
        self.check()
    }

    fn check(&self) -> io::Result<()> {
        if self.shared.is_stopped() || self.conn.is_aborted() {
            return Err(io::Error::other("toxic proxy stopping or connection reset"));
        }
        Ok(())
    }

    /// Waits (bounded) until the peer's kernel holds every byte written. There is no event
    /// for this, so it polls the send queue.
    fn wait_until_acknowledged(&self) {
        let deadline = Instant::now() + ACK_WAIT;
        while unacked_outbound(self.to).unwrap_or(0) > 0
            && Instant::now() < deadline
            && self.check().is_ok()
        {
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// The source sent FIN: pass it on, late, or never, as the toxic says.
    fn pass_fin(&self) {
        if self.conn.is_aborted() {
            return; // not a FIN: `abort` shut the read side down
        }
        match self.toxic {
            Toxic::Blackhole => {
                self.shared.pause(FOREVER, || self.conn.is_aborted());
            }
            Toxic::SlowClose(delay) => {
                if self.wait(delay).is_ok() {
                    let _ = self.to.shutdown(Shutdown::Write);
                }
            }
            _ => {
                let _ = self.to.shutdown(Shutdown::Write);
            }
        }
    }
}
