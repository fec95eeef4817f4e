//! The standard `process_*` metrics of the Prometheus client libraries, for this process:
//! CPU seconds (user and system, every thread counted: the kernel's share of the work is
//! in it), resident memory, open and maximum descriptors. Read from the kernel at each
//! scrape; nothing is kept.

use std::fs;

use super::Exposition;
use crate::sys::limits;

/// Writes `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds` and `process_max_fds` (those the system answers) to `page`.
pub fn expose_process(page: &mut Exposition) {
    if let Ok(cpu) = limits::cpu_time() {
        page.counter(
            "process_cpu_seconds_total",
            "User and system CPU time spent, in seconds.",
            cpu.as_secs_f64(),
        );
    }
    if let Some(rss) = resident_bytes() {
        page.gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            rss,
        );
    }
    if let Ok(fds) = fs::read_dir("/proc/self/fd") {
        // The directory handle being read is one of them.
        let open = fds.count().saturating_sub(1);
        page.gauge("process_open_fds", "Open file descriptors.", open);
    }
    if let Ok((soft, _)) = limits::descriptor_limits() {
        page.gauge("process_max_fds", "The open file descriptor limit.", soft);
    }
}

/// Resident pages × page size, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * limits::page_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_metrics_are_there_and_plausible() {
        let mut page = Exposition::new();
        expose_process(&mut page);
        let text = page.finish();
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
    }
}
