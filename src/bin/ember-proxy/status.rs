//! `--admin HOST:PORT`: what the proxy shows about itself, served by `ember::admin` from
//! the proxy's own reactor.
//!
//! - `GET /metrics`: the Prometheus text format: sessions, bytes each way, connect
//!   failures and retries, per backend (by pool: `relay`, `duplex_N`) up/down, live
//!   sessions, connects, failures and bytes, shadow cut-offs and skips, the queue, a
//!   session-duration histogram, and the process's CPU, memory and descriptors.
//! - `GET /stats`: a page a person keeps open: the same numbers as tables, readable on a
//!   phone, refreshed every 2 s in place (`/stats?live` answers the tables alone).
//! - `GET /health`: 200 while serving, 503 once SIGTERM has started the drain, for the
//!   balancer in front.
//!
//! Per-backend bytes come from sessions that ended ([`Observed`], fed by the access-log
//! hook); live sessions count once they end.
//!
//! With `--workers N` the pages are served by worker 0 and show the whole process: the
//! counters are shared by every worker's server, the pools are every worker's last
//! published snapshot added up ([`crate::board`]: at most half a second old), and
//! `ember_worker_sessions_total` / `ember_worker_sessions_active` say how the clients are
//! spread over the workers.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use ember::admin::{Exposition, Histogram, Request, Response, Routes, expose_process};
use ember::proxy::{BackendStatus, Pool, SessionRecord, Stats};

use crate::board::{self, Board, PoolSnapshot, Tally};

/// What finished sessions taught us: their durations, and the bytes each backend moved.
/// Shared with the session-end hook, which may be called from any reactor thread.
#[derive(Default)]
pub struct Observed {
    durations: Histogram,
    /// By `pool@target`: bytes sent to and received from that backend.
    traffic: Mutex<BTreeMap<String, Traffic>>,
    shadow: Mutex<Traffic>,
}

#[derive(Clone, Copy, Default)]
struct Traffic {
    sent: u64,
    received: u64,
}

impl Observed {
    pub fn session_ended(&self, record: &SessionRecord) {
        self.durations.observe(record.duration);
        let Ok(mut traffic) = self.traffic.lock() else {
            return;
        };
        for b in &record.backends {
            // Shadows are named `duplex_N` like their pools; every primary is `relay`.
            let t = traffic
                .entry(format!("{}@{}", b.name, b.target))
                .or_default();
            t.sent += b.bytes_sent;
            t.received += b.bytes_received;
            if b.shadow
                && let Ok(mut shadow) = self.shadow.lock()
            {
                shadow.sent += b.bytes_sent;
                shadow.received += b.bytes_received;
            }
        }
    }

    fn traffic_of(&self, pool: &str, backend: &BackendStatus) -> Traffic {
        self.traffic
            .lock()
            .ok()
            .and_then(|t| t.get(&format!("{pool}@{}", backend.target)).copied())
            .unwrap_or_default()
    }
}

/// Where the pages find the pools.
/// One worker's pools, shared with whoever replaces them (a config reload).
pub type LivePools = std::rc::Rc<std::cell::RefCell<Vec<(String, Pool)>>>;

pub enum Pools {
    /// One worker: its pools, read live (a config reload puts the new ones in).
    Live(LivePools),
    /// Several: what each published, added up.
    Board(Arc<Board>),
}

impl Pools {
    fn snapshot(&self) -> Vec<PoolSnapshot> {
        match self {
            Pools::Live(pools) => board::snapshot(&pools.borrow()),
            Pools::Board(board) => board.combined(),
        }
    }
}

/// Everything the pages read.
pub struct Sources {
    pub stats: Stats,
    pub pools: Pools,
    /// Each worker's sessions, by worker index.
    pub workers: Vec<Arc<Tally>>,
    pub observed: Arc<Observed>,
    /// SIGTERM has started the drain.
    pub draining: Rc<Cell<bool>>,
    pub started: Instant,
    /// `--http`/`--compare`: verdicts, streams given up, requests not mirrored.
    pub shadowing: Arc<crate::plan::ShadowCounts>,
}

pub fn routes(sources: Sources) -> Routes {
    let sources = Rc::new(sources);
    let (metrics, stats, health) = (Rc::clone(&sources), Rc::clone(&sources), sources);
    Routes::new()
        .get("/metrics", move |_| {
            Response::prometheus(metrics_page(&metrics))
        })
        .get("/stats", move |request: &Request| {
            let live = live_tables(&stats);
            if request.query() == Some("live") {
                Response::html(200, live)
            } else {
                Response::html(200, stats_page(&live))
            }
        })
        .get("/health", move |_| {
            if health.draining.get() {
                Response::text(503, "draining\n")
            } else {
                Response::text(200, "serving\n")
            }
        })
}

