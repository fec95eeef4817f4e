//! `ember-proxy report COMPARE_LOG`: the comparison report (being written).

use std::process::ExitCode;

use crate::args::ReportArgs;

/// Reads the compare log, prints the summary, writes the HTML page.
pub fn run(args: &ReportArgs) -> ExitCode {
    let _ = args;
    ExitCode::from(1)
}
