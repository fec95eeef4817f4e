//! Counters one proxy server keeps about its clients and backends, readable from any
//! thread (a test or a metrics thread), and the verbose log line.
//!
//! Only the reactor thread writes them; atomics with relaxed ordering make them cheap to
//! bump and safe to read elsewhere. They never decide anything.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
struct Counters {
    clients_accepted: AtomicU64,
    clients_active: AtomicU64,
    backends_opened: AtomicU64,
    backends_failed: AtomicU64,
    shadow_cutoffs: AtomicU64,
    shadows_skipped: AtomicU64,
    backends_retried: AtomicU64,
    shadows_active: AtomicU64,
    bytes_from_clients: AtomicU64,
    bytes_to_clients: AtomicU64,
    peak_shadow_queue: AtomicU64,
}

/// A proxy server's counters. Clones share the same counters.
#[derive(Clone, Default)]
pub struct Stats(Arc<Counters>);

impl Stats {
    /// Clients accepted since the server started.
    pub fn clients_accepted(&self) -> u64 {
        self.0.clients_accepted.load(Ordering::Relaxed)
    }

    /// Clients connected now.
    pub fn clients_active(&self) -> u64 {
        self.0.clients_active.load(Ordering::Relaxed)
    }

    /// Backend connections opened (or attempted).
    pub fn backends_opened(&self) -> u64 {
        self.0.backends_opened.load(Ordering::Relaxed)
    }

    /// Backends that ended with an error: refused, reset, timed out, unresolvable.
    pub fn backends_failed(&self) -> u64 {
        self.0.backends_failed.load(Ordering::Relaxed)
    }

    /// Shadow backends cut off because they fell more than the shadow buffer behind.
    pub fn shadow_cutoffs(&self) -> u64 {
        self.0.shadow_cutoffs.load(Ordering::Relaxed)
    }

    /// Shadow backends not opened because the proxy's shadow limits were reached
    /// ([`Options::shadow_max_connections`](super::Options::shadow_max_connections),
    /// [`Options::shadow_max_memory`](super::Options::shadow_max_memory)).
    pub fn shadows_skipped(&self) -> u64 {
        self.0.shadows_skipped.load(Ordering::Relaxed)
    }

    /// Backend connects retried after a failure ([`Backend::retries`](super::Backend::retries)).
    pub fn backends_retried(&self) -> u64 {
        self.0.backends_retried.load(Ordering::Relaxed)
    }

    /// Shadow backend connections open now (detached ones still draining included).
    pub fn shadows_active(&self) -> u64 {
        self.0.shadows_active.load(Ordering::Relaxed)
    }

    /// Bytes read from clients, whichever path carried them. Bytes the descriptor relay
    /// carries (`relay_client`) are counted when the client's connection ends.
    pub fn bytes_from_clients(&self) -> u64 {
        self.0.bytes_from_clients.load(Ordering::Relaxed)
    }

    /// Bytes queued for clients, whichever path carried them. Bytes the descriptor relay
    /// carries (`relay_server`) are counted when that backend's connection ends.
    pub fn bytes_to_clients(&self) -> u64 {
        self.0.bytes_to_clients.load(Ordering::Relaxed)
    }

    /// The most bytes ever queued for one shadow backend: stays within the shadow
    /// buffer plus one read.
    pub fn peak_shadow_queue(&self) -> u64 {
        self.0.peak_shadow_queue.load(Ordering::Relaxed)
    }

    pub(crate) fn client_accepted(&self) {
        self.0.clients_accepted.fetch_add(1, Ordering::Relaxed);
        self.0.clients_active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn client_gone(&self) {
        self.0.clients_active.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn backend_opened(&self) {
        self.0.backends_opened.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn backend_failed(&self) {
        self.0.backends_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn shadow_cut_off(&self) {
        self.0.shadow_cutoffs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn backend_retried(&self) {
        self.0.backends_retried.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn shadow_skipped(&self) {
        self.0.shadows_skipped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn shadow_opened(&self) {
        self.0.shadows_active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn shadow_closed(&self) {
        self.0.shadows_active.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn read_from_client(&self, n: usize) {
        self.0
            .bytes_from_clients
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn relayed_from_client(&self, n: u64) {
        self.0.bytes_from_clients.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn relayed_to_client(&self, n: u64) {
        self.0.bytes_to_clients.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn queued_for_client(&self, n: usize) {
        self.0
            .bytes_to_clients
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn shadow_queue(&self, queued: usize) {
        self.0
            .peak_shadow_queue
            .fetch_max(queued as u64, Ordering::Relaxed);
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats")
            .field("clients_accepted", &self.clients_accepted())
            .field("clients_active", &self.clients_active())
            .field("backends_opened", &self.backends_opened())
            .field("backends_failed", &self.backends_failed())
            .field("shadow_cutoffs", &self.shadow_cutoffs())
            .field("shadows_skipped", &self.shadows_skipped())
            .field("backends_retried", &self.backends_retried())
            .field("shadows_active", &self.shadows_active())
            .field("bytes_from_clients", &self.bytes_from_clients())
            .field("bytes_to_clients", &self.bytes_to_clients())
            .field("peak_shadow_queue", &self.peak_shadow_queue())
            .finish()
    }
}
