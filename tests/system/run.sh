#!/usr/bin/env bash
# System test of the kindler Debian package: its whole life cycle inside a real systemd,
# booted in a systemd-nspawn container of a debootstrapped Debian bookworm.
#
#   sudo tests/system/run.sh [path/to/kindler_VERSION_ARCH.deb]
#
# Without an argument the package is built with packaging/deb/build.sh (cargo build
# --release included). A second package with a higher version is always built from the
# same binary (build.sh --binary ... --version ...) for the upgrade check. The packages are
# published in a local apt repository signed with a throwaway key the test generates
# (apt-ftparchive, gpg), which the container sees under /kindler-test/repo; the container
# installs and upgrades kindler by name from it, with no other source of packages.
#
# Needs root and: systemd-nspawn (systemd-container), debootstrap, nsenter (util-linux),
# curl, python3, dpkg-deb, apt-ftparchive (apt-utils), gpg (gnupg), and what build.sh
# needs (debhelper, dpkg-dev). The container's root is debootstrapped once (~1 min) and cached
# in $KINDLER_SYSTEST_CACHE (default /var/cache/kindler-systest); the container boots it
# with --volatile=overlay, so the cache stays clean. Environment:
#   KINDLER_SYSTEST_CACHE   cache directory of the root
#   KINDLER_SYSTEST_MIRROR  Debian mirror for debootstrap (default: the one apt uses)
#   KINDLER_SYSTEST_REBUILD=1  debootstrap again even when the cache is valid
#   KINDLER_SYSTEST_KEEP=1  leave the container running at the end (for debugging;
#                           stop it with: nsenter -t PID -a systemctl poweroff)
#
# Checks (each printed as PASS or FAIL; the exit status is 1 if any failed):
#   1. the signed local repository: apt refuses it while signed-by names another key, reads
#      it with the right one; `apt install kindler`; sockets active; the daemon has the
#      group docker; the API answers over the activated TCP socket (health, config,
#      clusters) and over /run/kindler/api.sock
#   2. a cluster declared over the API reaches "running" with stand-in scripts; the journal
#      holds its reconcile events (MESSAGE_ID, KINDLER_CLUSTER/ACTION/RUN_ID)
#   3. systemctl start kindler-reconciler (the alias) works
#   4. systemctl stop kindler during a slow create: quick stop, no script process left,
#      the run is recorded as interrupted, and redone after the next start
#   5. a daemon frozen with SIGSTOP is killed by the watchdog and restarted; a request
#      sent meanwhile is answered
#   6. upgrade under client load: the higher version published in the repository,
#      apt-get update && apt upgrade; no refused connection, no lost cluster, sockets kept
#   7. processes that escape kindler's tag during a create (one in the script's process
#      group, one in its own session): `systemctl kill -s KILL kindler` (the whole cgroup),
#      then SIGKILL to the main process only (KillMode=mixed: systemd kills the rest);
#      after each restart nothing of the create is left and the new daemon creates it
#   8. 5 restarts in a row under load (>= 1,000 GETs and POSTs): none failed or refused
#   9. apt-get remove keeps data, configuration and user; purge removes them
#  10. systemd-analyze security; package size, install time, stop time
# Results are written to target/system-test/ (summary.txt, security.txt, journal.txt).
# shellcheck disable=SC2016,SC2317  # dpkg-query formats in single quotes; helpers run via check/trap
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work="$repo/target/system-test"
cache=${KINDLER_SYSTEST_CACHE:-/var/cache/kindler-systest}
suite=bookworm
machine="kindler-systest-$$"
cmount=/kindler-test          # where the staging directory appears in the container
t_start=$SECONDS

