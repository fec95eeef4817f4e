//! The loop itself, pinned with real threads, sockets, processes and signals: cross-thread
//! stop and schedule, next-tick ordering, timers (order, cancel, periodic, drift, scale),
//! the defer pool, accept back-off on `EMFILE`, signal handling, and what happens to live
//! connections when the loop ends.
//!
//! Every test runs under the support library's watchdog, which aborts the test binary,
//! naming the test, instead of letting a hung reactor hang the suite. Tests that need a
//! process of their own (a low descriptor limit, signals) re-run this test binary with an
//! `#[ignore]`d child test selected by name and a role (`support::child`); the parent talks
//! to the child over its stdout and sockets.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use ember::{Context, DeferPanic, Handler, Reactor, TimerId, UnbindReason};

use support::backends::Echo;
use support::child::{self, Child, MARK};
use support::watchdog::Watchdog;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The Linux id of the calling thread (for `/proc/self/task/<tid>`).
fn current_tid() -> i32 {
    // SAFETY: gettid(2) has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Waits until thread `tid` of this process is asleep in the kernel (state `S`; and, where
/// the kernel reports it, sleeping in a poll function), i.e. a reactor blocked in
/// `epoll_wait`. Polls `/proc` because nothing else can observe another thread's state.
fn wait_until_blocked_in_poll(tid: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
            .expect("read the reactor thread's stat");
        let state = stat[stat.rfind(')').expect("stat has a comm") + 2..]
            .chars()
            .next()
            .expect("stat has a state");
        let wchan =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/wchan")).unwrap_or_default();
        let wchan_known = !wchan.is_empty() && wchan != "0";
        if state == 'S' && (!wchan_known || wchan.contains("poll")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the reactor thread never blocked in poll (last seen: state {state}, wchan {wchan:?})"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// A process's CPU time so far (user + system, all threads), in clock ticks.
fn cpu_ticks(pid: libc::pid_t) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    // Fields after the parenthesised comm start at field 3 (state); utime and stime are
    // fields 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat has a comm") + 2..]
        .split_whitespace()
        .collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf with a constant name has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(ticks > 0, "sysconf(_SC_CLK_TCK)");
    ticks as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------
// 1. Other threads: stop and schedule
// ---------------------------------------------------------------------------------------

#[test]
fn handle_stop_wakes_an_idle_loop_blocked_in_poll() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(15));
    let mut r = Reactor::new().unwrap();
    let handle = r.handle();
    let tid = current_tid();
    let (idle_tx, idle_rx) = mpsc::channel();
    // The last thing the loop does before it would block forever: nothing is pending.
    r.next_tick(move |r| {
        assert_eq!(r.timer_count(), 0, "the loop must have no timer to wake it");
        assert_eq!(r.connection_count(), 0);
        idle_tx.send(()).unwrap();
    });
    let stopper = thread::spawn(move || {
        idle_rx.recv().expect("the loop ran its next tick");
        wait_until_blocked_in_poll(tid, Duration::from_secs(5));
        let stopped_at = Instant::now();
        handle.stop();
        stopped_at
    });
    r.run_loop().expect("run_loop");
    let returned_at = Instant::now();
    let stopped_at = stopper.join().expect("stopper thread");
    assert!(r.is_stopping());
    assert!(
        returned_at >= stopped_at,
        "run_loop returned before anyone stopped it"
    );
    assert!(
        returned_at - stopped_at < Duration::from_secs(2),
        "an idle loop took {:?} to notice a stop",
        returned_at - stopped_at
    );
}

#[test]
fn handle_schedule_runs_closures_from_other_threads_on_the_reactor_thread() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(15));
    const THREADS: usize = 4;
    const PER_THREAD: usize = 250;
    let mut r = Reactor::new().unwrap();
    let reactor_thread = thread::current().id();
    let ran = Arc::new(AtomicUsize::new(0));
    let (ran_on_tx, ran_on_rx) = mpsc::channel::<ThreadId>();
    let tid = current_tid();
    let senders: Vec<_> = (0..THREADS)
        .map(|_| {
            let handle = r.handle();
            let ran = Arc::clone(&ran);
            let ran_on_tx = ran_on_tx.clone();
            thread::spawn(move || {
                // Half while the loop may be busy, half once it sleeps in poll.
                for i in 0..PER_THREAD {
                    if i == PER_THREAD / 2 {
                        wait_until_blocked_in_poll(tid, Duration::from_secs(5));
                    }
                    let ran = Arc::clone(&ran);
                    let ran_on_tx = ran_on_tx.clone();
                    handle.schedule(move |r| {
                        ran_on_tx.send(thread::current().id()).unwrap();
                        if ran.fetch_add(1, Ordering::SeqCst) + 1 == THREADS * PER_THREAD {
                            r.stop();
                        }
                    });
                }
                thread::current().id()
            })
        })
        .collect();
    drop(ran_on_tx);
    r.run_loop().expect("run_loop");
    let sender_threads: HashSet<ThreadId> =
        senders.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(ran.load(Ordering::SeqCst), THREADS * PER_THREAD);
    let ran_on: Vec<ThreadId> = ran_on_rx.iter().collect();
    assert_eq!(ran_on.len(), THREADS * PER_THREAD);
    assert!(
        ran_on.iter().all(|t| *t == reactor_thread),
        "a scheduled closure ran off the reactor thread"
    );
    assert!(!sender_threads.contains(&reactor_thread));
}

