//! Duplex ("fork production traffic to a second environment"): both backends see the
//! same bytes, the client only the primary's answers, and a shadow that is dead, never
//! reads, or dies never slows or breaks the primary, with memory bounded.

mod proxy_support;

use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ember::proxy::{self, Backend, Options, Stats};
use ember::{Context, DEFAULT_HIGH_WATER, Handler, READ_CHUNK};

use proxy_support::*;

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// A proxy with a recording primary and a shadow made by `shadow` (given the shadow
/// record); returns the proxy address, its stats and both records.
fn duplex<H: Handler>(
    options: Options,
    shadow: impl Fn(Record) -> H + Send + 'static,
) -> Running<(std::net::SocketAddr, Stats, Record, Record)> {
    spawn_reactor(move |r| {
        let (prod_record, shadow_record) = (Record::default(), Record::default());
        let pr = Arc::clone(&prod_record);
        let prod = serve(r, move || Recorder {
            prefix: "prod",
            record: Arc::clone(&pr),
        })?;
        let sr = Arc::clone(&shadow_record);
        let shadow = serve(r, move || shadow(Arc::clone(&sr)))?;
        let p = options.start(r, "127.0.0.1:0", move |conn| {
            conn.server("prod", prod);
            conn.server("shadow", Backend::tcp(shadow).shadow());
        })?;
        Ok((
            p.local_addr().unwrap(),
            p.stats().clone(),
            prod_record,
            shadow_record,
        ))
    })
}

#[test]
fn duplex_backends_see_identical_bytes_and_the_client_gets_the_primarys_answers_only() {
    let running = duplex(Options::new(), |record| Recorder {
        prefix: "shadow",
        record,
    });
    let (addr, _, prod, shadow) = running.value.clone();
    let mut client = connect(addr);
    let mut sent = Vec::new();
    let mut pattern = Pattern::new(11);
    let mut answers = Vec::new();
    for size in [1, 100, 5000, 70_000, 3] {
        let chunk = pattern.bytes(size);
        client.write_all(&chunk).unwrap();
        sent.extend_from_slice(&chunk);
        // Wait for prod's answer to this chunk so chunks stay distinct.
        let expect = format!("prod:{}\n", sent.len());
        let mut got = read_until(&mut client, expect.as_bytes());
        answers.append(&mut got);
    }
    client.shutdown(Shutdown::Write).unwrap();
    answers.extend(read_all(&mut client));
    let answers = String::from_utf8(answers).unwrap();
    assert!(answers.lines().all(|l| l.starts_with("prod:")), "{answers}");
    assert!(
        answers.ends_with(&format!("prod:{}\nprod:end\n", sent.len())),
        "{answers}"
    );
    wait_for("the shadow to get everything", || {
        record_of(&shadow).len() >= sent.len()
    });
    assert!(record_of(&prod) == sent, "prod got different bytes");
    assert!(record_of(&shadow) == sent, "shadow got different bytes");
}

#[test]
fn a_dead_shadow_leaves_the_primarys_answers_intact() {
    let dead = closed_port();
    let running = spawn_reactor(move |r| {
        let echo = serve(r, || Echo)?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("prod", echo);
            conn.server("shadow", Backend::tcp(dead).shadow());
        })?;
        Ok((p.local_addr().unwrap(), p.stats().clone()))
    });
    let (addr, stats) = running.value.clone();
    for round in 0..20u64 {
        let request = Pattern::new(round).bytes(50_000);
        assert!(exchange(addr, &request) == request, "round {round}");
    }
    assert_eq!(stats.backends_failed(), 20);
}

/// Streams `size` bytes through the proxy to an echoing primary and checks the echo,
/// writing and reading at the same time.
fn stream_through(addr: std::net::SocketAddr, size: usize, seed: u64) {
    assert_eq!(pump(addr, size, seed), size, "echo length");
}

#[test]
fn a_shadow_that_never_reads_is_cut_off_and_memory_stays_bounded() {
    const SHADOW_BUFFER: usize = 1 << 20;
    const SIZE: usize = 64 << 20;
    let running = spawn_reactor(|r| {
        let peak = watch_peak_queue(r);
        let echo = serve(r, || Echo)?;
        let stuck = serve(r, || NeverReads)?;
        let p =
            Options::new()
                .shadow_buffer(SHADOW_BUFFER)
                .start(r, "127.0.0.1:0", move |conn| {
                    conn.server("prod", echo);
                    conn.server("shadow", Backend::tcp(stuck).shadow());
                })?;
        Ok((p.local_addr().unwrap(), p.stats().clone(), peak))
    });
    let (addr, stats, peak) = running.value.clone();
    stream_through(addr, SIZE, 21);
    assert_eq!(stats.shadow_cutoffs(), 1);
    assert!(stats.peak_shadow_queue() as usize <= SHADOW_BUFFER + READ_CHUNK);
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= SHADOW_BUFFER.max(DEFAULT_HIGH_WATER) + READ_CHUNK,
        "some connection queued {peak} bytes"
    );
}

/// Reads a little, then closes on its own, mid-stream.
struct QuitsEarly {
    seen: usize,
}

impl Handler for QuitsEarly {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        self.seen += data.len();
        if self.seen > 100_000 {
            cx.close();
        }
    }
}

#[test]
fn a_shadow_that_dies_mid_stream_does_not_disturb_the_primary() {
    let running = spawn_reactor(|r| {
        let echo = serve(r, || Echo)?;
        let quitter = serve(r, || QuitsEarly { seen: 0 })?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("prod", echo);
            conn.server("shadow", Backend::tcp(quitter).shadow());
        })?;
        Ok(p.local_addr().unwrap())
    });
    stream_through(running.value, 8 << 20, 22);
}

#[test]
fn a_shadow_whose_answers_are_recorded_still_never_reaches_the_client() {
    let answers = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&answers);
    let running = spawn_reactor(move |r| {
        let (pr, sr) = (Record::default(), Record::default());
        let prod = serve(r, move || Recorder {
            prefix: "prod",
            record: Arc::clone(&pr),
        })?;
        let shadow = serve(r, move || Recorder {
            prefix: "shadow",
            record: Arc::clone(&sr),
        })?;
        let p = proxy::start(r, "127.0.0.1:0", move |conn| {
            conn.server("prod", prod);
            conn.server("shadow", Backend::tcp(shadow).shadow());
            let seen = Arc::clone(&seen);
            // Returns every answer, the shadow's included: shadows still never reach the
            // client.
            conn.on_response(move |_, name, data| {
                seen.lock()
                    .unwrap()
                    .push(format!("{name}={}", String::from_utf8_lossy(data)));
                Some(data.to_vec())
            });
        })?;
        Ok(p.local_addr().unwrap())
    });
    let reply = exchange(running.value, b"abc");
    assert_eq!(reply, b"prod:3\nprod:end\n");
    let answers = answers.lock().unwrap().join("");
    assert!(answers.contains("prod=prod:3"), "{answers}");
}
