#!/usr/bin/env bash
# Idle cost of warpd on PostgreSQL (issue 3, benchmark 3): AGENTS registered agents and
# nothing due. One warpd with a 1 s interval runs for WARMUP + 60 s; over the 60 s window it
# reports the cycles run, the statements (round trips) and the database execution time per
# cycle (pg_stat_statements: the server must preload it, see bench/run.sh), the median cycle
# wall time from warpd's cycle lines, the CPU seconds warpd used and its RSS at the end.
#
#   bench/idle.sh DSN
# Environment: BUILD_DIR (default build/), AGENTS (100000), WINDOW (60 seconds), WARMUP (5).
# Prints: `idle agents=A cycles=C statements_per_cycle=Q db_ms_per_cycle=D cycle_ms_median=W
#          cpu_s=U rss_kb=R hwm_kb=H`
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dsn=${1:?usage: bench/idle.sh DSN}
build=${BUILD_DIR:-$root/build}
agents=${AGENTS:-100000}
window=${WINDOW:-60}
warmup=${WARMUP:-5}

db=warp_idle_$$
admin() { psql "$dsn" -X -q -v ON_ERROR_STOP=1 "$@"; }
bench_dsn="$dsn dbname=$db"
sql() { psql "$bench_dsn" -X -q -At -v ON_ERROR_STOP=1 -c "$1"; }

work=$(mktemp -d /tmp/warp-idle.XXXXXX)
pid=""
cleanup() {
  if [[ -n $pid ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  admin -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

admin -c "CREATE DATABASE $db"
sql "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
"$build/warpctl/warpctl" --dsn "$bench_dsn" --migrations "$root/migrations" migrate up >/dev/null
sql "INSERT INTO warp.tool_profiles (tool_profile_id, operations) VALUES ('bench', '{noop}')"
sql "INSERT INTO warp.agents (agent_slug, tool_profile_id, runner, business_link)
     SELECT 'agent-' || g, 'bench', 'noop', 'spindle:bench/' || g FROM generate_series(1, $agents) g"
# History, so that the idle cycle does not look at empty tables: one finished item per agent.
sql "INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts, state)
     SELECT agent_id, 'noop', now() - interval '1 hour', 'done-' || agent_id, 3, 'done'
       FROM warp.agents"
sql "VACUUM ANALYZE" >/dev/null

cat >"$work/warpd.toml" <<TOML
[daemon]
instance = "idle-1"
[store]
backend = "postgres"
dsn = "$bench_dsn"
[scheduler]
interval = "1s"
[log]
format = "text"
[runner.noop]
transport = "null"
TOML
"$build/daemon/warpd" --config "$work/warpd.toml" 2>"$work/warpd.log" &
pid=$!
sleep "$warmup"

ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
sql "SELECT pg_stat_statements_reset()" >/dev/null
runs_before=$(sql "SELECT count(*) FROM warp.scheduler_runs")
lines_before=$(wc -l <"$work/warpd.log")
cpu_before=$(ticks)
sleep "$window"
cpu_after=$(ticks)
runs_after=$(sql "SELECT count(*) FROM warp.scheduler_runs")
rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")
# Statements of this database, without this script's own.
read -r calls exec_ms < <(sql "SELECT sum(calls), round(sum(total_exec_time)::numeric, 3)
  FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
 WHERE d.datname = current_database() AND s.query NOT LIKE '%pg_stat_statements%'
   AND s.query NOT LIKE '%scheduler_runs%count%'" | tr '|' ' ')
cycles=$((runs_after - runs_before))
median=$(tail -n +"$((lines_before + 1))" "$work/warpd.log" |
  sed -n 's/.* due=0 .* in \([0-9]*\)ms.*/\1/p' | sort -n |
  awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "n/a" }')
awk -v a="$agents" -v c="$cycles" -v q="$calls" -v t="$exec_ms" -v m="$median" \
  -v u="$((cpu_after - cpu_before))" -v hz="$hz" -v r="$rss" -v h="$hwm" 'BEGIN {
  printf "idle agents=%d cycles=%d statements_per_cycle=%.1f db_ms_per_cycle=%.3f cycle_ms_median=%s cpu_s=%.2f rss_kb=%d hwm_kb=%d\n",
    a, c, q / c, t / c, m, u / hz, r, h }'