// ---------------------------------------------------------------------------------------
// 2. next_tick
// ---------------------------------------------------------------------------------------

#[test]
fn next_tick_runs_fifo_and_a_nested_next_tick_waits_for_a_later_tick() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(15));
    let mut r = Reactor::new().unwrap();
    let log: Rc<RefCell<Vec<String>>> = Rc::default();
    {
        let log = Rc::clone(&log);
        r.next_tick(move |r| {
            log.borrow_mut().push("first".into());
            // A zero-delay timer fires in the timer step of the *next* tick, which comes
            // before that tick's next-tick queue: it marks the tick boundary.
            let l = Rc::clone(&log);
            r.add_timer(Duration::ZERO, move |_| l.borrow_mut().push("timer".into()));
            let l = Rc::clone(&log);
            r.next_tick(move |r| {
                l.borrow_mut().push("nested".into());
                r.stop();
            });
        });
    }
    for i in 0..50 {
        let log = Rc::clone(&log);
        r.next_tick(move |_| log.borrow_mut().push(format!("t{i}")));
    }
    r.run_loop().expect("run_loop");
    let mut expected = vec!["first".to_string()];
    expected.extend((0..50).map(|i| format!("t{i}")));
    expected.push("timer".into());
    expected.push("nested".into());
    assert_eq!(*log.borrow(), expected);
}

#[test]
fn next_tick_chain_requeued_forever_does_not_starve_timers_or_other_threads() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(15));
    let mut r = Reactor::new().unwrap();
    let handle = r.handle();
    let spins = Rc::new(Cell::new(0u64));
    let timer_fired = Rc::new(Cell::new(false));
    let (tx, rx) = mpsc::channel::<()>();

    fn spin(r: &mut Reactor, spins: Rc<Cell<u64>>, fired: Rc<Cell<bool>>, tx: mpsc::Sender<()>) {
        spins.set(spins.get() + 1);
        if fired.get() {
            // Ask another thread to stop us: its wake-up must get through a loop
            // that always has more next-tick work.
            let _ = tx.send(());
        }
        r.next_tick(move |r| spin(r, spins, fired, tx));
    }
    {
        let (spins, fired) = (Rc::clone(&spins), Rc::clone(&timer_fired));
        r.next_tick(move |r| spin(r, spins, fired, tx));
    }
    {
        let fired = Rc::clone(&timer_fired);
        r.add_timer(Duration::from_millis(20), move |_| fired.set(true));
    }
    let stopper = thread::spawn(move || {
        rx.recv().expect("the chain saw the timer fire");
        handle.schedule(|r| r.stop());
    });
    r.run_loop().expect("run_loop");
    stopper.join().unwrap();
    assert!(timer_fired.get(), "the timer never fired");
    assert!(spins.get() > 1, "the chain never ran");
}

// ---------------------------------------------------------------------------------------
// 3. Timers
// ---------------------------------------------------------------------------------------

#[test]
fn one_shot_timers_fire_in_deadline_order_not_insertion_order() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(15));
    let mut r = Reactor::new().unwrap();
    let fired: Rc<RefCell<Vec<(u64, Instant)>>> = Rc::default();
    let start = Instant::now();
    for delay in [30u64, 10, 20] {
        let fired = Rc::clone(&fired);
        r.add_timer(Duration::from_millis(delay), move |r| {
            fired.borrow_mut().push((delay, Instant::now()));
            if fired.borrow().len() == 3 {
                r.stop();
            }
        });
    }
    assert_eq!(r.timer_count(), 3);
    r.run_loop().expect("run_loop");
    let fired = fired.borrow();
    let order: Vec<u64> = fired.iter().map(|(d, _)| *d).collect();
    assert_eq!(order, [10, 20, 30]);
    for (delay, at) in fired.iter() {
        assert!(
            *at >= start + Duration::from_millis(*delay),
            "the {delay} ms timer fired early, after {:?}",
            *at - start
        );
    }
    assert_eq!(r.timer_count(), 0);
}

