//! `ember-proxy report COMPARE_LOG [--html OUT]`: what a `--compare-log` says, in a text
//! summary on stdout (the verdict first, the page's path last) and one self-contained
//! HTML page.
//!
//! The log is streamed once, line by line ([`lines`]), into a [`Tally`] whose size does
//! not grow with the log: counts, capped maps, the first examples of each difference,
//! fixed-size latency histograms and a self-coarsening timeline. Lines that are not
//! comparisons are counted, skipped and mentioned once on stderr. Nothing in the log can
//! make the report panic, and every string from it is escaped on the page and made
//! printable on the terminal.
//!
//! Exit codes: 0 the report was written; 1 the log cannot be read, holds no comparison,
//! or the page cannot be written (one `ember-proxy: …` line on stderr).
//!
//! - [`record`]: one line read into a comparison; [`route`]: routes with ids collapsed;
//!   [`time`]: the log's timestamps.
//! - [`tally`]: the aggregates; [`latency`] and [`timeline`] their bounded parts.
//! - [`summary`]: the text; [`html`] and [`svg`]: the page; [`format`](mod@format): numbers and
//!   escaping for both.

mod format;
mod html;
mod latency;
mod lines;
mod record;
mod route;
mod summary;
mod svg;
mod tally;
mod time;
mod timeline;

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::Path;
use std::process::ExitCode;

use crate::args::ReportArgs;
use format::count;
use lines::Line;
use tally::Tally;

/// Reads the compare log, prints the summary, writes the HTML page.
pub fn run(args: &ReportArgs) -> ExitCode {
    let log = args.log.display().to_string();
    let tally = match read(&args.log) {
        Ok(tally) => tally,
        Err(e) => return fail(&format!("cannot read {log}: {e}")),
    };
    if tally.skipped > 0 {
        say_err(&format!(
            "skipped {} of {} lines of {log} that are not comparisons (the first: line {})",
            count(tally.skipped),
            count(tally.lines),
            tally.first_skipped.unwrap_or(0)
        ));
    }
    if tally.compared == 0 {
        return fail(&format!("nothing to report: {log} holds no comparison"));
    }
    let written = std::fs::write(&args.html, html::page(&tally, &log));
    let mut text = summary::text(&tally);
    if written.is_ok() {
        text.push_str(&format!("HTML: {}\n", args.html.display()));
    }
    // A closed stdout (the reader of a pipe gone) loses the summary, not the page.
    let _ = io::stdout().lock().write_all(text.as_bytes());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("cannot write {}: {e}", args.html.display())),
    }
}

/// The whole log, added up.
fn read(path: &Path) -> io::Result<Tally> {
    let file = File::open(path)?;
    let mut tally = Tally::default();
    lines::for_each_line(BufReader::with_capacity(1 << 16, file), |line| match line {
        Line::Read(bytes) => tally.add_line(bytes),
        Line::TooLong => tally.skip_line(),
    })?;
    Ok(tally)
}

fn fail(message: &str) -> ExitCode {
    say_err(message);
    ExitCode::from(1)
}

fn say_err(message: &str) {
    let _ = writeln!(io::stderr().lock(), "ember-proxy: {message}");
}
