//! Echo throughput: ember's reactor against a tokio current-thread runtime and a bare,
//! hand-written mio loop, in one run, side by side.
//!
//! What is measured: completed echo round trips per second (messages/s) for each server
//! and message size (64 B and 16 KiB by default), with 100 concurrent client connections.
//! Each connection plays ping-pong: it sends one message, waits until the whole message
//! has come back (and checks every byte against what it sent), then sends the next. The
//! load generator is one thread running its own mio loop (not tokio, so as not to favour
//! one of the contestants); each server runs alone on its own thread. With two or more
//! cores the client thread is pinned to core 0 and the server thread to core 1.
//!
//! The three servers do the same job the same way: 16 KiB reads, `TCP_NODELAY` on every
//! accepted socket, write straight back, queue what the socket does not take and write it
//! when the socket becomes writable.
//! 1. `ember`: a [`Handler`] whose `receive_data` calls `cx.send_data(data)`.
//! 2. `tokio`: `new_current_thread().enable_all()`, one spawned task per connection that
//!    reads into a buffer and then `write_all`s it.
//! 3. `mio`: one `Poll`, edge-triggered, a slab of connections; reads until `WouldBlock`
//!    (or, with `--mio-short-read`, stops at a short read as ember and tokio do), writes
//!    back, keeps pending output and writes it on writable.
//!
//! Measurements are interleaved (round 1: every server at every size, then round 2, ...,
//! with the server order rotated each round) so that drift hits every target alike. The
//! report is a markdown table on stdout: per server and size, the median msgs/s over the
//! rounds, each round's figure, the ratio to the bare mio loop and to tokio, and how busy
//! the server and client threads were (a server below ~100 % was not the bottleneck).
//! Progress goes to stderr. A server that echoes wrong bytes, or closes a connection,
//! aborts the run.
//!
//! Run `cargo bench --bench echo -- --help` (or `benches/run.sh --help`) for the options.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ember::{Context, Handler, Reactor};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Read buffer of the tokio and mio servers: ember's `READ_CHUNK`, so all read alike.
const READ_BUF: usize = ember::READ_CHUNK;
/// The core the load generator is pinned to; servers get `SERVER_CORE`.
const CLIENT_CORE: usize = 0;
const SERVER_CORE: usize = 1;

const USAGE: &str = "\
usage: cargo bench --bench echo -- [options]

  --quick             CI smoke run: 1 round of 0.3 s (+0.1 s warm-up) per measurement
  --secs S            seconds measured per server, size and round (default 2)
  --warmup S          seconds of load before each measurement starts (default 0.5)
  --rounds N          interleaved rounds; the table shows the median (default 3)
  --clients N         concurrent connections (default 100)
  --sizes A,B,..      message sizes in bytes, `k` suffix for KiB (default 64,16k)
  --targets A,B,..    servers to run, of ember,tokio,mio (default all three)
  --mio-short-read    let the mio loop stop draining at a short read, like ember and tokio
  --no-pin            do not pin threads to cores

Environment (overridden by the options): ECHO_BENCH_SECS, ECHO_BENCH_WARMUP,
ECHO_BENCH_ROUNDS, ECHO_BENCH_CLIENTS, ECHO_BENCH_QUICK=1.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Ember,
    Tokio,
    Mio,
}

impl Target {
    const ALL: [Target; 3] = [Target::Ember, Target::Tokio, Target::Mio];

    fn name(self) -> &'static str {
        match self {
            Target::Ember => "ember",
            Target::Tokio => "tokio",
            Target::Mio => "mio",
        }
    }

    fn label(self, cfg: &Config) -> &'static str {
        match self {
            Target::Ember => "ember reactor",
            Target::Tokio => "tokio current-thread",
            Target::Mio if cfg.mio_short_read => "bare mio loop (short-read)",
            Target::Mio => "bare mio loop",
        }
    }
}

#[derive(Debug)]
struct Config {
    secs: Duration,
    warmup: Duration,
    rounds: usize,
    clients: usize,
    sizes: Vec<usize>,
    targets: Vec<Target>,
    mio_short_read: bool,
    pin: bool,
}