#[test]
fn cancelled_timer_never_fires_and_cancel_reports_true_only_once() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(15));
    let mut r = Reactor::new().unwrap();
    let log: Rc<RefCell<Vec<&'static str>>> = Rc::default();
    let push = |name: &'static str| {
        let log = Rc::clone(&log);
        move |_: &mut Reactor| log.borrow_mut().push(name)
    };
    let a = r.add_timer(Duration::from_millis(10), push("a"));
    let b = r.add_timer(Duration::from_millis(20), push("b"));
    let d = r.add_timer(Duration::from_millis(30), push("d"));
    assert!(r.cancel_timer(b), "cancelling a pending timer");
    assert!(!r.cancel_timer(b), "cancelling it a second time");
    {
        // Cancelling from inside another timer's callback, before it is due.
        let log = Rc::clone(&log);
        r.add_timer(Duration::from_millis(15), move |r| {
            log.borrow_mut().push("c");
            assert!(r.cancel_timer(d));
            assert!(!r.cancel_timer(d));
        });
    }
    {
        let log = Rc::clone(&log);
        r.add_timer(Duration::from_millis(50), move |r| {
            log.borrow_mut().push("end");
            assert!(
                !r.cancel_timer(a),
                "a timer that already fired is not pending"
            );
            r.stop();
        });
    }
    r.run_loop().expect("run_loop");
    assert_eq!(*log.borrow(), ["a", "c", "end"]);
    assert_eq!(r.timer_count(), 0);
}

#[test]
fn periodic_timer_cancels_itself_after_n_beats() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(15));
    const BEATS: u32 = 5;
    let mut r = Reactor::new().unwrap();
    let beats = Rc::new(Cell::new(0u32));
    let own_id: Rc<Cell<Option<TimerId>>> = Rc::default();
    let id = {
        let (beats, own_id) = (Rc::clone(&beats), Rc::clone(&own_id));
        r.add_periodic_timer(Duration::from_millis(5), move |r| {
            beats.set(beats.get() + 1);
            if beats.get() == BEATS {
                let id = own_id.get().expect("id stored before the first beat");
                assert!(
                    r.cancel_timer(id),
                    "a running periodic timer is cancellable"
                );
                assert!(!r.cancel_timer(id));
                // Ten more periods: a beat that still came would be counted.
                r.add_timer(Duration::from_millis(50), Reactor::stop);
            }
        })
    };
    own_id.set(Some(id));
    r.run_loop().expect("run_loop");
    assert_eq!(beats.get(), BEATS);
    assert!(!r.cancel_timer(id));
    assert_eq!(r.timer_count(), 0);
}

#[test]
fn periodic_timer_keeps_a_fixed_grid_and_does_not_drift() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(15));
    const PERIOD: Duration = Duration::from_millis(10);
    const BEATS: usize = 20;
    // Each beat does 2.5 ms of work. A timer re-armed from "now" (after the callback,
    // or from a late wake-up rounded up to the next whole millisecond by epoll) would
    // fall behind by that much every beat; one on a fixed grid does not.
    const WORK: Duration = Duration::from_micros(2_500);
    let mut r = Reactor::new().unwrap();
    let beats: Rc<RefCell<Vec<Instant>>> = Rc::default();
    let start = Instant::now();
    {
        let beats = Rc::clone(&beats);
        r.add_periodic_timer(PERIOD, move |r| {
            beats.borrow_mut().push(Instant::now());
            if beats.borrow().len() == BEATS {
                r.stop();
            }
            thread::sleep(WORK); // simulated slow callback, not synchronisation
        });
    }
    r.run_loop().expect("run_loop");
    let beats = beats.borrow();
    assert_eq!(beats.len(), BEATS);
    let p = ms(PERIOD);
    // The k-th beat never comes before start + k periods (skipped beats only make it
    // later).
    for (k, at) in beats.iter().enumerate() {
        let k = k as u32 + 1;
        assert!(
            *at >= start + PERIOD * k,
            "beat {k} fired {:.2} ms early",
            ms(start + PERIOD * k - *at)
        );
    }
    // Lateness against the grid. A loaded machine may stall a beat by more than a
    // period, and then the timer rightly skips the missed beats; so the grid slot of
    // each beat is the previous slot plus the gap rounded to whole periods. Drift
    // (a small delay every beat) never rounds up, so it accumulates here.
    let mut slot = ((ms(beats[0] - start) / p).round() as i64).max(1);
    let mut lateness = vec![ms(beats[0] - start) - slot as f64 * p];
    for w in beats.windows(2) {
        slot += ((ms(w[1] - w[0]) / p).round() as i64).max(1);
        lateness.push(ms(w[1] - start) - slot as f64 * p);
    }
    let shown: Vec<f64> = lateness
        .iter()
        .map(|l| (l * 100.0).round() / 100.0)
        .collect();
    // The final beat is less than a period late. (A single late wake-up cannot break
    // this: a gap of more than half a period extra rounds up to the next slot.)
    assert!(
        lateness[BEATS - 1] < p,
        "the final beat is more than a period late: lateness per beat (ms) {shown:?}"
    );
    // And the best of the last five beats is well within half a period, so one unlucky
    // wake-up cannot fail the test while drifting by 0.4 ms or more per beat (16 beats
    // at least before the window) would put all five past the bound.
    let best_final = lateness[BEATS - 5..]
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    assert!(
        best_final < p / 2.0,
        "the timer drifted: lateness per beat (ms) {shown:?}"
    );
}

