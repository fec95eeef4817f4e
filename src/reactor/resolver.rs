//! Host names for `connect_host`: resolved on the defer pool, never on the reactor
//! thread, and remembered for the resolve interval (default 30 s) so that a busy
//! proxy does not send every connect through a thread and the resolver. An answer older
//! than the interval is still used at once while a fresh lookup runs in the background
//! (stale while revalidating); a name that stops resolving keeps its last answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::Reactor;

/// The default resolve interval.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

struct Answer {
    addrs: Vec<SocketAddr>,
    at: Instant,
    refreshing: bool,
}

/// Remembered answers, by host and port.
pub(crate) struct Resolver {
    interval: Duration,
    answers: HashMap<(String, u16), Answer>,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            interval: DEFAULT_RESOLVE_INTERVAL,
            answers: HashMap::new(),
        }
    }
}

/// What `connect_host` should do for a name.
pub(crate) enum Lookup {
    /// Use these addresses now.
    Known(Vec<SocketAddr>),
    /// Use these now, and refresh them in the background.
    Stale(Vec<SocketAddr>),
    /// Nothing known: resolve, then connect.
    Unknown,
}

impl Resolver {
    pub(crate) fn lookup(&mut self, host: &str, port: u16, now: Instant) -> Lookup {
        if self.interval.is_zero() {
            return Lookup::Unknown;
        }
        let Some(answer) = self.answers.get_mut(&(host.to_owned(), port)) else {
            return Lookup::Unknown;
        };
        if now.saturating_duration_since(answer.at) < self.interval || answer.refreshing {
            return Lookup::Known(answer.addrs.clone());
        }
        answer.refreshing = true;
        Lookup::Stale(answer.addrs.clone())
    }

    /// A lookup finished: remember a non-empty answer; a failed refresh keeps the old one.
    pub(crate) fn learned(&mut self, host: String, port: u16, addrs: &[SocketAddr], now: Instant) {
        if self.interval.is_zero() {
            return;
        }
        let key = (host, port);
        if addrs.is_empty() {
            if let Some(answer) = self.answers.get_mut(&key) {
                answer.refreshing = false;
            }
            return;
        }
        self.answers.insert(
            key,
            Answer {
                addrs: addrs.to_vec(),
                at: now,
                refreshing: false,
            },
        );
    }
}

impl Reactor {
    /// How long `connect_host` trusts a name's addresses before looking it up again in
    /// the background (default 30 s; zero looks up every name on every connect).
    pub fn set_resolve_interval(&mut self, interval: Duration) {
        self.resolver.interval = interval;
        if interval.is_zero() {
            self.resolver.answers.clear();
        }
    }

    /// Answers `host:port` with `addrs` as if a lookup had just returned them (remembered
    /// for the resolve interval like any answer; nothing with an interval of zero). For
    /// tests that need a name with several addresses; not part of the API.
    #[doc(hidden)]
    pub fn seed_resolver(&mut self, host: &str, port: u16, addrs: &[SocketAddr]) {
        let now = self.now;
        self.resolver.learned(host.to_owned(), port, addrs, now);
    }

    /// Resolves `host:port` on the defer pool, remembers the answer, and hands it to
    /// `then` (an empty list if it did not resolve).
    pub(crate) fn resolve_in_background(
        &mut self,
        host: &str,
        port: u16,
        then: impl FnOnce(&mut Reactor, Vec<SocketAddr>) + 'static,
    ) {
        let name = host.to_owned();
        self.defer(
            // (host, port) also takes IPv6 literals such as "::1", unbracketed.
            move || {
                std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), port))
                    .map(|a| a.collect::<Vec<_>>())
            },
            {
                let host = host.to_owned();
                move |r, resolved| {
                    let addrs = match resolved {
                        Ok(Ok(addrs)) => addrs,
                        _ => Vec::new(),
                    };
                    let now = Instant::now();
                    r.resolver.learned(host, port, &addrs, now);
                    then(r, addrs);
                }
            },
        );
    }
}
