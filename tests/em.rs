//! `ember::em` on a real reactor: a Deferrable's timeout, a Channel with a thousand
//! subscribers changing under a push, a Queue's two FIFOs, an EachLimited's concurrency
//! limit, what a panicking callback does to the others, and the chat example (which uses
//! the Channel) over loopback sockets.
//!
//! Every test runs its reactor under the support library's watchdog; a reactor stopped by
//! the watchdog fails the test instead of hanging it.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

#[allow(dead_code)] // the example's `main` is not called here
#[path = "../examples/chat.rs"]
mod chat;

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ember::em::{
    Channel, Deferrable, DeferredStatus, EachLimited, Queue, SubscriptionId, SystemFailed,
    SystemOptions, SystemResult, TimedOut, system, system_with,
};
use ember::{CallbackPanic, Context, Handler, Reactor};

use support::clients::{connect, find, read_all, read_until};
use support::reactor_thread::{ReactorThread, run_bounded};

/// Runs a reactor on this thread until `setup`'s callbacks stop it; fails the test if the
/// watchdog had to.
fn run(setup: impl FnOnce(&mut Reactor) -> io::Result<()>) -> Reactor {
    let (reactor, fired) = run_bounded(Duration::from_secs(20), setup);
    assert!(!fired, "the watchdog had to stop the reactor");
    reactor
}

/// Every panic the reactor contained, by message.
fn record_panics(r: &mut Reactor) -> Rc<RefCell<Vec<String>>> {
    let panics = Rc::new(RefCell::new(Vec::new()));
    let seen = Rc::clone(&panics);
    r.set_error_handler(move |_, report: &CallbackPanic| {
        assert_eq!(report.connection, None, "no connection is involved here");
        seen.borrow_mut().push(report.message.to_string());
    });
    panics
}

fn counter() -> Rc<Cell<usize>> {
    Rc::new(Cell::new(0))
}

fn bump(c: &Cell<usize>) {
    c.set(c.get() + 1);
}

// ---------------------------------------------------------------------------------------
// Deferrable
// ---------------------------------------------------------------------------------------

#[test]
fn a_deferrable_timeout_fires_its_errback_exactly_once_and_a_later_succeed_does_nothing() {
    let errbacks = counter();
    let callbacks = counter();
    let failed_after = Rc::new(Cell::new(None));
    let late_succeed = Rc::new(Cell::new(None));
    run(|r| {
        let started = Instant::now();
        let d: Deferrable<u32, TimedOut> = Deferrable::new();
        let (e, at) = (Rc::clone(&errbacks), Rc::clone(&failed_after));
        d.errback(move |err| {
            assert_eq!(*err, TimedOut);
            bump(&e);
            at.set(Some(started.elapsed()));
        });
        let c = Rc::clone(&callbacks);
        d.callback(move |_| bump(&c));
        d.timeout(r, Duration::from_millis(30));
        let (later, late) = (d.clone(), Rc::clone(&late_succeed));
        r.add_timer(Duration::from_millis(80), move |_| {
            late.set(Some(later.succeed(7)));
            assert!(!later.fail(TimedOut));
            assert_eq!(later.status(), DeferredStatus::Failed);
        });
        let e = Rc::clone(&errbacks);
        r.add_timer(Duration::from_millis(150), move |r| {
            // An errback added after the failure runs at once, inside `errback`.
            let before = e.get();
            let inner = Rc::clone(&e);
            d.errback(move |_| bump(&inner));
            assert_eq!(e.get(), before + 1);
            r.stop();
        });
        Ok(())
    });
    assert_eq!(
        errbacks.get(),
        2,
        "the timeout's errback once, the late one once"
    );
    assert_eq!(callbacks.get(), 0);
    assert_eq!(
        late_succeed.get(),
        Some(false),
        "succeed after the timeout is ignored"
    );
    let at = failed_after.get().expect("the errback ran");
    // Not before its time; that it came before the late succeed is `late_succeed` above.
    assert!(
        at >= Duration::from_millis(30),
        "the timeout fired after {at:?}"
    );
}