impl Config {
    fn from_env_and_args() -> Result<Config, String> {
        let mut cfg = Config {
            secs: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
            rounds: 3,
            clients: 100,
            sizes: vec![64, 16 * 1024],
            targets: Target::ALL.to_vec(),
            mio_short_read: false,
            pin: true,
        };
        if std::env::var("ECHO_BENCH_QUICK").is_ok_and(|v| v == "1") {
            cfg.quick();
        }
        let env = |name: &str| std::env::var(name).ok();
        if let Some(v) = env("ECHO_BENCH_SECS") {
            cfg.secs = parse_secs(&v)?;
        }
        if let Some(v) = env("ECHO_BENCH_WARMUP") {
            cfg.warmup = parse_secs(&v)?;
        }
        if let Some(v) = env("ECHO_BENCH_ROUNDS") {
            cfg.rounds = parse_count(&v)?;
        }
        if let Some(v) = env("ECHO_BENCH_CLIENTS") {
            cfg.clients = parse_count(&v)?;
        }

        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" => {}
                "--quick" => cfg.quick(),
                "--secs" => cfg.secs = parse_secs(&value()?)?,
                "--warmup" => cfg.warmup = parse_secs(&value()?)?,
                "--rounds" => cfg.rounds = parse_count(&value()?)?,
                "--clients" => cfg.clients = parse_count(&value()?)?,
                "--sizes" => {
                    cfg.sizes = value()?
                        .split(',')
                        .map(parse_size)
                        .collect::<Result<_, _>>()?;
                }
                "--targets" => {
                    cfg.targets = value()?
                        .split(',')
                        .map(|name| {
                            Target::ALL
                                .into_iter()
                                .find(|t| t.name() == name.trim())
                                .ok_or(format!("unknown target `{name}`"))
                        })
                        .collect::<Result<_, _>>()?;
                }
                "--mio-short-read" => cfg.mio_short_read = true,
                "--no-pin" => cfg.pin = false,
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        if cfg.sizes.is_empty() || cfg.targets.is_empty() {
            return Err("need at least one size and one target".into());
        }
        Ok(cfg)
    }

    fn quick(&mut self) {
        self.secs = Duration::from_millis(300);
        self.warmup = Duration::from_millis(100);
        self.rounds = 1;
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or(format!("`{s}` is not a number of seconds"))
}

fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive integer")),
    }
}

fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let unit = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1024,
        _ => return Err(format!("`{s}` is not a size (try 64 or 16k)")),
    };
    parse_count(digits).map(|n| n * unit)
}