fn metrics_page(s: &Sources) -> String {
    let stats = &s.stats;
    let mut page = Exposition::new();
    page.counter(
        "ember_sessions_total",
        "Client sessions accepted.",
        stats.clients_accepted(),
    )
    .gauge(
        "ember_sessions_active",
        "Client sessions open now.",
        stats.clients_active(),
    )
    .counter_with(
        "ember_bytes_total",
        "Bytes relayed: in from clients, out to clients.",
        &[("direction", "in")],
        stats.bytes_from_clients(),
    )
    .counter_with(
        "ember_bytes_total",
        "Bytes relayed: in from clients, out to clients.",
        &[("direction", "out")],
        stats.bytes_to_clients(),
    )
    .counter(
        "ember_backend_errors_total",
        "Backend connections that ended in an error (refused, reset, timed out).",
        stats.backends_failed(),
    )
    .counter(
        "ember_backend_retries_total",
        "Backend connects retried.",
        stats.backends_retried(),
    )
    .counter(
        "ember_shadow_cutoffs_total",
        "Shadows cut off for falling behind.",
        stats.shadow_cutoffs(),
    )
    .counter(
        "ember_shadows_skipped_total",
        "Shadows not opened: down, or over the shadow limits.",
        stats.shadows_skipped(),
    )
    .gauge(
        "ember_shadows_active",
        "Shadow connections open now.",
        stats.shadows_active(),
    );
    let shadowing = &s.shadowing;
    for (kind, count) in shadowing.verdicts.snapshot() {
        page.counter_with(
            "ember_compared_total",
            "Mirrored requests compared with the primary's answer, by verdict.",
            &[("verdict", kind.as_str())],
            count,
        );
    }
    page.counter(
        "ember_mirror_skipped_total",
        "Requests not mirrored: too big, too many waiting, over --shadow-max-memory, or the shadow's queue full.",
        shadowing.skipped.load(std::sync::atomic::Ordering::Relaxed),
    )
    .counter(
        "ember_mirror_failed_total",
        "Mirrored requests a shadow did not answer (refused, timed out, reset, unreadable).",
        shadowing
            .mirror_failed
            .load(std::sync::atomic::Ordering::Relaxed),
    )
    .counter(
        "ember_mirror_gave_up_total",
        "Clients whose stream stopped being HTTP/1.1 the proxy can frame (relayed, not mirrored).",
        shadowing.gave_up.load(std::sync::atomic::Ordering::Relaxed),
    );
    if let Ok(shadow) = s.observed.shadow.lock() {
        for (direction, bytes) in [("sent", shadow.sent), ("received", shadow.received)] {
            page.counter_with(
                "ember_shadow_bytes_total",
                "Bytes sent to and received from shadows, by finished sessions.",
                &[("direction", direction)],
                bytes,
            );
        }
    }
    let pools = s.pools.snapshot();
    for pool in &pools {
        for b in pool.backends.iter().map(|view| &view.status) {
            let target = b.target.to_string();
            let labels = [("pool", pool.name.as_str()), ("backend", target.as_str())];
            let traffic = s.observed.traffic_of(&pool.name, b);
            page.gauge_with(
                "ember_backend_up",
                "Whether the backend is in rotation.",
                &labels,
                b.up,
            )
            .gauge_with(
                "ember_backend_sessions_active",
                "Sessions on the backend now.",
                &labels,
                b.active,
            )
            .counter_with(
                "ember_backend_connects_total",
                "Connects to the backend that succeeded.",
                &labels,
                b.connects,
            )
            .counter_with(
                "ember_backend_connect_failures_total",
                "Connects to the backend that failed.",
                &labels,
                b.connect_failures,
            );
            for (direction, bytes) in [("sent", traffic.sent), ("received", traffic.received)] {
                let labels = [labels[0], labels[1], ("direction", direction)];
                page.counter_with(
                    "ember_backend_bytes_total",
                    "Bytes sent to and received from the backend, by finished sessions.",
                    &labels,
                    bytes,
                );
            }
        }
    }
    if let Some(relay) = pools.iter().find(|p| p.name == "relay") {
        page.gauge(
            "ember_queue_length",
            "Clients waiting for a backend under its maxconn.",
            relay.queued,
        );
    }
    for (worker, tally) in s.workers.iter().enumerate() {
        let worker = worker.to_string();
        let labels = [("worker", worker.as_str())];
        page.counter_with(
            "ember_worker_sessions_total",
            "Client sessions accepted, by worker (--workers).",
            &labels,
            tally.sessions(),
        )
        .gauge_with(
            "ember_worker_sessions_active",
            "Client sessions open now, by worker (--workers).",
            &labels,
            tally.active(),
        );
    }
    page.histogram(
        "ember_session_duration_seconds",
        "How long client sessions lasted, from accept to close.",
        &s.observed.durations,
    );
    expose_process(&mut page);
    page.finish()
}