#[test]
fn ten_thousand_timers_half_cancelled_fire_in_deadline_order_quickly() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(20));
    const N: usize = 10_000;
    let mut r = Reactor::new().unwrap();
    let fired: Rc<RefCell<Vec<usize>>> = Rc::new(RefCell::new(Vec::with_capacity(N)));
    // Each timer's true deadline lies within [lo, hi]: `Instant::now()` read just before
    // and just after `add_timer`, plus its delay.
    let mut bounds = Vec::with_capacity(N);
    let mut ids = Vec::with_capacity(N);
    let began = Instant::now();
    for i in 0..N {
        // 7919 is prime to 10,000, so the delays are a shuffled 0..100 ms in 10 µs steps.
        let delay = Duration::from_micros((i * 7919 % N) as u64 * 10);
        let fired = Rc::clone(&fired);
        let lo = Instant::now() + delay;
        ids.push(r.add_timer(delay, move |_| fired.borrow_mut().push(i)));
        bounds.push((lo, Instant::now() + delay));
    }
    assert_eq!(r.timer_count(), N);
    for id in ids.iter().skip(1).step_by(2) {
        assert!(r.cancel_timer(*id));
    }
    assert_eq!(r.timer_count(), N / 2);
    r.add_timer(Duration::from_millis(101), Reactor::stop);
    r.run_loop().expect("run_loop");
    let took = began.elapsed();

    let fired = fired.borrow();
    assert_eq!(fired.len(), N / 2, "every surviving timer fires once");
    let distinct: HashSet<usize> = fired.iter().copied().collect();
    assert_eq!(distinct.len(), N / 2, "no timer fires twice");
    assert!(fired.iter().all(|i| i % 2 == 0), "a cancelled timer fired");
    // In deadline order: a timer may only fire after another if its deadline can be
    // the later one.
    let mut latest_lo = bounds[fired[0]].0;
    for pair in fired.windows(2) {
        let (lo, hi) = bounds[pair[1]];
        assert!(
            hi >= latest_lo,
            "timer {} fired after timer {} although it was due earlier",
            pair[1],
            pair[0]
        );
        latest_lo = latest_lo.max(lo);
    }
    assert_eq!(r.timer_count(), 0);
    // The timers span 100 ms; bookkeeping for 10,000 of them must not add much.
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

// ---------------------------------------------------------------------------------------
// 4. Defer
// ---------------------------------------------------------------------------------------

