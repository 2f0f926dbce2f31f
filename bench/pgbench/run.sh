#!/usr/bin/env bash
# The "physical limit" of PostgreSQL for warpd's per-item work: pgbench runs, with custom
# scripts, the minimal SQL that warpd does for one work item, and we report how many work items
# per second the database pushes through it.
#
# Per item, as warpd does (migrations/0007_hot_dispatch.sql, warp.claim_dispatches /
# warp.finish_work_batch; due items are read from warp.work_queue and active leases from
# warp.open_leases, which the tables' triggers keep, as for warpd):
#   transaction 1 (dispatch): claim a due item (FOR UPDATE SKIP LOCKED), try the agent's advisory
#     lock (warp.agent_lock_key), count the agent's active leases, bump its fencing counter,
#     insert the lease, insert the dispatch decision, mark the item dispatched;
#   transaction 2 (completion): release the lease (fencing-checked), mark the item done.
# Variants:
#   single    single.sql: one item per iteration (one transaction pair per item);
#   batch     batch.sql: $BATCH items (default 100) per iteration, each step one set-based
#             statement over the batch; reported as batch<BATCH>, e.g. batch100.
# Each variant runs with 1 client and with $CLIENTS clients (pgbench -c N -j min(N,2)) for
# $DURATION seconds, on freshly seeded data: $AGENTS agents and $ITEMS due work items,
# round-robin over the agents, plus a history of one completed item per agent (seed.sql). A run that consumed every item is repeated with twice the items.
# After each run a query checks the rows (verify.sql): every lease released, done items =
# leases = dispatch decisions, fencing counters consistent.
#
# Usage:
#   bench/pgbench/run.sh [DSN]
# DSN is a libpq connection string (key=value or postgresql:// URI), e.g. $WARP_TEST_DSN of
# scripts/test-postgres.sh; without it, the libpq environment (PGHOST, PGPORT, PGUSER,
# PGDATABASE, ...) says where to connect. It is resolved to PGHOST/PGPORT/PGUSER and a database
# to connect to for CREATE/DROP DATABASE; give a password or sslmode as PGPASSWORD/PGSSLMODE (or
# ~/.pgpass). The role must be allowed to create databases. The script creates a scratch
# database warp_bench_pgbench_<pid>, applies migrations/*.sql in order with psql, and drops the
# database at the end.
#
# Environment knobs (defaults): CLIENTS (4), DURATION (20, seconds per run), AGENTS (10000),
# ITEMS (200000), BATCH (100), VARIANTS ("single batch"), MAX_ITEMS (3200000: give up growing
# the data set beyond this), QUERY_MODE (prepared: pgbench -M; "extended" is what warpd does,
# unnamed statements through PQsendQueryParams, planned at every execution; "prepared" skips
# the planning and so is the upper bound), PGBIN (directory of psql/pgbench; default
# $WARP_TEST_PGBIN, else PATH).
#
# Output: on stdout one line per variant and client count, nothing else:
#   pgbench <variant> clients=<n> items_per_s=<number>
# where items_per_s = pgbench's tps (iterations per second, without connection time) x items
# per iteration (measured: done items / iterations; equal to 1 or BATCH when nothing was
# deferred). Progress, pgbench's summary and the check results go to stderr. Exit status is
# non-zero on any failure, including a failed consistency check.
#
# Example with a throwaway server:
#   source scripts/test-postgres.sh && warp_test_pg_start
#   bench/pgbench/run.sh "$WARP_TEST_DSN"
#   warp_test_pg_stop
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

CLIENTS=${CLIENTS:-4}
DURATION=${DURATION:-20}
AGENTS=${AGENTS:-10000}
ITEMS=${ITEMS:-200000}
BATCH=${BATCH:-100}
VARIANTS=${VARIANTS:-single batch}
MAX_ITEMS=${MAX_ITEMS:-3200000}
PGBIN=${PGBIN:-${WARP_TEST_PGBIN:-}}
QUERY_MODE=${QUERY_MODE:-prepared}

psql_bin=psql
pgbench_bin=pgbench
if [[ -n $PGBIN ]]; then
  psql_bin=$PGBIN/psql
  pgbench_bin=$PGBIN/pgbench
fi

log() { echo "pgbench/run.sh: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

for n in "$CLIENTS" "$DURATION" "$AGENTS" "$ITEMS" "$BATCH" "$MAX_ITEMS"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "CLIENTS, DURATION, AGENTS, ITEMS, BATCH and MAX_ITEMS must be positive integers (got '$n')"
done
case $QUERY_MODE in
  prepared | extended) ;;
  *) die "QUERY_MODE must be prepared or extended (the scripts bind variables as parameters)" ;;
