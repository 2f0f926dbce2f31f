#!/usr/bin/env bash
# The benchmark scripts at a small size, so that they do not rot between benchmark sittings:
# bench/throughput.sh (1 and 2 warpd instances) and bench/ceiling.sh (1 and 2 lanes) against
# the tests' PostgreSQL ($WARP_TEST_DSN of scripts/test-postgres.sh), with the warpd and warpctl
# of this build (BUILD_DIR). Each script checks its own records (every item done exactly once,
# no lease left open) and fails otherwise; this test also wants its result line. The figures
# themselves mean nothing at this size and are not checked.
#   tests/bench/smoke_test.sh BUILD_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
export BUILD_DIR=${1:?usage: smoke_test.sh BUILD_DIR}
dsn=${WARP_TEST_DSN:?WARP_TEST_DSN is not set: run the tests through scripts/test.sh}
export AGENTS=40 ITEMS=800 BOUND=4 TIMEOUT=120

expect() {
  local pattern=$1
  shift
  local out
  if ! out=$("$@"); then
    echo "FAIL: $* exited non-zero" >&2
    exit 1
  fi
  if [[ ! $out =~ $pattern ]]; then
    echo "FAIL: $* printed '$out', not a line matching '$pattern'" >&2
    exit 1
  fi
  echo "ok: $out"
}

for instances in 1 2; do
  expect "^warpd runner=null instances=$instances agents=40 items=800 bound=4 seconds=[0-9.]+ items_per_s=[0-9]+ cycles=[0-9]+ selected=[0-9]+ decisions=dispatched:800\$" \
    "$root/bench/throughput.sh" "$dsn" "$instances"
done
for lanes in 1 2; do
  expect "^ceiling lanes=$lanes agents=40 items=800 bound=4 chunk=40 seconds=[0-9.]+ items_per_s=[0-9]+\$" \
    env CHUNK=40 "$root/bench/ceiling.sh" "$dsn" "$lanes"
done