fn main() -> ExitCode {
    let cfg = match Config::from_env_and_args() {
        Ok(cfg) => cfg,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("echo bench: {msg}\n");
            }
            eprintln!("{USAGE}");
            return if msg.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    match run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One measurement: a server at a message size in one round.
#[derive(Clone, Copy, Debug)]
struct Sample {
    msgs_per_sec: f64,
    /// Fraction of the measured wall time the server / client thread was on a CPU.
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
}

fn run(cfg: &Config) -> io::Result<()> {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let pin = cfg.pin && cores >= 2 && cfg!(target_os = "linux");
    eprintln!(
        "echo bench: {} clients, {} round(s) x {:.1} s (+{:.1} s warm-up) per server and size",
        cfg.clients,
        cfg.rounds,
        cfg.secs.as_secs_f64(),
        cfg.warmup.as_secs_f64()
    );

    // samples[target][size] = one Sample per round.
    let mut samples = vec![vec![Vec::new(); cfg.sizes.len()]; cfg.targets.len()];
    for round in 0..cfg.rounds {
        for (si, &size) in cfg.sizes.iter().enumerate() {
            for k in 0..cfg.targets.len() {
                // Rotate the order each round so no server always runs first or last.
                let ti = (k + round) % cfg.targets.len();
                let target = cfg.targets[ti];
                let sample = measure(cfg, target, size, pin).map_err(|e| {
                    io::Error::new(e.kind(), format!("{} at {size} B: {e}", target.name()))
                })?;
                eprintln!(
                    "  round {}/{}  {:>5}  {:<6} {:>12.0} msgs/s  server cpu {}  client cpu {}",
                    round + 1,
                    cfg.rounds,
                    fmt_size(size),
                    target.name(),
                    sample.msgs_per_sec,
                    fmt_cpu(sample.server_cpu),
                    fmt_cpu(sample.client_cpu),
                );
                samples[ti][si].push(sample);
            }
        }
    }

    print!("{}", report(cfg, cores, pin, &samples));
    Ok(())
}

/// Starts a fresh server, loads it, stops it.
fn measure(cfg: &Config, target: Target, size: usize, pin: bool) -> io::Result<Sample> {
    let server_core = pin.then_some(SERVER_CORE);
    let server = match target {
        Target::Ember => start_ember(server_core)?,
        Target::Tokio => start_tokio(server_core)?,
        Target::Mio => start_mio(server_core, cfg.mio_short_read)?,
    };
    let load = LoadSpec {
        addr: server.addr,
        clients: cfg.clients,
        size,
        warmup: cfg.warmup,
        duration: cfg.secs,
        core: pin.then_some(CLIENT_CORE),
        server_clock: cpu::thread_clock(&server.thread),
    };
    let result = thread::Builder::new()
        .name("load".into())
        .spawn(move || run_load(&load))?
        .join()
        .map_err(|_| io::Error::other("the load generator panicked"))?;
    server.shutdown()?;
    let load = result?;
    let secs = load.elapsed.as_secs_f64();
    Ok(Sample {
        msgs_per_sec: load.round_trips as f64 / secs,
        server_cpu: load.server_cpu.map(|d| d.as_secs_f64() / secs),
        client_cpu: load.client_cpu.map(|d| d.as_secs_f64() / secs),
    })
}

// ---------------------------------------------------------------------------------------
// The servers

/// A running server on its own thread.
struct Server {
    addr: SocketAddr,
    stop: Box<dyn FnOnce() + Send>,
    thread: JoinHandle<()>,
}

impl Server {
    fn shutdown(self) -> io::Result<()> {
        (self.stop)();
        self.thread
            .join()
            .map_err(|_| io::Error::other("the server thread panicked"))
    }
}

/// Spawns a server thread that sends back what `start` returns once it is listening.
fn spawn_server<T: Send + 'static>(
    name: &str,
    core: Option<usize>,
    body: impl FnOnce(mpsc::Sender<T>) + Send + 'static,
) -> io::Result<(T, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let thread = thread::Builder::new().name(name.into()).spawn(move || {
        if let Some(core) = core {
            pin_to_core(core);
        }
        body(tx);
    })?;
    match rx.recv() {
        Ok(ready) => Ok((ready, thread)),
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other(format!("{name} did not start")))
        }
    }
}

/// 1. ember: the echo handler from the crate docs, plus `TCP_NODELAY`.
struct EmberEcho;

impl Handler for EmberEcho {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        let _ = cx.set_nodelay(true);
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        cx.send_data(data);
    }
}

fn start_ember(core: Option<usize>) -> io::Result<Server> {
    let ((addr, handle), thread) = spawn_server("ember-server", core, |ready| {
        let result = Reactor::run(|r| {
            let id = r.start_server("127.0.0.1:0", || EmberEcho)?;
            let addr = r.server_addr(id).expect("a TCP server has an address");
            let _ = ready.send((addr, r.handle()));
            Ok(())
        });
        if let Err(e) = result {
            eprintln!("ember server: {e}");
        }
    })?;
    Ok(Server {
        addr,
        stop: Box::new(move || handle.stop()),
        thread,
    })
}

/// 2. tokio: a current-thread runtime, one task per connection.
fn start_tokio(core: Option<usize>) -> io::Result<Server> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let (addr, thread) = spawn_server("tokio-server", core, move |ready| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async move {
            let bind: SocketAddr = ([127, 0, 0, 1], 0).into();
            let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
            let _ = ready.send(listener.local_addr().expect("local addr"));
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                if stopping.load(Ordering::Acquire) {
                    break;
                }
                tokio::spawn(tokio_echo(stream));
            }
        });
        // Dropping the runtime drops every connection task and closes its socket.
    })?;
    Ok(Server {
        addr,
        stop: Box::new(move || {
            stop.store(true, Ordering::Release);
            // Wake the accept loop so it sees the flag.
            let _ = std::net::TcpStream::connect(addr);
        }),
        thread,
    })
}

