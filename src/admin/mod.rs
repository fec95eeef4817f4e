//! An admin HTTP/1.1 server on the reactor that carries the proxied traffic, and a
//! Prometheus text writer for its `/metrics` page.
//!
//! ```no_run
//! use std::rc::Rc;
//! use std::time::Duration;
//! use ember::Reactor;
//! use ember::admin::{self, Exposition, Histogram, Response, Routes};
//!
//! Reactor::run(|r| {
//!     let latency = Rc::new(Histogram::default());
//!     let page_latency = Rc::clone(&latency);
//!     let routes = Routes::new()
//!         .get("/healthz", |_| Response::text(200, "ok\n"))
//!         .get("/metrics", move |_| {
//!             let mut page = Exposition::new();
//!             page.counter("app_requests_total", "Requests answered.", 42u64)
//!                 .gauge_with("app_backend_up", "Whether a backend answers.", &[("backend", "10.0.0.1:80")], true)
//!                 .histogram("app_request_seconds", "Time to answer.", &page_latency);
//!             Response::prometheus(page.finish())
//!         });
//!     let server = admin::serve(r, "127.0.0.1:9090", routes)?;
//!     latency.observe(Duration::from_millis(3)); // wherever requests are timed
//!     println!("admin on {:?}", server.local_addr());
//!     r.stop_on_signals()
//! })
//! .unwrap();
//! ```
//!
//! ## What it serves
//! - `GET` on a routed path runs the route's closure on the reactor thread and sends its
//!   [`Response`]; `HEAD` sends the same headers and no body. Paths match exactly; the
//!   query string is not part of the match but reaches the route ([`Request::query`]).
//! - 404 for a path with no route; 405 (with `Allow: GET, HEAD`) for another method on a
//!   routed path.
//! - Refused, and the connection closed after the answer: 400 for what is not HTTP/1.x
//!   (or has no `Host` in 1.1, or a bad `Content-Length`), 411 for a chunked body, 413,
//!   414 and 431 for a body, request line or head over the limits, 408 for a request
//!   not whole in time.
//! - Keep-alive with pipelining: requests on one connection are answered in order.
//!   `Connection: close` and HTTP/1.0 close after the response. Every response has a
//!   `Content-Length` (but 204 and 304, which must not).
//!
//! ## The limits: why an admin client cannot slow the proxy
//! The server runs on the proxy's reactor thread, with no thread of its own, so each
//! limit bounds what one admin client can cost that thread, in time or memory
//! ([`Limits`], defaults in brackets):
//! - **Connections** [64, [`Limits::max_connections`]]: one accepted beyond them is closed
//!   at once, unanswered; it costs an accept and a close. A later client is served once
//!   others leave. [`AdminStats::connections_over_limit`] counts them.
//! - **Request size** [8 KiB head, [`Limits::max_request_head`]; 8 KiB body,
//!   [`Limits::max_request_body`]; 64 headers, [`MAX_HEADERS`]]: a client's buffered
//!   input is at most a head, a body and one 16 KiB read.
//! - **Time** [10 s idle, [`Limits::idle_timeout`]; 10 s per request,
//!   [`Limits::request_timeout`]]: a connection with no byte moving either way is
//!   closed (the reactor's comm-inactivity timeout), and a request must arrive whole
//!   within the request timeout of its first byte, so a client that trickles a head
//!   byte by byte cannot hold a place forever.
//! - **Queued answers** [64 KiB / 16 KiB, [`Limits::response_water_marks`]]: while more
//!   than the high-water mark of answers waits for a client to read, it is neither read
//!   nor answered, until no more than the low-water mark waits. So a client that
//!   pipelines and never reads holds at most the high-water mark plus one response, and
//!   the idle timeout closes it once nothing moves.
//! - **Work per turn** [[`REQUESTS_PER_TURN`] = 16]: a connection answers at most that
//!   many pipelined requests before the loop turns to other descriptors.
//!
//! Routes are the one thing the limits cannot bound: a route runs on the reactor
//! thread, so it must be quick and never block. A route that panics closes its
//! connection only ([`UnbindReason::Panicked`](crate::UnbindReason::Panicked)); the
//! reactor's error handler sees the panic.
//!
//! ## Prometheus
//! [`Exposition`] writes the text format 0.0.4: one `# HELP` and one `# TYPE` per
//! family however its samples were written, label values escaped, [`Histogram`]s as
//! cumulative buckets with `+Inf`, `_sum` and `_count`. Send a page with
//! [`Response::prometheus`]; [`AdminStats::expose`] adds the admin server's own counters.

// Who owns what.
// - server:     starting one (`serve`, `Limits`, `AdminServer`); what its connections share.
// - connection: one client: its unanswered input, when to answer, its request timer.
// - parse:      the request at the front of the input (pure).
// - message:    `Request`, `Response`, and a response's bytes.
// - routes:     path to closure; 404 and 405.
// - stats:      the counters.
// - exposition, histogram: the Prometheus text format.
mod connection;
mod exposition;
mod histogram;
mod message;
mod parse;
mod process;
mod routes;
mod server;
mod stats;

pub use exposition::{Exposition, PROMETHEUS_CONTENT_TYPE, Value};
pub use histogram::{DEFAULT_BUCKETS, Histogram};
pub use message::{Request, Response};
pub use parse::MAX_HEADERS;
pub use process::expose_process;
pub use routes::Routes;
pub use server::{
    AdminServer, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUEST_BODY,
    DEFAULT_MAX_REQUEST_HEAD, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RESPONSE_HIGH_WATER,
    DEFAULT_RESPONSE_LOW_WATER, Limits, REQUESTS_PER_TURN, serve, serve_with,
};
pub use stats::AdminStats;
