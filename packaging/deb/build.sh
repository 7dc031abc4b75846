#!/usr/bin/env bash
# Builds the Debian package of kindler with dpkg-deb (no cargo-deb, no debhelper):
#
#   packaging/deb/build.sh [--no-build] [--version VERSION] [--binary PATH] [--out DIR]
#                          [--no-lintian]
#
#   --no-build         do not run `cargo build --release`; package target/release/kindler
#   --version VERSION  package version instead of Cargo.toml's (env KINDLER_DEB_VERSION);
#                      "0.1.1" becomes "0.1.1-1", a version with a Debian revision is kept
#   --binary PATH      package this kindler binary instead of target/release/kindler
#   --out DIR          output directory (default: target/debian)
#   --no-lintian       do not run lintian on the result (it runs when installed)
#
# Output: target/debian/kindler_<version>_<arch>.deb; its path is the last line printed.
# The staging tree stays in target/debian/root/ for inspection.
# Needs: bash, dpkg-deb, gzip, strip (binutils); dpkg-shlibdeps (dpkg-dev) is used when
# present to compute the shared-library dependencies, python3 to list the bundled crates
# in the copyright file. Runs as any user: file ownership in the package is root:root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

build=1
lintian=1
version=${KINDLER_DEB_VERSION:-}
binary=""
out="$repo/target/debian"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0; shift ;;
        --no-lintian) lintian=0; shift ;;
        --version) [ $# -ge 2 ] || die "--version needs a value"; version=$2; shift 2 ;;
        --version=*) version=${1#*=}; shift ;;
        --binary) [ $# -ge 2 ] || die "--binary needs a value"; binary=$2; build=0; shift 2 ;;
        --binary=*) binary=${1#*=}; build=0; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a value"; out=$2; shift 2 ;;
        --out=*) out=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

for tool in dpkg-deb dpkg gzip strip; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed (apt-get install dpkg binutils gzip)"
done

# --- version ----------------------------------------------------------------------------
cargo_version=$(sed -n '/^\[package\]/,/^\[/{s/^version[[:space:]]*=[[:space:]]*"\(.*\)"/\1/p}' "$repo/Cargo.toml" | head -n1)
[ -n "$cargo_version" ] || die "cannot read the version from $repo/Cargo.toml"
version=${version:-$cargo_version}
case "$version" in
    *-*) ;;                     # has a Debian revision already
    *) version="$version-1" ;;  # non-native package: changelog.Debian.gz, revision 1
esac
printf '%s' "$version" | grep -Eq '^([0-9]+:)?[0-9][A-Za-z0-9.+~-]*-[A-Za-z0-9.+~]+$' \
    || die "'$version' is not a valid Debian version"
arch=$(dpkg --print-architecture)