async fn tokio_echo(mut stream: tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// 3. A bare mio echo loop: what a careful hand-written reactor does, and nothing more.
fn start_mio(core: Option<usize>, short_read: bool) -> io::Result<Server> {
    const LISTENER: Token = Token(usize::MAX);
    const WAKER: Token = Token(usize::MAX - 1);

    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let ((addr, waker), thread) = spawn_server("mio-server", core, move |ready| {
        let mut poll = Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).expect("waker"));
        let mut listener = TcpListener::bind(([127, 0, 0, 1], 0).into()).expect("bind");
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .expect("register");
        let _ = ready.send((listener.local_addr().expect("local addr"), waker));

        let mut events = Events::with_capacity(1024);
        let mut conns: Slab<MioConn> = Slab::new();
        let mut buf = vec![0u8; READ_BUF];
        loop {
            if let Err(e) = poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("mio server: poll: {e}");
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {
                        if stopping.load(Ordering::Acquire) {
                            return;
                        }
                    }
                    LISTENER => loop {
                        match listener.accept() {
                            Ok((mut stream, _)) => {
                                let _ = stream.set_nodelay(true);
                                let entry = conns.vacant_entry();
                                let token = Token(entry.key());
                                let interest = Interest::READABLE | Interest::WRITABLE;
                                if poll
                                    .registry()
                                    .register(&mut stream, token, interest)
                                    .is_ok()
                                {
                                    entry.insert(MioConn::new(stream));
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    },
                    Token(key) => {
                        let Some(conn) = conns.get_mut(key) else {
                            continue;
                        };
                        let hangup = event.is_read_closed() || event.is_error();
                        let mut alive = true;
                        if event.is_writable() || hangup {
                            alive = conn.flush();
                        }
                        if alive && (event.is_readable() || hangup) {
                            alive = conn.read_and_echo(&mut buf, !short_read || hangup);
                        }
                        if !alive {
                            let mut conn = conns.remove(key);
                            let _ = poll.registry().deregister(&mut conn.stream);
                        }
                    }
                }
            }
        }
    })?;
    Ok(Server {
        addr,
        stop: Box::new(move || {
            stop.store(true, Ordering::Release);
            let _ = waker.wake();
        }),
        thread,
    })
}

struct MioConn {
    stream: TcpStream,
    /// Output the socket did not take yet: `pending[written..]`. (Under ping-pong load at
    /// most one message is ever queued, so the loop needs no read backpressure.)
    pending: Vec<u8>,
    written: usize,
}

impl MioConn {
    fn new(stream: TcpStream) -> MioConn {
        MioConn {
            stream,
            pending: Vec::new(),
            written: 0,
        }
    }

