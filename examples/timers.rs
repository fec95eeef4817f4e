//! Timers: a one-shot, a periodic that cancels itself, and a next-tick.
//! `cargo run --example timers`

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ember::Reactor;

fn main() -> std::io::Result<()> {
    let start = Instant::now();
    Reactor::run(|r| {
        r.next_tick(move |_| println!("{:>7.1?} next tick", start.elapsed()));
        r.add_timer(Duration::from_millis(250), move |_| {
            println!("{:>7.1?} one-shot timer (250 ms)", start.elapsed());
        });
        let beats = Rc::new(Cell::new(0));
        let periodic = Rc::new(Cell::new(None));
        let own_id = Rc::clone(&periodic);
        let id = r.add_periodic_timer(Duration::from_millis(100), move |r| {
            beats.set(beats.get() + 1);
            println!("{:>7.1?} periodic beat {}", start.elapsed(), beats.get());
            if beats.get() == 5 {
                r.cancel_timer(own_id.get().expect("set right after creation"));
                r.add_timer(Duration::from_millis(50), |r| r.stop());
            }
        });
        periodic.set(Some(id));
        Ok(())
    })?;
    println!("{:>7.1?} stopped", start.elapsed());
    Ok(())
}