#[test]
fn succeeding_first_cancels_the_timeout_and_a_second_timeout_replaces_the_first() {
    let log = Rc::new(RefCell::new(Vec::new()));
    run(|r| {
        let started = Instant::now();
        // Succeeds before its timeout: the errback never runs, the timer is cancelled.
        let quick: Deferrable<&str, TimedOut> = Deferrable::new();
        let l = Rc::clone(&log);
        quick.errback(move |_| l.borrow_mut().push("quick timed out".to_string()));
        let l = Rc::clone(&log);
        quick.callback(move |v| l.borrow_mut().push(format!("quick {v}")));
        quick.timeout(r, Duration::from_millis(40));
        let q = quick.clone();
        r.add_timer(Duration::from_millis(5), move |_| {
            assert!(q.succeed("ok"));
        });
        // Timed out twice over: only the second timeout counts, and it fails once.
        let slow: Deferrable<(), String> = Deferrable::new();
        let l = Rc::clone(&log);
        slow.errback(move |e| {
            l.borrow_mut().push(format!(
                "slow {e} after {}ms",
                started.elapsed().as_millis() / 10 * 10
            ));
        });
        slow.timeout_with(r, Duration::from_millis(10), "first".to_string());
        slow.timeout_with(r, Duration::from_millis(60), "second".to_string());
        r.add_timer(Duration::from_millis(20), |r| {
            // The quick one's timer is gone, the slow one's first timer too: only the
            // slow one's second timeout and the stop timer are left.
            assert_eq!(r.timer_count(), 2);
        });
        r.add_timer(Duration::from_millis(120), |r| r.stop());
        Ok(())
    });
    let log = log.borrow();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0], "quick ok");
    assert!(log[1].starts_with("slow second after "), "{log:?}");
}

#[test]
fn deferrable_callbacks_added_after_resolution_run_at_once() {
    let ran = Rc::new(RefCell::new(Vec::new()));
    run(|r| {
        let d: Deferrable<String, io::Error> = Deferrable::new();
        let resolver = d.clone();
        r.add_timer(Duration::from_millis(1), move |_| {
            assert!(resolver.succeed("value".to_string()));
        });
        let ran = Rc::clone(&ran);
        r.add_timer(Duration::from_millis(10), move |r| {
            let inner = Rc::clone(&ran);
            d.callback(move |v| inner.borrow_mut().push(v.clone()));
            // At once: before `callback` returned, not on a later tick.
            assert_eq!(*ran.borrow(), ["value"]);
            d.errback(|_| panic!("an errback of a success never runs"));
            r.stop();
        });
        Ok(())
    });
    assert_eq!(ran.borrow().len(), 1);
}

#[test]
fn a_panicking_deferrable_callback_is_contained_by_the_reactor_and_the_others_run() {
    let others = counter();
    let mut panics = None;
    run(|r| {
        panics = Some(record_panics(r));
        let d: Deferrable<(), TimedOut> = Deferrable::new();
        let o = Rc::clone(&others);
        d.errback(move |_| bump(&o));
        d.errback(|_| panic!("errback two"));
        let o = Rc::clone(&others);
        d.errback(move |_| bump(&o));
        // The timeout resolves it from a timer: the reactor contains the panic there.
        d.timeout(r, Duration::from_millis(1));
        r.add_timer(Duration::from_millis(20), |r| r.stop());
        Ok(())
    });
    assert_eq!(others.get(), 2);
    assert_eq!(*panics.unwrap().borrow(), ["errback two"]);
}

// ---------------------------------------------------------------------------------------
// Channel
// ---------------------------------------------------------------------------------------

const SUBSCRIBERS: usize = 1000;