#[test]
fn defer_delivers_every_result_and_a_panic_on_the_reactor_thread() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(20));
    const JOBS: usize = 100;
    const PANICS: usize = 37;
    type Outcome = (usize, Result<(usize, ThreadId), DeferPanic>, ThreadId);
    let mut r = Reactor::new().unwrap();
    let reactor_thread = thread::current().id();
    let outcomes: Rc<RefCell<Vec<Outcome>>> = Rc::default();
    let after_panic: Rc<RefCell<Vec<&'static str>>> = Rc::default();
    for i in 0..JOBS {
        let outcomes = Rc::clone(&outcomes);
        let after = Rc::clone(&after_panic);
        r.defer(
            move || {
                if i == PANICS {
                    // Expected: the default panic hook prints this on stderr.
                    panic!("deferred job {i} blew up on purpose");
                }
                (i * i, thread::current().id())
            },
            move |r, result| {
                outcomes
                    .borrow_mut()
                    .push((i, result, thread::current().id()));
                if outcomes.borrow().len() == JOBS {
                    // The loop carries on after the panic: more deferred work and a
                    // timer still run.
                    r.defer(
                        || 7,
                        move |r, seven| {
                            assert_eq!(seven, Ok(7));
                            after.borrow_mut().push("defer");
                            r.add_timer(Duration::from_millis(5), move |r| {
                                after.borrow_mut().push("timer");
                                r.stop();
                            });
                        },
                    );
                }
            },
        );
    }
    assert_eq!(r.deferred_pending(), JOBS);
    r.run_loop().expect("run_loop");

    let outcomes = outcomes.borrow();
    assert_eq!(outcomes.len(), JOBS, "every callback runs");
    let jobs: HashSet<usize> = outcomes.iter().map(|(i, ..)| *i).collect();
    assert_eq!(jobs.len(), JOBS, "each callback runs exactly once");
    for (i, result, ran_on) in outcomes.iter() {
        assert_eq!(
            *ran_on, reactor_thread,
            "callback {i} ran off the reactor thread"
        );
        if *i == PANICS {
            assert_eq!(
                result.as_ref().unwrap_err(),
                &DeferPanic {
                    message: format!("deferred job {PANICS} blew up on purpose")
                }
            );
        } else {
            let (value, worked_on) = result.as_ref().expect("a job that did not panic");
            assert_eq!(*value, i * i);
            assert_ne!(*worked_on, reactor_thread, "work ran on the reactor thread");
        }
    }
    assert_eq!(*after_panic.borrow(), ["defer", "timer"]);
    assert_eq!(r.deferred_pending(), 0);
}

