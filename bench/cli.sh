#!/usr/bin/env bash
# Benchmarks of the command line and of /metrics (bench/cli.py says what is measured):
#
#   bench/cli.sh            builds the release binary, then prints each figure next to its
#                           target; exit 1 when a target was missed
#   bench/cli.sh --quick    fewer, shorter runs; figures shown, not judged
#   BENCH_KINDLER_BIN=PATH  benchmark another build of kindler
#
# Needs python3, and wrk for the last measurement (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BENCH_KINDLER_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --quiet
    bin=target/release/kindler
fi
exec python3 bench/cli.py "$bin" "$@"