#[test]
fn a_channel_delivers_every_push_once_to_each_of_1000_subscribers_while_they_unsubscribe() {
    // Subscriber `i` records what it received in `got[i]`; one subscribed during the
    // push records in `late`.
    let got: Rc<Vec<RefCell<Vec<u32>>>> =
        Rc::new((0..SUBSCRIBERS).map(|_| RefCell::new(Vec::new())).collect());
    let late = Rc::new(RefCell::new(Vec::new()));
    let ids: Rc<RefCell<Vec<SubscriptionId>>> = Rc::new(RefCell::new(Vec::new()));
    let unsubscribed_late = Rc::new(Cell::new(None));
    let mut channel_out = None;
    run(|r| {
        let channel: Channel<u32> = Channel::new(r.local_handle());
        channel_out = Some(channel.clone());
        for i in 0..SUBSCRIBERS {
            let (got, all_ids, late) = (Rc::clone(&got), Rc::clone(&ids), Rc::clone(&late));
            let (ch, unsub_late) = (channel.clone(), Rc::clone(&unsubscribed_late));
            let id = channel.subscribe(move |_r, &item| {
                got[i].borrow_mut().push(item);
                if item != 1 {
                    return;
                }
                let id_of = |n: usize| all_ids.borrow()[n];
                match i {
                    // Itself, during its own call.
                    10 => assert!(ch.unsubscribe(id_of(10))),
                    // One later in the order (it must not get item 1) and one earlier (it
                    // already has): both unsubscribed for good.
                    20 => {
                        assert!(ch.unsubscribe(id_of(30)));
                        assert!(ch.unsubscribe(id_of(5)));
                        assert!(!ch.unsubscribe(id_of(10)), "already gone");
                    }
                    // Subscribes one: it gets nothing pushed before, everything after.
                    40 => {
                        let late = Rc::clone(&late);
                        let id = ch.subscribe(move |_r, &item| late.borrow_mut().push(item));
                        unsub_late.set(Some(id));
                    }
                    // Pushes during the delivery: delivered next tick, after 0..=2.
                    50 => ch.push(100),
                    // Unsubscribes the last one: 999 must not get item 1.
                    60 => assert!(ch.unsubscribe(id_of(SUBSCRIBERS - 1))),
                    _ => {}
                }
            });
            ids.borrow_mut().push(id);
        }
        assert_eq!(channel.subscriber_count(), SUBSCRIBERS);
        for item in 0..3 {
            channel.push(item);
        }
        // Delivered at the end of the tick, not inside `push`.
        assert!(got.iter().all(|g| g.borrow().is_empty()));
        assert_eq!(channel.pending(), 3);
        let ch = channel.clone();
        r.add_timer(Duration::from_millis(5), move |_| {
            ch.push(3);
            ch.push(4);
        });
        r.add_timer(Duration::from_millis(30), |r| r.stop());
        Ok(())
    });
    let everything = [0, 1, 2, 100, 3, 4];
    for (i, received) in got.iter().enumerate() {
        let expected: &[u32] = match i {
            5 | 10 => &[0, 1],
            30 | 999 => &[0],
            _ => &everything,
        };
        assert_eq!(*received.borrow(), expected, "subscriber {i}");
    }
    assert_eq!(*late.borrow(), [100, 3, 4]);
    let channel = channel_out.unwrap();
    assert_eq!(channel.subscriber_count(), SUBSCRIBERS - 4 + 1);
    assert_eq!(channel.pending(), 0);
    // Unsubscribing everyone drops the closures (and the channel clones they hold).
    for id in ids.borrow().iter().copied().chain(unsubscribed_late.get()) {
        channel.unsubscribe(id);
    }
    assert_eq!(channel.subscriber_count(), 0);
    assert_eq!(
        Rc::strong_count(&got),
        1,
        "every subscriber closure was dropped"
    );
}

#[test]
fn a_panicking_subscriber_is_reported_and_unsubscribed_and_the_others_still_receive() {
    let received = Rc::new(RefCell::new(Vec::new()));
    let mut panics = None;
    let mut channel_out = None;
    run(|r| {
        panics = Some(record_panics(r));
        let channel: Channel<&'static str> = Channel::new(r.local_handle());
        for name in ["a", "bad", "c"] {
            let received = Rc::clone(&received);
            channel.subscribe(move |_r, item| {
                assert!(name != "bad", "subscriber {name} panics on {item}");
                received.borrow_mut().push(format!("{name}:{item}"));
            });
        }
        channel.push("one");
        let ch = channel.clone();
        r.add_timer(Duration::from_millis(5), move |_| ch.push("two"));
        r.add_timer(Duration::from_millis(20), |r| r.stop());
        channel_out = Some(channel);
        Ok(())
    });
    assert_eq!(*received.borrow(), ["a:one", "c:one", "a:two", "c:two"]);
    assert_eq!(*panics.unwrap().borrow(), ["subscriber bad panics on one"]);
    assert_eq!(channel_out.unwrap().subscriber_count(), 2);
}

// ---------------------------------------------------------------------------------------
// Queue
// ---------------------------------------------------------------------------------------