/// The part of the stats page that refreshes: the totals and one table per pool.
fn live_tables(s: &Sources) -> String {
    let stats = &s.stats;
    let mut html = String::new();
    let state = if s.draining.get() {
        "draining"
    } else {
        "serving"
    };
    let _ = write!(
        html,
        "<p class=\"state {state}\" id=\"state\">{state} for {}</p>\
         <dl class=\"totals\">\
         <div><dt>sessions</dt><dd id=\"sessions-total\">{}</dd></div>\
         <div><dt>active</dt><dd id=\"sessions-active\">{}</dd></div>\
         <div><dt>bytes in</dt><dd id=\"bytes-in\">{}</dd></div>\
         <div><dt>bytes out</dt><dd id=\"bytes-out\">{}</dd></div>\
         <div><dt>retries</dt><dd id=\"retries\">{}</dd></div>\
         <div><dt>backend errors</dt><dd id=\"errors\">{}</dd></div>\
         <div><dt>shadow cut-offs</dt><dd id=\"cutoffs\">{}</dd></div>\
         </dl>",
        age(s.started.elapsed().as_secs()),
        stats.clients_accepted(),
        stats.clients_active(),
        stats.bytes_from_clients(),
        stats.bytes_to_clients(),
        stats.backends_retried(),
        stats.backends_failed(),
        stats.shadow_cutoffs(),
    );
    for p in s.pools.snapshot() {
        let pool = &p.name;
        let _ = write!(
            html,
            "<h2>{pool}</h2><div class=\"scroll\"><table id=\"pool-{pool}\">\
             <thead><tr><th>backend</th><th>status</th><th>sessions</th><th>max</th>\
             <th>weight</th><th>connects</th><th>failed</th><th>bytes sent</th>\
             <th>bytes received</th><th>last check</th></tr></thead><tbody>"
        );
        for view in &p.backends {
            let b = &view.status;
            let traffic = s.observed.traffic_of(pool, b);
            let status = if b.up { "UP" } else { "DOWN" };
            // Up in some workers only (each ejects on its own): say in how many.
            let partly = if b.up && view.up_in < view.workers {
                format!(" ({} of {} workers)", view.up_in, view.workers)
            } else {
                String::new()
            };
            let check = match b.last_check {
                None => "-".to_owned(),
                Some((at, passed)) => {
                    let ago = SystemTime::now()
                        .duration_since(at)
                        .map_or(0, |d| d.as_secs());
                    let verdict = if passed { "passed" } else { "failed" };
                    format!("{verdict}, {} ago", age(ago))
                }
            };
            let _ = write!(
                html,
                "<tr><td>{}</td><td class=\"{}\">{status}{partly}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{check}</td></tr>",
                escape(&b.target.to_string()),
                status.to_ascii_lowercase(),
                b.active,
                b.max_connections.map_or("-".into(), |n| n.to_string()),
                b.weight,
                b.connects,
                b.connect_failures,
                traffic.sent,
                traffic.received,
            );
        }
        html.push_str("</tbody></table></div>");
    }
    html
}

fn stats_page(live: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>ember-proxy</title><style>{STYLE}</style></head><body>\
         <h1>ember-proxy</h1><main id=\"live\">{live}</main>\
         <script>{SCRIPT}</script></body></html>"
    )
}

/// `42s`, `3m`, `5h`, `2d`.
fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "\
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:1rem;color:#222}\
h1{font-size:1.3rem;margin:0 0 .5rem}h2{font-size:1.05rem;margin:1.2rem 0 .4rem}\
.state{display:inline-block;padding:.1rem .6rem;border-radius:1rem;margin:0 0 .8rem}\
.serving{background:#dff3e4}.draining{background:#fde7c8}\
.totals{display:flex;flex-wrap:wrap;gap:.5rem;margin:0}\
.totals div{background:#f4f4f6;border-radius:.4rem;padding:.4rem .7rem;min-width:7rem}\
dt{font-size:.75rem;color:#666}dd{margin:0;font-size:1.15rem;font-variant-numeric:tabular-nums}\
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}\
th,td{text-align:right;padding:.3rem .5rem;border-bottom:1px solid #e4e4e8;white-space:nowrap}\
th:first-child,td:first-child{text-align:left}th{font-size:.8rem;color:#555}\
td.up{color:#17803d;font-weight:600}td.down{color:#c0262d;font-weight:600}";

/// Replaces the live part every 2 s; a failed fetch leaves the last numbers up.
const SCRIPT: &str = "\
setInterval(function(){fetch('/stats?live').then(function(r){return r.ok?r.text():null})\
.then(function(t){if(t){document.getElementById('live').innerHTML=t}}).catch(function(){})},2000);";
