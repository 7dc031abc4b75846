#!/usr/bin/env bash
# The whole test suite: formatting and lints, unit and integration tests (real SQLite files,
# processes, sockets and journald), the package's system test inside a real systemd booted
# in a container, and a smoke run of the benchmarks.
#
# Run it as root from anywhere in the checkout: it installs the Debian packages the tests
# use when they are missing, starts a journald, and boots a container.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

step() { printf '\n==> %s\n' "$*"; }

# The suite installs Debian packages, starts a journald and boots a container: root only.
if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run-all.sh needs root (it installs packages, starts a journald and boots a container)" >&2
    exit 1
fi

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
    [dpkg-buildpackage]=dpkg-dev
    [dh]=debhelper
    [apt-ftparchive]=apt-utils
    [gpg]=gnupg
    [python3]=python3
    [promtool]=prometheus
    [script]=bsdutils
    [groff]=groff-base
)
missing=()
for cmd in "${!needs[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${needs[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    step "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

step "cargo test"
cargo test --quiet -- --test-threads="${KINDLER_TEST_THREADS:-4}"

step "system test: the .deb inside a booted systemd"
tests/system/run.sh

step "benchmarks (smoke)"
bench/run.sh --quick
bench/cli.sh --quick

step "all tests passed"
