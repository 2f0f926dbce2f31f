#!/usr/bin/env bash
# End-to-end dispatch throughput of warpd on PostgreSQL with the `null` runner (issue 3,
# benchmark 1), or with RUNNER=http (against a trivial local receiver,
# examples/agents/http_agent.py --mode respond, which answers {"outcome":"done"}) or
# RUNNER=notify (build/examples/listen_agent completes each notice through
# warp.complete_work): AGENTS agents, ITEMS due work items, INSTANCES warpd processes of one
# group on one database. Measured from the first lease acquired to the last lease released, read from
# the durable records (warp.agent_leases), after checking that every item is done exactly once.
#
#   bench/throughput.sh DSN [INSTANCES]     # DSN: libpq conninfo of a server to create a
#                                           # scratch database in (scripts/test-postgres.sh)
# Environment: BUILD_DIR (default build/), AGENTS (10000), ITEMS (200000), BOUND (4: the
# agents' lease bound, leasing.default_max_active), PER_CYCLE (40000: max_dispatch_per_cycle,
# also max_inflight; 2000 for http, whose runner opens at most 64 connections per host and
# queues the rest: 128 made the cap, not the runner, the limit), INTERVAL (1s),
# LOG_LEVEL (info), TIMEOUT (600 seconds), RUNNER (null | http | notify), HTTP_PORT (18088),
# TIMELINE (set: print each dispatching cycle's start and end to stderr).
# Prints: `warpd instances=N agents=A items=I seconds=S items_per_s=R cycles=C selected=D decisions=...`
# (due items selected by all cycles; the decisions recorded, by verdict) and the scratch
# database is dropped at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dsn=${1:?usage: bench/throughput.sh DSN [INSTANCES]}
instances=${2:-1}
build=${BUILD_DIR:-$root/build}
agents=${AGENTS:-10000}
items=${ITEMS:-200000}
bound=${BOUND:-4}
runner=${RUNNER:-null}
case $runner in
  null | notify) per_cycle=${PER_CYCLE:-40000} ;;
  http) per_cycle=${PER_CYCLE:-2000} ;;
  *) echo "throughput: RUNNER must be null, http or notify" >&2; exit 64 ;;
esac
http_port=${HTTP_PORT:-18088}
interval=${INTERVAL:-1s}
log_level=${LOG_LEVEL:-info}
timeout=${TIMEOUT:-600}

db=warp_bench_$$
admin() { psql "$dsn" -X -q -v ON_ERROR_STOP=1 "$@"; }
bench_dsn="$dsn dbname=$db"
sql() { psql "$bench_dsn" -X -q -At -v ON_ERROR_STOP=1 -c "$1"; }

work=$(mktemp -d /tmp/warp-bench.XXXXXX)
pids=()
warpds=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  admin -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  [[ -n ${KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT

admin -c "CREATE DATABASE $db"
"$build/warpctl/warpctl" --dsn "$bench_dsn" --migrations "$root/migrations" migrate up >/dev/null
psql "$bench_dsn" -X -q -v agents="$agents" -v items="$items" -f "$root/bench/seed.sql"

# The runner every agent uses ("noop" is the agents' runner name whatever its transport), and
# the receiving side of http and notify.
case $runner in
  null) runner_toml='transport = "null"' ;;
  http)
    runner_toml="transport = \"http\"
url = \"http://127.0.0.1:$http_port/dispatch\"
timeout = \"30s\""
    "$root/examples/agents/http_agent.py" --port "$http_port" --mode respond --quiet \
      >"$work/receiver.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 50); do
      (exec 3<>"/dev/tcp/127.0.0.1/$http_port") 2>/dev/null && break
      sleep 0.1
    done
    ;;
  notify)
    # Handed-off dispatches stay in flight until the renewal after their completion.
    runner_toml='transport = "notify"
timeout = "5m"'
    "$build/examples/listen_agent" "$bench_dsn" --work-ms 0 --quiet 1 >"$work/receiver.log" 2>&1 &
    pids+=($!)
    ;;
esac
renew=""
[[ $runner == notify ]] && renew='renew_every = "1s"'

for i in $(seq 1 "$instances"); do
  cat >"$work/warpd-$i.toml" <<TOML
