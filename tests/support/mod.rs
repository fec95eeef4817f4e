//! The one support library of the integration tests. Each `tests/*.rs` binary includes it
//! with `mod support;` and uses the part it needs:
//!
//! - [`pattern`]: the deterministic byte stream every producer and checker shares.
//! - [`watchdog`]: the watchdog: it stops a reactor, or aborts a test binary, that is still
//!   running after its limit.
//! - [`reactor_thread`]: a reactor under test, on a thread of its own or on the test
//!   thread, always under the watchdog; and probes into a running one.
//! - [`backends`]: small servers for a test to talk to: ember handlers (echo, recorder, …)
//!   and an echo on std threads.
//! - [`clients`]: blocking std clients and waits, every one of them bounded.
//! - [`sys`]: the libc edges a test needs (a reset on close, unacknowledged bytes, RSS, the
//!   descriptor limit through the crate's own `raise_descriptor_limit`).
//! - [`child`]: child processes, every wait on them bounded: this test binary re-run for
//!   one test, and `ember-proxy`.
//! - [`toxics`]: toxiproxy-style fault injection between a client and a server.
//! - [`http_app`]: an HTTP/1.1 application (production, or a candidate with a regression)
//!   that records what it was asked, for the shadow tests.
//!
//! It holds no test and judges no behaviour of ember: its helpers panic only when a wait
//! runs out or the harness itself fails, and none of them waits without a limit.

pub mod backends;
pub mod certs;
pub mod child;
pub mod clients;
pub mod haproxy;
pub mod http_app;
pub mod pattern;
pub mod reactor_thread;
pub mod sys;
pub mod toxics;
pub mod watchdog;

use std::time::Duration;

/// How long a blocking client waits on one read or write, and a test on one event, before
/// the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);
