//! Connecting to several addresses at once, happy-eyeballs style (RFC 8305): `connect_any`
//! and `connect_host` race the addresses, each attempt given the connection attempt delay
//! before the next starts beside it, a failure starting the next at once, the first to
//! connect kept and every other closed, the pending-connect timeout over the whole race.
//!
//! Real sockets on loopback. A blackholed address is a listener whose accept queue is
//! full (the kernel drops the SYNs: the connect hangs); a refused one is a closed port;
//! names with several addresses are seeded into the reactor's resolver. Every reactor
//! runs under the watchdog.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::cell::{Cell, RefCell};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ember::{
    Context, DEFAULT_CONNECTION_ATTEMPT_DELAY, Handler, MIN_CONNECTION_ATTEMPT_DELAY, Reactor,
    UnbindReason,
};

use support::backends::Echo;
use support::child;
use support::clients::{closed_port, wait_until};
use support::pattern::Pattern;
use support::reactor_thread::run_bounded;
use support::sys::Blackhole;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const SECS_10: Duration = Duration::from_secs(10);

/// What a [`Racer`] saw.
#[derive(Default, Debug)]
struct RaceLog {
    completed: usize,
    /// From `connect_*` to `connection_completed`.
    connected_after: Option<Duration>,
    /// The address that won, read in `connection_completed`.
    winner: Option<SocketAddr>,
    received: Vec<u8>,
    unbinds: Vec<UnbindReason>,
    /// From `connect_*` to `unbind`.
    lived: Option<Duration>,
    /// Open descriptors and pending timers in `unbind` (with `measure_at_unbind`).
    at_unbind: Option<(usize, usize)>,
}

/// A client for one race: queues `greeting` in `post_init` (before any address is
/// tried), closes once `expect_back` bytes came back (or, if zero, once the greeting is
/// written), and stops the reactor when it unbinds.
struct Racer {
    log: Rc<RefCell<RaceLog>>,
    started: Instant,
    greeting: Vec<u8>,
    expect_back: usize,
    /// Count the process's descriptors and the reactor's timers in `unbind`, once the
    /// race is over.
    measure_at_unbind: bool,
}

impl Racer {
    fn new(greeting: &[u8], expect_back: usize) -> (Racer, Rc<RefCell<RaceLog>>) {
        let log = Rc::new(RefCell::new(RaceLog::default()));
        let racer = Racer {
            log: Rc::clone(&log),
            started: Instant::now(),
            greeting: greeting.to_vec(),
            expect_back,
            measure_at_unbind: false,
        };
        (racer, log)
    }
}

impl Handler for Racer {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        self.started = Instant::now();
        if !self.greeting.is_empty() {
            assert!(cx.send_data(&self.greeting), "queued while connecting");
        }
    }

    fn connection_completed(&mut self, cx: &mut Context<'_>) {
        let mut log = self.log.borrow_mut();
        log.completed += 1;
        log.connected_after = Some(self.started.elapsed());
        log.winner = cx.peer_addr();
        if self.expect_back == 0 {
            cx.close_after_writing();
        }
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        let mut log = self.log.borrow_mut();
        log.received.extend_from_slice(data);
        if log.received.len() >= self.expect_back {
            cx.close();
        }
    }

    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        let mut log = self.log.borrow_mut();
        log.unbinds.push(reason);
        log.lived = Some(self.started.elapsed());
        if self.measure_at_unbind {
            log.at_unbind = Some((open_descriptors(), cx.reactor().timer_count()));
        }
        cx.stop();
    }
}

/// Echo that counts the connections its server accepted.
struct CountedEcho(Rc<Cell<usize>>);

impl Handler for CountedEcho {
    fn post_init(&mut self, _cx: &mut Context<'_>) {
        self.0.set(self.0.get() + 1);
    }

    fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
        cx.send_data(data);
    }
}

/// Starts a counting echo server on `ip`; returns its address and its accept count.
fn counted_echo(r: &mut Reactor, ip: IpAddr) -> std::io::Result<(SocketAddr, Rc<Cell<usize>>)> {
    let accepted = Rc::new(Cell::new(0));
    let count = Rc::clone(&accepted);
    let server = r.start_server((ip, 0), move || CountedEcho(Rc::clone(&count)))?;
    Ok((r.server_addr(server).unwrap(), accepted))
}

/// A blackholed loopback address, or `None` (the test skips) on a kernel that answers or
/// refuses connects to a full accept queue.
fn blackhole(ip: IpAddr) -> Option<Blackhole> {
    let hole = Blackhole::on(ip);
    if hole.is_none() {
        println!("SKIPPED: this kernel does not leave connects to a full backlog pending");
    }
    hole
}