[daemon]
instance = "bench-$i"
[store]
backend = "postgres"
dsn = "$bench_dsn"
[scheduler]
interval = "$interval"
max_dispatch_per_cycle = $per_cycle
max_inflight = $per_cycle
[leasing]
default_max_active = $bound
$renew
[log]
level = "$log_level"
format = "text"
[runner.noop]
$runner_toml
TOML
  "$build/daemon/warpd" --config "$work/warpd-$i.toml" 2>"$work/warpd-$i.log" &
  pids+=($!)
  warpds+=($!)
done

deadline=$((SECONDS + timeout))
while :; do
  # Whether any work is left (queued, or dispatched under a live lease; work whose lease
  # expired is requeued), from the side tables of migrations/0007: a count over work_items
  # every poll would take a good part of a core from what is being measured.
  busy=$(sql "SELECT EXISTS (SELECT 1 FROM warp.work_queue WHERE state IN ('pending', 'failed'))
                  OR EXISTS (SELECT 1 FROM warp.open_leases WHERE expires_at > now())")
  [[ $busy == f ]] && break
  for pid in "${warpds[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "throughput: warpd (pid $pid) exited before the work was done; logs in $work" >&2
      tail -n 3 "$work"/warpd-*.log >&2
      KEEP=1
      exit 1
    fi
  done
  if ((SECONDS > deadline)); then
    left=$(sql "SELECT count(*) FROM warp.work_items WHERE state IN ('pending', 'failed', 'dispatched')")
    echo "throughput: $left item(s) not done after ${timeout}s; logs in $work" >&2
    tail -n 5 "$work"/warpd-*.log >&2
    trap - EXIT
    exit 1
  fi
  sleep 1
done

# Exactly once: one completed lease per item, no leases left open.
check=$(sql "SELECT (SELECT count(*) FROM warp.agent_leases WHERE release_reason = 'completed')
                 || ' ' || (SELECT count(DISTINCT work_item_id) FROM warp.agent_leases)
                 || ' ' || (SELECT count(*) FROM warp.agent_leases WHERE released_at IS NULL)")
if [[ $check != "$items $items 0" ]]; then
  echo "throughput: inconsistent records (completed leases, leased items, open leases): $check; logs in $work" >&2
  grep -h -E ' (warning|error|critical) ' "$work"/warpd-*.log | grep -v 'tick skipped' | tail -n 20 >&2 || true
  KEEP=1
  exit 1
fi
seconds=$(sql "SELECT round(extract(epoch FROM max(released_at) - min(acquired_at))::numeric, 3)
                 FROM warp.agent_leases")
rate=$(awk -v n="$items" -v s="$seconds" 'BEGIN { printf "%.0f", n / s }')
cycles=$(sql "SELECT count(*) FROM warp.scheduler_runs WHERE (counts->>'dispatched')::int > 0")
# Due items the cycles selected, all told: above ITEMS, concurrent cycles selected the same work.
selected=$(sql "SELECT coalesce(sum((counts->>'due')::bigint), 0) FROM warp.scheduler_runs")
# Every decision the cycles recorded, by verdict: what they wrote beside the dispatches.
decisions=$(sql "SELECT string_agg(decision || ':' || n, ',' ORDER BY decision)
                   FROM (SELECT decision, count(*) AS n FROM warp.dispatch_decisions
                          GROUP BY decision) d")
if [[ -n ${TIMELINE:-} ]]; then
  # Each cycle that dispatched: when it started and finished, from the first lease acquired.
  sql "SELECT r.instance || ' ' || r.cycle_id || ' start=' ||
              round(extract(epoch FROM r.started_at - f.t)::numeric, 3) || ' end=' ||
              round(extract(epoch FROM r.finished_at - f.t)::numeric, 3) || ' dispatched=' ||
              (r.counts->>'dispatched')
         FROM warp.scheduler_runs r CROSS JOIN (SELECT min(acquired_at) AS t FROM warp.agent_leases) f
        WHERE (r.counts->>'dispatched')::int > 0 ORDER BY r.started_at" >&2
fi
echo "warpd runner=$runner instances=$instances agents=$agents items=$items bound=$bound seconds=$seconds items_per_s=$rate cycles=$cycles selected=$selected decisions=$decisions"