#[test]
fn a_queue_is_fifo_for_items_and_for_pops_waiting_before_and_after_pushes() {
    let log: Rc<RefCell<Vec<(char, u32)>>> = Rc::new(RefCell::new(Vec::new()));
    let popper = |name: char, log: &Rc<RefCell<Vec<(char, u32)>>>| {
        let log = Rc::clone(log);
        move |_: &mut Reactor, item: u32| log.borrow_mut().push((name, item))
    };
    run(|r| {
        let q: Queue<u32> = Queue::new(r.local_handle());
        // Pops waiting before any push.
        q.pop(popper('A', &log));
        q.pop(popper('B', &log));
        q.pop(popper('C', &log));
        assert_eq!((q.len(), q.waiting()), (0, 3));
        q.push(1);
        q.push(2);
        assert_eq!((q.len(), q.waiting()), (0, 1));
        q.push(3);
        q.push(4);
        assert_eq!((q.len(), q.waiting()), (1, 0));
        assert!(!q.is_empty());
        // Callbacks run at the end of the tick, never inside push or pop.
        assert!(log.borrow().is_empty());
        let (q2, l) = (q.clone(), Rc::clone(&log));
        r.add_timer(Duration::from_millis(5), move |_| {
            assert_eq!(*l.borrow(), [('A', 1), ('B', 2), ('C', 3)]);
            // An item waiting before the pop: taken at once, handed over this tick.
            let (q3, l2) = (q2.clone(), Rc::clone(&l));
            q2.pop(move |_, item| {
                l2.borrow_mut().push(('D', item));
                // From inside a pop's callback: a push (goes to E, which waits) and a
                // pop (waits for the next push).
                q3.push(5);
                let l3 = Rc::clone(&l2);
                q3.pop(move |_, item| l3.borrow_mut().push(('F', item)));
            });
            let l2 = Rc::clone(&l);
            q2.pop(move |_, item| l2.borrow_mut().push(('E', item)));
            assert_eq!((q2.len(), q2.waiting()), (0, 1));
            assert!(q2.is_empty());
        });
        let q2 = q.clone();
        r.add_timer(Duration::from_millis(15), move |_| {
            assert_eq!(q2.waiting(), 1, "F waits");
            q2.push(6);
            q2.push(7);
        });
        let l = Rc::clone(&log);
        r.add_timer(Duration::from_millis(30), move |r| {
            assert_eq!(q.len(), 1, "7 is left");
            assert_eq!(q.waiting(), 0);
            assert_eq!(l.borrow().len(), 6);
            r.stop();
        });
        Ok(())
    });
    assert_eq!(
        *log.borrow(),
        [('A', 1), ('B', 2), ('C', 3), ('D', 4), ('E', 5), ('F', 6)]
    );
}

#[test]
fn a_panicking_pop_is_reported_and_the_other_pops_still_get_their_items() {
    let got = Rc::new(RefCell::new(Vec::new()));
    let mut panics = None;
    run(|r| {
        panics = Some(record_panics(r));
        let q: Queue<u32> = Queue::new(r.local_handle());
        for n in 0..3 {
            let got = Rc::clone(&got);
            q.pop(move |_, item| {
                assert!(n != 1, "pop {n} panics on {item}");
                got.borrow_mut().push(item);
            });
        }
        for item in [10, 11, 12] {
            q.push(item);
        }
        r.add_timer(Duration::from_millis(5), |r| r.stop());
        Ok(())
    });
    assert_eq!(*got.borrow(), [10, 12]);
    assert_eq!(*panics.unwrap().borrow(), ["pop 1 panics on 11"]);
}

// ---------------------------------------------------------------------------------------
// EachLimited
// ---------------------------------------------------------------------------------------

#[test]
fn each_limited_never_exceeds_its_concurrency_and_completes_once() {
    const ITEMS: u64 = 60;
    const LIMIT: usize = 4;
    let in_flight = counter();
    let max_in_flight = counter();
    let finished = Rc::new(RefCell::new(Vec::new()));
    let started = Rc::new(RefCell::new(Vec::new()));
    let done = counter();
    let mut each_out = None;
    run(|r| {
        let (fl, max, fin, st) = (
            Rc::clone(&in_flight),
            Rc::clone(&max_in_flight),
            Rc::clone(&finished),
            Rc::clone(&started),
        );
        let (d, fin2, fl2) = (
            Rc::clone(&done),
            Rc::clone(&finished),
            Rc::clone(&in_flight),
        );
        let each = EachLimited::start(
            r,
            0..ITEMS,
            LIMIT,
            move |r, n, next| {
                st.borrow_mut().push(n);
                bump(&fl);
                max.set(max.get().max(fl.get()));
                let (fl, fin) = (Rc::clone(&fl), Rc::clone(&fin));
                let finish = move || {
                    fl.set(fl.get() - 1);
                    fin.borrow_mut().push(n);
                };
                match n % 3 {
                    // Finished at once, inside the step.
                    0 => {
                        finish();
                        next.next();
                    }
                    // Finished by a timer, some later than others.
                    1 => {
                        r.add_timer(Duration::from_millis(n % 7), move |_| {
                            finish();
                            next.next();
                        });
                    }
                    // Finished by dropping `next` from a later tick.
                    _ => r.next_tick(move |_| {
                        finish();
                        drop(next);
                    }),
                }
            },
            move |r| {
                bump(&d);
                assert_eq!(fl2.get(), 0, "done runs after every step finished");
                assert_eq!(fin2.borrow().len(), ITEMS as usize);
                // Give a second `done` every chance to happen before stopping.
                r.add_timer(Duration::from_millis(10), |r| r.stop());
            },
        );
        assert_eq!(each.concurrency(), LIMIT);
        assert!(
            started.borrow().is_empty(),
            "steps start at the end of the tick"
        );
        each_out = Some(each);
        Ok(())
    });
    assert_eq!(done.get(), 1);
    assert_eq!(
        max_in_flight.get(),
        LIMIT,
        "the limit is reached and never passed"
    );
    assert_eq!(
        *started.borrow(),
        (0..ITEMS).collect::<Vec<_>>(),
        "in item order"
    );
    let mut finished = finished.borrow().clone();
    finished.sort_unstable();
    assert_eq!(finished, (0..ITEMS).collect::<Vec<_>>());
    let each = each_out.unwrap();
    assert!(each.is_finished());
    assert_eq!(each.in_flight(), 0);
}

