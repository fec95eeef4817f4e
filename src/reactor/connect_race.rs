//! Connecting to a name with several addresses: the attempts race, happy-eyeballs style
//! (RFC 8305, scaled to one reactor).
//!
//! `connect_host` (in the order of [`interleave_families`]) and `connect_any` (in the
//! caller's order) hand their addresses to a race:
//!
//! 1. the first address's attempt starts at once;
//! 2. while none has connected, the next address's attempt starts when the latest one
//!    has neither connected nor failed for the connection attempt delay (250 ms by
//!    default), and at once when an attempt fails; earlier attempts go on;
//! 3. the first attempt to connect wins: its socket becomes the connection's and every
//!    other attempt is closed;
//! 4. when every attempt has failed, the connection closes with the last failure's reason.
//!
//! The pending-connect timeout bounds the whole race: it closes the connection, and
//! `reap` ends its race.
//!
//! This module owns the races and their attempts' sockets. An attempt is registered under
//! a token of its own, in a range no slab slot reaches (`is_attempt_token`), so no event
//! on a racing socket is ever taken for a connection's own; events on an attempt are only
//! hints: what it does is what its socket says (`SO_ERROR`, then whether it has a peer).
//! It never calls a handler and never touches a connection's queue or lifecycle: the
//! connection is `Connecting`, with no socket of its own, from the start of its race to
//! the win, and the winner is then handled like any connect that completed. A single
//! address is not raced: the connection's own socket connects to it, as `connect`'s does.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::Token;
use slab::Slab;

use super::connection::register_stream;
use super::lifecycle::Life;
use super::{Reactor, Readiness, TimerTask};
use crate::handler::UnbindReason;
use crate::id::{ConnId, TimerId};
use crate::sys::socket::{self, Stream};
use crate::timers::deadline;

/// The default connection attempt delay: how long an attempt has before the next address
/// is tried beside it (RFC 8305's recommended value).
pub const DEFAULT_CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The shortest connection attempt delay (RFC 8305: it "MUST NOT be less than 10 ms", so
/// a name with many addresses cannot become a burst of connects).
pub const MIN_CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(10);

/// The first attempt token; attempt `key` is registered under `FIRST_ATTEMPT_TOKEN + key`.
/// Slab slots (connections' tokens) never come near it, and the reactor's reserved tokens
/// sit above the whole range.
const FIRST_ATTEMPT_TOKEN: usize = 1 << (usize::BITS - 1);
/// How many attempt tokens there are.
const ATTEMPT_TOKENS: usize = 1 << (usize::BITS - 2);
const _: () = assert!(FIRST_ATTEMPT_TOKEN + ATTEMPT_TOKENS <= super::INOTIFY_TOKEN.0);

/// The attempt registered under `token`, if the token is an attempt's.
pub(crate) fn attempt_of(token: Token) -> Option<usize> {
    token
        .0
        .checked_sub(FIRST_ATTEMPT_TOKEN)
        .filter(|&key| key < ATTEMPT_TOKENS)
}

fn attempt_token(key: usize) -> Token {
    debug_assert!(key < ATTEMPT_TOKENS);
    Token(FIRST_ATTEMPT_TOKEN + key)
}

/// Orders a resolver's answer for racing (RFC 8305 section 4): the family of the first
/// address first, then alternating families, each family in the resolver's order. A name
/// whose preferred family is blackholed reaches the other family on the second attempt,
/// not after every address of the first.
pub(crate) fn interleave_families(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first_is_v6) = addrs.first().map(SocketAddr::is_ipv6) else {
        return addrs;
    };
    let (mut first, mut other): (VecDeque<_>, VecDeque<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_is_v6);
    let mut ordered = Vec::with_capacity(first.len() + other.len());
    while !first.is_empty() || !other.is_empty() {
        ordered.extend(first.pop_front());
        ordered.extend(other.pop_front());
    }
    ordered
}

/// Every race in progress and its attempts (the reactor's `races` room).
pub(crate) struct Races {
    /// How long an attempt has before the next one starts beside it.
    attempt_delay: Duration,
    /// The sockets of every attempt in flight, any race's; the key gives the token.
    attempts: Slab<Attempt>,
    /// The state of each connection's race, while it is `Connecting` (or queued for reap).
    races: HashMap<ConnId, Race>,
}

impl Default for Races {
    fn default() -> Self {
        Races {
            attempt_delay: DEFAULT_CONNECTION_ATTEMPT_DELAY,
            attempts: Slab::new(),
            races: HashMap::new(),
        }
    }
}

/// One connect in flight, on behalf of `conn`.
struct Attempt {
    conn: ConnId,
    stream: Stream,
}

/// One connection's race.
struct Race {
    /// Addresses not tried yet, in the order they will be.
    untried: VecDeque<SocketAddr>,
    /// The local address each attempt binds to first (`bind_connect_host`).
    local: Option<SocketAddr>,
    /// Attempts in flight (keys into `Races::attempts`), oldest first.
    in_flight: Vec<usize>,
    /// Starts the next attempt if the latest has not finished by then.
    delay_timer: Option<TimerId>,
    /// Why the latest attempt failed: what `unbind` says if every one does.
    last_failure: UnbindReason,
}

