#!/usr/bin/env bash
# Quick start: installs what is missing, builds, and runs warpd on the in-memory store with the
# demo agents of examples/. Stop it with Ctrl-C (it drains in-flight work, then exits 0).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
exec "$root/build/daemon/warpd" --config "$root/examples/demo.toml" "$@"