#[test]
fn each_limited_over_nothing_completes_once_and_a_panicking_step_does_not_stall_it() {
    let done = counter();
    let steps = counter();
    let mut panics = None;
    run(|r| {
        panics = Some(record_panics(r));
        let d = Rc::clone(&done);
        EachLimited::start(
            r,
            Vec::<u8>::new(),
            2,
            |_, _, _| unreachable!(),
            move |_| bump(&d),
        );
        let (d, s) = (Rc::clone(&done), Rc::clone(&steps));
        EachLimited::start(
            r,
            0..5,
            1,
            move |_, n, next| {
                bump(&s);
                // Its `Next` is dropped as the panic unwinds: the step counts as finished.
                assert!(n != 2, "step {n} panics");
                drop(next);
            },
            move |r| {
                bump(&d);
                r.add_timer(Duration::from_millis(5), |r| r.stop());
            },
        );
        Ok(())
    });
    assert_eq!(done.get(), 2, "each iteration's `done` ran once");
    assert_eq!(steps.get(), 5, "every item got its step");
    assert_eq!(*panics.unwrap().borrow(), ["step 2 panics"]);
}

#[test]
fn raising_each_limited_concurrency_starts_more_steps() {
    let max_in_flight = counter();
    run(|r| {
        let in_flight = counter();
        let max = Rc::clone(&max_in_flight);
        let each = EachLimited::start(
            r,
            0..20u64,
            1,
            move |r, _, next| {
                bump(&in_flight);
                max.set(max.get().max(in_flight.get()));
                let fl = Rc::clone(&in_flight);
                r.add_timer(Duration::from_millis(2), move |_| {
                    fl.set(fl.get() - 1);
                    next.next();
                });
            },
            |r| r.stop(),
        );
        r.add_timer(Duration::from_millis(5), move |_| each.set_concurrency(5));
        Ok(())
    });
    assert_eq!(max_in_flight.get(), 5);
}

// ---------------------------------------------------------------------------------------
// The chat example, built on the Channel
// ---------------------------------------------------------------------------------------

#[test]
fn chat_broadcasts_each_line_to_everyone_else_through_the_channel() {
    let server = ReactorThread::spawn(|r| chat::start(r, "127.0.0.1:0"));
    let addr: SocketAddr = server.value;

    let mut alice = connect(addr);
    let alice_name = alice.local_addr().unwrap().to_string();
    let welcome = read_until(&mut alice, b"\n");
    assert_eq!(welcome, format!("welcome, {alice_name}\n").as_bytes());

    let mut bob = connect(addr);
    let bob_name = bob.local_addr().unwrap().to_string();
    read_until(&mut bob, b"\n");
    let joined = format!("* {bob_name} joined\n");
    assert_eq!(read_until(&mut alice, joined.as_bytes()), joined.as_bytes());

    // A line in two segments arrives whole, at everyone but its sender.
    alice.write_all(b"hello, ").unwrap();
    alice.flush().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    alice.write_all(b"bob\n").unwrap();
    let said = format!("{alice_name}: hello, bob\n");
    assert_eq!(read_until(&mut bob, said.as_bytes()), said.as_bytes());

    bob.write_all(b"hi alice\n").unwrap();
    let answer = format!("{bob_name}: hi alice\n");
    let seen = read_until(&mut alice, answer.as_bytes());
    assert_eq!(seen, answer.as_bytes(), "alice never sees her own line");

    drop(bob);
    let left = format!("* {bob_name} left (");
    let seen = read_until(&mut alice, left.as_bytes());
    assert_eq!(find(&seen, left.as_bytes()), Some(0), "{seen:?}");

    // A line longer than the limit ends the session; the others hear that it left.
    let mut carol = connect(addr);
    let carol_name = carol.local_addr().unwrap().to_string();
    read_until(&mut carol, b"\n");
    carol.write_all(&[b'x'; 5000]).unwrap();
    let rest = read_all(&mut carol);
    assert_eq!(rest, b"line too long, bye\n");
    let gone =
        format!("* {carol_name} left (protocol error: frame over the limit of 4096 bytes)\n");
    let seen = read_until(&mut alice, gone.as_bytes());
    assert!(find(&seen, gone.as_bytes()).is_some(), "{seen:?}");

    server.stop();
}

