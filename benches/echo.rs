//! Echo throughput: ember's reactor against a tokio current-thread runtime and a bare,
//! hand-written mio loop, in one run, side by side.
//!
//! What is measured: completed echo round trips per second (messages/s) for each server
//! and message size (64 B and 16 KiB by default), with 100 concurrent client connections.
//! Each connection plays ping-pong: it sends one message, waits until the whole message
//! has come back (and checks every byte against what it sent), then sends the next. A
//! server that echoes wrong bytes, closes a connection or echoes nothing whole during a
//! measurement aborts the run.
//!
//! The servers do the same job the same way: 16 KiB reads, `TCP_NODELAY` on every
//! accepted socket, write straight back, queue what the socket does not take and write it
//! when the socket becomes writable. Each runs alone on its own thread, started afresh for
//! every measurement.
//! 1. `ember`: an `ember::Handler` whose `receive_data` calls `cx.send_data(data)`.
//! 2. `tokio`: `new_current_thread().enable_all()`, one spawned task per connection that
//!    reads into a buffer and then `write_all`s it.
//! 3. `mio`: one `Poll`, edge-triggered, a slab of connections; reads until `WouldBlock`,
//!    writes back, keeps pending output and writes it on writable.
//! 4. `mio-sr` (only when asked for with `--targets`): the same loop, but a read that
//!    returns less than the buffer ends the drain, as ember and tokio do. That saves the
//!    `read` that would return `WouldBlock`: the strictest baseline here.
//!
//! The load generator is one thread running its own mio loop (not tokio, so as not to
//! favour one of the contestants). With two or more cores it is pinned to core 0 and the
//! server thread to core 1.
//!
//! The client spins: it polls with a zero timeout and never sleeps. When both threads
//! may sleep, a wake-up across cores (slow on a VM) lets them fall into lock-step, each
//! idle while the other works, and a run settles at about half speed or at full speed by
//! chance. A client that never sleeps keeps the server supplied, so the server thread is
//! the bottleneck and its cost per message is what the numbers compare. The table's
//! "server CPU" column shows it: near 100 % means the server was saturated.
//!
//! Measurements are short and interleaved (round 1: at each size, every server in turn;
//! then round 2, ..., with the server order rotated each round) so that drift hits every
//! target alike: on a shared VM throughput wanders by 30 % over a few seconds, so many
//! short rounds beat a few long ones. The report is a markdown table on stdout: per
//! server and size, the median msgs/s over the rounds and its range, the ratio to the
//! bare mio loop and to tokio (the median of per-round ratios, each taken between
//! servers that ran back to back, with its interquartile range), and the server thread's
//! CPU use. Each measurement goes to stderr as it is taken.
//!
//! The machine should be otherwise idle. A measurement during which other processes used
//! more than 10 % of a core (per `/proc/stat`) is taken again once the machine is quiet,
//! up to four times; if it never found a quiet machine, the least disturbed attempt is kept and
//! marked `*` in the table.
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
  --secs S            seconds measured per server, size and round (default 0.5)
  --warmup S          seconds of load before each measurement starts (default 0.25)
  --rounds N          interleaved rounds; the table shows medians (default 15)
  --clients N         concurrent connections (default 100)
  --sizes A,B,..      message sizes in bytes, `k` suffix for KiB (default 64,16k)
  --targets A,B,..    servers to run, of ember,tokio,mio,mio-sr (default ember,tokio,mio);
                      mio-sr is the mio loop ending a drain at a short read, like ember
  --no-pin            do not pin threads to cores

Environment (overridden by the options): ECHO_BENCH_SECS, ECHO_BENCH_WARMUP,
ECHO_BENCH_ROUNDS, ECHO_BENCH_CLIENTS, ECHO_BENCH_QUICK=1.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Ember,
    Tokio,
    Mio,
    MioShortRead,
}

impl Target {
    const ALL: [Target; 4] = [
        Target::Ember,
        Target::Tokio,
        Target::Mio,
        Target::MioShortRead,
    ];
    const DEFAULT: [Target; 3] = [Target::Ember, Target::Tokio, Target::Mio];

