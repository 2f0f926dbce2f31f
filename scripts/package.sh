#!/usr/bin/env bash
# Builds warpd and warpctl as shipped (RelWithDebInfo, no tests, installed under /usr) into
# BUILD_DIR (default: build-release) and packs them into a Debian package with CPack. Prints
# the package's path on stdout. Install it with `apt install ./build-release/warp_*.deb`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${BUILD_DIR:-$root/build-release}
BUILD_DIR="$build_dir" "$root/scripts/build.sh" -DWARP_TESTS=OFF -DCMAKE_INSTALL_PREFIX=/usr >&2
rm -f "$build_dir"/warp_*.deb
(cd "$build_dir" && cpack -G DEB >&2)
ls "$build_dir"/warp_*.deb
