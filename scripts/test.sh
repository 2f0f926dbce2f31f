#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, runs every ctest, then builds the
# unit tests with AddressSanitizer + UndefinedBehaviorSanitizer and runs them again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"

echo "== build (RelWithDebInfo) =="
BUILD_DIR="$root/build" "$root/scripts/build.sh"
echo "== tests =="
status=0
(cd "$root/build" && ctest --output-on-failure --timeout 300 -j "$(nproc)") || status=$?

echo "== build (ASan + UBSan) =="
BUILD_DIR="$root/build-asan" "$root/scripts/build.sh" -DWARP_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
echo "== tests under ASan + UBSan (unit) =="
(cd "$root/build-asan" &&
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --output-on-failure --timeout 300 -j "$(nproc)" -L unit) || status=$?

exit "$status"
