//! # ember
//!
//! An EventMachine-style reactor: one thread, one `mio::Poll`, a slab of descriptors, and
//! user handlers called when something happens on a connection.
//!
//! ```no_run
//! use ember::{Context, Handler, Reactor};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
//!         cx.send_data(data);
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     Reactor::run(|r| {
//!         r.start_server("127.0.0.1:8081", || Echo)?;
//!         r.stop_on_signals()
//!     })
//! }
//! ```
//!
//! ## The rules of the loop
//! - Every handler, timer, next-tick closure, deferred callback and signal handler runs on
//!   the reactor thread. The only way in from another thread is a [`ReactorHandle`].
//! - A handler's callbacks never nest: while one runs, the reactor does not call another
//!   callback of the same connection. Closing is deferred to a safe point of the tick, and
//!   [`Handler::unbind`] runs exactly once per connection, with an [`UnbindReason`].
//! - Ids carry a serial: an id of a closed connection never reaches a later connection
//!   that reuses its slot. Operations on a dead id do nothing.
//! - Memory is bounded: each connection has outbound high- and low-water marks. By default
//!   a connection is not read while its own queue is above the high-water mark, and
//!   [`Handler::outbound_drained`] tells a producer when to resume.
//! - Fairness: at most [`READS_PER_EVENT`] reads of [`READ_CHUNK`] bytes per connection and
//!   [`ACCEPTS_PER_EVENT`] accepts per server before the others get a turn.
//! - Host names are never resolved on the reactor thread ([`Reactor::connect_host`]
//!   resolves on the defer pool).
//!
//! `docs/architecture.md` walks through one tick in order.

#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]

mod addr;
pub mod admin;
mod buffer;
mod defer;
pub mod em;
#[doc = include_str!("../docs/em-users.md")]
pub mod em_guide {}
mod handler;
mod id;
mod limits;
pub mod protocols;
pub mod proxy;
#[doc = include_str!("../docs/proxy.md")]
pub mod proxy_guide {}
mod reactor;
mod remote;
mod sys;
mod timers;
pub mod timestamp;
pub mod tls;

pub use addr::IntoSocketAddr;
pub use defer::{DEFAULT_DEFER_THREADS, DeferPanic};
pub use handler::{Context, Handler, PeerClosed, UnbindReason};
pub use id::{ConnId, ServerId, TimerId};
pub use limits::raise_descriptor_limit;
pub use reactor::{
    ACCEPTS_PER_EVENT, CallbackPanic, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HIGH_WATER,
    DEFAULT_LOW_WATER, DEFAULT_RESOLVE_INTERVAL, FileStreamFailed, FileStreamResult, KERNEL_BUDGET,
    LocalHandle, READ_CHUNK, READS_PER_EVENT, Reactor, RelayMode, TimerAction, Unreachable,
};
pub use reactor::{DEFAULT_CONNECTION_ATTEMPT_DELAY, MIN_CONNECTION_ATTEMPT_DELAY};
pub use remote::ReactorHandle;