esac
if (($# > 1)); then
  die "usage: $0 [DSN]"
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
unset PGSERVICE || true

scratch=warp_bench_pgbench_$$
workdir=$(mktemp -d "${TMPDIR:-/tmp}/warp-bench-pgbench.XXXXXX")

cleanup() {
  local status=$?
  "$psql_bin" -X -q -d "$maint_db" -c "DROP DATABASE IF EXISTS $scratch WITH (FORCE)" >/dev/null 2>&1 ||
    log "could not drop database $scratch"
  rm -rf "$workdir"
  exit "$status"
}
trap cleanup EXIT

log "server $host:$port as $user; scratch database $scratch"
"$psql_bin" -X -q -v ON_ERROR_STOP=1 -d "$maint_db" -c "CREATE DATABASE $scratch" >/dev/null
export PGDATABASE=$scratch

psql_scratch() { "$psql_bin" -X -q -v ON_ERROR_STOP=1 "$@"; }

# --- schema --------------------------------------------------------------------------------
mapfile -t migrations < <(find "$root/migrations" -maxdepth 1 -name '*.sql' -type f | LC_ALL=C sort)
((${#migrations[@]} > 0)) || die "no migrations in $root/migrations"
for m in "${migrations[@]}"; do
  log "applying ${m#"$root"/}"
  psql_scratch --single-transaction -f "$m" >/dev/null
done

# --- runs ----------------------------------------------------------------------------------
# Prints "key=value ..." of verify.sql.
verify() { psql_scratch -At -f "$here/verify.sql"; }
# The value of KEY in a "key=value ..." line.
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

# run_one VARIANT CLIENTS: seeds, runs pgbench, checks, prints the result line.
run_one() {
  local variant=$1 clients=$2 script per_tx label items threads out state
  case $variant in
    single) script=$here/single.sql per_tx=1 label=single ;;
    batch) script=$here/batch.sql per_tx=$BATCH label=batch$BATCH ;;
    *) die "unknown variant '$variant' (single, batch)" ;;
  esac
  threads=$((clients < 2 ? clients : 2))
  items=$ITEMS
  out=$workdir/pgbench-$label-$clients.log
  while :; do
    log "$label clients=$clients: seeding $AGENTS agents and $items work items"
    psql_scratch -v agents="$AGENTS" -v items="$items" -f "$here/seed.sql" >/dev/null
    local run_id
    run_id=$(psql_scratch -At -c 'SELECT max(run_id) FROM warp.scheduler_runs')
    log "$label clients=$clients: pgbench -c $clients -j $threads -T $DURATION"
    if ! "$pgbench_bin" -n -M "$QUERY_MODE" -f "$script" -c "$clients" -j "$threads" -T "$DURATION" \
      -D run_id="$run_id" -D bound=1 -D ttl_s=60 -D batch="$BATCH" >"$out" 2>&1; then
      cat "$out" >&2
      die "pgbench failed ($label, $clients clients)"
    fi
    state=$(verify)
    if (($(field "$state" pending) > 0)); then
      break
    fi
    items=$((items * 2))
    if ((items > MAX_ITEMS)); then
      cat "$out" >&2
      die "$label clients=$clients ran out of due items even with $((items / 2)); lower DURATION or raise MAX_ITEMS"
    fi
    log "$label clients=$clients: ran out of due items; again with $items"
  done

  local tps processed ndone
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$out")
  processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
  [[ -n $tps && -n $processed ]] || {
    cat "$out" >&2
    die "cannot read tps from pgbench's output"
  }
  grep -E '^(number of|latency average|tps)' "$out" | sed "s/^/  [$label c=$clients] /" >&2
  log "$label clients=$clients: check: $state"

  ndone=$(field "$state" run_done)
  local ok=1
  [[ $(field "$state" unreleased) == 0 ]] || ok=0
  [[ $(field "$state" dispatched) == 0 ]] || ok=0
  [[ $(field "$state" leases) == "$(field "$state" "done")" ]] || ok=0
  [[ $(field "$state" decisions) == "$(field "$state" "done")" ]] || ok=0
  [[ $(field "$state" bad_items) == 0 ]] || ok=0
  [[ $(field "$state" bad_fencing) == 0 ]] || ok=0
  ((processed > 0 && ndone > 0)) || ok=0
  ((ok == 1)) || die "$label clients=$clients: inconsistent rows after the run: $state"
  if ((ndone != processed * per_tx)); then
    log "$label clients=$clients: note: $ndone items done in $processed iterations (expected $((processed * per_tx))); some were deferred"
  fi

  awk -v label="$label" -v c="$clients" -v tps="$tps" -v d="$ndone" -v p="$processed" \
    'BEGIN { printf "pgbench %s clients=%d items_per_s=%.0f\n", label, c, tps * d / p }'
}

client_counts=(1)
if ((CLIENTS != 1)); then
  client_counts+=("$CLIENTS")
fi
for variant in $VARIANTS; do
  for c in "${client_counts[@]}"; do
    run_one "$variant" "$c"
  done
done
