#!/usr/bin/env bash
# The whole test suite: formatting and lints, unit and integration tests (real SQLite files,
# processes, sockets and journald), the package's system test inside a real systemd booted
# in a container, and a smoke run of the benchmarks.
#
# Run it from anywhere in the checkout. As root it installs the Debian packages the tests
# use when they are missing; the system test needs root (it uses sudo when available).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

step() { printf '\n==> %s\n' "$*"; }

# Debian packages the tests use, by the command that shows they are there.
declare -A needs=(
    [sqlite3]=sqlite3
    [systemd-socket-activate]=systemd
    [journalctl]=systemd
    [curl]=curl
    [wrk]=wrk
    [debootstrap]=debootstrap
    [systemd-nspawn]=systemd-container
    [lintian]=lintian
    [dpkg-deb]=dpkg
    [python3]=python3
)
missing=()
for cmd in "${!needs[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${needs[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [ "$(id -u)" -eq 0 ]; then
        step "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        echo "missing packages: ${missing[*]} (run as root to install them, or apt-get install them)" >&2
        exit 1
    fi
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

step "cargo test"
cargo test --quiet -- --test-threads="${KINDLER_TEST_THREADS:-4}"

step "system test: the .deb inside a booted systemd"
if [ "$(id -u)" -eq 0 ]; then
    tests/system/run.sh
elif command -v sudo >/dev/null 2>&1; then
    sudo tests/system/run.sh
else
    echo "the system test needs root (or sudo)" >&2
    exit 1
fi

step "benchmarks (smoke)"
bench/run.sh --quick

step "all tests passed"
