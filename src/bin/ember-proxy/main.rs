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
mod logging;
mod plan;
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
        Ok(Command::Run(run)) => match serve(&run, None) {
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

/// Runs the proxy the flags describe until it has drained after SIGINT/SIGTERM.
/// `config` is the file the arguments came from, re-read on SIGHUP.
fn serve(run: &RunArgs, config: Option<&std::path::Path>) -> Result<(), String> {
    // First, before anything opens a descriptor: the listener systemd may have passed.
    let adopted = systemd::listen_fds()?;
    let plan = Plan::resolve(run)?;
    let writer = LogWriter::start(&run.access_log).map_err(|e| e.to_string())?;
    logging::install(writer.handle(), LevelFilter::Info);
    // Two descriptors per client: the usual soft limit of 1024 would cap us near 500.
    match ember::raise_descriptor_limit() {
        Ok(limit) if run.verbose => log::info!("ember-proxy: descriptor limit {limit}"),
        Ok(_) => {}
        Err(e) => log::warn!("ember-proxy: cannot raise the descriptor limit: {e}"),
    }
    warn_about_unreachable_backends(&plan);
    let adopted = adopted.map(|(listener, ignored)| {
        if ignored > 0 {
            log::warn!(
                "ember-proxy: socket activation passed {} sockets; only the first is used",
                ignored + 1
            );
        }
        listener
    });
    let served = workers::run(workers::Launch {
        plan,
        workers: run.workers,
        admin: run.admin,
        log: writer.handle(),
        log_format: run.log_format,
        max_conn: run.max_conn,
        adopted,
        config: config.map(std::path::Path::to_path_buf),
    })
    .map_err(|e| e.to_string());
    writer.finish();
    served
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