    /// Reads until `WouldBlock` (or, unless `drain`, until a short read) and echoes each
    /// chunk. Returns whether the connection lives on.
    fn read_and_echo(&mut self, buf: &mut [u8], drain: bool) -> bool {
        loop {
            match self.stream.read(buf) {
                Ok(0) => return false,
                Ok(n) => {
                    if !self.send(&buf[..n]) {
                        return false;
                    }
                    if n < buf.len() && !drain {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Writes straight to the socket if nothing is queued ahead; queues the rest.
    fn send(&mut self, data: &[u8]) -> bool {
        if self.written < self.pending.len() {
            self.pending.extend_from_slice(data);
            return true;
        }
        let mut rest = data;
        while !rest.is_empty() {
            match self.stream.write(rest) {
                Ok(0) => return false,
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.pending.clear();
        self.written = 0;
        self.pending.extend_from_slice(rest);
        true
    }

    /// Writes queued output until done or `WouldBlock`.
    fn flush(&mut self) -> bool {
        while self.written < self.pending.len() {
            match self.stream.write(&self.pending[self.written..]) {
                Ok(0) => return false,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

// ---------------------------------------------------------------------------------------
// The load generator

struct LoadSpec {
    addr: SocketAddr,
    clients: usize,
    size: usize,
    warmup: Duration,
    duration: Duration,
    core: Option<usize>,
    server_clock: Option<cpu::Clock>,
}

struct LoadResult {
    round_trips: u64,
    elapsed: Duration,
    server_cpu: Option<Duration>,
    client_cpu: Option<Duration>,
}

/// Messages are windows of one pseudo-random pattern; consecutive messages of a
/// connection start at different offsets, so a stale or misplaced echo never matches.
const PATTERN_OFFSETS: usize = 251;

struct ClientConn {
    stream: TcpStream,
    /// Offset of the current message in the pattern.
    offset: usize,
    sent: usize,
    received: usize,
    echo: Vec<u8>,
}

impl ClientConn {
    /// Writes what the socket takes of the current message.
    fn write_some(&mut self, message: &[u8]) -> io::Result<()> {
        while self.sent < message.len() {
            match self.stream.write(&message[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads the echo of the current message. Returns true once it is complete. Never
    /// reads past the message: the server cannot legitimately have sent more.
    fn read_some(&mut self, drain: bool) -> io::Result<bool> {
        let size = self.echo.len();
        while self.received < size {
            let want = size - self.received;
            match self.stream.read(&mut self.echo[self.received..]) {
                Ok(0) => return Err(io::Error::other("the server closed a connection")),
                Ok(n) => {
                    self.received += n;
                    // A short read drained the socket; a new arrival is a new edge.
                    if n < want && !drain {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.received == size)
    }
}

fn run_load(spec: &LoadSpec) -> io::Result<LoadResult> {
    if let Some(core) = spec.core {
        pin_to_core(core);
    }
    let size = spec.size;
    let pattern = make_pattern(size + PATTERN_OFFSETS);
    let message = |offset: usize| &pattern[offset..offset + size];

    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut conns = Vec::with_capacity(spec.clients);
    for i in 0..spec.clients {
        let std_stream = std::net::TcpStream::connect(spec.addr)?;
        std_stream.set_nodelay(true)?;
        std_stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std_stream);
        let interest = Interest::READABLE | Interest::WRITABLE;
        poll.registry().register(&mut stream, Token(i), interest)?;
        conns.push(ClientConn {
            stream,
            offset: (i * 7) % PATTERN_OFFSETS,
            sent: 0,
            received: 0,
            echo: vec![0; size],
        });
    }
    for conn in &mut conns {
        conn.write_some(message(conn.offset))?;
    }

    let warm_until = Instant::now() + spec.warmup;
    let mut measuring: Option<(Instant, u64, Option<Duration>, Option<Duration>)> = None;
    let mut completed = 0u64;
    loop {
        match poll.poll(&mut events, Some(Duration::from_millis(5))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            let hangup = event.is_read_closed() || event.is_error();
            if event.is_writable() {
                conn.write_some(message(conn.offset))?;
            }
            if (event.is_readable() || hangup) && conn.read_some(hangup)? {
                if conn.echo != message(conn.offset) {
                    return Err(io::Error::other(format!(
                        "connection {} got back different bytes than it sent",
                        event.token().0
                    )));
                }
                if conn.sent != size {
                    return Err(io::Error::other("the echo arrived before the message left"));
                }
                completed += 1;
                conn.offset = (conn.offset + 1) % PATTERN_OFFSETS;
                conn.sent = 0;
                conn.received = 0;
                conn.write_some(message(conn.offset))?;
            }
        }
        let now = Instant::now();
        match measuring {
            None if now >= warm_until => {
                let server = spec.server_clock.and_then(cpu::Clock::elapsed);
                measuring = Some((now, completed, server, cpu::own_time()));
            }
            Some((start, base, server0, client0)) if now >= start + spec.duration => {
                let since = |t0: Option<Duration>, t1: Option<Duration>| Some(t1? - t0?);
                let server1 = spec.server_clock.and_then(cpu::Clock::elapsed);
                return Ok(LoadResult {
                    round_trips: completed - base,
                    elapsed: now - start,
                    server_cpu: since(server0, server1),
                    client_cpu: since(client0, cpu::own_time()),
                });
            }
            _ => {}
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64).
fn make_pattern(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Threads and CPUs

/// Pins the calling thread to `core` (Linux only; elsewhere, or on failure, it warns).
fn pin_to_core(core: usize) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `cpu_set_t` is plain data (all-zero is the empty set); CPU_SET writes
        // inside it, and sched_setaffinity(0, ..) only reads it, for the calling thread.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if rc != 0 {
            eprintln!(
                "echo bench: cannot pin to core {core}: {}",
                io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    eprintln!("echo bench: pinning to core {core} is only supported on Linux");
}

/// Per-thread CPU time, to tell whether the server or the client was the bottleneck.
mod cpu {
    use std::thread::JoinHandle;
    use std::time::Duration;

    /// Another thread's CPU-time clock.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Clock(#[cfg_attr(not(target_os = "linux"), allow(dead_code))] i32);

    #[cfg(target_os = "linux")]
    pub(crate) fn thread_clock(thread: &JoinHandle<()>) -> Option<Clock> {
        use std::os::unix::thread::JoinHandleExt;
        let mut clock: libc::clockid_t = 0;
        // SAFETY: the thread is alive (we hold its join handle) and `clock` is a valid
        // out-pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) };
        (rc == 0).then_some(Clock(clock))
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn thread_clock(_thread: &JoinHandle<()>) -> Option<Clock> {
        None
    }

    impl Clock {
        /// CPU time the thread has used so far. The thread must still be running.
        pub(crate) fn elapsed(self) -> Option<Duration> {
            #[cfg(target_os = "linux")]
            return read(self.0);
            #[cfg(not(target_os = "linux"))]
            None
        }
    }

    /// CPU time the calling thread has used so far.
    pub(crate) fn own_time() -> Option<Duration> {
        #[cfg(target_os = "linux")]
        return read(libc::CLOCK_THREAD_CPUTIME_ID);
        #[cfg(not(target_os = "linux"))]
        None
    }

    #[cfg(target_os = "linux")]
    fn read(clock: libc::clockid_t) -> Option<Duration> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer for the duration of the call.
        let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
}

// ---------------------------------------------------------------------------------------
// The report

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn median_of(samples: &[Sample], field: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let mut values = samples.iter().map(field).collect::<Option<Vec<_>>>()?;
    (!values.is_empty()).then(|| median(&mut values))
}

fn fmt_size(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn fmt_cpu(fraction: Option<f64>) -> String {
    fraction.map_or("n/a".into(), |f| format!("{:.0} %", f * 100.0))
}

fn fmt_rate(rate: f64) -> String {
    // Thousands separators keep the columns readable: 1,234,567.
    let digits = format!("{:.0}", rate);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn report(cfg: &Config, cores: usize, pinned: bool, samples: &[Vec<Vec<Sample>>]) -> String {
    let rate_of = |s: &Sample| Some(s.msgs_per_sec);
    let median_rate = |target: Target, si: usize| {
        let ti = cfg.targets.iter().position(|&t| t == target)?;
        median_of(&samples[ti][si], rate_of)
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Echo round trips per second, {} concurrent ping-pong connections, median of {} \
         round(s) of {:.1} s each (after {:.1} s warm-up); {}.\n",
        cfg.clients,
        cfg.rounds,
        cfg.secs.as_secs_f64(),
        cfg.warmup.as_secs_f64(),
        if pinned {
            format!("server thread pinned to core {SERVER_CORE}, client to core {CLIENT_CORE}")
        } else {
            format!("threads not pinned ({cores} core(s))")
        }
    );
    let _ = writeln!(
        out,
        "| server | size | msgs/s (median) | MiB/s echoed | rounds (msgs/s) | vs mio | vs tokio | server CPU | client CPU |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---|---:|---:|---:|---:|");
    for (si, &size) in cfg.sizes.iter().enumerate() {
        for (ti, &target) in cfg.targets.iter().enumerate() {
            let runs = &samples[ti][si];
            let Some(rate) = median_of(runs, rate_of) else {
                continue;
            };
            let ratio = |base: Target| {
                median_rate(base, si).map_or("n/a".into(), |b| format!("{:.2}x", rate / b))
            };
            let rounds = runs
                .iter()
                .map(|s| fmt_rate(s.msgs_per_sec))
                .collect::<Vec<_>>()
                .join(" / ");
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1} | {} | {} | {} | {} | {} |",
                target.label(cfg),
                fmt_size(size),
                fmt_rate(rate),
                rate * size as f64 / (1024.0 * 1024.0),
                rounds,
                ratio(Target::Mio),
                ratio(Target::Tokio),
                fmt_cpu(median_of(runs, |s| s.server_cpu)),
                fmt_cpu(median_of(runs, |s| s.client_cpu)),
            );
        }
    }

    let mut verdicts = Vec::new();
    for (si, &size) in cfg.sizes.iter().enumerate() {
        let (Some(ember), Some(tokio), Some(mio)) = (
            median_rate(Target::Ember, si),
            median_rate(Target::Tokio, si),
            median_rate(Target::Mio, si),
        ) else {
            continue;
        };
        let pass = ember >= tokio && ember >= 0.9 * mio;
        verdicts.push(format!(
            "{}: {} ({:.2}x tokio, {:.2}x mio)",
            fmt_size(size),
            if pass { "meets" } else { "MISSES" },
            ember / tokio,
            ember / mio
        ));
    }
    if !verdicts.is_empty() {
        let _ = writeln!(
            out,
            "\nBar (ember >= tokio and >= 0.90x the bare mio loop): {}.",
            verdicts.join("; ")
        );
    }
    out
}