    fn name(self) -> &'static str {
        match self {
            Target::Ember => "ember",
            Target::Tokio => "tokio",
            Target::Mio => "mio",
            Target::MioShortRead => "mio-sr",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Target::Ember => "ember reactor",
            Target::Tokio => "tokio current-thread",
            Target::Mio => "bare mio loop",
            Target::MioShortRead => "bare mio loop, short-read",
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
    pin: bool,
}

impl Config {
    fn from_env_and_args() -> Result<Config, String> {
        let mut cfg = Config {
            secs: Duration::from_millis(500),
            warmup: Duration::from_millis(250),
            rounds: 15,
            clients: 100,
            sizes: vec![64, 16 * 1024],
            targets: Target::DEFAULT.to_vec(),
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
    /// Fraction of the measured wall time the server thread was on a CPU.
    server_cpu: Option<f64>,
    /// CPU other processes used meanwhile, in cores.
    foreign: Option<f64>,
}

impl Sample {
    fn disturbed(&self) -> bool {
        self.foreign.is_some_and(|f| f > FOREIGN_LIMIT)
    }
}

fn run(cfg: &Config) -> io::Result<()> {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let pin = cfg.pin && cores >= 2 && cfg!(target_os = "linux");
    eprintln!(
        "echo bench: {} clients, {} round(s) x {:.2} s (+{:.2} s warm-up) per server and size",
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
                    "  round {}/{}  {:>5}  {:<6} {:>12.0} msgs/s  server cpu {}  other load {}",
                    round + 1,
                    cfg.rounds,
                    fmt_size(size),
                    target.name(),
                    sample.msgs_per_sec,
                    fmt_cpu(sample.server_cpu),
                    fmt_cpu(sample.foreign),
                );
                samples[ti][si].push(sample);
            }
        }
    }

    print!("{}", report(cfg, cores, pin, &samples));
    Ok(())
}

/// Other processes may use at most this much CPU (in cores) during a measurement.
const FOREIGN_LIMIT: f64 = 0.10;
/// Attempts at a measurement disturbed by other processes before settling for the best.
const ATTEMPTS: usize = 4;

/// Measures, and measures again (once the machine is quiet) while other processes
/// disturb the measurement; keeps the least disturbed attempt.
fn measure(cfg: &Config, target: Target, size: usize, pin: bool) -> io::Result<Sample> {
    let mut best: Option<Sample> = None;
    for attempt in 1..=ATTEMPTS {
        let sample = measure_once(cfg, target, size, pin)?;
        let foreign = sample.foreign.unwrap_or(0.0);
        if best.is_none_or(|b| foreign < b.foreign.unwrap_or(0.0)) {
            best = Some(sample);
        }
        if foreign <= FOREIGN_LIMIT {
            break;
        }
        if attempt < ATTEMPTS {
            eprintln!(
                "  (other processes used {:.0} % of a core meanwhile: {} at {} again)",
                foreign * 100.0,
                target.name(),
                fmt_size(size)
            );
            wait_for_quiet();
        }
    }
    Ok(best.expect("at least one attempt"))
}

/// Waits (up to a minute) until other processes leave the CPUs alone for half a second.
fn wait_for_quiet() {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let before = cpu::ticks();
        let started = Instant::now();
        thread::sleep(Duration::from_millis(500));
        let Some((before, after)) = before.zip(cpu::ticks()) else {
            return;
        };
        if cpu::foreign_load(before, after, started.elapsed()) <= FOREIGN_LIMIT {
            return;
        }
    }
}

