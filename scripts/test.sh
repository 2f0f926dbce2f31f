#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, starts a throwaway PostgreSQL
# (scripts/test-postgres.sh; the tests get WARP_TEST_DSN and WARP_TEST_PGBIN), runs every
# ctest, then builds with AddressSanitizer + UndefinedBehaviorSanitizer and runs the unit and
# postgres tests again. The server is stopped and its directory removed on any exit.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"

echo "== build (RelWithDebInfo) =="
BUILD_DIR="$root/build" "$root/scripts/build.sh"

echo "== PostgreSQL for the tests =="
# shellcheck source=scripts/test-postgres.sh
source "$root/scripts/test-postgres.sh"
trap warp_test_pg_stop EXIT
warp_test_pg_start

echo "== tests =="
status=0
(cd "$root/build" && ctest --output-on-failure --timeout 300 -j "$(nproc)") || status=$?

echo "== build (ASan + UBSan) =="
BUILD_DIR="$root/build-asan" "$root/scripts/build.sh" -DWARP_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
echo "== tests under ASan + UBSan (unit, postgres) =="
(cd "$root/build-asan" &&
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --output-on-failure --timeout 300 -j "$(nproc)" -L 'unit|postgres') || status=$?

exit "$status"
