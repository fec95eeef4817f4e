//! The em-proxy DSL on the reactor: a transparent, cut-through proxy whose per-client
//! setup names backends and installs hooks.
//!
//! ```no_run
//! use ember::Reactor;
//! use ember::proxy::{self, Backend, Finish};
//!
//! // Fork production traffic to a test environment; answer from production only.
//! Reactor::run(|r| {
//!     proxy::start(r, "0.0.0.0:8000", |conn| {
//!         conn.server("prod", "127.0.0.1:8100");
//!         conn.server("test", Backend::from("127.0.0.1:8200").shadow());
//!         conn.on_finish(|_, name, _reason| {
//!             if name == "prod" { Finish::Close } else { Finish::Keep }
//!         });
//!     })?;
//!     r.stop_on_signals()
//! })
//! .unwrap();
//! ```
//!
//! ## Vocabulary (em-proxy → ember)
//! - `Proxy.start(...) { |conn| ... }` → [`start`] / [`start_with_state`] / [`Options`];
//!   the closure gets a [`Setup`] per accepted client.
//! - `conn.server(name, opts)` → [`Session::server`] with a [`Backend`] (or a string).
//! - `on_data`, `on_response`, `on_connect`, `on_finish` → the [`Setup`] methods; each
//!   hook gets a [`Session`]. Return values are [`Relay`] and [`Finish`].
//! - `relay_to_servers`, `send_data`, `peer`, `sock`, `unbind` → [`Session`] methods
//!   (`close` for `unbind`).
//!
//! ## The rules every proxy keeps, whatever its hooks do
//! - No `on_data` means pass-through to every backend.
//! - The client's FIN reaches the backends as FIN (after what was relayed to them) and
//!   their answers still flow back (half-close).
//! - Bytes for a backend still connecting are queued and sent on connect; a backend that
//!   can't be reached reports through `on_finish` with the [`UnbindReason`](crate::UnbindReason).
//! - Backpressure both ways: the client is not read while a primary backend's queue is
//!   above its high-water mark, and primary backends are not read while the client's is.
//! - A shadow backend ([`Backend::shadow`]) never slows or breaks the client or the
//!   primaries: its queue is bounded ([`Options::shadow_buffer`]), it is cut off (counted
//!   in [`Stats`], logged when verbose) when it falls behind or dies.
//! - When the client is gone its backends get FIN after their pending bytes, never a
//!   reset, and are closed when they finish or after [`Options::drain_timeout`].
//!
//! `docs/proxy.md` is the guide, with the full mapping table.

// Who owns what.
// - server:  starting a proxy (`Options`, `start`, `ProxyServer`).
// - config:  what one server's clients and backends share (`Config`), read-only.
// - session: what a hook and the setup can do (`Session`, `Setup`); the installed `Hooks`.
// - hooks:   what a hook returns (`Relay`, `Finish`).
// - client:  the client connection: runs the setup, calls the hooks.
// - core:    one client's rules whatever the hooks do, and its count of waiting jobs.
// - backend: one backend connection: opens it, passes its events to the client.
// - target, balance, stats: where a backend is, picking one, the counters.
// - memory_budget: the bytes one worker's waiting HTTP comparisons may hold.
mod backend;
mod balance;
mod client;
pub mod client_hello;
pub mod compare;
mod config;
mod core;
mod dispatch;
mod health;
mod hooks;
pub mod http1;
mod memory_budget;
pub mod mirror;
mod pool;
mod probe;
pub mod proxy_protocol;
mod record;
mod sampler;
mod server;
mod session;
pub mod shadowing;
mod stats;
mod target;
mod throttle;

pub use balance::{Balancer, Lease, Strategy};
pub use config::{LOG_TARGET, WARNINGS_PER_SECOND};
pub use dispatch::Dispatch;
pub use health::{Change, Ejection};
pub use hooks::{Finish, Relay};
pub use pool::{BackendStatus, DEFAULT_QUEUE_LENGTH, DEFAULT_QUEUE_TIMEOUT, Pool, Refused};
pub use probe::Check;
pub use record::{BackendRecord, SessionRecord};
pub use sampler::Sampler;
pub use server::{
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_FIN_TIMEOUT, DEFAULT_RELAY_BUFSIZE, DEFAULT_SHADOW_BUFFER,
    DEFAULT_SHADOW_CONNECT_TIMEOUT, DEFAULT_SHADOW_DRAIN_TIMEOUT, Options, ProxyServer,
    SHADOW_CONNECT_ALLOWANCE, start, start_with_state,
};
pub use session::{Session, SessionHandle, SessionTimer, Setup};
pub use stats::Stats;
pub use target::{Backend, Target, TargetError, parse_port};
pub use throttle::Throttle;