#[test]
fn defer_pool_size_is_configurable_and_work_runs_off_the_reactor_thread() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(20));
    const JOBS: usize = 12;
    type Worked = (ThreadId, Option<String>);
    let mut r = Reactor::new().unwrap();
    r.set_defer_threads(2);
    let reactor_thread = thread::current().id();
    let results: Rc<RefCell<Vec<(Worked, ThreadId)>>> = Rc::default();
    // The first two jobs wait for each other: only two threads running at once can
    // finish them (with one thread this deadlocks and the watchdog fails the test).
    let rendezvous = Arc::new(Barrier::new(2));
    for i in 0..JOBS {
        let rendezvous = Arc::clone(&rendezvous);
        let results = Rc::clone(&results);
        r.defer(
            move || {
                if i < 2 {
                    rendezvous.wait();
                }
                let me = thread::current();
                (me.id(), me.name().map(str::to_owned))
            },
            move |r, worked| {
                let worked = worked.expect("no job panics");
                results.borrow_mut().push((worked, thread::current().id()));
                if results.borrow().len() == JOBS {
                    r.stop();
                }
            },
        );
    }
    r.run_loop().expect("run_loop");
    let results = results.borrow();
    assert_eq!(results.len(), JOBS);
    let workers: HashSet<ThreadId> = results.iter().map(|((id, _), _)| *id).collect();
    let names: HashSet<Option<String>> =
        results.iter().map(|((_, name), _)| name.clone()).collect();
    assert!(
        !workers.contains(&reactor_thread),
        "work ran on the reactor thread"
    );
    assert_eq!(workers.len(), 2, "a pool of two threads did the work");
    let allowed: HashSet<Option<String>> = ["ember-defer-0", "ember-defer-1"]
        .into_iter()
        .map(|n| Some(n.to_string()))
        .collect();
    assert!(names.is_subset(&allowed), "pool threads: {names:?}");
    assert!(
        results.iter().all(|(_, cb)| *cb == reactor_thread),
        "a callback ran off the reactor thread"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Accept back-off when descriptors run out
// ---------------------------------------------------------------------------------------

/// Child of [`accept_backs_off_on_emfile_without_spinning`]: an echo server under a low
/// descriptor limit, reporting its port and every change of its server stats.
#[test]
#[ignore = "child process of accept_backs_off_on_emfile_without_spinning"]
fn emfile_child_echo_server() {
    if !child::role_is("emfile") {
        return;
    }
    let mut r = Reactor::new().unwrap();
    let server = r.start_server("127.0.0.1:0", || Echo).unwrap();
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    println!("{MARK}fds {open_fds}");
    println!("{MARK}port {}", r.server_addr(server).unwrap().port());
    let mut last = None;
    r.add_periodic_timer(Duration::from_millis(20), move |r| {
        let stats = r.server_stats(server);
        if stats != last {
            last = stats;
            let (accepted, backoffs) = stats.expect("the server is running");
            println!("{MARK}stats {accepted} {backoffs} {}", r.connection_count());
        }
    });
    // Never outlive an abandoned parent.
    r.add_timer(Duration::from_secs(60), Reactor::stop);
    r.run_loop().unwrap();
}

fn parse_stats(value: &str) -> (u64, u64, u64) {
    let n: Vec<u64> = value
        .split_whitespace()
        .map(|v| v.parse().expect("numeric stats"))
        .collect();
    (n[0], n[1], n[2])
}

#[test]
fn accept_backs_off_on_emfile_without_spinning() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(40));
    const CLIENTS: usize = 64;
    let mut child = Child::rerun_test("emfile_child_echo_server", "emfile", Some(32));
    let fds = child.expect("fds", Duration::from_secs(10));
    let port: u16 = child
        .expect("port", Duration::from_secs(10))
        .parse()
        .unwrap();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));

    // More connections than the child has descriptors: it accepts until EMFILE, the
    // rest wait in the listen backlog.
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| TcpStream::connect(addr).expect("connect (the backlog has room)"))
        .collect();
    let (accepted, backoffs) = loop {
        let (accepted, backoffs, _) = parse_stats(&child.expect("stats", Duration::from_secs(10)));
        if backoffs >= 1 {
            break (accepted, backoffs);
        }
    };
    assert!(
        accepted > 0 && (accepted as usize) < CLIENTS,
        "accepted {accepted} of {CLIENTS} with 32 descriptors ({fds} open at start)"
    );

    // While exhausted, the child must sleep between attempts, not spin on accept.
    let pid = child.pid();
    let before = cpu_ticks(pid);
    let window_start = Instant::now();
    thread::sleep(Duration::from_secs(1)); // the measurement window
    let cpu = (cpu_ticks(pid) - before) as f64
        / clock_ticks_per_second()
        / window_start.elapsed().as_secs_f64();
    let (accepted_after, backoffs_after, _) = parse_stats(
        &child
            .latest("stats")
            .unwrap_or_else(|| format!("{accepted} {backoffs} 0")),
    );
    assert!(
        cpu < 0.3,
        "the child used {:.0}% CPU while out of descriptors",
        cpu * 100.0
    );
    assert_eq!(
        accepted_after, accepted,
        "nothing can be accepted while exhausted"
    );
    assert!(
        backoffs_after > backoffs,
        "the server stopped retrying ({backoffs} back-offs before the window, {backoffs_after} after)"
    );
    assert!(
        backoffs_after - backoffs < 50,
        "{} back-offs in one second is a spin, not a back-off",
        backoffs_after - backoffs
    );

    // Free the descriptors: the backlog drains and a fresh client is served.
    drop(clients);
    let mut fresh = TcpStream::connect(addr).expect("connect after the descriptors freed");
    fresh
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    fresh.write_all(b"served again").unwrap();
    let mut echo = [0u8; 12];
    fresh.read_exact(&mut echo).expect("echo after EMFILE");
    assert_eq!(&echo, b"served again");
    loop {
        let (accepted, _, _) = parse_stats(&child.expect("stats", Duration::from_secs(10)));
        if accepted as usize == CLIENTS + 1 {
            break;
        }
        assert!(accepted as usize <= CLIENTS + 1);
    }
}

// ---------------------------------------------------------------------------------------
// 6. Signals
// ---------------------------------------------------------------------------------------

/// Child of [`sighup_runs_its_handler_and_sigterm_stops_the_loop`]: an echo server with a
/// SIGHUP handler and `stop_on_signals`, reporting what happens on stdout.
#[test]
#[ignore = "child process of sighup_runs_its_handler_and_sigterm_stops_the_loop"]
fn signal_child_reactor() {
    if !child::role_is("signals") {
        return;
    }
    struct Watched;
    impl Handler for Watched {
        fn post_init(&mut self, _cx: &mut Context<'_>) {
            println!("{MARK}accepted");
        }
        fn receive_data(&mut self, cx: &mut Context<'_>, data: &[u8]) {
            cx.send_data(data);
        }
        fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
            println!("{MARK}unbind {reason:?}");
        }
    }
    let mut r = Reactor::new().unwrap();
    r.stop_on_signals().unwrap();
    let mut hups = 0;
    r.on_signal(libc::SIGHUP, move |r| {
        hups += 1;
        println!("{MARK}sighup {hups} {}", r.connection_count());
    })
    .unwrap();
    let server = r.start_server("127.0.0.1:0", || Watched).unwrap();
    r.add_timer(Duration::from_secs(60), |r| {
        println!("{MARK}abandoned");
        r.stop();
    });
    // Handlers are installed: the parent may signal from now on.
    println!("{MARK}port {}", r.server_addr(server).unwrap().port());
    r.run_loop().unwrap();
    println!("{MARK}stopped {}", r.connection_count());
}