/// What a race does next, once an attempt started or failed.
enum Next {
    /// Start an attempt on this address.
    Try(SocketAddr),
    /// Nothing to start: wait for the attempts in flight (or the delay timer).
    Wait,
    /// No address is left and no attempt is in flight: the connection fails.
    Lost(UnbindReason),
}

impl Race {
    fn next(&mut self) -> Next {
        match self.untried.pop_front() {
            Some(addr) => Next::Try(addr),
            None if self.in_flight.is_empty() => Next::Lost(self.last_failure.clone()),
            None => Next::Wait,
        }
    }
}

impl Reactor {
    /// How long a connect to one of a name's addresses may go unanswered before the next
    /// address is tried beside it (RFC 8305's Connection Attempt Delay; default
    /// [`DEFAULT_CONNECTION_ATTEMPT_DELAY`], 250 ms; at least
    /// [`MIN_CONNECTION_ATTEMPT_DELAY`], 10 ms). See [`connect_any`](Self::connect_any)
    /// for the race. Applies to attempts started from now on.
    pub fn set_connection_attempt_delay(&mut self, delay: Duration) {
        self.races.attempt_delay = delay.max(MIN_CONNECTION_ATTEMPT_DELAY);
    }

    /// The connection attempt delay in force (see
    /// [`set_connection_attempt_delay`](Self::set_connection_attempt_delay)).
    pub fn connection_attempt_delay(&self) -> Duration {
        self.races.attempt_delay
    }

    /// Races connection `id` (now `Connecting`, with no socket) to `addrs`, tried first
    /// to last, each attempt bound to `local` first if given.
    pub(crate) fn race(&mut self, id: ConnId, addrs: Vec<SocketAddr>, local: Option<SocketAddr>) {
        if let [addr] = addrs[..] {
            self.connect_directly(id, addr, local);
            return;
        }
        let race = Race {
            untried: addrs.into(),
            local,
            in_flight: Vec::new(),
            delay_timer: None,
            last_failure: UnbindReason::Refused,
        };
        self.races.races.insert(id, race);
        self.start_next_attempt(id);
    }

    /// One address leaves nothing to race: the connection's own socket connects, as
    /// `connect`'s does, with no attempt token and no registering again when it is up
    /// (two `epoll_ctl` calls saved on each connect to a name with one address, the
    /// usual backend).
    fn connect_directly(&mut self, id: ConnId, addr: SocketAddr, local: Option<SocketAddr>) {
        let attempt = socket::tcp_connect(addr, local).and_then(|mut stream| {
            let nodelay = self.defaults.nodelay;
            register_stream(self.poll.registry(), &mut stream, Token(id.slot), nodelay)?;
            Ok(stream)
        });
        match attempt {
            Ok(stream) => {
                if let Some(conn) = self.conn_mut(id) {
                    conn.stream = Some(stream);
                }
            }
            Err(e) => self.close_now(id, UnbindReason::from_io_error(&e)),
        }
    }

    /// Starts an attempt on the race's next address. An address whose connect fails at
    /// once is a failed attempt: the one after it is tried at once. With none left and
    /// none in flight, the race is lost.
    fn start_next_attempt(&mut self, id: ConnId) {
        loop {
            let Some(race) = self.races.races.get_mut(&id) else {
                return;
            };
            let local = race.local;
            match race.next() {
                Next::Wait => return,
                Next::Lost(reason) => {
                    self.end_race(id);
                    self.close_now(id, reason);
                    return;
                }
                Next::Try(addr) => match self.open_attempt(id, addr, local) {
                    Ok(()) => {
                        self.arm_attempt_delay(id);
                        return;
                    }
                    Err(reason) => {
                        if let Some(race) = self.races.races.get_mut(&id) {
                            race.last_failure = reason;
                        }
                    }
                },
            }
        }
    }