/// Runs a reactor on this thread; fails the test if the watchdog had to stop it.
fn run(setup: impl FnOnce(&mut Reactor) -> std::io::Result<()>) -> Reactor {
    let (reactor, fired) = run_bounded(Duration::from_secs(20), setup);
    assert!(!fired, "the watchdog had to stop the reactor");
    reactor
}

#[test]
fn connection_attempt_delay_defaults_to_250_ms_and_never_goes_below_10_ms() {
    let mut r = Reactor::new().unwrap();
    assert_eq!(r.connection_attempt_delay(), Duration::from_millis(250));
    assert_eq!(DEFAULT_CONNECTION_ATTEMPT_DELAY, Duration::from_millis(250));
    r.set_connection_attempt_delay(Duration::from_millis(100));
    assert_eq!(r.connection_attempt_delay(), Duration::from_millis(100));
    r.set_connection_attempt_delay(Duration::ZERO);
    assert_eq!(r.connection_attempt_delay(), MIN_CONNECTION_ATTEMPT_DELAY);
    assert_eq!(MIN_CONNECTION_ATTEMPT_DELAY, Duration::from_millis(10));
}

#[test]
fn a_blackholed_first_address_costs_one_attempt_delay_not_the_connect_timeout() {
    let Some(hole) = blackhole(LOOPBACK) else {
        return;
    };
    let (racer, log) = Racer::new(b"over the second address", 23);
    let live = Rc::new(Cell::new(None));
    let seen = Rc::clone(&live);
    run(|r| {
        // The default delay (250 ms) and the default connect timeout (20 s).
        let (addr, _) = counted_echo(r, LOOPBACK)?;
        seen.set(Some(addr));
        r.connect_any(&[hole.addr, addr], racer);
        Ok(())
    });
    let log = log.borrow();
    assert_eq!(log.completed, 1, "{log:?}");
    assert_eq!(log.winner, live.get(), "the live address won");
    assert_eq!(log.received, b"over the second address");
    assert_eq!(log.unbinds, vec![UnbindReason::ClosedByUs]);
    let after = log.connected_after.unwrap();
    assert!(
        after >= DEFAULT_CONNECTION_ATTEMPT_DELAY,
        "the second address was tried after {after:?}, before the attempt delay"
    );
    assert!(
        after < Duration::from_secs(5),
        "connected after {after:?}: the blackhole held the race far past the attempt delay"
    );
}

#[test]
fn a_refused_address_starts_the_next_attempt_at_once() {
    // A delay so long that waiting it out would be obvious.
    let (racer, log) = Racer::new(b"ping", 4);
    let live = Rc::new(Cell::new(None));
    let seen = Rc::clone(&live);
    run(|r| {
        r.set_connection_attempt_delay(SECS_10);
        let (addr, _) = counted_echo(r, LOOPBACK)?;
        seen.set(Some(addr));
        r.connect_any(&[closed_port(), closed_port(), addr], racer);
        Ok(())
    });
    let log = log.borrow();
    assert_eq!(log.completed, 1, "{log:?}");
    assert_eq!(log.winner, live.get());
    assert_eq!(log.received, b"ping");
    let after = log.connected_after.unwrap();
    assert!(
        after < SECS_10,
        "waited {after:?}: a refusal did not move on"
    );
}

#[test]
fn every_address_refused_unbinds_with_refused() {
    let (racer, log) = Racer::new(b"nobody home", usize::MAX);
    run(|r| {
        r.set_connection_attempt_delay(SECS_10);
        r.connect_any(&[closed_port(), closed_port(), closed_port()], racer);
        Ok(())
    });
    let log = log.borrow();
    assert_eq!(log.completed, 0, "{log:?}");
    assert!(log.received.is_empty());
    assert_eq!(log.unbinds, vec![UnbindReason::Refused]);
    assert!(
        log.lived.unwrap() < SECS_10,
        "refusals waited for the delay"
    );
}

#[test]
fn no_addresses_at_all_unbinds_unresolvable() {
    let (racer, log) = Racer::new(b"", usize::MAX);
    run(|r| {
        r.connect_any(&[], racer);
        Ok(())
    });
    assert_eq!(log.borrow().unbinds, vec![UnbindReason::Unresolvable]);
}