#[test]
fn sighup_runs_its_handler_and_sigterm_stops_the_loop() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(30));
    let limit = Duration::from_secs(10);
    let mut child = Child::rerun_test("signal_child_reactor", "signals", None);
    let port: u16 = child.expect("port", limit).parse().unwrap();
    let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    conn.set_read_timeout(Some(limit)).unwrap();
    child.expect("accepted", limit);

    child.signal(libc::SIGHUP);
    assert_eq!(
        child.expect("sighup", limit),
        "1 1",
        "handler ran, one connection"
    );
    // SIGHUP neither killed the process nor stopped the loop.
    conn.write_all(b"still serving").unwrap();
    let mut echo = [0u8; 13];
    conn.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still serving");

    child.signal(libc::SIGTERM);
    assert_eq!(child.expect("unbind", limit), "ReactorStopped");
    assert_eq!(child.expect("stopped", limit), "0", "connections left");
    let status = child.wait_exit(limit);
    assert!(
        status.success(),
        "child exited with {status}\n{}",
        child.describe()
    );
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .expect("the child closed the connection");
    assert!(rest.is_empty());
}

// ---------------------------------------------------------------------------------------
// 7. The end of the loop
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Census {
    accepted: usize,
    completed: usize,
    unbinds: Vec<(String, UnbindReason)>,
}

/// A connection that records its life in a shared [`Census`].
struct Member {
    name: String,
    census: Rc<RefCell<Census>>,
    /// What to connect to from `unbind` (a connection opened while the loop shuts down).
    reconnect: Option<SocketAddr>,
    expect: usize,
}

impl Member {
    fn stop_when_all_up(&self, r: &mut Reactor) {
        let census = self.census.borrow();
        if census.accepted == self.expect && census.completed == self.expect {
            assert_eq!(r.connection_count(), 2 * self.expect);
            r.stop();
        }
    }
}

impl Handler for Member {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        if self.name.starts_with("accepted") {
            self.census.borrow_mut().accepted += 1;
            self.stop_when_all_up(cx.reactor());
        }
    }
    fn connection_completed(&mut self, cx: &mut Context<'_>) {
        self.census.borrow_mut().completed += 1;
        self.stop_when_all_up(cx.reactor());
    }
    fn receive_data(&mut self, _cx: &mut Context<'_>, _data: &[u8]) {}
    fn unbind(&mut self, cx: &mut Context<'_>, reason: UnbindReason) {
        self.census
            .borrow_mut()
            .unbinds
            .push((self.name.clone(), reason));
        if let Some(addr) = self.reconnect.take() {
            let late = Member {
                name: "late".into(),
                census: Rc::clone(&self.census),
                reconnect: None,
                expect: usize::MAX,
            };
            cx.reactor()
                .connect(addr, late)
                .expect("connect from unbind");
        }
    }
}

#[test]
fn stop_unbinds_every_live_connection_exactly_once_with_reactor_stopped() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(20));
    const PAIRS: usize = 50;
    let mut r = Reactor::new().unwrap();
    let census: Rc<RefCell<Census>> = Rc::default();
    let mut next = 0;
    let server = {
        let census = Rc::clone(&census);
        r.start_server("127.0.0.1:0", move || {
            next += 1;
            Member {
                name: format!("accepted{next}"),
                census: Rc::clone(&census),
                reconnect: None,
                expect: PAIRS,
            }
        })
        .unwrap()
    };
    let addr = r.server_addr(server).unwrap();
    for i in 0..PAIRS {
        let member = Member {
            name: format!("outbound{i}"),
            census: Rc::clone(&census),
            // One unbind opens a new connection while the loop is shutting down:
            // that one must be unbound too.
            reconnect: (i == 0).then_some(addr),
            expect: PAIRS,
        };
        r.connect(addr, member).unwrap();
    }
    r.run_loop().expect("run_loop");

    let census = census.borrow();
    assert_eq!(census.accepted, PAIRS);
    assert_eq!(census.completed, PAIRS);
    let names: HashSet<&str> = census.unbinds.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        census.unbinds.len(),
        2 * PAIRS + 1,
        "one unbind per connection (plus the late one)"
    );
    assert_eq!(
        names.len(),
        census.unbinds.len(),
        "a connection unbound twice"
    );
    assert!(names.contains("late"));
    for (name, reason) in &census.unbinds {
        assert_eq!(*reason, UnbindReason::ReactorStopped, "{name}");
    }
    assert_eq!(r.connection_count(), 0);
    assert!(r.connection_ids().is_empty());
    let refused = TcpStream::connect(addr).expect_err("the server is closed");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// A peer that never reads: its kernel buffers fill and the other side's queue stays full.