/// Starts a fresh server, loads it, stops it.
fn measure_once(cfg: &Config, target: Target, size: usize, pin: bool) -> io::Result<Sample> {
    let server_core = pin.then_some(SERVER_CORE);
    let server = match target {
        Target::Ember => start_ember(server_core)?,
        Target::Tokio => start_tokio(server_core)?,
        Target::Mio => start_mio(server_core, false)?,
        Target::MioShortRead => start_mio(server_core, true)?,
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
    if load.round_trips == 0 {
        return Err(io::Error::other(
            "no message came back whole during the measurement",
        ));
    }
    let secs = load.elapsed.as_secs_f64();
    Ok(Sample {
        msgs_per_sec: load.round_trips as f64 / secs,
        server_cpu: load.server_cpu.map(|d| d.as_secs_f64() / secs),
        foreign: load.foreign,
    })
}

// ---------------------------------------------------------------------------------------
// The servers

/// A running server on its own thread.
struct Server {
    addr: SocketAddr,
    stop: Box<dyn Fn() + Send>,
    thread: JoinHandle<()>,
    /// Disconnects when the server thread ends (its sender is dropped, even on panic).
    done: mpsc::Receiver<()>,
}

impl Server {
    fn shutdown(self) -> io::Result<()> {
        let Server {
            stop, thread, done, ..
        } = self;
        stop();
        if done.recv_timeout(Duration::from_secs(10)) != Err(mpsc::RecvTimeoutError::Disconnected) {
            return Err(io::Error::other("the server did not stop within 10 s"));
        }
        let joined = thread.join();
        // Only now drop what `stop` holds: closing a waker's descriptor before the
        // server has seen its event would withdraw the event.
        drop(stop);
        joined.map_err(|_| io::Error::other("the server thread panicked"))
    }
}

/// Spawns a server thread; `body` sends back what the caller needs once it listens.
fn spawn_server<T: Send + 'static>(
    name: &str,
    core: Option<usize>,
    body: impl FnOnce(mpsc::Sender<T>) + Send + 'static,
) -> io::Result<(T, JoinHandle<()>, mpsc::Receiver<()>)> {
    let (tx, rx) = mpsc::channel();
    let (done_tx, done) = mpsc::channel::<()>();
    let thread = thread::Builder::new().name(name.into()).spawn(move || {
        let _done = done_tx;
        if let Some(core) = core {
            pin_to_core(core);
        }
        body(tx);
    })?;
    match rx.recv() {
        Ok(ready) => Ok((ready, thread, done)),
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
    let ((addr, handle), thread, done) = spawn_server("ember-server", core, |ready| {
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
        done,
    })
}

/// 2. tokio: a current-thread runtime, one task per connection.
fn start_tokio(core: Option<usize>) -> io::Result<Server> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let (addr, thread, done) = spawn_server("tokio-server", core, move |ready| {
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
        done,
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
    let ((addr, waker), thread, done) = spawn_server("mio-server", core, move |ready| {
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
        done,
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
    /// CPU other processes used meanwhile, in cores.
    foreign: Option<f64>,
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
    // Once warm: when measuring started, round trips so far, server CPU time so far,
    // CPU ticks of the system and of this process so far.
    let mut measuring: Option<(Instant, u64, Option<Duration>, Option<cpu::Ticks>)> = None;
    let mut completed = 0u64;
    loop {
        // Never sleep: see the module docs ("The client spins").
        match poll.poll(&mut events, Some(Duration::ZERO)) {
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
                let server_cpu = spec.server_clock.and_then(cpu::Clock::elapsed);
                measuring = Some((now, completed, server_cpu, cpu::ticks()));
            }
            Some((start, base, cpu_before, ticks_before)) if now >= start + spec.duration => {
                let cpu_after = spec.server_clock.and_then(cpu::Clock::elapsed);
                let ticks_after = cpu::ticks();
                return Ok(LoadResult {
                    round_trips: completed - base,
                    elapsed: now - start,
                    server_cpu: cpu_after.zip(cpu_before).map(|(a, b)| a - b),
                    foreign: ticks_before
                        .zip(ticks_after)
                        .map(|(b, a)| cpu::foreign_load(b, a, now - start)),
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

/// The server thread's CPU time, to show whether the server was the bottleneck, and the
/// CPU other processes used, to catch disturbed measurements (Linux only).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
mod cpu {
    use std::thread::JoinHandle;
    use std::time::Duration;

    /// Another thread's CPU-time clock.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Clock(i32);

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

    /// CPU time in clock ticks (`USER_HZ`), from `/proc`.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Ticks {
        /// Every CPU's non-idle time.
        system_busy: u64,
        /// This process's user and system time.
        process: u64,
    }

    pub(crate) fn ticks() -> Option<Ticks> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // cpu  user nice system idle iowait irq softirq steal ...
        let all_cpus = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse::<u64>().ok())
            .collect::<Option<Vec<_>>>()?;
        let [user, nice, system, _idle, _iowait, irq, softirq, steal] = all_cpus[..] else {
            return None;
        };
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after "(comm) ": state is field 3, utime 14 and stime 15.
        let fields = own[own.rfind(')')? + 2..]
            .split_whitespace()
            .collect::<Vec<_>>();
        let utime = fields.get(11)?.parse::<u64>().ok()?;
        let stime = fields.get(12)?.parse::<u64>().ok()?;
        Some(Ticks {
            system_busy: user + nice + system + irq + softirq + steal,
            process: utime + stime,
        })
    }

    /// CPU used by everything but this process between two snapshots, in cores.
    pub(crate) fn foreign_load(before: Ticks, after: Ticks, wall: Duration) -> f64 {
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let busy = after.system_busy.saturating_sub(before.system_busy);
        let ours = after.process.saturating_sub(before.process);
        busy.saturating_sub(ours) as f64 / hz / wall.as_secs_f64()
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

/// Median, quartiles and extremes of a set of figures.
#[derive(Clone, Copy, Debug)]
struct Spread {
    median: f64,
    q1: f64,
    q3: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        // Interpolates between neighbours, so an even count's median is the midpoint.
        let at = |q: f64| {
            let pos = q * (values.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
        };
        Some(Spread {
            median: at(0.5),
            q1: at(0.25),
            q3: at(0.75),
            min: values[0],
            max: values[values.len() - 1],
        })
    }
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
    let digits = format!("{rate:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The markdown report. `samples[target][size]` holds one sample per round, in order.
fn report(cfg: &Config, cores: usize, pinned: bool, samples: &[Vec<Vec<Sample>>]) -> String {
    let index = |target: Target| cfg.targets.iter().position(|&t| t == target);
    // Ratios are paired by round: the servers of one round and size ran back to back, so
    // slow drift of the machine (which is large on shared VMs) cancels out.
    let ratio = |ti: usize, base: Target, si: usize| -> Option<Spread> {
        let bi = index(base)?;
        let pairs = samples[ti][si].iter().zip(&samples[bi][si]);
        Spread::of(
            pairs
                .map(|(a, b)| a.msgs_per_sec / b.msgs_per_sec)
                .collect(),
        )
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Echo round trips per second, {} concurrent ping-pong connections; {} interleaved \
         round(s) of {:.2} s per server and size (after {:.2} s warm-up); {}. Ratios are \
         medians of per-round ratios, interquartile range in brackets.\n",
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
        "| server | size | msgs/s (median) | min – max | MiB/s echoed | vs mio | vs tokio | server CPU |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (si, &size) in cfg.sizes.iter().enumerate() {
        for (ti, &target) in cfg.targets.iter().enumerate() {
            let runs = &samples[ti][si];
            let Some(rate) = Spread::of(runs.iter().map(|s| s.msgs_per_sec).collect()) else {
                continue;
            };
            let vs = |base: Target| match ratio(ti, base, si) {
                _ if target == base => "1".to_string(),
                Some(r) => format!("{:.2}x ({:.2}–{:.2})", r.median, r.q1, r.q3),
                None => "n/a".to_string(),
            };
            let server_cpu = Spread::of(runs.iter().filter_map(|s| s.server_cpu).collect());
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} – {} | {:.1} | {} | {} | {} |",
                target.label(),
                fmt_size(size),
                fmt_rate(rate.median),
                fmt_rate(rate.min),
                fmt_rate(rate.max),
                rate.median * size as f64 / (1024.0 * 1024.0),
                vs(Target::Mio),
                vs(Target::Tokio),
                fmt_cpu(server_cpu.map(|c| c.median)),
            );
        }
    }

    let all = samples.iter().flatten().flatten();
    let disturbed = all.clone().filter(|s| s.disturbed()).count();
    if disturbed > 0 {
        let _ = writeln!(
            out,
            "\n{disturbed} of {} measurements ran while other processes used more than {:.0} % \
             of a core, even after {ATTEMPTS} attempts.",
            all.count(),
            FOREIGN_LIMIT * 100.0
        );
    }

    let mut verdicts = Vec::new();
    for (si, &size) in cfg.sizes.iter().enumerate() {
        let Some(ember) = index(Target::Ember) else {
            break;
        };
        let (Some(tokio), Some(mio)) = (
            ratio(ember, Target::Tokio, si),
            ratio(ember, Target::Mio, si),
        ) else {
            break;
        };
        let pass = tokio.median >= 1.0 && mio.median >= 0.9;
        let short_read = ratio(ember, Target::MioShortRead, si)
            .map_or(String::new(), |r| format!(", {:.2}x mio-sr", r.median));
        verdicts.push(format!(
            "{}: {} ({:.2}x tokio, {:.2}x mio{short_read})",
            fmt_size(size),
            if pass { "meets" } else { "MISSES" },
            tokio.median,
            mio.median,
        ));
    }
    if !verdicts.is_empty() {
        let _ = writeln!(
            out,
            "\nBar (ember >= tokio and >= 0.90x the bare mio loop): {}.",
            verdicts.join("; ")
        );
        if cfg.rounds < 5 {
            let _ = writeln!(
                out,
                "With {} round(s) the ratios are mostly noise; judge the bar from a full run.",
                cfg.rounds
            );
        }
    }
    out
}