#[test]
fn two_live_addresses_make_one_connection_to_the_first() {
    let (racer, log) = Racer::new(b"just once", 9);
    let servers = Rc::new(RefCell::new(Vec::new()));
    let record = Rc::clone(&servers);
    run(|r| {
        r.set_connection_attempt_delay(MIN_CONNECTION_ATTEMPT_DELAY);
        let first = counted_echo(r, LOOPBACK)?;
        let second = counted_echo(r, LOOPBACK)?;
        r.connect_any(&[first.0, second.0], racer);
        record.borrow_mut().extend([first, second]);
        Ok(())
    });
    let log = log.borrow();
    let servers = servers.borrow();
    assert_eq!(log.completed, 1, "{log:?}");
    assert_eq!(log.winner, Some(servers[0].0));
    assert_eq!(log.received, b"just once");
    assert_eq!(
        servers[0].1.get(),
        1,
        "the first address got one connection"
    );
    assert_eq!(servers[1].1.get(), 0, "the second address got none");
}

#[test]
fn one_address_is_not_raced_the_connection_has_its_socket_while_connecting() {
    // Nothing to race: the connection's own socket connects (its local address is known
    // at once), and the exchange works as with two.
    let (racer, log) = Racer::new(b"only one", 8);
    let local_while_connecting = Rc::new(Cell::new(None));
    let seen = Rc::clone(&local_while_connecting);
    run(|r| {
        let (addr, _) = counted_echo(r, LOOPBACK)?;
        let id = r.connect_any(&[addr], racer);
        seen.set(r.local_addr(id));
        Ok(())
    });
    assert!(local_while_connecting.get().is_some());
    let log = log.borrow();
    assert_eq!(log.completed, 1, "{log:?}");
    assert_eq!(log.received, b"only one");
    // Refused at once or on the first event: unbind says so.
    let (racer, log) = Racer::new(b"", 0);
    run(|r| {
        r.connect_any(&[closed_port()], racer);
        Ok(())
    });
    assert_eq!(log.borrow().unbinds, [UnbindReason::Refused]);
}

#[test]
fn attempts_answered_together_leave_one_connection_and_close_the_others() {
    // Both addresses blackholed, so both attempts are in flight; then both accept queues
    // are emptied at once, and the SYNs the kernel retransmits (about a second after each
    // attempt started, 10 ms apart) are answered: the attempts finish close together.
    let (Some(first), Some(second)) = (blackhole(LOOPBACK), blackhole(LOOPBACK)) else {
        return;
    };
    let holes = Rc::new(RefCell::new([first, second]));
    let addrs = holes.borrow().each_ref().map(|h| h.addr);
    let (racer, log) = Racer::new(b"the winner's greeting", 0);
    let opened = Rc::clone(&holes);
    run(|r| {
        r.set_connection_attempt_delay(MIN_CONNECTION_ATTEMPT_DELAY);
        r.connect_any(&addrs, racer);
        // Due after the attempt delay's timer, which starts the second attempt.
        r.add_timer(Duration::from_millis(100), move |_| {
            for hole in opened.borrow_mut().iter_mut() {
                hole.open_up();
            }
        });
        Ok(())
    });
    let log = log.borrow();
    assert_eq!(log.completed, 1, "{log:?}");
    assert!(
        log.unbinds[0].is_orderly(),
        "the winner ended {:?}",
        log.unbinds
    );
    let winner = log.winner.expect("connected to one of them");
    let mut holes = holes.borrow_mut();
    let (won, lost): (Vec<_>, Vec<_>) = holes.iter_mut().partition(|h| h.addr == winner);
    // The winner's server got the greeting, then our FIN.
    let listener = &won[0].listener;
    listener.set_nonblocking(true).unwrap();
    let mut conn = None;
    wait_until("the winner's connection to be accepted", SECS_10, || {
        conn = listener.accept().ok();
        conn.is_some()
    });
    let (mut conn, _) = conn.unwrap();
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(SECS_10)).unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).expect("read the winner's bytes");
    assert_eq!(got, b"the winner's greeting");
    // The loser's server has nothing, or a connection we closed: it never stays.
    let listener = &lost[0].listener;
    listener.set_nonblocking(true).unwrap();
    if let Ok((mut conn, _)) = listener.accept() {
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(SECS_10)).unwrap();
        let mut got = Vec::new();
        if let Ok(n) = conn.read_to_end(&mut got) {
            assert_eq!(n, 0, "the losing attempt sent {got:?}");
        } // else reset: closed too
        println!("the losing attempt had connected too, and was closed");
    }
}

#[test]
fn an_earlier_attempt_goes_on_after_the_next_has_started_and_can_win() {
    // Both blackholed; once the second attempt has started, only the first address opens
    // up: its retransmitted SYN is answered, and the attempt still in flight wins.
    let (Some(first), Some(second)) = (blackhole(LOOPBACK), blackhole(LOOPBACK)) else {
        return;
    };
    let first = Rc::new(RefCell::new(first));
    let (racer, log) = Racer::new(b"", 0);
    let opened = Rc::clone(&first);
    let first_addr = first.borrow().addr;
    run(|r| {
        r.set_connection_attempt_delay(MIN_CONNECTION_ATTEMPT_DELAY);
        r.connect_any(&[first_addr, second.addr], racer);
        // Due after the attempt delay's timer, which starts the second attempt.
        r.add_timer(Duration::from_millis(100), move |_| {
            opened.borrow_mut().open_up();
        });
        Ok(())
    });
    let log = log.borrow();
    assert_eq!(log.completed, 1, "{log:?}");
    assert_eq!(log.winner, Some(first_addr), "the first attempt won");
}

