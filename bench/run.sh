#!/usr/bin/env bash
# kindler's benchmark suite, in one command.
#
#   bench/run.sh            the full suite (about 4½ minutes): builds the release binary and
#                           the bench (benches/kindler/), runs every measurement and prints
#                           one table, each figure next to its target (ok / MISSED).
#                           Exit status 1 when a target was missed, 2 when the setup is broken.
#   bench/run.sh --quick    a short smoke run for CI (about 50 s once built): the
#                           same measurements, smaller and shorter. Figures are shown but not
#                           judged: it fails (exit 2) only when something does not work.
#   --only=1,4              run only those measurements; --keep keeps the daemons' folders
#                           and logs (printed at the end).
#   BENCH_KINDLER_BIN=PATH  benchmark another build of kindler (to compare a change).
#
# Needs: cargo, wrk and systemd-socket-activate (Debian: apt-get install wrk systemd); for
# measurement 9 (a fleet), PostgreSQL's server programs (apt-get install postgresql), which the
# bench starts itself as an unprivileged server in a temporary directory.
# CARGO_TARGET_DIR is honoured (cargo reads it); the daemon benchmarked is the one built there.
# The table is also written to bench/results/latest.txt (quick.txt for --quick).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in cargo wrk systemd-socket-activate; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "bench/run.sh: not installed: ${missing[*]} (Debian: apt-get install wrk systemd)" >&2
    exit 2
fi

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
echo "== kindler benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "   machine: $(nproc) cores, ${cpu:-unknown CPU}, kernel $(uname -r), $(rustc --version)"
echo "   load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"

# Release build of the daemon (the bench profile is the release profile) and of the bench.
if ! cargo bench --bench kindler --no-run; then
    echo "bench/run.sh: the build failed" >&2
    exit 2
fi
set +e
cargo bench --quiet --bench kindler -- "$@"
status=$?
set -e
echo "   load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$status"
