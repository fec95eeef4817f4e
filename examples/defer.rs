//! Defer: blocking work on the thread pool, callbacks on the reactor thread, and a panic
//! that reaches its callback instead of killing the loop.
//! `cargo run --example defer`

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use ember::Reactor;

fn main() -> std::io::Result<()> {
    Reactor::run(|r| {
        r.set_defer_threads(4);
        let outstanding = Rc::new(Cell::new(4));
        for n in 1..=4u64 {
            let outstanding = Rc::clone(&outstanding);
            r.defer(
                move || {
                    // Stand-in for a blocking call (a database, a DNS lookup, a file).
                    std::thread::sleep(Duration::from_millis(100 * n));
                    if n == 3 {
                        panic!("job {n} failed");
                    }
                    (n, std::thread::current().name().map(str::to_owned))
                },
                move |r, result| {
                    match result {
                        Ok((n, thread)) => {
                            println!("job {n} done on {}", thread.unwrap_or_default())
                        }
                        Err(panic) => println!("a job panicked, the loop carries on: {panic}"),
                    }
                    outstanding.set(outstanding.get() - 1);
                    if outstanding.get() == 0 {
                        r.stop();
                    }
                },
            );
        }
        r.add_periodic_timer(Duration::from_millis(120), |_| {
            println!("the reactor thread stays responsive");
        });
        Ok(())
    })
}