// ---------------------------------------------------------------------------------------
// system (EM.system)
// ---------------------------------------------------------------------------------------

/// Runs `command` with `options` on a reactor of its own and returns what `done` got,
/// checking that it was called exactly once.
fn run_system(command: &mut Command, options: SystemOptions) -> SystemResult {
    let results = Rc::new(RefCell::new(Vec::new()));
    let seen = Rc::clone(&results);
    run(move |r| {
        system_with(r, command, options, move |r, result| {
            seen.borrow_mut().push(result);
            // Stop on the next tick: a second call would still be recorded.
            r.next_tick(|r| r.stop());
        })?;
        Ok(())
    });
    let mut results = results.take();
    assert_eq!(results.len(), 1, "done runs exactly once");
    results.pop().unwrap()
}

#[test]
fn system_collects_more_than_10_mib_of_stdout_byte_exact_with_the_exit_status() {
    let expected: String = (1..=1_500_000).map(|n| format!("{n}\n")).collect();
    assert!(expected.len() > 10 << 20);
    let output = run_system(
        Command::new("seq").args(["1", "1500000"]),
        SystemOptions::new(),
    )
    .expect("seq exits");
    assert!(output.status.success(), "{:?}", output.status);
    assert_eq!(output.stdout.len(), expected.len());
    assert!(output.stdout == expected.as_bytes(), "stdout differs");
    assert!(output.stderr.is_empty());
}

#[test]
fn system_reports_stderr_and_a_failing_exit_status() {
    let output = run_system(
        Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
        SystemOptions::new(),
    )
    .expect("sh exits");
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(output.stdout, b"out\n");
    assert_eq!(output.stderr, b"err\n");
}

#[test]
fn system_feeds_its_input_to_the_command_and_closes_its_stdin() {
    // More than a pipe holds either way: cat writes back while it is still being fed.
    let input: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let output = run_system(
        &mut Command::new("cat"),
        SystemOptions::new().input(input.clone()),
    )
    .expect("cat exits at the end of its input");
    assert!(output.status.success());
    assert!(
        output.stdout == input,
        "cat's output differs from its input"
    );

    // No input: stdin is closed at once, so a command reading it ends.
    let output = run_system(&mut Command::new("cat"), SystemOptions::new()).unwrap();
    assert!(output.status.success());
    assert!(output.stdout.is_empty());
}

#[test]
fn system_kills_a_command_that_writes_past_its_limit_and_says_so() {
    // `yes` never ends by itself: only the limit ends it.
    let result = run_system(
        &mut Command::new("yes"),
        SystemOptions::new().max_output(1 << 20),
    );
    assert_eq!(
        result,
        Err(SystemFailed::OutputOverLimit { limit: 1 << 20 })
    );
}

#[test]
fn system_on_a_command_that_cannot_start_fails_at_once_and_never_calls_back() {
    let called = counter();
    let seen = Rc::clone(&called);
    run(move |r| {
        let e = system(
            r,
            &mut Command::new("/nonexistent/ember-test-command"),
            move |_, _| bump(&seen),
        )
        .expect_err("no such program");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        // Give a wrongly queued callback a tick to show itself.
        r.next_tick(|r| r.next_tick(|r| r.stop()));
        Ok(())
    });
    assert_eq!(called.get(), 0);
}

#[test]
fn system_still_calls_back_once_when_the_reactor_stops_before_the_command_ends() {
    use std::os::unix::process::ExitStatusExt;
    let results = Rc::new(RefCell::new(Vec::new()));
    let seen = Rc::clone(&results);
    let started = Instant::now();
    run(move |r| {
        system(r, Command::new("sleep").arg("30"), move |_, result| {
            seen.borrow_mut().push(result);
        })?;
        r.next_tick(|r| r.stop());
        Ok(())
    });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stop waited for sleep"
    );
    let results = results.take();
    assert_eq!(results.len(), 1, "done runs exactly once");
    let output = results[0].as_ref().expect("killed, with a status");
    assert_eq!(output.status.signal(), Some(libc::SIGKILL));
}

