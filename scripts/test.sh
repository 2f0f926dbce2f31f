#!/usr/bin/env bash
# The whole test suite: installs what is missing, then
#  0. runs the static checks (scripts/lint.sh: clang-format, cppcheck);
#  1. builds warpd and warpctl as shipped (RelWithDebInfo, no tests) into build-release/ and
#     packs them into a .deb (CPack), which the systemd system test installs into its sandbox;
#  2. builds every test with AddressSanitizer + UndefinedBehaviorSanitizer into build-asan/;
#  3. starts a throwaway PostgreSQL (scripts/test-postgres.sh; the tests get WARP_TEST_DSN and
#     WARP_TEST_PGBIN) and runs every ctest of build-asan/ (labels unit, postgres, process and
#     systemd) against it. The server is stopped and its directory removed on any exit.
# One instrumented build of the tests rather than a plain one and an instrumented one: the
# sanitizers see every test, and the suite stays well inside CI's time on two cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"

echo "== static checks =="
"$root/scripts/lint.sh"

echo "== build warpd, warpctl and their package (RelWithDebInfo) =="
WARP_TEST_DEB=$(BUILD_DIR="$root/build-release" "$root/scripts/package.sh")
export WARP_TEST_DEB
echo "package: $WARP_TEST_DEB"

echo "== build the tests (ASan + UBSan) =="
BUILD_DIR="$root/build-asan" "$root/scripts/build.sh" -DWARP_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug

echo "== PostgreSQL for the tests =="
# shellcheck source=scripts/test-postgres.sh
source "$root/scripts/test-postgres.sh"
trap warp_test_pg_stop EXIT
warp_test_pg_start

echo "== tests under ASan + UBSan =="
(cd "$root/build-asan" &&
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --output-on-failure --timeout 300 -j "$(nproc)")