#[test]
fn bytes_sent_before_the_race_is_won_arrive_on_the_winner_byte_exact() {
    let Some(hole) = blackhole(LOOPBACK) else {
        return;
    };
    const SIZE: usize = 1 << 20;
    let payload = Pattern::new(15).bytes(SIZE);
    let (racer, log) = Racer::new(&payload, SIZE);
    run(|r| {
        r.set_connection_attempt_delay(Duration::from_millis(50));
        let server = r.start_server((LOOPBACK, 0), || Echo)?;
        let live = r.server_addr(server).unwrap();
        // connect_host, on a name that resolves to the blackhole first.
        r.seed_resolver("blackholed-first.test", 80, &[hole.addr, live]);
        r.connect_host("blackholed-first.test", 80, racer);
        Ok(())
    });
    let log = log.borrow();
    assert_eq!(log.completed, 1, "{:?}", log.unbinds);
    assert_eq!(log.received.len(), SIZE);
    assert!(
        log.received == payload,
        "the echoed megabyte differs from what was queued"
    );
    assert_eq!(log.unbinds, vec![UnbindReason::ClosedByUs]);
}

#[test]
fn connect_host_tries_the_other_family_second() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("SKIPPED: no IPv6 loopback");
        return;
    }
    let Some(hole) = blackhole(LOOPBACK) else {
        return;
    };
    // The resolver's order: IPv4 (blackholed), IPv4, IPv6. In order, the second IPv4
    // address would win; interleaved, the IPv6 one is tried second and wins.
    let (racer, log) = Racer::new(b"dual stack", 10);
    let servers = Rc::new(RefCell::new(Vec::new()));
    let record = Rc::clone(&servers);
    run(|r| {
        r.set_connection_attempt_delay(Duration::from_millis(50));
        let v4 = counted_echo(r, LOOPBACK)?;
        let v6 = counted_echo(r, IpAddr::V6(Ipv6Addr::LOCALHOST))?;
        r.seed_resolver("dual-stack.test", 80, &[hole.addr, v4.0, v6.0]);
        r.connect_host("dual-stack.test", 80, racer);
        record.borrow_mut().extend([v4, v6]);
        Ok(())
    });
    let log = log.borrow();
    let servers = servers.borrow();
    assert_eq!(log.completed, 1, "{log:?}");
    assert_eq!(log.winner, Some(servers[1].0), "the IPv6 address won");
    assert_eq!(log.received, b"dual stack");
    assert_eq!(
        servers[0].1.get(),
        0,
        "the second IPv4 address was never needed"
    );
}

/// Descriptors this process has open.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_connect_timeout_shorter_than_the_race_closes_every_attempt() {
    // Counts the process's descriptors: run alone, so no other test opens any meanwhile.
    if !child::role_is(child::ALONE) {
        child::run_alone(
            "a_connect_timeout_shorter_than_the_race_closes_every_attempt",
            Duration::from_secs(60),
        );
        return;
    }
    let (Some(first), Some(second)) = (blackhole(LOOPBACK), blackhole(LOOPBACK)) else {
        return;
    };
    let (mut racer, log) = Racer::new(b"never sent", usize::MAX);
    racer.measure_at_unbind = true;
    let before = Rc::new(Cell::new(0));
    let counted = Rc::clone(&before);
    let timeout = Duration::from_millis(300);
    run(|r| {
        r.set_connection_attempt_delay(Duration::from_millis(50));
        counted.set(open_descriptors());
        let id = r.connect_any(&[first.addr, second.addr, first.addr], racer);
        r.set_pending_connect_timeout(id, timeout);
        Ok(())
    });
    let log = log.borrow();
    assert_eq!(log.completed, 0, "{log:?}");
    assert_eq!(log.unbinds, vec![UnbindReason::ConnectTimeout]);
    let lived = log.lived.unwrap();
    assert!(
        lived >= timeout && lived < Duration::from_secs(5),
        "timed out after {lived:?}"
    );
    let (descriptors, timers) = log.at_unbind.unwrap();
    assert_eq!(
        descriptors,
        before.get(),
        "the attempts' sockets outlived the connection"
    );
    assert_eq!(timers, 0, "the attempt delay's timer outlived the race");
}