#[test]
fn system_runs_commands_side_by_side_without_blocking_the_loop() {
    // The first command waits for the second to finish (through a FIFO): on a loop that
    // blocked on the first, the second could never run.
    let dir = support::clients::fresh_dir("em-system", "fifo");
    let fifo = dir.join("fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let outputs = Rc::new(RefCell::new(Vec::new()));
    let (first, second) = (Rc::clone(&outputs), Rc::clone(&outputs));
    let stop_when_both = |r: &mut Reactor, outputs: &RefCell<Vec<Vec<u8>>>| {
        if outputs.borrow().len() == 2 {
            r.stop();
        }
    };
    run(move |r| {
        let reader = format!("cat {}", fifo.display());
        system(
            r,
            Command::new("sh").args(["-c", &reader]),
            move |r, result| {
                first.borrow_mut().push(result.unwrap().stdout);
                stop_when_both(r, &first);
            },
        )?;
        let writer = format!("echo through the fifo > {}", fifo.display());
        system(
            r,
            Command::new("sh").args(["-c", &writer]),
            move |r, result| {
                assert!(result.unwrap().status.success());
                second.borrow_mut().push(b"writer done".to_vec());
                stop_when_both(r, &second);
            },
        )?;
        Ok(())
    });
    let mut outputs = outputs.take();
    outputs.sort();
    assert_eq!(
        outputs,
        vec![b"through the fifo\n".to_vec(), b"writer done".to_vec()]
    );
}

// ---------------------------------------------------------------------------------------
// Connection introspection: idle_time (get_idle_time), sock_opt (get_sock_opt)
// ---------------------------------------------------------------------------------------

/// Accepts one client, records its idle time when a byte arrives, after 150 ms of
/// silence, and during `unbind`; answers "ok" and closes.
struct IdleWatcher {
    readings: Rc<RefCell<Vec<IdleReading>>>,
}

/// When an idle time was read, and what it was.
type IdleReading = (&'static str, Option<Duration>);

const QUIET: Duration = Duration::from_millis(150);

impl Handler for IdleWatcher {
    fn receive_data(&mut self, cx: &mut Context<'_>, _data: &[u8]) {
        self.readings.borrow_mut().push(("on_read", cx.idle_time()));
        let id = cx.id();
        cx.add_timer(QUIET, move |r| {
            let idle = r.with_handler::<IdleWatcher, _>(id, |w, cx| {
                w.readings
                    .borrow_mut()
                    .push(("after_quiet", cx.idle_time()));
                cx.send_data(b"ok");
                cx.close_after_writing();
            });
            assert!(idle.is_ok(), "{idle:?}");
        });
    }

    fn unbind(&mut self, cx: &mut Context<'_>, _reason: ember::UnbindReason) {
        self.readings.borrow_mut().push(("unbind", cx.idle_time()));
        cx.stop();
    }
}

#[test]
fn idle_time_is_near_zero_after_a_read_and_grows_while_nothing_moves() {
    let readings = Rc::new(RefCell::new(Vec::new()));
    let record = Rc::clone(&readings);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let client = std::thread::spawn(move || {
        let mut stream = connect(addr_rx.recv().unwrap());
        stream.write_all(b"a").unwrap();
        read_all(&mut stream)
    });
    run(move |r| {
        let server = r.start_server("127.0.0.1:0", move || IdleWatcher {
            readings: Rc::clone(&record),
        })?;
        addr_tx.send(r.server_addr(server).unwrap()).unwrap();
        Ok(())
    });
    assert_eq!(client.join().unwrap(), b"ok");
    let readings = readings.take();
    let names: Vec<_> = readings.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["on_read", "after_quiet", "unbind"]);
    let on_read = readings[0].1.expect("alive while reading");
    let after_quiet = readings[1].1.expect("alive in the timer");
    assert!(on_read < QUIET, "the byte just moved, yet idle {on_read:?}");
    assert!(
        after_quiet >= QUIET,
        "nothing moved for {QUIET:?}, yet idle {after_quiet:?}"
    );
    assert_eq!(
        readings[2].1, None,
        "no idle time once the connection is gone"
    );
}

/// Sets options in `post_init` and reads them back, reporting what it read.
struct OptionProbe {
    seen: Rc<RefCell<Vec<io::Result<i32>>>>,
}

impl Handler for OptionProbe {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        let mut seen = self.seen.borrow_mut();
        cx.set_sock_opt(libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
            .unwrap();
        seen.push(cx.sock_opt(libc::IPPROTO_TCP, libc::TCP_NODELAY));
        cx.set_nodelay(false).unwrap();
        seen.push(cx.sock_opt(libc::IPPROTO_TCP, libc::TCP_NODELAY));
        cx.set_sock_opt(libc::SOL_SOCKET, libc::SO_RCVBUF, 64 * 1024)
            .unwrap();
        seen.push(cx.sock_opt(libc::SOL_SOCKET, libc::SO_RCVBUF));
        seen.push(cx.sock_opt(libc::SOL_SOCKET, libc::SO_TYPE));
        // Not a socket option at this level: the kernel's error comes back.
        seen.push(cx.sock_opt(libc::SOL_SOCKET, -1));
        drop(seen);
        assert_eq!(cx.comm_inactivity_timeout(), None, "off by default");
        cx.set_comm_inactivity_timeout(Some(Duration::from_secs(5)));
        assert_eq!(cx.comm_inactivity_timeout(), Some(Duration::from_secs(5)));
        cx.set_comm_inactivity_timeout(None);
        assert_eq!(cx.comm_inactivity_timeout(), None);
        cx.close();
    }

    fn unbind(&mut self, cx: &mut Context<'_>, _reason: ember::UnbindReason) {
        let gone = cx.sock_opt(libc::SOL_SOCKET, libc::SO_TYPE);
        self.seen.borrow_mut().push(gone);
        cx.stop();
    }
}

#[test]
fn sock_opt_and_comm_inactivity_timeout_read_back_what_their_setters_wrote() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let record = Rc::clone(&seen);
    // Open until the test ends: the connect succeeds (the kernel completes it).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    run(move |r| {
        r.connect(addr, OptionProbe { seen: record })?;
        Ok(())
    });
    let seen = seen.take();
    let values: Vec<_> = seen.iter().map(|v| v.as_ref().ok().copied()).collect();
    assert_eq!(values[0], Some(1), "TCP_NODELAY on");
    assert_eq!(values[1], Some(0), "TCP_NODELAY off");
    // Linux doubles the asked size for its bookkeeping; no kernel gives less.
    assert!(values[2].unwrap() >= 64 * 1024, "SO_RCVBUF {:?}", values[2]);
    assert_eq!(values[3], Some(libc::SOCK_STREAM));
    assert!(seen[4].is_err(), "an unknown option is the kernel's error");
    let gone = seen[5].as_ref().unwrap_err();
    assert_eq!(gone.kind(), io::ErrorKind::NotConnected, "during unbind");
}

