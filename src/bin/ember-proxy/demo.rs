//! `ember-proxy demo`: the whole story in one process, then exit.
//!
//! The reactor thread runs two tiny HTTP apps on ember ("prod" and "shadow") and, in
//! front of them, the same duplex proxy `ember-proxy -r PROD -d SHADOW` would start. A
//! client thread with plain blocking sockets sends requests alternately through the proxy
//! and straight to prod, one connection per request, and timing each one. The report
//! checks that both apps saw the same request bytes, that the client only ever got prod's
//! answers, and what the proxy added to the latency.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use ember::proxy::{Options, Target};
use ember::{Context, Handler, Reactor, ReactorHandle};

use crate::args::DemoArgs;
use crate::plan::{Plan, Relay};

const WARMUP: usize = 20;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

type RequestLog = Arc<Mutex<Vec<u8>>>;

/// A tiny HTTP app: logs each request head, answers `NAME answered PATH`, closes.
struct App {
    name: &'static str,
    log: RequestLog,
    request: Vec<u8>,
}

impl Handler for App {
    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        self.request.extend_from_slice(data);
        let Some(end) = find(&self.request, b"\r\n\r\n") else {
            return;
        };
        let head = &self.request[..end + 4];
        lock(&self.log).extend_from_slice(head);
        let path = String::from_utf8_lossy(head)
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let body = format!("{} answered {path}\n", self.name);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        cx.send_data(response.as_bytes());
        cx.close_after_writing();
    }
}

struct Addresses {
    prod: SocketAddr,
    shadow: SocketAddr,
    proxy: SocketAddr,
    reactor: ReactorHandle,
}

/// What the client thread measured.
struct Outcome {
    direct: Vec<Duration>,
    proxied: Vec<Duration>,
    proxied_answers: Vec<String>,
}

pub fn run(args: &DemoArgs) -> ExitCode {
    let prod_log = RequestLog::default();
    let shadow_log = RequestLog::default();
    let (tx, rx) = mpsc::channel::<Addresses>();
    let requests = args.requests;
    let (client_prod_log, client_shadow_log) = (Arc::clone(&prod_log), Arc::clone(&shadow_log));
    let client = thread::spawn(
        move || -> Result<(Outcome, (SocketAddr, SocketAddr, SocketAddr)), String> {
            let addrs = rx
                .recv()
                .map_err(|_| "the reactor did not start".to_owned())?;
            let result = drive(&addrs, requests, &client_prod_log, &client_shadow_log);
            addrs.reactor.stop();
            result.map(|o| (o, (addrs.prod, addrs.shadow, addrs.proxy)))
        },
    );

    let verbose = args.verbose;
    let (reactor_prod_log, reactor_shadow_log) = (Arc::clone(&prod_log), Arc::clone(&shadow_log));
    let started = Reactor::run(move |r| {
        let prod = r.start_server("127.0.0.1:0", move || App {
            name: "prod",
            log: Arc::clone(&reactor_prod_log),
            request: Vec::new(),
        })?;
        let shadow = r.start_server("127.0.0.1:0", move || App {
            name: "shadow",
            log: Arc::clone(&reactor_shadow_log),
            request: Vec::new(),
        })?;
        let prod = r.server_addr(prod).expect("TCP servers have an address");
        let shadow = r.server_addr(shadow).expect("TCP servers have an address");
        let plan = Plan {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            relay: Relay::Tcp(Target::Tcp(prod)),
            duplex: vec![Target::Tcp(shadow)],
            options: Options::new().verbose(verbose),
            splice: true,
            retries: crate::args::DEFAULT_RETRIES,
            queue_timeout: ember::proxy::DEFAULT_QUEUE_TIMEOUT,
            check: None,
            resolve_interval: ember::DEFAULT_RESOLVE_INTERVAL,
            timeouts: String::new(),
            backends: Default::default(),
            sni_routes: Vec::new(),
            shadow_sample: 1.0,
            http: None,
            compare_bytes: None,
            report: None,
        };
        let proxy = plan.start(r)?.server;
        let proxy = proxy.local_addr().expect("TCP servers have an address");
        let reactor = r.handle();
        let _ = tx.send(Addresses {
            prod,
            shadow,
            proxy,
            reactor,
        });
        Ok(())
    });
    if let Err(e) = started {
        eprintln!("ember-proxy demo: {e}");
        return ExitCode::from(1);
    }
    let (outcome, (prod, shadow, proxy)) = match client.join() {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            eprintln!("ember-proxy demo: {e}");
            return ExitCode::from(1);
        }
        Err(_) => {
            eprintln!("ember-proxy demo: the client thread panicked");
            return ExitCode::from(1);
        }
    };
    report(
        &outcome,
        requests,
        (prod, shadow, proxy),
        &lock(&prod_log),
        &lock(&shadow_log),
    )
}

