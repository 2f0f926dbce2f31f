#!/usr/bin/env bash
# The ceiling of warpd's own dispatch SQL on this machine: the data set of bench/throughput.sh
# claimed and completed by warp.claim_dispatches and warp.finish_work_batch alone, called from
# LANES server-side loops at once (one session each), with no warpd, no due scan, no runner and
# no log. Each lane owns the agents with agent_id mod LANES equal to its number, as the claim
# lanes of the scheduler do, and goes through them in rounds of CHUNK candidates (CHUNK/BOUND
# agents, BOUND items each, an agent's items next to each other); a round is claimed in one
# transaction and its dispatched leases completed in the next. Measured as bench/throughput.sh
# measures warpd: from the first lease acquired to the last released, over warp.agent_leases,
# after checking that every item was done exactly once.
#
#   bench/ceiling.sh DSN [LANES]      # DSN: as bench/throughput.sh; LANES: 2 by default
# Environment: BUILD_DIR (default build/), AGENTS (10000), ITEMS (200000), BOUND (4), CHUNK
# (2500: the chunk of one of the scheduler's two claim lanes).
# Prints: `ceiling lanes=L agents=A items=I bound=B chunk=C seconds=S items_per_s=R`
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dsn=${1:?usage: bench/ceiling.sh DSN [LANES]}
lanes=${2:-2}
build=${BUILD_DIR:-$root/build}
agents=${AGENTS:-10000}
items=${ITEMS:-200000}
bound=${BOUND:-4}
chunk=${CHUNK:-2500}
if ((chunk % bound != 0 || lanes < 1)); then
  echo "ceiling: CHUNK must be a multiple of BOUND, and LANES at least 1" >&2
  exit 64
fi

db=warp_ceiling_$$
admin() { psql "$dsn" -X -q -v ON_ERROR_STOP=1 "$@"; }
bench_dsn="$dsn dbname=$db"
sql() { psql "$bench_dsn" -X -q -At -v ON_ERROR_STOP=1 -c "$1"; }
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  admin -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
}
trap cleanup EXIT

admin -c "CREATE DATABASE $db"
"$build/warpctl/warpctl" --dsn "$bench_dsn" --migrations "$root/migrations" migrate up >/dev/null
psql "$bench_dsn" -X -q -v agents="$agents" -v items="$items" -f "$root/bench/seed.sql"
psql "$bench_dsn" -X -q -v ON_ERROR_STOP=1 -v lanes="$lanes" -v bound="$bound" \
  -v per_round="$((chunk / bound))" <<'SQL'
CREATE SCHEMA bench;
-- Each lane's rounds: block b holds every agent's items b*BOUND+1 .. (b+1)*BOUND (in id order),
-- split into groups of CHUNK/BOUND agents; rounds go block by block, so an agent's next items
-- are claimed after its earlier ones were completed.
CREATE TABLE bench.rounds AS
SELECT lane, dense_rank() OVER (PARTITION BY lane ORDER BY blk, grp) AS round,
       array_agg(work_item_id ORDER BY agent_id, work_item_id) AS items,
       array_agg(agent_id ORDER BY agent_id, work_item_id) AS agents
  FROM (SELECT w.work_item_id, w.agent_id, (w.agent_id % :lanes)::int AS lane,
               (row_number() OVER (PARTITION BY w.agent_id ORDER BY w.work_item_id) - 1)
                 / :bound AS blk,
               (dense_rank() OVER (PARTITION BY w.agent_id % :lanes ORDER BY w.agent_id) - 1)
                 / :per_round AS grp
          FROM warp.work_items w) x
 GROUP BY lane, blk, grp;
CREATE PROCEDURE bench.lane(p_lane integer, p_bound integer) LANGUAGE plpgsql AS $$
DECLARE
  r record;
  run bigint;
  cycle text;
  leases bigint[];
  tokens bigint[];
  n integer;
BEGIN
  FOR r IN SELECT * FROM bench.rounds WHERE lane = p_lane ORDER BY round LOOP
    cycle := format('ceiling/%s/%s', p_lane, r.round);
    INSERT INTO warp.scheduler_runs (cycle_id, "group", instance, started_at, heartbeat_at)
    VALUES (cycle, 'ceiling-' || p_lane, 'ceiling', now(), now()) RETURNING run_id INTO run;
    n := cardinality(r.items);
    SELECT array_agg(c.lease_id ORDER BY c.idx), array_agg(c.fencing_token ORDER BY c.idx)
      INTO leases, tokens
      FROM warp.claim_dispatches(run, cycle, 'ceiling', interval '60 seconds', r.items,
                                 r.agents, array_fill(p_bound, ARRAY[n]),
                                 array_fill(NULL::text, ARRAY[n]),
                                 array_fill(NULL::text, ARRAY[n]), interval '10 seconds',
                                 interval '10 minutes') c
     WHERE c.decision = 'dispatched';
    COMMIT;
    n := coalesce(cardinality(leases), 0);
    PERFORM count(*)
       FROM warp.finish_work_batch(leases, tokens, array_fill('done'::text, ARRAY[n]),
                                   array_fill(''::text, ARRAY[n]), array_fill(false, ARRAY[n]),
                                   array_fill(true, ARRAY[n]));
    UPDATE warp.scheduler_runs SET status = 'completed', finished_at = now()
     WHERE run_id = run;
    COMMIT;
  END LOOP;
END
$$;
SQL
sql "CHECKPOINT" >/dev/null

for lane in $(seq 0 $((lanes - 1))); do
  psql "$bench_dsn" -X -q -v ON_ERROR_STOP=1 -c "SET jit = off" -c "SET work_mem = '32MB'" \
    -c "CALL bench.lane($lane, $bound)" &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
pids=()
if ((failed)); then
  echo "ceiling: a lane failed" >&2
  exit 1
fi

check=$(sql "SELECT (SELECT count(*) FROM warp.agent_leases WHERE release_reason = 'completed')
                 || ' ' || (SELECT count(DISTINCT work_item_id) FROM warp.agent_leases)
                 || ' ' || (SELECT count(*) FROM warp.agent_leases WHERE released_at IS NULL)
                 || ' ' || (SELECT count(*) FROM warp.work_items WHERE state <> 'done')")
if [[ $check != "$items $items 0 0" ]]; then
  echo "ceiling: inconsistent records (completed leases, leased items, open leases, items not done): $check" >&2
  exit 1
fi
seconds=$(sql "SELECT round(extract(epoch FROM max(released_at) - min(acquired_at))::numeric, 3)
                 FROM warp.agent_leases")
rate=$(awk -v n="$items" -v s="$seconds" 'BEGIN { printf "%.0f", n / s }')
echo "ceiling lanes=$lanes agents=$agents items=$items bound=$bound chunk=$chunk seconds=$seconds items_per_s=$rate"