#[test]
fn set_descriptor_table_size_sets_the_soft_limit_within_the_hard_one() {
    // Returns the hard limit: the soft one is raised to it.
    let hard = ember::raise_descriptor_limit().unwrap();
    // Lowering by one is harmless to the other tests in this process; asking for more
    // than the hard limit gets the hard limit (what an unprivileged process may have).
    assert_eq!(
        ember::em::set_descriptor_table_size(hard - 1).unwrap(),
        hard - 1
    );
    assert_eq!(ember::em::descriptor_table_size().unwrap(), hard - 1);
    assert_eq!(
        ember::em::set_descriptor_table_size(u64::MAX).unwrap(),
        hard
    );
    assert_eq!(ember::em::descriptor_table_size().unwrap(), hard);
}

/// Reads the pending-connect timeout at each stage of a connect, reporting what it read.
struct ConnectTimeoutProbe {
    seen: Rc<RefCell<Vec<Option<Duration>>>>,
}

impl Handler for ConnectTimeoutProbe {
    fn post_init(&mut self, cx: &mut Context<'_>) {
        let mut seen = self.seen.borrow_mut();
        seen.push(cx.pending_connect_timeout());
        cx.set_pending_connect_timeout(Duration::from_secs(7));
        seen.push(cx.pending_connect_timeout());
    }

    fn connection_completed(&mut self, cx: &mut Context<'_>) {
        // Connected: a new timeout has nothing left to bound.
        cx.set_pending_connect_timeout(Duration::from_secs(1));
        let id = cx.id();
        let from_reactor = cx.reactor().pending_connect_timeout(id);
        self.seen.borrow_mut().push(from_reactor);
        cx.close();
    }

    fn unbind(&mut self, cx: &mut Context<'_>, _reason: ember::UnbindReason) {
        self.seen.borrow_mut().push(cx.pending_connect_timeout());
        cx.stop();
    }
}

#[test]
fn pending_connect_timeout_reads_back_the_default_or_what_was_set_while_connecting() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let record = Rc::clone(&seen);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let r = run(move |r| {
        assert_eq!(r.default_pending_connect_timeout(), Duration::from_secs(20));
        r.set_default_pending_connect_timeout(Duration::from_secs(3));
        assert_eq!(r.default_pending_connect_timeout(), Duration::from_secs(3));
        r.connect(addr, ConnectTimeoutProbe { seen: record })?;
        Ok(())
    });
    assert_eq!(
        *seen.borrow(),
        [
            Some(Duration::from_secs(3)), // the default it started with
            Some(Duration::from_secs(7)), // set while connecting
            Some(Duration::from_secs(7)), // a set once connected changes nothing
            None,                         // gone, in unbind
        ]
    );
    assert_eq!(r.default_pending_connect_timeout(), Duration::from_secs(3));
}
