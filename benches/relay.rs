//! Relay throughput and CPU per GiB: the `splice(2)` path against the copying path,
//! side by side in one run.
//!
//! A client thread pushes a byte stream into an ember reactor whose front connection
//! relays (`proxy_incoming_to`) to a backend connection, which delivers to a sink thread.
//! The reactor thread measures its own CPU time (`CLOCK_THREAD_CPUTIME_ID`) around each
//! transfer, so the figure is the relay's cost alone, not the client's or the sink's.
//! Rounds alternate splice and copy so drift on a shared machine hits both alike.
//!
//! `cargo bench --bench relay -- [--gib N] [--rounds N]` (defaults: 2 GiB, 3 rounds).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ember::{Context, Handler, Reactor};

struct Front {
    backend: SocketAddr,
    done: mpsc::Sender<Duration>,
    cpu_at_start: Duration,
}

struct Back;

impl Handler for Back {}

impl Handler for Front {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        self.cpu_at_start = thread_cpu();
        let back = cx.connect(self.backend, Back).expect("connect to sink");
        let me = cx.id();
        cx.reactor().proxy_incoming_to(me, back, 1 << 20);
    }

    fn unbind(&mut self, _cx: &mut Context<'_>, _reason: ember::UnbindReason) {
        let _ = self.done.send(thread_cpu() - self.cpu_at_start);
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the live struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn pin_to(core: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes a bit within it; sched_setaffinity
    // on the calling thread (pid 0) with the set's exact size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

struct Measurement {
    seconds: f64,
    cpu: Duration,
}

fn one_transfer(splice: bool, bytes: u64) -> Measurement {
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = sink.local_addr().unwrap();
    let sink_thread = thread::spawn(move || {
        pin_to(0);
        let (mut conn, _) = sink.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match conn.read(&mut buf).unwrap() {
                0 => return total,
                n => total += n as u64,
            }
        }
    });
    let (done_tx, done_rx) = mpsc::channel();
    let (addr_tx, addr_rx) = mpsc::channel();
    let reactor = thread::Builder::new()
        .name("reactor".into())
        .spawn(move || {
            pin_to(1);
            Reactor::run(|r| {
                r.set_splice(splice);
                let done = done_tx.clone();
                let server = r.start_server("127.0.0.1:0", move || Front {
                    backend,
                    done: done.clone(),
                    cpu_at_start: Duration::ZERO,
                })?;
                addr_tx
                    .send((r.server_addr(server).unwrap(), r.handle()))
                    .unwrap();
                Ok(())
            })
            .unwrap();
        })
        .unwrap();
    let (front, handle) = addr_rx.recv().unwrap();
    pin_to(0);
    let started = Instant::now();
    let mut client = TcpStream::connect(front).unwrap();
    let chunk = vec![0x5Au8; 1 << 20];
    let mut sent = 0u64;
    while sent < bytes {
        client.write_all(&chunk).unwrap();
        sent += chunk.len() as u64;
    }
    client.shutdown(Shutdown::Write).unwrap();
    let received = sink_thread.join().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(received, bytes, "the relay lost bytes");
    let cpu = done_rx.recv().unwrap();
    handle.stop();
    reactor.join().unwrap();
    Measurement { seconds, cpu }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let gib = arg("--gib", 2);
    let rounds = arg("--rounds", 3);
    let bytes = gib << 30;
    let mut results = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for round in 1..=rounds {
        for (i, splice) in [true, false].into_iter().enumerate() {
            let m = one_transfer(splice, bytes);
            let gbps = bytes as f64 / m.seconds / (1u64 << 30) as f64;
            let cpu_per_gib = m.cpu.as_secs_f64() / gib as f64;
            eprintln!(
                "round {round} {:>6}: {gbps:.2} GiB/s, {cpu_per_gib:.3} CPU s/GiB",
                if splice { "splice" } else { "copy" }
            );
            results[i].0.push(gbps);
            results[i].1.push(cpu_per_gib);
        }
    }
    let [(splice_rate, splice_cpu), (copy_rate, copy_cpu)] = results;
    let (sr, sc, cr, cc) = (
        median(splice_rate),
        median(splice_cpu),
        median(copy_rate),
        median(copy_cpu),
    );
    println!("| relay path | throughput (GiB/s) | reactor CPU s per GiB | CPU vs copy |");
    println!("|---|---|---|---|");
    println!("| splice | {sr:.2} | {sc:.3} | {:.0}% |", 100.0 * sc / cc);
    println!("| copy | {cr:.2} | {cc:.3} | 100% |");
    println!();
    println!("{gib} GiB per transfer, median of {rounds} rounds, rounds interleaved.");
}
