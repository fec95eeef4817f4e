//! `ember-proxy`: em-proxy's command line on ember — relay, duplex, balance — and
//! `ember-proxy demo`, a self-contained tour that exits by itself.
//!
//! Exit codes: 0 done (including after SIGINT/SIGTERM), 1 a runtime failure (a name that
//! does not resolve, a port in use), 2 a usage mistake. Every failure is one line on
//! stderr.

mod access;
mod args;
mod demo;
mod logging;
mod plan;
mod status;

use std::cell::Cell;
use std::io::{self, Write};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember::proxy::Stats;
use ember::{Reactor, ServerId};

use args::{Command, RunArgs, USAGE};
use log::LevelFilter;
use logging::LogWriter;
use plan::Plan;
use status::Observed;

/// A line on stdout. Unlike `println!`, a closed or broken stdout (a pipe whose reader
/// has gone) loses the line instead of panicking and taking every client with it.
macro_rules! say_out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// A line on stderr; never panics (see `say_out!`).
macro_rules! say_err {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    let argv: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect();
    let Ok(argv) = argv else {
        say_err!("ember-proxy: an argument is not valid UTF-8");
        return ExitCode::from(2);
    };
    match args::parse(&argv) {
        Ok(Command::Help) => {
            say_out!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            say_out!("ember-proxy {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Usage) => {
            say_err!("{USAGE}");
            ExitCode::from(2)
        }
        Ok(Command::Demo(demo)) => {
            // The demo reports by itself; -v adds the proxy's own lines.
            let writer = LogWriter::start(&logging::AccessLog::Off).ok();
            if let (true, Some(writer)) = (demo.verbose, &writer) {
                logging::install(writer.handle(), LevelFilter::Info);
            }
            let code = demo::run(&demo);
            if let Some(writer) = writer {
                writer.finish();
            }
            code
        }
        Ok(Command::Run(run)) => match serve(&run) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                say_err!("ember-proxy: {e}");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            say_err!("ember-proxy: {e} (see ember-proxy --help)");
            ExitCode::from(2)
        }
    }
}

fn serve(run: &RunArgs) -> Result<(), String> {
    let mut plan = Plan::resolve(run)?;
    let writer = LogWriter::start(&run.access_log).map_err(|e| e.to_string())?;
    let log = writer.handle();
    logging::install(log.clone(), LevelFilter::Info);
    let observed = Arc::new(Observed::default());
    if log.wants_access() || run.admin.is_some() {
        let (log, format, observed) = (log.clone(), run.log_format, Arc::clone(&observed));
        plan.options = plan.options.clone().on_session_end(move |record| {
            observed.session_ended(record);
            if log.wants_access() {
                log.access(access::line(record, format));
            }
        });
    }
    // Two descriptors per client: the usual soft limit of 1024 would cap us near 500.
    match ember::raise_descriptor_limit() {
        Ok(limit) if run.verbose => log::info!("ember-proxy: descriptor limit {limit}"),
        Ok(_) => {}
        Err(e) => log::warn!("ember-proxy: cannot raise the descriptor limit: {e}"),
    }
    let served = Reactor::run(|r| {
        let started = plan.start(r)?;
        let server = started.server;
        let bound = server.local_addr().unwrap_or(plan.listen);
        say_out!("{}", plan.describe(bound));
        let draining = Rc::new(Cell::new(false));
        if let Some(addr) = run.admin {
            let routes = status::routes(status::Sources {
                stats: server.stats().clone(),
                pools: started.pools,
                observed,
                draining: Rc::clone(&draining),
                started: Instant::now(),
            });
            let admin = ember::admin::serve(r, addr, routes)
                .map_err(|e| io::Error::new(e.kind(), format!("--admin {addr}: {e}")))?;
            let at = admin.local_addr().unwrap_or(addr);
            say_out!("ember-proxy: admin on http://{at}/ (/metrics, /stats, /health)");
        }
        // A closed terminal (SIGHUP) must not stop the proxy; logrotate's SIGUSR1 reopens
        // the access log.
        r.on_signal(libc::SIGHUP, |_| {})?;
        r.on_signal(libc::SIGUSR1, move |_| log.reopen())?;
        stop_gracefully_on_signals(r, server.id(), server.stats().clone(), plan.grace, draining)
    })
    .map_err(|e| e.to_string());
    writer.finish();
    served
}

/// SIGINT/SIGTERM: stop accepting, let live client sessions finish for up to `grace`,
/// then stop. Shadows still draining are not waited for once the last client is gone. A
/// second signal stops at once.
fn stop_gracefully_on_signals(
    r: &mut Reactor,
    server: ServerId,
    stats: Stats,
    grace: Duration,
    draining: Rc<Cell<bool>>,
) -> std::io::Result<()> {
    for signo in [libc::SIGINT, libc::SIGTERM] {
        let draining = Rc::clone(&draining);
        let stats = stats.clone();
        r.on_signal(signo, move |r| {
            if draining.replace(true) {
                r.stop();
                return;
            }
            r.stop_server(server);
            let live = stats.clients_active();
            if live == 0 {
                r.stop();
                return;
            }
            log::info!(
                "ember-proxy: stopping: not accepting; waiting up to {:.1}s for {live} client(s)",
                grace.as_secs_f64()
            );
            let deadline = Instant::now() + grace;
            let stats = stats.clone();
            r.add_periodic_timer(Duration::from_millis(20), move |r| {
                if stats.clients_active() == 0 || Instant::now() >= deadline {
                    r.stop();
                }
            });
        })?;
    }
    Ok(())
}