# --- output and bookkeeping ----------------------------------------------------------------
if [ -t 1 ]; then G=$'\e[32m' R=$'\e[31m' B=$'\e[1m' N=$'\e[0m'; else G="" R="" B="" N=""; fi
passes=0
failures=0
failed_checks=()
declare -A metric=()
log() { printf '%s\n' "$*"; }
step() { printf '\n%s== %s ==%s\n' "$B" "$*" "$N"; }
pass() { passes=$((passes + 1)); printf '%sPASS%s %s\n' "$G" "$N" "$*"; }
fail() { failures=$((failures + 1)); failed_checks+=("$*"); printf '%sFAIL%s %s\n' "$R" "$N" "$*"; }
# check DESCRIPTION COMMAND...: PASS if the command succeeds.
check() { local what=$1; shift; if "$@" >/dev/null; then pass "$what"; else fail "$what"; fi; }
die() { printf '%sERROR%s %s\n' "$R" "$N" "$*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "run me as root: sudo $0 $*"
for tool in systemd-nspawn nsenter debootstrap curl python3 dpkg-deb dpkg flock apt-ftparchive gpg; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (apt-get install -y --no-install-recommends systemd-container debootstrap curl python3 apt-utils gnupg)"
done

mkdir -p "$work"
stage="$work/stage"
rm -rf "$stage"
mkdir -p "$stage/repo" "$stage/apt" "$stage/standin"
chmod 0755 "$work" "$stage" "$stage/repo" "$stage/apt" "$stage/standin"

# --- the packages ----------------------------------------------------------------------------
step "packages"
if [ $# -ge 1 ]; then
    deb=$(readlink -f "$1")
    [ -f "$deb" ] || die "no such package: $1"
else
    log "building the package with packaging/deb/build.sh"
    deb=$("$repo/packaging/deb/build.sh" | tail -n1) || die "packaging/deb/build.sh failed"
fi
version=$(dpkg-deb -f "$deb" Version)
arch=$(dpkg-deb -f "$deb" Architecture)
[ "$(dpkg-deb -f "$deb" Package)" = kindler ] || die "$deb is not a kindler package"
new_version="${version}+systest1"
dpkg --compare-versions "$new_version" gt "$version" || die "cannot make a version above $version"

# The upgrade package: the same binary, a higher version.
extract=$(mktemp -d)
dpkg-deb -x "$deb" "$extract"
new_deb=$("$repo/packaging/deb/build.sh" --no-lintian --binary "$extract/usr/bin/kindler" \
    --version "$new_version" --out "$work/debs-new" 2>"$work/build-new.log" | tail -n1) \
    || { cat "$work/build-new.log" >&2; die "building the upgrade package failed"; }
rm -rf "$extract"
metric[package_size]=$(stat -c %s "$deb")
log "package:         $deb ($version, $arch, ${metric[package_size]} bytes)"
log "upgrade package: $new_deb ($new_version)"

# --- the signed local apt repository ---------------------------------------------------------
# A flat repository (Packages, Release, InRelease beside the packages) in $stage/repo, which
# the container sees as $cmount/repo. Signed with a throwaway ed25519 key made here; a
# second key, which signs nothing, shows that apt really checks the signature.
# A new GNUPGHOME each run: gpg-agent's socket is named after it, and an agent of an earlier
# run whose directory was deleted under it may still be going away. Ended at exit.
GNUPGHOME=$(mktemp -d "${TMPDIR:-/tmp}/kindler-systest-gnupg.XXXXXX") || die "mktemp failed"
export GNUPGHOME
gpg_cleanup() { gpgconf --kill gpg-agent >/dev/null 2>&1; rm -rf "$GNUPGHOME"; }
trap gpg_cleanup EXIT
for uid in "kindler system test repository <systest@kindler.invalid>" "kindler system test, another key <other@kindler.invalid>"; do
    gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
        --quick-generate-key "$uid" ed25519 sign 1d 2>>"$work/gpg.log" || die "gpg could not make a key (log: $work/gpg.log)"
done
gpg --batch --export "systest@kindler.invalid" >"$stage/apt/kindler-test.gpg"
gpg --batch --export "other@kindler.invalid" >"$stage/apt/other-key.gpg"
cat >"$stage/apt/kindler-test.sources" <<EOF
# kindler system test: the local repository, signed with the test's throwaway key.
Types: deb
URIs: file:$cmount/repo/
Suites: ./
Signed-By: /etc/apt/keyrings/kindler-test.gpg
EOF
# publish DEB...: the repository holds exactly these packages, with a new signed index.
publish() {
    rm -f "$stage/repo/"*
    cp "$@" "$stage/repo/"
    (
        cd "$stage/repo" &&
        apt-ftparchive packages . >Packages &&
        gzip -9nk Packages &&
        apt-ftparchive -o APT::FTPArchive::Release::Origin=kindler-systest \
            -o APT::FTPArchive::Release::Label=kindler-systest \
            -o APT::FTPArchive::Release::Suite=kindler-systest release . >Release.new &&
        mv Release.new Release &&
        gpg --batch --yes --local-user "systest@kindler.invalid" --clearsign -o InRelease Release
    ) >>"$work/publish.log" 2>&1 || return 1
    chmod 0644 "$stage/repo/"*
}
publish "$deb" || die "publishing $deb in the local repository failed (log: $work/publish.log)"
log "repository:      $stage/repo, signed by $(gpg --batch --with-colons --list-keys systest@kindler.invalid | awk -F: '$1 == "fpr" { print $10; exit }')"

install -m 0755 "$here/standin/create-cluster" "$here/standin/probe-cluster" \
    "$here/standin/noop-cluster" "$stage/standin/"

# --- the container's root (cached) ---------------------------------------------------------
mirror=${KINDLER_SYSTEST_MIRROR:-}
if [ -z "$mirror" ]; then
    # The mirror apt already uses for $suite (deb822 sources first, then sources.list);
    # a host that is not Debian $suite gets deb.debian.org.
    mirror=$(awk -v suite="$suite" 'BEGIN { RS = ""; FS = "\n" }
        { uri = ""; ok = 0
          for (i = 1; i <= NF; i++) {
              n = split($i, w, /[ \t]+/)
              if (tolower(w[1]) == "uris:") uri = w[2]
              if (tolower(w[1]) == "suites:") for (j = 2; j <= n; j++) if (w[j] == suite) ok = 1
          }
          if (ok && uri != "") { print uri; exit } }' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
    [ -n "$mirror" ] || mirror=$(awk -v suite="$suite" '$1 == "deb" {
            for (i = 2; i < NF; i++) if ($i ~ /^[a-z]+:\/\// && $(i + 1) == suite) { print $i; exit } }' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
fi
include=systemd,systemd-sysv,dbus,procps
root="$cache/$suite-root"
stamp="$cache/$suite-root.stamp"
stamp_want="kindler-systest root v1: suite=$suite variant=minbase include=$include mirror=$mirror"

root_ok() {
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_want" ] || return 1
    local f
    for f in usr/lib/systemd/systemd usr/bin/apt-get usr/bin/dpkg usr/bin/deb-systemd-helper \
        usr/bin/pgrep usr/bin/dbus-daemon usr/bin/systemd-sysusers usr/sbin/userdel; do
        [ -x "$root/$f" ] || return 1
    done
    # dpkg --audit prints the packages that are not fully installed.
    local audit
    audit=$(chroot "$root" /usr/bin/dpkg --audit 2>&1) && [ -z "$audit" ]
}

step "container root"
mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9
if [ "${KINDLER_SYSTEST_REBUILD:-0}" != 1 ] && root_ok; then
    log "using the cached root $root"
else
    log "debootstrap --variant=minbase --include=$include $suite $root.new $mirror"
    t0=$SECONDS
    rm -rf "$root.new" "$stamp"
    if ! debootstrap --variant=minbase --include="$include" "$suite" "$root.new" "$mirror" \
        >"$work/debootstrap.log" 2>&1; then
        tail -n 20 "$work/debootstrap.log" >&2
        die "debootstrap failed (log: $work/debootstrap.log)"
    fi
    # No package lists: apt in the container resolves from what is installed only (no
    # network use; the package's Recommends, docker, are then simply not available).
    rm -rf "$root.new"/var/lib/apt/lists/* "$root.new"/var/cache/apt/archives/*.deb "$root.new"/var/cache/apt/*.bin
    mkdir -p "$root.new/var/lib/apt/lists/partial"
    echo "kindler-systest" >"$root.new/etc/hostname"
    rm -rf "$root"
    mv "$root.new" "$root"
    echo "$stamp_want" >"$stamp"
    root_ok || die "the new root at $root does not pass its own checks"
    log "root ready in $((SECONDS - t0)) s"
fi
exec 9>&-

# --- booting it --------------------------------------------------------------------------------
nspawn_pid=""
cpid=""
loop_pid=""
cleanup() {
    local rc=$?
    gpg_cleanup
    [ -n "$loop_pid" ] && kill "$loop_pid" 2>/dev/null && wait "$loop_pid" 2>/dev/null
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        if [ "${KINDLER_SYSTEST_KEEP:-0}" = 1 ]; then
            log "container left running: nsenter -t $cpid -a bash   (nspawn pid $nspawn_pid)"
            return "$rc"
        fi
        [ -n "$cpid" ] && nsenter -t "$cpid" -a systemctl poweroff >/dev/null 2>&1
        for _ in $(seq 150); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$nspawn_pid" 2>/dev/null; then
            kill -TERM "$nspawn_pid" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$nspawn_pid" 2>/dev/null
        fi
        wait "$nspawn_pid" 2>/dev/null
    fi
    return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The TCP port of kindler.socket: 8765 as packaged, unless the host already uses it (the
# container shares the host's network, so its 127.0.0.1:8765 is the host's).
port_in_use() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
EOF
}
port=8765
if port_in_use "$port"; then
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log "127.0.0.1:8765 is in use on this host; the test moves kindler.socket to port $port with a drop-in"
fi
base="http://127.0.0.1:$port"

# Drop-ins the test installs in the container.
mkdir -p "$stage/dropins"
cat >"$stage/dropins/50-test-port.conf" <<EOF
# kindler system test: 127.0.0.1:8765 is taken on the host, so the socket moves.
[Socket]
ListenStream=
ListenStream=127.0.0.1:$port
EOF
cat >"$stage/dropins/50-test.conf" <<EOF
# kindler system test: stand-in scripts instead of k3d/kind, short grace and backoff.
[Service]
Environment=KINDLER_CREATE_COMMAND=$cmount/standin/create-cluster
Environment=KINDLER_DELETE_COMMAND=$cmount/standin/noop-cluster
Environment=KINDLER_START_COMMAND=$cmount/standin/noop-cluster
Environment=KINDLER_STOP_COMMAND=$cmount/standin/noop-cluster
Environment=KINDLER_PROBE_COMMAND=$cmount/standin/probe-cluster
Environment=KINDLER_KILL_GRACE=3s
Environment=KINDLER_BACKOFF_INITIAL=1s
EOF
cat >"$stage/dropins/60-watchdog.conf" <<'EOF'
# kindler system test: a short watchdog for the SIGSTOP check.
[Service]
WatchdogSec=3s
EOF
chmod -R a+rX "$stage"

step "booting $suite in systemd-nspawn"
systemd-nspawn -q -D "$root" -M "$machine" --boot --register=no --keep-unit \
    --console=read-only --volatile=overlay --bind-ro="$stage:$cmount" \
    >"$work/console.log" 2>&1 &
nspawn_pid=$!
for _ in $(seq 200); do
    for p in $(ps -o pid= --ppid "$nspawn_pid" 2>/dev/null); do
        if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = systemd ]; then cpid=$p; break 2; fi
    done
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.05
done
[ -n "$cpid" ] || { tail -n 20 "$work/console.log" >&2; die "the container did not start (console: $work/console.log)"; }

# C CMD...: run a command in the container (all its namespaces, a clean environment).
C() { nsenter -t "$cpid" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive "$@"; }

t0=$SECONDS
state=""
while [ $((SECONDS - t0)) -lt 60 ]; do
    state=$(C systemctl is-system-running --wait 2>/dev/null)
    case "$state" in running|degraded) break ;; esac
    sleep 0.2
done
case "$state" in
    running|degraded) log "container $machine booted ($state), systemd pid $cpid, nspawn pid $nspawn_pid" ;;
    *) die "the container did not finish booting (state '$state')" ;;
esac
[ "$state" = degraded ] && C systemctl --failed --no-pager --plain

# --- helpers --------------------------------------------------------------------------------------
# api METHOD PATH [JSON]: sets CODE (000: no answer) and BODY.
api() {
    local out data=()
    [ $# -ge 3 ] && data=(-H 'Content-Type: application/json' --data "$3")
    out=$(curl -sS -m 10 -X "$1" "${data[@]}" -w '\n%{http_code}' "$base$2" 2>/dev/null) \
        || { CODE=000; BODY=""; return 1; }
    CODE=${out##*$'\n'}
    BODY=${out%$'\n'*}
}
# jget EXPR: evaluates a Python expression on the JSON in stdin (as d).
jget() { python3 -c 'import json, sys; d = json.load(sys.stdin); v = eval(sys.argv[1]); print("" if v is None else v)' "$1" 2>/dev/null; }
# cluster_field NAME FIELD
cluster_field() { api GET "/api/clusters/$1" && [ "$CODE" = 200 ] && printf '%s' "$BODY" | jget "d.get('$2')"; }
# wait_for SECONDS COMMAND...: retries the command until it succeeds.
wait_for() {
    local limit=$1 t0=$SECONDS; shift
    until "$@"; do
        [ $((SECONDS - t0)) -ge "$limit" ] && return 1
        sleep 0.25
    done
}
state_is() { [ "$(cluster_field "$1" actual_state)" = "$2" ]; }
unit_active() { [ "$(C systemctl is-active "$1")" = active ]; }
unit_prop() { C systemctl show -p "$2" --value "$1"; }
main_pid() { unit_prop kindler.service MainPID; }
# Processes of the container whose command line or environment show they belong to a
# script run by kindler (KINDLER_PROCESS_TAG) or to the stand-ins.
script_procs() {
    python3 - "$cpid" <<'EOF'
import os, sys
cpid = sys.argv[1]
ns = os.readlink(f"/proc/{cpid}/ns/pid")
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if os.readlink(f"/proc/{pid}/ns/pid") != ns:
            continue
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
        env = open(f"/proc/{pid}/environ", "rb").read()
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if stat[0] == "Z":
        continue
    if b"KINDLER_PROCESS_TAG=" in env or "standin" in cmd:
        print(f"{pid} {cmd}")
EOF
}
db_copy() { # db_copy DIR: a consistent copy of kindler's database, to read without disturbing it
    local dir=$1 f
    mkdir -p "$dir"
    for f in kindler.db kindler.db-wal kindler.db-shm; do
        [ -e "/proc/$cpid/root/var/lib/kindler/$f" ] && cp "/proc/$cpid/root/var/lib/kindler/$f" "$dir/"
    done
    [ -f "$dir/kindler.db" ]
}
db_query() { # db_query DBFILE SQL: rows as tab-separated lines
    python3 - "$1" "$2" <<'EOF'
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
for row in con.execute(sys.argv[2]):
    print("\t".join("" if v is None else str(v) for v in row))
EOF
}

# =================================================================================================
step "1. install"
if [ "$port" != 8765 ]; then
    C mkdir -p /etc/systemd/system/kindler.socket.d
    C cp "$cmount/dropins/50-test-port.conf" /etc/systemd/system/kindler.socket.d/
fi
# A docker group, as docker.io would create it: the postinst adds kindler to it.
C groupadd --system docker
# apt resolves from the local repository and what is installed, nothing else: the Debian
# mirror debootstrap wrote into sources.list goes (the overlay keeps the cache clean).
C rm -f /etc/apt/sources.list
C install -d -m 0755 /etc/apt/keyrings
C install -m 0644 "$cmount/apt/kindler-test.sources" /etc/apt/sources.list.d/kindler-test.sources
# First with another key at the path signed-by names: apt must refuse the repository.
C install -m 0644 "$cmount/apt/other-key.gpg" /etc/apt/keyrings/kindler-test.gpg
C apt-get update >"$work/apt-update-wrong-key.log" 2>&1
rc=$?
refused_unsigned() { [ "$rc" != 0 ] && grep -Eq 'NO_PUBKEY|is not signed' "$work/apt-update-wrong-key.log"; }
check "apt-get update refuses the repository while signed-by names another key (exit $rc: $(grep -m1 -Eo 'NO_PUBKEY [0-9A-F]+|is not signed' "$work/apt-update-wrong-key.log"))" \
    refused_unsigned
no_candidate() { [[ $(C apt-cache policy kindler 2>/dev/null) != *Candidate:\ [0-9]* ]]; }
check "apt knows no kindler to install from the refused repository" no_candidate
C install -m 0644 "$cmount/apt/kindler-test.gpg" /etc/apt/keyrings/kindler-test.gpg
C apt-get update >"$work/apt-update.log" 2>&1
rc=$?
update_clean() { [ "$rc" = 0 ] && ! grep -Eq '^(W|E):' "$work/apt-update.log"; }
check "apt-get update reads the local repository signed with the test's key (signed-by=/etc/apt/keyrings/kindler-test.gpg), no warning" \
    update_clean
[ "$rc" = 0 ] || tail -n 10 "$work/apt-update.log"
candidate() { C apt-cache policy kindler 2>/dev/null | sed -n 's/^ *Candidate: //p'; }
check "apt-cache policy kindler: candidate $(candidate), from $cmount/repo" test "$(candidate)" = "$version"
t0=$(date +%s.%N)
C apt install -y kindler >"$work/install.log" 2>&1
rc=$?
t1=$(date +%s.%N)
metric[install_seconds]=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
if [ $rc = 0 ]; then
    pass "apt install kindler succeeded (${metric[install_seconds]} s)"
else
    fail "apt install kindler failed (exit $rc); log: $work/install.log"
    tail -n 30 "$work/install.log"
    die "cannot go on without the package installed"
fi
check "dpkg lists kindler $version as installed" \
    test "$(C dpkg-query -W -f '${Status} ${Version}' kindler)" = "install ok installed $version"
check "kindler.socket is active" test "$(C systemctl is-active kindler.socket)" = active
check "kindler-api.socket is active" test "$(C systemctl is-active kindler-api.socket)" = active
check "kindler.service is enabled and active" \
    test "$(C systemctl is-enabled kindler.service) $(C systemctl is-active kindler.service)" = "enabled active"
check "the alias kindler-reconciler.service links to kindler.service" \
    test "$(C readlink /etc/systemd/system/kindler-reconciler.service)" = /lib/systemd/system/kindler.service
check "system user kindler exists with home /var/lib/kindler" \
    test "$(C getent passwd kindler | cut -d: -f6)" = /var/lib/kindler
in_docker_group() { [[ " $(C id -nG kindler) " == *" docker "* ]]; }
check "the postinst added kindler to the existing group docker ($(C id -nG kindler))" in_docker_group
# The user exists only once the postinst's debhelper part ran, which also started the
# daemon: the postinst restarts it to take the group (supplementary groups are fixed at exec).
docker_gid=$(C getent group docker | cut -d: -f3)
daemon_groups() { C sed -n 's/^Groups:[[:space:]]*//p' "/proc/$(main_pid)/status"; }
daemon_in_docker() { [[ " $(daemon_groups) " == *" $docker_gid "* ]]; }
check "the running daemon has the group docker (gid $docker_gid; its groups: $(daemon_groups))" daemon_in_docker
check "/var/lib/kindler is kindler:kindler 750" \
    test "$(C stat -c '%U:%G %a' /var/lib/kindler)" = "kindler:kindler 750"
conffile_listed() { C dpkg-query -W -f '${Conffiles}\n' kindler | grep -q '^ */etc/kindler/kindler.toml '; }
check "/etc/kindler/kindler.toml is a conffile" conffile_listed
check "/usr/share/doc/kindler/README.md (the units' Documentation=) is there, uncompressed" \
    C test -f /usr/share/doc/kindler/README.md
# The catalog is installed under /usr/lib/systemd/catalog, where systemd's dpkg trigger runs
# journalctl --update-catalog; the package itself no longer does.
catalog_known() { C journalctl --list-catalog 5c56fab6401c4283810770711566ceaa 2>/dev/null | grep -q kindler; }
check "journalctl knows kindler's message catalog (systemd's trigger updated it)" catalog_known
# --man=no: the container has no manual pages for Documentation=man:systemd.service(5).
# It exits 0 on warnings (unknown directives, bad values): nothing may be printed either.
verify_clean() {
    local out
    out=$(C systemd-analyze verify --man=no /lib/systemd/system/kindler.service \
        /lib/systemd/system/kindler.socket /lib/systemd/system/kindler-api.socket 2>&1) \
        && [ -z "$out" ] || { printf '%s\n' "$out" >&2; return 1; }
}
check "the unit files pass systemd-analyze verify, without a warning" verify_clean

api GET /api/health
check "GET /api/health answers 200 healthy on $base" \
    test "$CODE $(printf '%s' "$BODY" | jget 'd["status"]')" = "200 healthy"
api GET /api/config
check "GET /api/config answers 200 with the WebUI's settings" \
    test "$CODE $(printf '%s' "$BODY" | jget '"providers" in d and "base_domain" in d')" = "200 True"
api GET /api/clusters
check "GET /api/clusters answers 200 with a list" \
    test "$CODE $(printf '%s' "$BODY" | jget 'isinstance(d, list)')" = "200 True"
# The listening socket is systemd's (socket activation), shared with kindler.
if command -v ss >/dev/null 2>&1; then
    holders=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:.*')
    held_by_both() { [[ $holders == *'"systemd"'* && $holders == *'"kindler"'* ]]; }
    check "127.0.0.1:$port is held by systemd (socket activation) and kindler: $holders" held_by_both
fi
triggered_by_sockets() { [[ $(unit_prop kindler.service TriggeredBy) == *kindler.socket* ]]; }
check "kindler.service is triggered by its sockets (TriggeredBy=$(unit_prop kindler.service TriggeredBy))" triggered_by_sockets
sock="/proc/$cpid/root/run/kindler/api.sock"
code=$(curl -sS -m 10 -o "$work/unix-health.json" -w '%{http_code}' --unix-socket "$sock" http://localhost/api/health 2>/dev/null)
check "GET /api/health answers 200 on the unix socket /run/kindler/api.sock" \
    test "$code $(jget 'd["status"]' <"$work/unix-health.json")" = "200 healthy"
check "/run/kindler/api.sock is kindler:kindler 660" \
    test "$(C stat -c '%U:%G %a' /run/kindler/api.sock)" = "kindler:kindler 660"
# As a member of group kindler, and as somebody who is not (perl-base can speak to a
# unix socket; the container has no curl).
C useradd -M -G kindler kindler-friend
C useradd -M kindler-stranger
unix_get_as() {
    C setpriv --reuid "$1" --regid "$1" --init-groups perl -MIO::Socket::UNIX -e '
        my $s = IO::Socket::UNIX->new(Peer => "/run/kindler/api.sock") or die "connect: $!\n";
        print $s "GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        my $line = <$s>; print $line;' 2>&1
}
friend=$(unix_get_as kindler-friend)
check "a member of group kindler gets 200 on /run/kindler/api.sock (${friend%%$'\r'*})" \
    test "${friend:9:3}" = 200
stranger=$(unix_get_as kindler-stranger)
check "a user outside group kindler is refused (${stranger%%$'\n'*})" \
    test "$stranger" = "connect: Permission denied"

# 10 (while installed and untouched by drop-ins). ------------------------------------------------
C systemd-analyze security --no-pager kindler.service >"$work/security.txt" 2>&1
rc=$?
metric[exposure]=$(grep -a 'Overall exposure level' "$work/security.txt" | sed 's/.*: //')
if [ -n "${metric[exposure]}" ]; then
    pass "systemd-analyze security kindler.service runs: overall exposure ${metric[exposure]} (saved to $work/security.txt)"
else
    fail "systemd-analyze security kindler.service gave no overall exposure (exit $rc)"
fi

# =================================================================================================
step "2. a cluster through the API, with stand-in scripts"
C mkdir -p /etc/systemd/system/kindler.service.d
C cp "$cmount/dropins/50-test.conf" /etc/systemd/system/kindler.service.d/
C systemctl daemon-reload
check "kindler restarts with the test drop-in (stand-in commands)" C systemctl restart kindler.service
api POST /api/clusters '{"name":"dev","provider":"k3d"}'
check "POST /api/clusters {dev, k3d} answers 202" test "$CODE" = 202
if wait_for 30 state_is dev running; then
    pass "cluster dev reached actual_state running"
else
    fail "cluster dev did not reach running (actual_state '$(cluster_field dev actual_state)', reconcile_error '$(cluster_field dev reconcile_error)')"
fi
check "kindler ls (root, over /run/kindler/api.sock) shows dev running" \
    C sh -c 'kindler ls | grep -Eq "^dev +k3d +present +running "'
check "kindler status names the unix socket it reached" \
    C sh -c 'kindler status | grep -q "unix:/run/kindler/api.sock"'
check "the man pages and shell completions are installed" \
    C test -f /usr/share/man/man8/kindler.8.gz -a -f /usr/share/man/man1/kindler-ls.1.gz \
    -a -f /usr/share/bash-completion/completions/kindler
api GET /metrics
check "GET /metrics answers 200 with the clusters by state" \
    test "$CODE" = 200 -a -n "$(printf '%s' "$BODY" | grep '^kindler_clusters{')"
C journalctl -u kindler.service -o json --no-pager >"$work/journal-dev.json" 2>/dev/null
journal_check() { # journal_check CLUSTER MESSAGE_ID ACTION
    python3 - "$work/journal-dev.json" "$@" <<'EOF'
import json, sys
path, cluster, mid, action = sys.argv[1:]
for line in open(path):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("MESSAGE_ID") == mid and e.get("KINDLER_CLUSTER") == cluster \
            and e.get("KINDLER_ACTION") == action and e.get("KINDLER_RUN_ID"):
        print(e["KINDLER_RUN_ID"])
        sys.exit(0)
sys.exit(1)
EOF
}
if run_started=$(journal_check dev 5c56fab6401c4283810770711566ceaa create); then
    pass "journal: 'started' event (MESSAGE_ID 5c56fab6...) for dev, KINDLER_ACTION=create, KINDLER_RUN_ID=$run_started"
else
    fail "journal: no 'started' event (MESSAGE_ID 5c56fab6401c4283810770711566ceaa) with KINDLER_CLUSTER=dev, KINDLER_ACTION=create, KINDLER_RUN_ID"
fi
if run_ok=$(journal_check dev 3f2b684baf7645c7ae2f851840eb3cc7 create); then
    pass "journal: 'succeeded' event (MESSAGE_ID 3f2b684b...) for dev, KINDLER_ACTION=create, KINDLER_RUN_ID=$run_ok"
else
    fail "journal: no 'succeeded' event (MESSAGE_ID 3f2b684baf7645c7ae2f851840eb3cc7) with KINDLER_CLUSTER=dev, KINDLER_ACTION=create, KINDLER_RUN_ID"
fi
check "journal: the started and succeeded events carry the same KINDLER_RUN_ID" \
    test -n "${run_started:-}" -a "${run_started:-x}" = "${run_ok:-y}"
check "journal: the stand-in's output lines are logged under that run id" \
    python3 -c '
import json, sys
run = sys.argv[2]
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("KINDLER_RUN_ID") == run and "standin-create: cluster dev created" in str(e.get("MESSAGE")):
        sys.exit(0)
sys.exit(1)' "$work/journal-dev.json" "${run_ok:-none}"
check "no process of the create run is left (its background child was ended)" \
    test -z "$(script_procs)"

# =================================================================================================
step "3. the alias kindler-reconciler"
# (systemctl warns that the sockets can still activate kindler: they are meant to.)
pid_before=$(main_pid)
C systemctl stop kindler.service 2>/dev/null
check "systemctl start kindler-reconciler succeeds" C systemctl start kindler-reconciler
check "kindler-reconciler (kindler.service) is active afterwards" \
    test "$(C systemctl is-active kindler-reconciler) $(C systemctl is-active kindler.service)" = "active active"
check "kindler.service runs under a new MainPID ($pid_before -> $(main_pid))" \
    test "$(main_pid)" != 0 -a "$(main_pid)" != "$pid_before"

# =================================================================================================
step "4. systemctl stop kindler during a slow create"
api POST /api/clusters '{"name":"slow1","provider":"kind"}'
check "POST /api/clusters {slow1, kind} answers 202" test "$CODE" = 202
slow_running() { [[ $(script_procs) == *'standin/create-cluster -n slow1'* ]]; }
if wait_for 20 slow_running; then
    pass "the slow create of slow1 is running: $(script_procs | wc -l) processes ($(script_procs | awk '{print $1}' | tr '\n' ' '))"
else
    fail "the slow create of slow1 did not start"
fi
# The script sets its SIGTERM trap before its loop; the loop's `sleep 1` shows it is set, so
# the stop below really has to wait out kill_grace and then SIGKILL the group.
ignoring_term() { [[ $(script_procs) =~ [0-9]+\ sleep\ 1($'\n'|$) ]]; }
wait_for 20 ignoring_term || fail "the slow create of slow1 did not reach its SIGTERM-ignoring loop"
t0=$(date +%s.%N)
C systemctl stop kindler.service 2>/dev/null
rc=$?
t1=$(date +%s.%N)
metric[stop_seconds]=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
grace=3
check "systemctl stop kindler returns success in ${metric[stop_seconds]} s (kill_grace ${grace} s + 5 s allowed; TimeoutStopSec 30 s)" \
    python3 -c "import sys; sys.exit(not ($rc == 0 and $t1 - $t0 < $grace + 5))"
check "kindler.service is inactive after the stop" test "$(C systemctl is-active kindler.service)" = inactive
check "kindler.service stopped cleanly (Result=success, not timeout/kill)" \
    test "$(unit_prop kindler.service Result)" = success
left=$(script_procs)
check "no process of the script is left in the container${left:+: $left}" test -z "$left"
rm -rf "$work/db"
if db_copy "$work/db"; then
    row=$(db_query "$work/db/kindler.db" "SELECT actual_state, reconcile_error FROM clusters WHERE name = 'slow1'")
    run=$(db_query "$work/db/kindler.db" "SELECT action, outcome, error FROM reconcile_runs WHERE cluster_name = 'slow1' ORDER BY id DESC LIMIT 1")
    log "  clusters row:     $row"
    log "  last run of slow1: $run"
    row_interrupted() { [[ $row == creating$'\t'*interrupted* ]]; }
    run_interrupted() { [[ $run == create$'\t'interrupted$'\t'* ]]; }
    check "the cluster row keeps actual_state creating and reconcile_error says interrupted" row_interrupted
    check "the run is recorded with outcome interrupted" run_interrupted
else
    fail "cannot read /var/lib/kindler/kindler.db in the container"
fi
C journalctl -u kindler.service -o json --no-pager >"$work/journal-dev.json" 2>/dev/null
check "journal: an 'interrupted' event (MESSAGE_ID 18c5f41d...) for slow1" \
    journal_check slow1 18c5f41dc900478aa1ed5a51375cab91 create
check "systemctl start kindler succeeds" C systemctl start kindler.service
if wait_for 30 state_is slow1 running; then
    pass "after the start, the create of slow1 is redone and slow1 is running"
else
    fail "slow1 did not reach running after the start (actual_state '$(cluster_field slow1 actual_state)', reconcile_error '$(cluster_field slow1 reconcile_error)')"
fi

# =================================================================================================
step "5. the watchdog"
C cp "$cmount/dropins/60-watchdog.conf" /etc/systemd/system/kindler.service.d/
C systemctl daemon-reload
C systemctl restart kindler.service
wd=$(unit_prop kindler.service WatchdogUSec)
check "kindler.service runs with WatchdogSec=3s (WatchdogUSec=$wd)" test "$wd" = 3s
# Freeze only once systemd has had a ping from this daemon (the watchdog timestamp moves
# from the start time), so the restart below proves pings stopped, not that none came.
wd_started=$(unit_prop kindler.service WatchdogTimestampMonotonic)
pinged() { [ "$(unit_prop kindler.service WatchdogTimestampMonotonic)" != "$wd_started" ]; }
check "systemd received a watchdog ping from kindler" wait_for 10 pinged
pid_before=$(main_pid)
restarts_before=$(unit_prop kindler.service NRestarts)
sock_since=$(unit_prop kindler.socket ActiveEnterTimestampMonotonic)
C kill -STOP "$pid_before"
log "  froze kindler (MainPID $pid_before in the container) with SIGSTOP"
frozen() { [[ $(C cat "/proc/$pid_before/stat" 2>/dev/null) == *') T '* ]]; }
wait_for 5 frozen || fail "kindler (MainPID $pid_before) did not stop on SIGSTOP"
t0=$(date +%s.%N)
code=$(curl -sS -m 60 -o "$work/frozen-request.json" -w '%{http_code}' "$base/api/clusters" 2>"$work/frozen-request.err")
rc=$?
t1=$(date +%s.%N)
waited=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
check "a request sent while kindler was frozen is answered (HTTP $code after $waited s, curl exit $rc)" \
    test "$rc $code" = "0 200"
wait_for 10 unit_active kindler.service
pid_after=$(main_pid)
restarts_after=$(unit_prop kindler.service NRestarts)
check "the watchdog killed the frozen daemon and systemd restarted it (MainPID $pid_before -> $pid_after)" \
    test "$pid_after" != 0 -a "$pid_after" != "$pid_before"
check "NRestarts increased ($restarts_before -> $restarts_after)" test "$restarts_after" -gt "$restarts_before"
watchdog_logged() { C journalctl -u kindler.service --no-pager | grep -q 'Watchdog timeout'; }
check "the journal shows the watchdog timeout" watchdog_logged
check "kindler.socket was not restarted meanwhile" \
    test "$(unit_prop kindler.socket ActiveEnterTimestampMonotonic)" = "$sock_since"
metric[watchdog_answer_seconds]=$waited
C rm /etc/systemd/system/kindler.service.d/60-watchdog.conf
C systemctl daemon-reload
C systemctl restart kindler.service

# =================================================================================================
step "6. upgrade under load"
for n in up1 up2 up3 up4 up5; do
    api POST /api/clusters "{\"name\":\"$n\",\"provider\":\"k3d\"}"
    [ "$CODE" = 202 ] || fail "POST /api/clusters {$n} answered $CODE"
done
all_running() {
    api GET /api/clusters && [ "$(printf '%s' "$BODY" | jget 'sorted(c["name"] for c in d if c["actual_state"] == "running")')" \
        = "['dev', 'slow1', 'up1', 'up2', 'up3', 'up4', 'up5']" ]
}
check "7 clusters declared and running before the upgrade" wait_for 30 all_running
names_before=$(printf '%s' "$BODY" | jget 'sorted(c["name"] for c in d)')
# The higher version goes into the repository (beside the installed one, as in an archive).
if publish "$deb" "$new_deb"; then
    pass "$new_version published in the local repository, its index signed again"
else
    fail "publishing $new_version in the local repository failed (log: $work/publish.log)"
fi
C apt-get update >"$work/apt-update-new.log" 2>&1
rc=$?
update_clean() { [ "$rc" = 0 ] && ! grep -Eq '^(W|E):' "$work/apt-update-new.log"; }
check "apt-get update reads the new index without a warning" update_clean
check "apt-cache policy kindler: installed $version, candidate $(candidate)" test "$(candidate)" = "$new_version"
pid_before=$(main_pid)
sock_since=$(unit_prop kindler.socket ActiveEnterTimestampMonotonic)
api_sock_since=$(unit_prop kindler-api.socket ActiveEnterTimestampMonotonic)
# The client: GET /api/clusters in a tight loop until told to stop.
rm -f "$work/load.stop"
: >"$work/load.err"
: >"$work/load.done"
(
    total=0 failed=0 refused=0
    while [ ! -e "$work/load.stop" ]; do
        total=$((total + 1))
        code=$(curl -sS -m 20 -o /dev/null -w '%{http_code}' "$base/api/clusters" 2>>"$work/load.err")
        rc=$?
        if [ $rc != 0 ] || [ "$code" != 200 ]; then
            failed=$((failed + 1))
            [ $rc = 7 ] && refused=$((refused + 1))
            echo "request $total: curl exit $rc, HTTP $code" >>"$work/load.err"
        fi
        echo "$code" >>"$work/load.done"
    done
    echo "$total $failed $refused" >"$work/load.result"
) &
loop_pid=$!
# The client load spans the upgrade: some requests before it starts and some after it ends.
load_count() { wc -l <"$work/load.done"; }
load_reaches() { [ "$(load_count)" -ge "$1" ]; }
wait_for 20 load_reaches 20 || fail "the client loop did not get going"
t0=$(date +%s.%N)
C apt upgrade -y >"$work/upgrade.log" 2>&1
rc=$?
t1=$(date +%s.%N)
wait_for 20 load_reaches $(($(load_count) + 20)) || fail "the client loop stalled after the upgrade"
touch "$work/load.stop"
wait "$loop_pid"
loop_pid=""
read -r total failed refused <"$work/load.result"
metric[upgrade_seconds]=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
metric[upgrade_requests]=$total
check "apt upgrade (kindler $version -> $new_version) succeeded in ${metric[upgrade_seconds]} s" test "$rc" = 0
check "dpkg lists kindler $new_version" \
    test "$(C dpkg-query -W -f '${Version}' kindler)" = "$new_version"
check "kindler.service was restarted by the upgrade (MainPID $pid_before -> $(main_pid))" \
    test "$(main_pid)" != 0 -a "$(main_pid)" != "$pid_before"
check "kindler.socket and kindler-api.socket were not restarted" \
    test "$(unit_prop kindler.socket ActiveEnterTimestampMonotonic) $(unit_prop kindler-api.socket ActiveEnterTimestampMonotonic)" = "$sock_since $api_sock_since"
check "client loop: $total requests during the upgrade, $failed failed, $refused refused" \
    test "$total" -gt 0 -a "$failed" = 0 -a "$refused" = 0
[ "$failed" = 0 ] || head -n 5 "$work/load.err"
api GET /api/clusters
names_after=$(printf '%s' "$BODY" | jget 'sorted(c["name"] for c in d)')
check "no cluster lost: $names_after" test "$CODE $names_after" = "200 $names_before"
api GET /api/health
check "the upgraded daemon answers GET /api/health" test "$CODE" = 200
pid_before=$(main_pid)
# As dpkg runs it (deb-systemd-helper does nothing outside dpkg).
C env DPKG_MAINTSCRIPT_PACKAGE=kindler DPKG_MAINTSCRIPT_NAME=postinst \
    /var/lib/dpkg/info/kindler.postinst configure "$new_version" >"$work/postinst-again.log" 2>&1
rc=$?
postinst_clean() { [ "$rc" = 0 ] && ! grep -q "not called from dpkg" "$work/postinst-again.log"; }
check "the postinst is idempotent: running it again (configure $new_version) succeeds" postinst_clean
wait_for 10 unit_active kindler.service
api GET /api/clusters
check "after it, kindler runs (MainPID $pid_before -> $(main_pid)) and lists the same clusters" \
    test "$CODE $(printf '%s' "$BODY" | jget 'sorted(c["name"] for c in d)')" = "200 $names_before"

# =================================================================================================
step "7. processes that escape kindler's tag"
# A create whose stand-in starts two grandchildren without KINDLER_PROCESS_TAG: kindler cannot
# find them by tag, and the setsid one is not in the script's process group either. systemd
# still has them all in kindler.service's cgroup.
# cproc PID: "state pgid sid" of a process of the container (container pids), empty if none.
cproc() { C cat "/proc/$1/stat" 2>/dev/null | awk '{ sub(/.*\) /, ""); print $1, $3, $4 }'; }
has_tag() { C cat "/proc/$1/environ" 2>/dev/null | tr '\0' '\n' | grep -q '^KINDLER_PROCESS_TAG='; }
in_unit_cgroup() { C grep -q 'kindler.service' "/proc/$1/cgroup" 2>/dev/null; }
escaped() { C cat "/var/lib/kindler/standin-$1.escaped" 2>/dev/null | awk -v k="$2" '$1 == k { print $2 }'; }
escape_ready() { [ -n "$(escaped "$1" in-group)" ] && [ -n "$(escaped "$1" setsid)" ]; }
# create_procs NAME: container pid and start time of every live process of NAME's current
# create: the stand-in script, all that carry its tag, and the two untagged grandchildren.
create_procs() {
    local extra=()
    read -r -a extra <<<"$(escaped "$1" in-group) $(escaped "$1" setsid)"
    python3 - "$cpid" "$1" "${extra[@]}" <<'PY'
import os, sys
cpid, name, extra = sys.argv[1], sys.argv[2], set(sys.argv[3:])
ns = os.readlink(f"/proc/{cpid}/ns/pid")
procs = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if os.readlink(f"/proc/{pid}/ns/pid") != ns:
            continue
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        nspid = [l.split()[-1] for l in open(f"/proc/{pid}/status") if l.startswith("NSpid:")][0]
    except (OSError, IndexError):
        continue
    if stat[0] != "Z":
        tag = next((e for e in env if e.startswith(b"KINDLER_PROCESS_TAG=")), None)
        procs[nspid] = (stat[19], cmd, tag)
tags = {t for (_, cmd, t) in procs.values() if t and f"create-cluster -n {name} " in cmd + " "}
for nspid, (start, cmd, tag) in sorted(procs.items(), key=lambda p: int(p[0])):
    if nspid in extra or (tag and tag in tags):
        print(f"{nspid} {start} {cmd}")
PY
}
# alive_of SNAPSHOT: the processes of a create_procs snapshot that still live (same pid and
# start time, not a zombie).
alive_of() {
    local pid start cmd now
    while read -r pid start cmd; do
        [ -n "$pid" ] || continue
        now=$(C cat "/proc/$pid/stat" 2>/dev/null | awk '{ sub(/.*\) /, ""); if ($1 != "Z") print $20 }')
        [ "$now" = "$start" ] && printf '%s (%s); ' "$pid" "$cmd"
    done <<<"$1"
}
sleeps_600() { C pgrep -a -x -f 'sleep 600' | tr '\n' ';'; }
new_daemon() { unit_active kindler.service && [ "$(main_pid)" != 0 ] && [ "$(main_pid)" != "$1" ]; }
journal_cursor() { C journalctl -q -n 0 --show-cursor | sed -n 's/^-- cursor: //p'; }
# created_by NAME PID: the newest create of NAME succeeded, logged by the daemon PID, after
# a create that was recorded as interrupted (by the daemon that found it unfinished).
created_by() {
    api GET "/api/clusters/$1/history" && [ "$CODE" = 200 ] || return 1
    printf '%s' "$BODY" | python3 -c '
import json, sys
runs = [r for r in json.load(sys.stdin) if r["action"] == "create"]
ok = runs and runs[0]["outcome"] == "succeeded" and any(
    r["outcome"] == "interrupted" and "killed or crashed" in (r["error"] or "") for r in runs[1:])
sys.exit(0 if ok else 1)' || return 1
    C journalctl -u kindler.service -o json --no-pager KINDLER_CLUSTER="$1" \
        MESSAGE_ID=3f2b684baf7645c7ae2f851840eb3cc7 | python3 -c '
import json, sys
pids = [json.loads(l).get("_PID") for l in sys.stdin if l.strip()]
sys.exit(0 if pids and pids[-1] == sys.argv[1] else 1)' "$2"
}

# escape_create NAME: declares NAME and checks the set-up: the create runs with its two
# untagged grandchildren, one in the script's process group, one in its own session, all in
# kindler.service's cgroup. Sets ESCAPED (the create's processes) and IG, SS (the two pids).
escape_create() {
    local name=$1 script pg lines
    api POST /api/clusters "{\"name\":\"$name\",\"provider\":\"k3d\"}"
    check "POST /api/clusters {$name} answers 202" test "$CODE" = 202
    if ! wait_for 30 escape_ready "$name"; then
        fail "the create of $name did not start its untagged grandchildren"
        return 1
    fi
    IG=$(escaped "$name" in-group) SS=$(escaped "$name" setsid)
    ESCAPED=$(create_procs "$name")
    script=$(awk '/create-cluster -n /{ print $1; exit }' <<<"$ESCAPED")
    pg=$(cproc "$script" | awk '{ print $2 }')
    log "  the create's processes (container pids):"
    mapfile -t lines <<<"$ESCAPED"
    printf '    %s\n' "${lines[@]}"
    check "the stand-in script $script carries the tag and leads its process group $pg" \
        eval 'has_tag "$script" && [ "$pg" = "$script" ]'
    check "grandchild $IG (env -u KINDLER_PROCESS_TAG sleep 600 &): no tag, in the script's process group $pg" \
        eval '! has_tag "$IG" && [ "$(cproc "$IG" | awk "{ print \$2 }")" = "$pg" ]'
    check "grandchild $SS (setsid env -u KINDLER_PROCESS_TAG sleep 600 &): no tag, its own session and group" \
        eval '! has_tag "$SS" && [ "$(cproc "$SS" | awk "{ print \$2, \$3 }")" = "$SS $SS" ]'
    check "both are in kindler.service's cgroup" eval 'in_unit_cgroup "$IG" && in_unit_cgroup "$SS"'
}

# 7a. systemctl kill -s KILL: every process of the unit's cgroup at once.
if escape_create escape1; then
    pid_before=$(main_pid)
    restarts_before=$(unit_prop kindler.service NRestarts)
    cursor=$(journal_cursor)
    C systemctl kill -s KILL kindler
    check "after systemctl kill -s KILL kindler, systemd restarts it (Restart=on-failure)" \
        wait_for 30 new_daemon "$pid_before"
    C journalctl -u kindler.service --no-pager -o cat --after-cursor="$cursor" >"$work/escape1-systemd.txt" 2>&1
    log "  what systemd did (journal of kindler.service, systemd's lines):"
    grep -E 'Main process exited|Killing process|Failed with result|Scheduled restart' "$work/escape1-systemd.txt" | sed 's/^/    /'
    left=$(alive_of "$ESCAPED")
    check "once kindler is active again (MainPID $pid_before -> $(main_pid), NRestarts $restarts_before -> $(unit_prop kindler.service NRestarts)), nothing of escape1's create is left${left:+: $left}" \
        test -z "$left"
    left=$(sleeps_600)
    check "no 'sleep 600' is left in the container${left:+: $left}" test -z "$left"
    check "escape1 reaches running" wait_for 30 state_is escape1 running
    check "the restarted daemon (MainPID $(main_pid)) recorded the create as interrupted and created escape1" \
        created_by escape1 "$(main_pid)"
fi

# 7b. SIGKILL to the main process only: with KillMode=mixed, systemd kills what is left of
# the cgroup (SIGKILL) before it restarts the service.
if escape_create escape2; then
    pid_before=$(main_pid)
    cursor=$(journal_cursor)
    C kill -KILL "$pid_before"
    check "after kill -KILL $pid_before (the main process only), systemd restarts kindler" \
        wait_for 30 new_daemon "$pid_before"
    left=$(alive_of "$ESCAPED")
    check "once kindler is active again (MainPID $pid_before -> $(main_pid)), nothing of escape2's create is left${left:+: $left}" \
        test -z "$left"
    left=$(sleeps_600)
    check "no 'sleep 600' is left in the container${left:+: $left}" test -z "$left"
    C journalctl -u kindler.service --no-pager -o cat --after-cursor="$cursor" >"$work/escape2-systemd.txt" 2>&1
    log "  what systemd did (journal of kindler.service, systemd's lines):"
    grep -E 'Main process exited|Killing process|Failed with result|Scheduled restart' "$work/escape2-systemd.txt" | sed 's/^/    /'
    check "systemd saw the main process die of SIGKILL" \
        grep -q 'Main process exited, code=killed, status=9/KILL' "$work/escape2-systemd.txt"
    killed_by_systemd() { grep -q "Killing process $1 (sleep) with signal SIGKILL" "$work/escape2-systemd.txt"; }
    check "systemd itself SIGKILLed the untagged grandchildren $IG and $SS (KillMode=mixed)" \
        eval 'killed_by_systemd "$IG" && killed_by_systemd "$SS"'
    check "escape2 reaches running" wait_for 30 state_is escape2 running
    check "the restarted daemon (MainPID $(main_pid)) recorded the create as interrupted and created escape2" \
        created_by escape2 "$(main_pid)"
fi

# =================================================================================================
step "8. restarts under load"
sock_since=$(unit_prop kindler.socket ActiveEnterTimestampMonotonic)
api_sock_since=$(unit_prop kindler-api.socket ActiveEnterTimestampMonotonic)
rdir="$work/restarts"
rm -rf "$rdir"
mkdir -p "$rdir"
# The client: 4 threads, a new connection per request: GET /api/clusters, /api/clusters/dev,
# /api/health, POST /api/clusters/dev/start, and 10 declarations of new clusters.
python3 "$here/load-client.py" "$base" "$rdir" --threads 4 --min-requests 1000 --declare 10 \
    >"$rdir/client.log" 2>&1 &
loop_pid=$!
r_count() { cat "$rdir/count" 2>/dev/null || echo 0; }
r_reaches() { [ "$(r_count)" -ge "$1" ]; }
# Five starts in a row are the whole of systemd's default start limit (StartLimitBurst=5 in
# StartLimitIntervalSec=10s), which counts the starts of the steps before too: clear it.
C systemctl reset-failed kindler.service
restart_pids=("$(main_pid)")
restart_rcs=()
: >"$rdir/windows"
for i in 1 2 3 4 5; do
    # Spread the restarts over the load: the next one after 150 more requests.
    wait_for 60 r_reaches $((i * 150)) || { fail "the client did not reach $((i * 150)) requests"; break; }
    t0=$(date +%s.%N)
    C systemctl restart kindler
    rc=$?
    t1=$(date +%s.%N)
    echo "$t0 $t1" >>"$rdir/windows"
    restart_rcs+=("$rc")
    restart_pids+=("$(main_pid)")
done
touch "$rdir/stop"
client_done() { [ -f "$rdir/result" ] || ! kill -0 "$loop_pid" 2>/dev/null; }
wait_for 120 client_done || fail "the client did not finish"
wait "$loop_pid"
loop_pid=""
check "5 x systemctl restart kindler, each succeeded (exit statuses ${restart_rcs[*]})" \
    test "${restart_rcs[*]}" = "0 0 0 0 0"
distinct_pids() {
    [ "$(printf '%s\n' "${restart_pids[@]}" | grep -vx 0 | sort -u | wc -l)" = 6 ]
}
check "each restart started a new daemon (MainPIDs ${restart_pids[*]})" distinct_pids
if [ -f "$rdir/result" ]; then
    read -r total gets posts failed refused errors declared < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(r["total"], r["gets"], r["posts"], r["failed"], r["refused"],
      ",".join(f"{k}:{v}" for k, v in r["errors"].items()) or "-", ",".join(r["declared"]) or "-")' "$rdir/result")
else
    total=0 gets=0 posts=0 failed="?" refused="?" errors="no result (client log: $rdir/client.log)" declared=-
fi
# How many requests were under way during each restart (sent before it ended, answered
# after it began): the load really spans every restart.
overlaps=$(python3 - "$rdir/requests" "$rdir/windows" <<'PY'
import sys
reqs = [tuple(map(float, l.split()[:2])) for l in open(sys.argv[1]) if l.strip()]
for w in open(sys.argv[2]):
    w0, w1 = map(float, w.split())
    print(sum(1 for t0, t1 in reqs if t0 < w1 and t1 > w0), end=" ")
PY
)
metric[restart_requests]=$total
metric[restart_overlaps]=$overlaps
spans_all() { [ "$(wc -w <<<"$overlaps")" = 5 ] && ! grep -qw 0 <<<"$overlaps"; }
check "requests were under way during each of the 5 restarts ($overlaps)" spans_all
check "restarts under load: $total requests ($gets GETs, $posts POSTs), $failed failed, $refused refused (errors: $errors)" \
    test "$total" -ge 1000 -a "$failed" = 0 -a "$refused" = 0
[ "$failed" = 0 ] || awk '$6 != "-" || ($3 == "GET" && $5 != 200) || ($3 == "POST" && $5 != 202)' "$rdir/requests" | head -n 5
check "kindler.socket and kindler-api.socket were not restarted" \
    test "$(unit_prop kindler.socket ActiveEnterTimestampMonotonic) $(unit_prop kindler-api.socket ActiveEnterTimestampMonotonic)" = "$sock_since $api_sock_since"
declared_running() {
    api GET /api/clusters && [ "$CODE" = 200 ] && printf '%s' "$BODY" | python3 -c '
import json, sys
want = set(sys.argv[1].split(","))
running = {c["name"] for c in json.load(sys.stdin) if c["actual_state"] == "running"}
sys.exit(0 if len(want) == 10 and want <= running else 1)' "$declared"
}
check "the 10 clusters declared during the restarts ($declared) are kept and reach running" \
    wait_for 60 declared_running

C journalctl -o short-iso --no-pager >"$work/journal.txt" 2>&1

# =================================================================================================
step "9. remove, then purge"
C apt-get remove -y kindler >"$work/remove.log" 2>&1
check "apt-get remove kindler succeeded" test $? = 0
for u in kindler.service kindler.socket kindler-api.socket; do
    check "$u is stopped ($(C systemctl is-active $u))" test "$(C systemctl is-active "$u")" != active
done
# As debhelper does, remove keeps the enablement links (dangling now) so that a reinstall
# keeps the administrator's choice; purge removes them.
links_kept() { C test -L /etc/systemd/system/sockets.target.wants/kindler.socket; }
check "the enablement links are kept (dangling) until purge" links_kept
check "no kindler process is left" test -z "$(C pgrep -u kindler)"
no_answer() { ! curl -s -m 5 -o /dev/null "$base/api/health"; }
check "nothing answers on $base any more" no_answer
check "/var/lib/kindler/kindler.db is kept" C test -f /var/lib/kindler/kindler.db
check "/etc/kindler/kindler.toml is kept" C test -f /etc/kindler/kindler.toml
check "the user kindler is kept" C getent passwd kindler
check "dpkg lists kindler as removed, configuration kept (rc)" \
    test "$(C dpkg-query -W -f '${db:Status-Abbrev}' kindler | tr -d ' ')" = rc
C rm -rf /etc/systemd/system/kindler.service.d /etc/systemd/system/kindler.socket.d
C apt-get purge -y kindler >"$work/purge.log" 2>&1
check "apt-get purge kindler succeeded" test $? = 0
check "/var/lib/kindler is gone" C test ! -e /var/lib/kindler
check "/etc/kindler is gone" C test ! -e /etc/kindler
absent() { ! C "$@" >/dev/null 2>&1; }
check "the user kindler is gone" absent getent passwd kindler
check "the group kindler is gone" absent getent group kindler
leftover_links=$(C find /etc/systemd/system -name '*kindler*' 2>/dev/null)
check "no kindler unit links are left in /etc/systemd/system${leftover_links:+: $leftover_links}" test -z "$leftover_links"
check "dpkg no longer knows kindler" absent dpkg-query -W kindler

# =================================================================================================
step "10. numbers"
human() { numfmt --to=iec --suffix=B "$1" 2>/dev/null || echo "$1 B"; }
metric[package_size_human]=$(human "${metric[package_size]}")
{
    echo "kindler system test, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "package:                $(basename "$deb")"
    echo "package size:           ${metric[package_size]} bytes (${metric[package_size_human]})"
    echo "install time:           ${metric[install_seconds]} s (apt install kindler in the container)"
    echo "stop time (slow create): ${metric[stop_seconds]} s (kill_grace 3 s, TimeoutStopSec 30 s)"
    echo "watchdog: a request sent to a frozen daemon was answered after ${metric[watchdog_answer_seconds]:-?} s"
    echo "upgrade:                ${metric[upgrade_seconds]:-?} s, ${metric[upgrade_requests]:-?} client requests meanwhile"
    echo "5 restarts under load:  ${metric[restart_requests]:-?} requests; under way during each restart: ${metric[restart_overlaps]:-?}"
    echo "exposure (systemd-analyze security kindler.service): ${metric[exposure]:-?}"
    echo "checks:                 $passes passed, $failures failed"
    echo "duration:               $((SECONDS - t_start)) s"
} | tee "$work/summary.txt"

step "summary"
if [ "$failures" = 0 ]; then
    printf '%sALL %d CHECKS PASSED%s in %d s (results in %s)\n' "$G" "$passes" "$N" "$((SECONDS - t_start))" "$work"
    exit 0
fi
printf '%s%d OF %d CHECKS FAILED%s:\n' "$R" "$failures" "$((passes + failures))" "$N"
printf '  - %s\n' "${failed_checks[@]}"
exit 1