struct Stalled {
    log: Rc<RefCell<Vec<(&'static str, UnbindReason)>>>,
}

impl Handler for Stalled {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.set_sock_opt(libc::SOL_SOCKET, libc::SO_RCVBUF, 4096)
            .unwrap();
        cx.pause();
    }
    fn receive_data(&mut self, _cx: &mut Context<'_>, _data: &[u8]) {}
    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        self.log.borrow_mut().push(("stalled", reason));
    }
}

/// Queues more than the peer will take, then asks to close after writing, then stops the
/// loop while that close is still waiting for the queue to drain.
struct Flusher {
    log: Rc<RefCell<Vec<(&'static str, UnbindReason)>>>,
}

impl Handler for Flusher {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        cx.set_sock_opt(libc::SOL_SOCKET, libc::SO_SNDBUF, 4096)
            .unwrap();
    }
    fn connection_completed(&mut self, cx: &mut Context<'_>) {
        assert!(cx.send_data(&vec![0x5a; 4 << 20]));
        cx.close_after_writing();
        let id = cx.id();
        cx.add_timer(Duration::from_millis(20), move |r| {
            assert!(r.is_alive(id), "still flushing");
            assert!(r.outbound_size(id) > 0, "the peer cannot have taken 4 MiB");
            r.stop();
        });
    }
    fn receive_data(&mut self, _cx: &mut Context<'_>, _data: &[u8]) {}
    fn unbind(&mut self, _cx: &mut Context<'_>, reason: UnbindReason) {
        self.log.borrow_mut().push(("flusher", reason));
    }
}

#[test]
fn stop_unbinds_a_connection_whose_close_after_writing_is_still_flushing() {
    let _watchdog = Watchdog::abort_after(Duration::from_secs(20));
    let mut r = Reactor::new().unwrap();
    let log: Rc<RefCell<Vec<(&'static str, UnbindReason)>>> = Rc::default();
    let server = {
        let log = Rc::clone(&log);
        r.start_server("127.0.0.1:0", move || Stalled {
            log: Rc::clone(&log),
        })
        .unwrap()
    };
    let addr = r.server_addr(server).unwrap();
    r.connect(
        addr,
        Flusher {
            log: Rc::clone(&log),
        },
    )
    .unwrap();
    r.run_loop().expect("run_loop");
    let mut log = log.borrow().clone();
    log.sort_by_key(|(name, _)| *name);
    assert_eq!(
        log,
        [
            ("flusher", UnbindReason::ReactorStopped),
            ("stalled", UnbindReason::ReactorStopped)
        ],
        "every live connection is unbound once when the loop ends"
    );
    assert_eq!(r.connection_count(), 0);
}

/// EventMachine's `reactor_running?` and `reactor_thread?`, through a handle: true while
/// the loop runs, and only on its thread.
#[test]
fn a_handle_tells_whether_the_loop_runs_and_on_which_thread() {
    let mut reactor = ember::Reactor::new().unwrap();
    let handle = reactor.handle();
    assert!(!handle.is_running(), "not running before run_loop");
    assert!(!handle.is_reactor_thread());
    let (tx, rx) = std::sync::mpsc::channel();
    let inside = handle.clone();
    reactor.next_tick(move |r| {
        let outside = inside.clone();
        let seen_from_another_thread =
            std::thread::spawn(move || (outside.is_running(), outside.is_reactor_thread()))
                .join()
                .unwrap();
        tx.send((
            inside.is_running(),
            inside.is_reactor_thread(),
            seen_from_another_thread,
        ))
        .unwrap();
        r.stop();
    });
    reactor.run_loop().unwrap();
    assert_eq!(rx.recv().unwrap(), (true, true, (true, false)));
    assert!(!handle.is_running(), "not running once run_loop returned");
}
