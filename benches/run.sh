#!/bin/sh
# Echo throughput benchmark: ember vs tokio current-thread vs a bare mio loop.
# See benches/echo.rs for what it measures and docs/benchmarks.md for results.
#
#   benches/run.sh            # full run, about 70 s: 15 rounds x 0.5 s per server and size
#   benches/run.sh --quick    # CI smoke run, a few seconds
#   benches/run.sh --help     # all options (--secs, --rounds, --sizes, --targets, ...)
#
# The markdown table goes to stdout, progress to stderr.
set -eu
cd "$(dirname "$0")/.."
exec cargo bench --bench echo -- "$@"