# --- binary -----------------------------------------------------------------------------
if [ "$build" = 1 ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo is needed (or pass --no-build)"
    echo "build.sh: cargo build --release" >&2
    (cd "$repo" && cargo build --release) >&2
fi
binary=${binary:-$repo/target/release/kindler}
[ -x "$binary" ] || die "no kindler binary at $binary (run without --no-build)"

# Reproducible timestamps: the last commit's date, unless SOURCE_DATE_EPOCH is set.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
changelog_date=$(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")

# --- staging tree -----------------------------------------------------------------------
mkdir -p "$out"
root="$out/root"
rm -rf "$root"
umask 022
install -d "$root/DEBIAN"

inst() { # inst MODE SOURCE DEST
    install -D -m "$1" "$2" "$root/$3"
}

inst 0755 "$binary" usr/bin/kindler
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$root/usr/bin/kindler"

for unit in kindler.service kindler.socket kindler-api.socket; do
    inst 0644 "$repo/systemd/$unit" "usr/lib/systemd/system/$unit"
done
inst 0644 "$repo/systemd/kindler.catalog" usr/lib/systemd/catalog/kindler.catalog
inst 0644 "$repo/scripts/lib.sh" usr/lib/kindler/lib.sh
for script in create-cluster delete-cluster start-cluster stop-cluster probe-cluster; do
    inst 0755 "$repo/scripts/$script" "usr/lib/kindler/$script"
done
inst 0644 "$here/kindler.toml" etc/kindler/kindler.toml
inst 0644 "$here/kindler.sysusers" usr/lib/sysusers.d/kindler.conf

doc=usr/share/doc/kindler
if [ -f "$repo/README.md" ]; then
    inst 0644 "$repo/README.md" "$doc/README.md"
else
    install -d "$root/$doc"
    cat >"$root/$doc/README.md" <<'EOF'
# kindler

kindler keeps the k3d and kind clusters declared over its HTTP API in an SQLite database
and makes them exist, running create/delete/start/stop scripts and retrying failures.

- Service: `systemctl status kindler` (alias kindler-reconciler.service), sockets
  kindler.socket (127.0.0.1:8765) and kindler-api.socket (/run/kindler/api.sock).
- Configuration: /etc/kindler/kindler.toml; every setting is listed by `kindler serve --help`.
- Logs: `journalctl -u kindler`, per cluster `journalctl -u kindler KINDLER_CLUSTER=NAME`.
- Manual: kindler(8).
EOF
fi
inst 0644 "$here/README.Debian" "$doc/README.Debian"

# copyright: the static file, plus the crates the binary links, when cargo can tell.
install -d "$root/$doc"
crates=""
if command -v python3 >/dev/null 2>&1 && command -v cargo >/dev/null 2>&1; then
    host=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
    crates=$(cd "$repo" && cargo metadata --format-version 1 --locked --offline ${host:+--filter-platform "$host"} 2>/dev/null | python3 -c '
import json, sys
meta = json.load(sys.stdin)
pkgs = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
root = meta["resolve"]["root"]
seen, todo = set(), [root]
while todo:
    node = nodes[todo.pop()]
    for dep in node["deps"]:
        if any(k["kind"] in (None, "normal") for k in dep["dep_kinds"]) and dep["pkg"] not in seen:
            seen.add(dep["pkg"]); todo.append(dep["pkg"])
for pid in sorted(seen, key=lambda i: (pkgs[i]["name"], pkgs[i]["version"])):
    p = pkgs[pid]
    print(" %s %s: %s" % (p["name"], p["version"], p.get("license") or "see the crate"))
' 2>/dev/null) || crates=""
fi
{
    sed -n '1,/^$/{/^$/d;p}' "$here/copyright"
    echo "Comment: /usr/bin/kindler is statically linked with these Rust crates (SQLite is"
    echo " compiled in by rusqlite's \"bundled\" feature; SQLite is in the public domain)."
    echo " Their licenses are the crates' own, as published on crates.io:"
    if [ -n "$crates" ]; then echo "$crates"; else echo " (list not available at build time; see Cargo.lock)"; fi
    echo
    sed -n '/^$/,$p' "$here/copyright" | sed '1d'
} >"$root/$doc/copyright"
chmod 0644 "$root/$doc/copyright"

cat >"$out/changelog.Debian" <<EOF
kindler ($version) unstable; urgency=medium

  * Built with packaging/deb/build.sh from the kindler sources
    (Cargo.toml version $cargo_version).

 -- kindler developers <dev@kindler.invalid>  $changelog_date
EOF
gzip -9n -c "$out/changelog.Debian" >"$root/$doc/changelog.Debian.gz"
chmod 0644 "$root/$doc/changelog.Debian.gz"

install -d "$root/usr/share/man/man8"
gzip -9n -c "$here/kindler.8" >"$root/usr/share/man/man8/kindler.8.gz"
chmod 0644 "$root/usr/share/man/man8/kindler.8.gz"

inst 0644 "$here/lintian-overrides" usr/share/lintian/overrides/kindler

# --- control area -----------------------------------------------------------------------
for script in postinst prerm postrm; do
    install -m 0755 "$here/maintscripts/$script" "$root/DEBIAN/$script"
done
printf '/etc/kindler/kindler.toml\n' >"$root/DEBIAN/conffiles"
chmod 0644 "$root/DEBIAN/conffiles"

# Shared-library dependencies: dpkg-shlibdeps needs a debian/control, so give it one.
shlibs=""
if command -v dpkg-shlibdeps >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/debian"
    printf 'Source: kindler\n\nPackage: kindler\nArchitecture: any\n' >"$tmp/debian/control"
    if shlibs=$(cd "$tmp" && dpkg-shlibdeps -O -e"$root/usr/bin/kindler" 2>"$tmp/err"); then
        shlibs=$(printf '%s\n' "$shlibs" | sed -n 's/^shlibs:Depends=//p')
    else
        echo "build.sh: dpkg-shlibdeps failed, using a fixed list:" >&2
        cat "$tmp/err" >&2
        shlibs=""
    fi
fi
if [ -z "$shlibs" ]; then
    shlibs="libc6 (>= 2.34), libgcc-s1 (>= 4.2)"
fi
# passwd: usermod, userdel and groupdel in the maintainer scripts (not Essential).
depends="$shlibs, systemd, passwd"

# Installed-Size as dpkg-gencontrol counts it: KiB per file rounded up, 1 per dir/link.
installed_size=$(cd "$root" && find . -path ./DEBIAN -prune -o \( -type f -printf '%s\n' \) -o \( ! -name . -printf '1024\n' \) \
    | awk '{ total += int(($1 + 1023) / 1024) } END { print total }')

cat >"$root/DEBIAN/control" <<EOF
Package: kindler
Version: $version
Architecture: $arch
Maintainer: kindler developers <dev@kindler.invalid>
Installed-Size: $installed_size
Depends: $depends
Recommends: docker.io | docker-ce
Suggests: kubectl
Section: admin
Priority: optional
Homepage: https://example.invalid/kindler
Description: declarative reconciler for local k3d and kind clusters
 kindler keeps the local Kubernetes clusters (k3d or kind) declared over its
 HTTP API in an SQLite database and makes them exist: it runs create, delete,
 start and stop scripts for each cluster, checks running clusters with a probe
 script, and retries failures with exponential backoff.
 .
 It runs as a hardened systemd service with socket activation (TCP on
 127.0.0.1:8765 for the WebUI, a unix socket for local tools), so clients
 wait rather than being refused while it restarts or is upgraded. It reports
 readiness and watchdog pings to systemd and logs to the journal with
 structured fields (KINDLER_CLUSTER, KINDLER_ACTION, KINDLER_RUN_ID) and a
 message catalog.
 .
 Default scripts for k3d and kind are included; they need docker and the
 k3d or kind command, and the probe needs kubectl.
EOF
chmod 0644 "$root/DEBIAN/control"

(cd "$root" && find . -path ./DEBIAN -prune -o -type f ! -path './etc/*' -printf '%P\n' | LC_ALL=C sort \
    | xargs -d '\n' md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

# Clamp every timestamp, so the same inputs give the same package.
find "$root" -newermt "@$SOURCE_DATE_EPOCH" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +

deb="$out/kindler_${version#*:}_$arch.deb"
rm -f "$deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2

if [ "$lintian" = 1 ] && command -v lintian >/dev/null 2>&1; then
    echo "build.sh: lintian $deb" >&2
    if ! lintian --fail-on error "$deb" >&2; then
        die "lintian reports errors for $deb"
    fi
fi
echo "$deb"