/// The client thread: warm up, then alternate proxied and direct requests.
fn drive(
    addrs: &Addresses,
    requests: usize,
    prod_log: &RequestLog,
    shadow_log: &RequestLog,
) -> Result<Outcome, String> {
    for i in 0..WARMUP {
        fetch(addrs.prod, &format!("/warmup/{i}"))?;
        fetch(addrs.proxy, &format!("/warmup/{i}"))?;
    }
    let mut outcome = Outcome {
        direct: Vec::with_capacity(requests),
        proxied: Vec::with_capacity(requests),
        proxied_answers: Vec::with_capacity(requests),
    };
    for i in 0..requests {
        let (took, answer) = fetch(addrs.proxy, &format!("/via-proxy/{i}"))?;
        outcome.proxied.push(took);
        outcome.proxied_answers.push(answer);
        let (took, _) = fetch(addrs.prod, &format!("/direct/{i}"))?;
        outcome.direct.push(took);
    }
    // The shadow gets each request at the same time as prod but answers into the void;
    // give its last bytes a moment to land before comparing.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let want = count(&lock(prod_log), b"/via-proxy/");
        if count(&lock(shadow_log), b"/via-proxy/") >= want {
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    Ok(outcome)
}

/// One request on a fresh connection; returns the time to the closed answer, and the body.
fn fetch(addr: SocketAddr, path: &str) -> Result<(Duration, String), String> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: demo.example\r\nUser-Agent: ember-proxy-demo\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let started = Instant::now();
    let failed = |e: std::io::Error| format!("request {path} to {addr} failed: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(failed)?;
    stream.set_nodelay(true).map_err(failed)?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(failed)?;
    stream.write_all(request.as_bytes()).map_err(failed)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(failed)?;
    let took = started.elapsed();
    let response = String::from_utf8_lossy(&response);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim_end().to_owned())
        .ok_or_else(|| format!("request {path} to {addr}: no HTTP answer"))?;
    Ok((took, body))
}

fn report(
    outcome: &Outcome,
    requests: usize,
    (prod, shadow, proxy): (SocketAddr, SocketAddr, SocketAddr),
    prod_log: &[u8],
    shadow_log: &[u8],
) -> ExitCode {
    let proxied_at = |log: &[u8]| -> Vec<u8> {
        split_requests(log)
            .filter(|r| find(r, b" /via-proxy/").is_some())
            .flatten()
            .copied()
            .collect()
    };
    let at_prod = proxied_at(prod_log);
    let at_shadow = proxied_at(shadow_log);
    let identical = !at_prod.is_empty() && at_prod == at_shadow;
    let from_prod = outcome
        .proxied_answers
        .iter()
        .filter(|a| a.starts_with("prod answered"))
        .count();
    let from_shadow = outcome
        .proxied_answers
        .iter()
        .filter(|a| a.starts_with("shadow"))
        .count();
    let prod_only = from_prod == requests && from_shadow == 0;
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };

    println!("ember-proxy demo: a duplex proxy in front of two HTTP apps, all in this process");
    println!("  prod   app   {prod}   (answers the clients)");
    println!("  shadow app   {shadow}   (gets a copy of the traffic; its answers are discarded)");
    println!("  proxy        {proxy}   (ember-proxy -r {prod} -d {shadow})");
    println!();
    println!(
        "  {requests} requests through the proxy and {requests} straight to prod, alternating, one connection each"
    );
    println!(
        "  [{}] prod and shadow saw identical request bytes ({} requests, {} bytes each side)",
        mark(identical),
        split_requests(&at_shadow).count(),
        at_shadow.len()
    );
    println!(
        "  [{}] the client got prod's answers only ({from_prod} of {requests} from prod, {from_shadow} from shadow)",
        mark(prod_only)
    );
    let direct = percentiles(&outcome.direct);
    let proxied = percentiles(&outcome.proxied);
    println!();
    println!("  latency per request (connect, send, read until closed), microseconds:");
    println!("                   p50      p90      p99");
    println!(
        "    direct    {:>8} {:>8} {:>8}",
        direct[0], direct[1], direct[2]
    );
    println!(
        "    proxied   {:>8} {:>8} {:>8}",
        proxied[0], proxied[1], proxied[2]
    );
    println!(
        "  the proxy added {} µs at p50 (it opens two backend connections per client)",
        proxied[0] as i64 - direct[0] as i64
    );
    if identical && prod_only {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// p50, p90, p99 in whole microseconds.
fn percentiles(samples: &[Duration]) -> [u128; 3] {
    let mut sorted: Vec<u128> = samples.iter().map(Duration::as_micros).collect();
    sorted.sort_unstable();
    let at = |q: f64| -> u128 {
        if sorted.is_empty() {
            return 0;
        }
        let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted[i]
    };
    [at(0.50), at(0.90), at(0.99)]
}

/// Request heads in a log, each with its terminating blank line.
fn split_requests(log: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = log;
    std::iter::from_fn(move || {
        let end = find(rest, b"\r\n\r\n")? + 4;
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn lock(log: &RequestLog) -> std::sync::MutexGuard<'_, Vec<u8>> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
