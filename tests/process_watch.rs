//! `Reactor::watch_process` (EventMachine's `watch_process` / `process_exited`): a
//! callback on the reactor thread once a process has exited — a child of this test, a
//! process that is nobody's child here, one that does not exist, and a watch stopped
//! before the exit.

#[allow(dead_code)] // each test binary uses a different part of the support library
mod support;

use std::process::{Command, Stdio};
use std::sync::mpsc;

use support::IO_TIMEOUT;
use support::clients::recv;
use support::reactor_thread::ReactorThread;

/// The state letter of `/proc/PID/stat` (`Z` for a zombie), or `None` once it is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(") ")?.1;
    after_name.chars().next()
}

fn idle_reactor() -> ReactorThread<()> {
    ReactorThread::spawn(|_| Ok(()))
}

#[test]
fn the_callback_runs_once_the_watched_child_has_exited() {
    let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
    let pid = child.id();
    let reactor = idle_reactor();
    let (tx, rx) = mpsc::channel();
    reactor.on_reactor(move |r| {
        r.watch_process(pid, move |_, exited| {
            // Not reaped yet (this test is its parent): a zombie, so it has ended.
            let _ = tx.send((exited, process_state(exited)));
        })
        .unwrap();
    });
    let (exited, state) = recv(&rx, IO_TIMEOUT, "the exit callback");
    assert_eq!(exited, pid);
    assert_eq!(state, Some('Z'), "called before the process ended");
    assert!(child.wait().unwrap().success());
    assert!(rx.try_recv().is_err(), "called once");
}

#[test]
fn a_process_that_is_nobody_s_child_here_is_watched_too() {
    // sh starts `sleep` in the background and exits: the sleep is reparented away.
    let out = Command::new("sh")
        .args(["-c", "sleep 0.2 </dev/null >/dev/null 2>&1 & echo $!"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let pid: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let reactor = idle_reactor();
    let (tx, rx) = mpsc::channel();
    let watched = reactor.on_reactor(move |r| {
        r.watch_process(pid, move |_, exited| {
            let _ = tx.send(exited);
        })
        .is_ok()
    });
    assert!(watched, "the grandchild exited before it could be watched");
    assert_eq!(recv(&rx, IO_TIMEOUT, "the exit callback"), pid);
    assert_ne!(
        process_state(pid),
        Some('S'),
        "called while it still sleeps"
    );
}

#[test]
fn watching_a_process_that_does_not_exist_is_an_error() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap(); // reaped: the pid names no process now
    let reactor = idle_reactor();
    let err = reactor.on_reactor(move |r| r.watch_process(pid, |_, _| {}).unwrap_err());
    assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "{err}");
}

#[test]
fn a_watch_closed_before_the_exit_never_calls_back() {
    let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
    let pid = child.id();
    let reactor = idle_reactor();
    let (tx, rx) = mpsc::channel::<u32>();
    let id = reactor.on_reactor(move |r| {
        r.watch_process(pid, move |_, exited| {
            let _ = tx.send(exited);
        })
        .unwrap()
    });
    reactor.on_reactor(move |r| r.close_connection(id));
    child.wait().unwrap();
    // Two full turns of the loop after the exit: a notification would have run by now.
    reactor.on_reactor(|_| ());
    reactor.on_reactor(|_| ());
    assert!(rx.try_recv().is_err(), "a closed watch called back");
}