    /// Opens, registers and records one attempt; `Err` if its connect failed at once.
    fn open_attempt(
        &mut self,
        id: ConnId,
        addr: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Result<(), UnbindReason> {
        let Reactor {
            races,
            poll,
            defaults,
            ..
        } = self;
        let failed = |e: std::io::Error| UnbindReason::from_io_error(&e);
        let mut stream = socket::tcp_connect(addr, local).map_err(failed)?;
        let entry = races.attempts.vacant_entry();
        let key = entry.key();
        register_stream(
            poll.registry(),
            &mut stream,
            attempt_token(key),
            defaults.nodelay,
        )
        .map_err(failed)?;
        entry.insert(Attempt { conn: id, stream });
        if let Some(race) = races.races.get_mut(&id) {
            race.in_flight.push(key);
        }
        Ok(())
    }

    /// The latest attempt just started: the delay counts from now, if there is an
    /// address left to start when it runs out.
    fn arm_attempt_delay(&mut self, id: ConnId) {
        let Some(race) = self.races.races.get_mut(&id) else {
            return;
        };
        if let Some(timer) = race.delay_timer.take() {
            self.timers.cancel(timer);
        }
        if !race.untried.is_empty() {
            let at = deadline(Instant::now(), self.races.attempt_delay);
            race.delay_timer = Some(self.timers.insert(at, None, TimerTask::AttemptDelay(id)));
        }
    }

    /// The latest attempt of `id`'s race has neither connected nor failed in time: start
    /// the next beside it.
    pub(crate) fn attempt_delay_passed(&mut self, id: ConnId) {
        let Some(race) = self.races.races.get_mut(&id) else {
            return;
        };
        race.delay_timer = None;
        if self.is_racing(id) {
            self.start_next_attempt(id);
        }
    }

    /// An event on attempt `key`'s socket.
    pub(crate) fn on_attempt_event(&mut self, key: usize) {
        let Some(attempt) = self.races.attempts.get(key) else {
            return; // closed earlier in this tick
        };
        let id = attempt.conn;
        if !self.is_racing(id) {
            return; // closed while connecting: `reap` ends the race
        }
        match attempt.stream.connect_outcome() {
            Ok(false) => {}
            Ok(true) => self.race_won(id, key),
            Err(e) => {
                self.close_attempt(key);
                if let Some(race) = self.races.races.get_mut(&id) {
                    race.last_failure = UnbindReason::from_io_error(&e);
                }
                self.start_next_attempt(id);
            }
        }
    }

    /// Whether `id` is still waiting for its race (not closed meanwhile).
    fn is_racing(&self, id: ConnId) -> bool {
        self.conn(id)
            .is_some_and(|c| matches!(c.life, Life::Connecting { .. }))
    }

    /// Attempt `key` connected first: its socket becomes `id`'s, registered under the
    /// connection's own token, and the other attempts are closed.
    fn race_won(&mut self, id: ConnId, key: usize) {
        let Some(Attempt { mut stream, .. }) = self.take_attempt(key) else {
            return;
        };
        self.end_race(id);
        let registry = self.poll.registry();
        stream.deregister(registry);
        if let Err(e) = stream.register(registry, Token(id.slot)) {
            self.close_now(id, UnbindReason::from_io_error(&e));
            return;
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.stream = Some(stream);
        // Now it is the connection's socket, handled as an event on it: the connect
        // completes (`connection_completed`, the queue flushed), and whatever the peer
        // already sent is read, since that edge went to the attempt's token.
        let everything = Readiness {
            readable: true,
            writable: true,
            hangup: false,
            error: false,
            priority: false,
        };
        self.on_connection_event(id, everything);
    }

    /// Ends `id`'s race, if it has one: closes every attempt in flight and cancels the
    /// delay timer. Called for the winner, for a lost race, and by `reap` for a
    /// connection closed while racing.
    pub(crate) fn end_race(&mut self, id: ConnId) {
        if self.races.races.is_empty() {
            return; // every close asks: no hashing when nothing races
        }
        let Some(race) = self.races.races.remove(&id) else {
            return;
        };
        if let Some(timer) = race.delay_timer {
            self.timers.cancel(timer);
        }
        for key in race.in_flight {
            self.close_attempt(key);
        }
    }

    /// Closes attempt `key`: deregistered, and its socket dropped.
    fn close_attempt(&mut self, key: usize) {
        if let Some(mut attempt) = self.take_attempt(key) {
            attempt.stream.deregister(self.poll.registry());
        }
    }

    /// Takes attempt `key` out of the slab and out of its race's attempts in flight.
    fn take_attempt(&mut self, key: usize) -> Option<Attempt> {
        let attempt = self.races.attempts.try_remove(key)?;
        if let Some(race) = self.races.races.get_mut(&attempt.conn) {
            race.in_flight.retain(|&k| k != key);
        }
        Some(attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn families_alternate_starting_with_the_first_address_family() {
        let answer = addrs(&["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1", "10.0.0.2:1"]);
        assert_eq!(
            interleave_families(answer),
            addrs(&["[::1]:1", "10.0.0.1:1", "[::2]:1", "10.0.0.2:1", "[::3]:1"])
        );
        let answer = addrs(&["10.0.0.1:1", "10.0.0.2:1", "[::1]:1"]);
        assert_eq!(
            interleave_families(answer),
            addrs(&["10.0.0.1:1", "[::1]:1", "10.0.0.2:1"])
        );
    }

    #[test]
    fn one_family_keeps_the_resolvers_order() {
        let answer = addrs(&["10.0.0.3:1", "10.0.0.1:1", "10.0.0.2:1"]);
        assert_eq!(interleave_families(answer.clone()), answer);
        assert_eq!(interleave_families(Vec::new()), Vec::new());
    }

    #[test]
    fn attempt_tokens_are_neither_slots_nor_reserved_tokens() {
        assert_eq!(attempt_of(attempt_token(0)), Some(0));
        assert_eq!(attempt_of(attempt_token(7)), Some(7));
        assert_eq!(attempt_of(Token(0)), None);
        assert_eq!(attempt_of(Token(123_456)), None);
        for reserved in [super::super::WAKER_TOKEN, super::super::SIGNAL_TOKEN] {
            assert_eq!(attempt_of(reserved), None);
        }
        assert_eq!(attempt_of(super::super::INOTIFY_TOKEN), None);
    }
}
