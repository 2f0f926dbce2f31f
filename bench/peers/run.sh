#!/usr/bin/env bash
# graphile-worker as a peer of warpd (graphile_bench.mjs): jobs per second for 100,000 no-op
# jobs added in bulk, with graphile-worker's default configuration and with the configuration
# its performance documentation gives for throughput, and the resident memory (VmRSS) of an idle
# graphile-worker process. The version is pinned in package.json / package-lock.json.
#
# Usage:
#   bench/peers/run.sh [DSN]
# DSN is a libpq connection string (key=value or postgresql:// URI), e.g. $WARP_TEST_DSN of
# scripts/test-postgres.sh; without it, the libpq environment (PGHOST, PGPORT, PGUSER,
# PGDATABASE, ...) says where to connect, as for bench/pgbench/run.sh. It is resolved with psql
# to PGHOST/PGPORT/PGUSER and a database to connect to for CREATE/DROP DATABASE; give a password
# as PGPASSWORD (or ~/.pgpass). The role must be allowed to create databases. The script runs
# `npm ci` when node_modules is missing, creates a scratch database warp_bench_peers_<pid>, runs
# the benchmark in it and drops it at the end.
#
# Environment knobs (defaults): JOBS (100000), CONFIGS ("default best"), IDLE_SECONDS (10),
# SKIP_IDLE (unset; 1 skips the idle RSS measurement), PGBIN (directory of psql; default
# $WARP_TEST_PGBIN, else PATH), NODE (node).
#
# Output: on stdout only
#   graphile-worker <config> jobs=<n> jobs_per_s=<number>     (one line per configuration)
#   graphile-worker idle_rss_kb=<n>
# Progress goes to stderr; exit status non-zero on any failure.
#
# Example with a throwaway server:
#   source scripts/test-postgres.sh && warp_test_pg_start
#   bench/peers/run.sh "$WARP_TEST_DSN"
#   warp_test_pg_stop
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

PGBIN=${PGBIN:-${WARP_TEST_PGBIN:-}}
NODE=${NODE:-node}
psql_bin=psql
if [[ -n $PGBIN ]]; then
  psql_bin=$PGBIN/psql
fi

log() { echo "peers/run.sh: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

if (($# > 1)); then
  die "usage: $0 [DSN]"
fi

if [[ ! -d $here/node_modules ]]; then
  log "node_modules missing: npm ci"
  (cd "$here" && npm ci --no-audit --no-fund >&2)
fi

# --- connection ----------------------------------------------------------------------------
conn=()
if (($# == 1)) && [[ -n $1 ]]; then
  conn=(-d "$1")
fi
resolved=$("$psql_bin" -X -At "${conn[@]}" -c '\echo :HOST|:PORT|:USER|:DBNAME') ||
  die "cannot connect to PostgreSQL (${1:-libpq environment})"
IFS='|' read -r host port user maint_db <<<"$resolved"
export PGHOST=$host PGPORT=$port PGUSER=$user
unset PGSERVICE DATABASE_URL || true

scratch=warp_bench_peers_$$
cleanup() {
  local status=$?
  "$psql_bin" -X -q -d "$maint_db" -c "DROP DATABASE IF EXISTS $scratch WITH (FORCE)" >/dev/null 2>&1 ||
    log "could not drop database $scratch"
  exit "$status"
}
trap cleanup EXIT

log "server $host:$port as $user; scratch database $scratch"
"$psql_bin" -X -q -v ON_ERROR_STOP=1 -d "$maint_db" -c "CREATE DATABASE $scratch" >/dev/null
export PGDATABASE=$scratch

"$NODE" "$here/graphile_bench.mjs"
