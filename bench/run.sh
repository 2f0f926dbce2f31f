#!/usr/bin/env bash
# Every benchmark of docs/BENCHMARKS.md in one run, against one throwaway PostgreSQL 15 on this
# machine (scripts/test-postgres.sh, with pg_stat_statements preloaded for the idle figures):
#   bench/throughput.sh  warpd end to end, null runner, 1 and 4 instances; then (SKIP name
#                        `runners`) the http runner against a trivial local receiver and the
#                        notify runner with a LISTEN agent, 1 instance, RUNNER_ITEMS items
#   bench/ceiling.sh     warpd's own claim and completion SQL alone, in 1 and 2 server-side
#                        lanes: what warpd's design can reach here with no daemon around it
#   bench/pgbench/run.sh the database's limit for the same per-item SQL, single and batched
#   bench/peers/run.sh   graphile-worker, default and best documented configuration
#   bench/idle.sh        an idle warpd at 100,000 agents
# RUNS rounds (default 3); all result lines go to bench/results/<UTC time>.txt and the medians
# per figure are printed at the end (bench/medians.py).
#
#   bench/run.sh                  # needs a build in build/ (scripts/build.sh) and Node.js
# Environment: RUNS (3), BUILD_DIR (build/), SKIP ("" or names among: throughput runners
# ceiling pgbench peers idle), RUNNER_ITEMS (50000), plus the knobs of each script (AGENTS, ITEMS, ...).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-3}
skip=" ${SKIP:-} "
export BUILD_DIR=${BUILD_DIR:-$root/build}
mkdir -p "$root/bench/results"
out="$root/bench/results/$(date -u +%Y%m%dT%H%M%SZ).txt"

# shellcheck source=scripts/test-postgres.sh
source "$root/scripts/test-postgres.sh"
# shared_buffers large enough for the data set (the test default is 32 MB); room in the lock
# table for a batch's advisory locks.
export WARP_TEST_PG_CONF="shared_preload_libraries = 'pg_stat_statements'
shared_buffers = 1GB
max_locks_per_transaction = 256"
trap warp_test_pg_stop EXIT
warp_test_pg_start
dsn=$WARP_TEST_DSN

{
  echo "# $(date -u +%FT%TZ) $(uname -srm); $(nproc) cores; $(awk '/MemTotal/ { print $2 " kB" }' /proc/meminfo)"
  echo "# $(lscpu | sed -n 's/^Model name: *//p'); PostgreSQL $("$WARP_TEST_PGBIN/postgres" --version | awk '{ print $3 }') (fsync off, synchronous_commit off, shared_buffers 1GB)"
  echo "# warpd $(git -C "$root" rev-parse --short HEAD); RUNS=$runs"
} | tee "$out"

round() {
  local what=$1
  shift
  [[ $skip == *" $what "* ]] && return 0
  # A failed measurement is recorded as such and the other figures are still measured.
  if ! "$@" 2> >(sed "s/^/[$what] /" >&2) | tee -a "$out"; then
    echo "# FAILED in round $run: $*" | tee -a "$out"
  fi
}

for run in $(seq 1 "$runs"); do
  echo "## round $run" | tee -a "$out"
  round throughput "$root/bench/throughput.sh" "$dsn" 1
  round throughput "$root/bench/throughput.sh" "$dsn" 4
  round runners env RUNNER=http ITEMS="${RUNNER_ITEMS:-50000}" "$root/bench/throughput.sh" "$dsn" 1
  round runners env RUNNER=notify ITEMS="${RUNNER_ITEMS:-50000}" "$root/bench/throughput.sh" "$dsn" 1
  round ceiling "$root/bench/ceiling.sh" "$dsn" 1
  round ceiling "$root/bench/ceiling.sh" "$dsn" 2
  round pgbench "$root/bench/pgbench/run.sh" "$dsn"
  round peers "$root/bench/peers/run.sh" "$dsn"
  round idle "$root/bench/idle.sh" "$dsn"
done

echo "== medians of $runs round(s) ($out) =="
# Into the file as comments: medians.py reads the file again without counting them as a round.
medians=$(python3 "$root/bench/medians.py" "$out")
printf '%s\n' "$medians"
printf '%s\n' "$medians" | sed 's/^/# median: /' >>"$out"
