//! `ember-proxy`: em-proxy's command line on ember — relay, duplex, balance — and
//! `ember-proxy demo`, a self-contained tour that exits by itself.
//!
//! Exit codes: 0 done (including after SIGINT/SIGTERM), 1 a runtime failure (a name that
//! does not resolve, a port in use), 2 a usage mistake. Every failure is one line on
//! stderr.

mod access;
mod args;
mod board;
mod config;
mod demo;
mod drain;
mod listeners;
mod logging;
mod plan;
mod report;
mod status;
mod systemd;
mod tls_setup;
mod workers;

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::process::ExitCode;

use ember::proxy::Target;

use args::{Command, RunArgs, USAGE};
use log::LevelFilter;
use logging::LogWriter;
use plan::Plan;

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
        Ok(Command::Config(path)) => config::serve_file(&path),
        Ok(Command::Report(report)) => report::run(&report),
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
            let writer = LogWriter::start(&logging::AccessLog::Off, None).ok();
            if let (true, Some(writer)) = (demo.verbose, &writer) {
                logging::install(writer.handle(), LevelFilter::Info);
            }
            let code = demo::run(&demo);
            if let Some(writer) = writer {
                writer.finish();
            }
            code
        }
        Ok(Command::Run(run)) => match serve(std::slice::from_ref(&run), None) {
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

/// Runs the listeners `runs` describe (one from the flags, one per `[[listener]]` from a
/// file) until they have drained after SIGINT/SIGTERM. `config` is the file they came
/// from, re-read on SIGHUP.
fn serve(runs: &[RunArgs], config: Option<&std::path::Path>) -> Result<(), String> {
    // First, before anything opens a descriptor: the sockets systemd may have passed.
    let passed = systemd::listen_fds()?;
    let plans = Plan::resolve_all(runs)?;
    let process = config::Process::of(&runs[0]);
    let writer = LogWriter::start(&process.access_log, process.compare_log.as_deref())
        .map_err(|e| e.to_string())?;
    // -v adds ember's own debug lines (a relay's splice-or-copy verdicts, a dropped
    // shadow answer); other crates stay at info.
    let verbose = runs.iter().any(|r| r.verbose);
    let level = if verbose {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    logging::install(writer.handle(), level);
    // Two descriptors per client: the usual soft limit of 1024 would cap us near 500.
    match ember::raise_descriptor_limit() {
        Ok(limit) if verbose => {
            log::info!("ember-proxy: descriptor limit {limit}")
        }
        Ok(_) => {}
        Err(e) => log::warn!("ember-proxy: cannot raise the descriptor limit: {e}"),
    }
    for plan in &plans {
        warn_about_unreachable_backends(plan);
    }
    let passed = assign_passed(&plans, passed);
    let served = workers::run(workers::Launch {
        plans,
        process,
        log: writer.handle(),
        passed,
        config: config.map(std::path::Path::to_path_buf),
    })
    .map_err(|e| e.to_string());
    writer.finish();
    served
}

/// Which listener takes which socket systemd passed: with one listener, the first socket
/// (whatever `-l` says); with several, the socket on each listener's address. A socket no
/// listener takes is closed, with a warning.
fn assign_passed(
    plans: &[Plan],
    passed: Vec<std::net::TcpListener>,
) -> Vec<Option<std::net::TcpListener>> {
    let mut assigned: Vec<Option<std::net::TcpListener>> = plans.iter().map(|_| None).collect();
    for (i, socket) in passed.into_iter().enumerate() {
        let addr = socket.local_addr().ok();
        let slot = if plans.len() == 1 {
            (i == 0).then_some(0)
        } else {
            plans.iter().position(|p| Some(p.listen) == addr)
        };
        match slot {
            Some(slot) if assigned[slot].is_none() => assigned[slot] = Some(socket),
            _ => log::warn!(
                "ember-proxy: socket activation: no listener for the passed socket {} \
                 (descriptor {}); closing it",
                addr.map_or_else(|| "-".into(), |a| a.to_string()),
                i + 3
            ),
        }
    }
    assigned
}

/// One warning at start per Unix-socket backend that is not there (`-s` with a typo):
/// the proxy starts anyway, since the socket may appear later, but the operator hears of
/// it before the first client is turned away. Names were checked to resolve already; TCP
/// backends are not probed here (an empty connection in every backend's log at each
/// start): `--check` watches them.
fn warn_about_unreachable_backends(plan: &Plan) {
    for target in plan.backend_targets() {
        if let Target::Unix(path) = &target {
            let problem = match std::fs::metadata(path) {
                Err(e) => Some(e.to_string()),
                Ok(meta) if !meta.file_type().is_socket() => Some("not a socket".to_owned()),
                Ok(_) => None,
            };
            if let Some(problem) = problem {
                log::warn!(
                    "ember-proxy: backend {target} cannot be reached now ({problem}); starting anyway"
                );
            }
        }
    }
}
