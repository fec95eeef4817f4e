//! Identifiers handed to users: connections, servers and timers.
//!
//! Every id is a slab slot plus a serial number that is never reused within one reactor.
//! A slot is recycled as soon as its occupant goes away, but the serial is not, so an id
//! kept past the end of its connection can never reach the connection that later takes
//! the same slot: every lookup compares both halves.

use std::fmt;

macro_rules! slot_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name {
            pub(crate) slot: usize,
            pub(crate) serial: u64,
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "#{}.{}"), self.slot, self.serial)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}

slot_id!(
    /// Names one connection (TCP, Unix or any other stream) for as long as it lives.
    ConnId,
    "conn"
);
slot_id!(
    /// Names one listening server started with `start_server` or `start_unix_server`.
    ServerId,
    "server"
);
slot_id!(
    /// Names one timer; cancelling it frees its slot at once.
    TimerId,
    "timer"
);
