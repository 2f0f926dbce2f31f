#!/usr/bin/env bash
# Configures and builds warpd into BUILD_DIR (default: build). Extra arguments go to CMake's
# configure step, e.g. scripts/build.sh -DWARP_SANITIZE=ON.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${BUILD_DIR:-$root/build}
jobs=${JOBS:-$(nproc)}
cmake -S "$root" -B "$build_dir" -G Ninja "$@" >/dev/null
cmake --build "$build_dir" -j "$jobs"
