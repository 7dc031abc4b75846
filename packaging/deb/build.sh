#!/usr/bin/env bash
# Builds the Debian package of kindler with debhelper (packaging/deb/debian/, compat 13):
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
# Output: DIR/kindler_<version>_<arch>.deb; its path is the last line printed.
# What this script does itself: build the binary with cargo (the rustup toolchain; Debian's
# rustc is too old), lay out a build tree in DIR/build/ (the repository's files the package
# takes, the binary, and debian/ with a changelog for VERSION and a copyright file listing
# the Rust crates linked in), and run `dpkg-buildpackage -b` there. Everything else, the
# maintainer scripts included, is debhelper's. The build tree stays for inspection.
# Needs: debhelper (13), dpkg-dev; python3 and cargo to list the crates in the copyright
# file. Runs as any user (Rules-Requires-Root: no).
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

for tool in dpkg-buildpackage dh dpkg-parsechangelog; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed (apt-get install debhelper dpkg-dev)"
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

# --- the build tree ---------------------------------------------------------------------
mkdir -p "$out"
out=$(cd "$out" && pwd)
upstream=${version#*:}
upstream=${upstream%-*}
tree="$out/build/kindler-$upstream"
rm -rf "$out/build"
umask 022
mkdir -p "$tree/packaging/deb"
cp -r "$repo/systemd" "$repo/scripts" "$repo/README.md" "$tree/"
cp "$here/kindler.toml" "$tree/packaging/deb/"
cp -r "$repo/packaging/prometheus" "$tree/packaging/"
cp -r "$here/debian" "$tree/debian"
cp "$binary" "$tree/kindler"

cat >"$tree/debian/changelog" <<CHANGELOG
kindler ($version) unstable; urgency=medium

  * Built with packaging/deb/build.sh from the kindler sources
    (Cargo.toml version $cargo_version).

 -- kindler developers <dev@kindler.invalid>  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")
CHANGELOG

# copyright: the static file, plus the crates the binary links, when cargo can tell.
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
    sed -n '1,/^$/{/^$/d;p}' "$here/debian/copyright"
    echo "Comment: /usr/bin/kindler is statically linked with these Rust crates (SQLite is"
    echo " compiled in by rusqlite's \"bundled\" feature; SQLite is in the public domain)."
    echo " Their licenses are the crates' own, as published on crates.io:"
    if [ -n "$crates" ]; then echo "$crates"; else echo " (list not available at build time; see Cargo.lock)"; fi
    echo
    sed -n '/^$/,$p' "$here/debian/copyright" | sed '1d'
} >"$tree/debian/copyright"

# --- debhelper --------------------------------------------------------------------------
echo "build.sh: dpkg-buildpackage -b in $tree" >&2
(cd "$tree" && dpkg-buildpackage -b --no-sign) >&2 || die "dpkg-buildpackage failed"

arch=$(dpkg-architecture -qDEB_HOST_ARCH)
name="kindler_${upstream}-${version##*-}_$arch.deb"
[ -f "$out/build/$name" ] || die "dpkg-buildpackage made no $out/build/$name"
mv -f "$out/build/$name" "$out/$name"
deb="$out/$name"

if [ "$lintian" = 1 ] && command -v lintian >/dev/null 2>&1; then
    echo "build.sh: lintian $deb" >&2
    if ! lintian --fail-on error "$deb" >&2; then
        die "lintian reports errors for $deb"
    fi
fi
echo "$deb"
