//! EventMachine's standard library on the reactor: [`Deferrable`], [`Channel`], [`Queue`],
//! [`EachLimited`] (`EM::Iterator`), [`system`] (`EM.system`) and
//! [`set_descriptor_table_size`].
//!
//! Each is a cheap handle (`Clone` shares it) on state in an `Rc`, for the reactor
//! thread only: none is `Send`, and none needs a lock. What must run later runs from the
//! reactor's next-tick queue, reached through a [`LocalHandle`](crate::LocalHandle), so
//! pushing, popping and resolving need no `&mut Reactor` and work from anywhere on the
//! reactor thread (a handler, a timer, a `Drop`).
//!
//! The rules every type here keeps:
//! - **No `RefCell` panic is reachable from user code.** The shared state is borrowed
//!   only for bookkeeping, never while a user callback runs and never while a user value
//!   (a callback, an item) is dropped, so a callback may call anything on the same value.
//! - **Each callback runs at most once per event, and never after it was removed**
//!   (a resolved deferrable's callbacks, an unsubscribed subscriber).
//! - **Panics stop where they are raised.** Code run from the next-tick queue (a
//!   channel's subscribers, a queue's pops, an iteration's steps and completion) runs each
//!   callback inside the reactor's containment: a panic is reported to the error handler
//!   ([`Reactor::set_error_handler`](crate::Reactor::set_error_handler)) and the others
//!   still run. A deferrable's callbacks run inside `succeed`/`fail`: all of them run, then
//!   the first panic continues to whoever resolved it, and the reactor contains it there.
//!
//! | EventMachine | ember |
//! |---|---|
//! | `DefaultDeferrable.new`, `callback`, `errback`, `succeed`, `fail`, `timeout` | [`Deferrable`] (`new`, `callback`, `errback`, `succeed`, `fail`, `timeout`) |
//! | `Channel.new`, `subscribe`, `unsubscribe`, `push`, `num_subscribers` | [`Channel`] (`new`, `subscribe`, `unsubscribe`, `push`, `subscriber_count`) |
//! | `Queue.new`, `push`, `pop`, `size`, `empty?`, `num_waiting` | [`Queue`] (`new`, `push`, `pop`, `len`, `is_empty`, `waiting`) |
//! | `Iterator.new(list, n).each(foreach, after)`, `iter.next` | [`EachLimited::start`], [`Next::next`] |
//! | `EM.system(cmd) { \|output, status\| }` | [`system`], [`system_with`] (input, output limit) |
//! | `EM.set_descriptor_table_size(n)` | [`set_descriptor_table_size`] (and [`descriptor_table_size`] to read it) |

mod channel;
mod deferrable;
mod descriptors;
mod iterator;
mod queue;
mod system;

pub use channel::{Channel, SubscriptionId};
pub use deferrable::{Deferrable, DeferredStatus, TimedOut};
pub use descriptors::{descriptor_table_size, set_descriptor_table_size};
pub use iterator::{EachLimited, Next};
pub use queue::Queue;
pub use system::{
    DEFAULT_MAX_OUTPUT, SystemFailed, SystemOptions, SystemResult, system, system_with,
};

/// Runs a reactor until a callback stops it (or 10 s pass, which fails the test).
#[cfg(test)]
fn run_reactor(setup: impl FnOnce(&mut crate::Reactor)) {
    let mut r = crate::Reactor::new().expect("create a reactor");
    let watchdog = std::rc::Rc::new(std::cell::Cell::new(false));
    let fired = std::rc::Rc::clone(&watchdog);
    r.add_timer(std::time::Duration::from_secs(10), move |r| {
        fired.set(true);
        r.stop();
    });
    setup(&mut r);
    r.run_loop().expect("run the loop");
    assert!(!watchdog.get(), "nothing stopped the reactor within 10 s");
}
