//! Counters one admin server keeps about its connections and requests, readable from any
//! thread, and their Prometheus families.
//!
//! Only the reactor thread writes them; relaxed atomics make them cheap to bump and safe
//! to read elsewhere. They never decide anything (the connection cap is counted in
//! `server.rs`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::exposition::Exposition;

#[derive(Default)]
struct Counters {
    connections_accepted: AtomicU64,
    connections_active: AtomicU64,
    connections_over_limit: AtomicU64,
    requests_answered: AtomicU64,
    requests_refused: AtomicU64,
}

/// An admin server's counters. Clones share the same counters.
#[derive(Clone, Default)]
pub struct AdminStats(Arc<Counters>);

impl AdminStats {
    /// Connections accepted and served (not counting those over the limit).
    pub fn connections_accepted(&self) -> u64 {
        self.0.connections_accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn connections_active(&self) -> u64 {
        self.0.connections_active.load(Ordering::Relaxed)
    }

    /// Connections closed as soon as they were accepted because
    /// [`Limits::max_connections`](super::Limits::max_connections) were open.
    pub fn connections_over_limit(&self) -> u64 {
        self.0.connections_over_limit.load(Ordering::Relaxed)
    }

    /// Requests answered by a route, or with 404 or 405.
    pub fn requests_answered(&self) -> u64 {
        self.0.requests_answered.load(Ordering::Relaxed)
    }

    /// Requests refused with 400, 408, 411, 413, 414 or 431 (each closes its connection).
    pub fn requests_refused(&self) -> u64 {
        self.0.requests_refused.load(Ordering::Relaxed)
    }

    /// Writes these counters as `ember_admin_*` families.
    pub fn expose(&self, page: &mut Exposition) {
        page.counter(
            "ember_admin_connections_accepted_total",
            "Admin connections accepted and served.",
            self.connections_accepted(),
        )
        .gauge(
            "ember_admin_connections_active",
            "Admin connections open now.",
            self.connections_active(),
        )
        .counter(
            "ember_admin_connections_over_limit_total",
            "Admin connections closed at once because the connection limit was reached.",
            self.connections_over_limit(),
        )
        .counter(
            "ember_admin_requests_answered_total",
            "Admin requests answered by a route, or with 404 or 405.",
            self.requests_answered(),
        )
        .counter(
            "ember_admin_requests_refused_total",
            "Admin requests refused as malformed, too large or too slow.",
            self.requests_refused(),
        );
    }

    pub(crate) fn connection_opened(&self) {
        self.0.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.0.connections_active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_over_limit(&self) {
        self.0
            .connections_over_limit
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request_answered(&self) {
        self.0.requests_answered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request_refused(&self) {
        self.0.requests_refused.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for AdminStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminStats")
            .field("connections_accepted", &self.connections_accepted())
            .field("connections_active", &self.connections_active())
            .field("connections_over_limit", &self.connections_over_limit())
            .field("requests_answered", &self.requests_answered())
            .field("requests_refused", &self.requests_refused())
            .finish()
    }
}
