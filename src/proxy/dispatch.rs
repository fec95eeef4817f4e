//! Where a backend's connect goes when it fails, and who hears how connects end: the
//! [`Dispatch`] trait a [`Backend`](super::Backend) may carry (with
//! [`Backend::retries`](super::Backend::retries)), HAProxy's `retries` and `option
//! redispatch` as a library piece. The proxy core asks; an implementation (the binary's
//! pool of balanced, health-tracked backends, say) answers. Nothing here opens sockets.

use std::fmt;

use crate::UnbindReason;

use super::target::Target;

/// Told how each connect to a backend ends, and asked where to retry one that failed.
pub trait Dispatch {
    /// A connect to `target` succeeded.
    fn connected(&self, target: &Target) {
        let _ = target;
    }

    /// A connect to `target` failed with `reason` (refused, timed out, reset or
    /// unresolvable before it ever connected). Returns where the next try should go
    /// (the same target, another one: a redispatch), or `None` to give up now.
    fn failed(&self, target: &Target, reason: &UnbindReason) -> Option<Target>;

    /// Whether `target` takes new connections now. A shadow whose target does not is
    /// skipped (counted in [`Stats::shadows_skipped`](super::Stats::shadows_skipped)); a
    /// primary reports [`UnbindReason::Refused`] to `on_finish` without a connect.
    fn available(&self, target: &Target) -> bool {
        let _ = target;
        true
    }
}

impl fmt::Debug for dyn Dispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dispatch")
    }
}

/// Whether a backend that never connected ended for a reason worth another try: not a
/// close of our own (the client left, the reactor stopped, a hook panicked).
pub(crate) fn is_connect_failure(reason: &UnbindReason) -> bool {
    !matches!(
        reason,
        UnbindReason::ClosedByUs
            | UnbindReason::ReactorStopped
            | UnbindReason::Detached
            | UnbindReason::Panicked(_)
    )
}
