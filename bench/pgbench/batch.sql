-- pgbench script "batch": :batch work items per iteration (run.sh passes -D batch=100), in the
-- same two transactions as single.sql, each step one set-based statement over the whole batch.
-- Arrays travel between statements as pgbench variables (text like {1,2,3}), all ordered by
-- work_item_id. Variables (pgbench -D): batch, run_id, bound, ttl_s (see single.sql).
-- Needs -M prepared or -M extended (variables are bound as parameters).
--
-- Transaction 1, dispatch.
BEGIN;
-- 1. Claim up to :batch due items.
SELECT coalesce(array_agg(s.work_item_id ORDER BY s.work_item_id), '{}') AS ids,
       coalesce(array_agg(s.agent_id ORDER BY s.work_item_id), '{}') AS agents,
       coalesce(array_agg(s.attempts + 1 ORDER BY s.work_item_id), '{}') AS attempts
  FROM (SELECT w.work_item_id, w.agent_id, w.attempts
          FROM warp.work_queue q JOIN warp.work_items w USING (work_item_id)
         WHERE q.state IN ('pending', 'failed') AND q.due_at <= warp.now()
           -- Rechecked on the row as locked: another client may have claimed it since this
           -- statement's snapshot, and a skipped lock is not the only way to learn that.
           AND w.state IN ('pending', 'failed') AND w.due_at <= warp.now()
         ORDER BY q.priority DESC, q.due_at, q.work_item_id
         LIMIT :batch::integer
           FOR UPDATE OF w SKIP LOCKED) AS s
\gset
-- 2. Try the advisory lock of each distinct agent; keep the agents whose lock we got.
SELECT coalesce(array_agg(d.agent), '{}') AS locked
  FROM (SELECT DISTINCT u.agent FROM unnest(:agents::bigint[]) AS u(agent)) AS d
 WHERE pg_try_advisory_xact_lock(warp.agent_lock_key(d.agent))
\gset
-- 3. Count the active leases of those agents; keep the items whose agent is locked and under
--    its bound (the n-th item of one agent in the batch needs active + n <= bound).
SELECT coalesce(array_agg(c.item ORDER BY c.item), '{}') AS ids,
       coalesce(array_agg(c.agent ORDER BY c.item), '{}') AS agents,
       coalesce(array_agg(c.attempt ORDER BY c.item), '{}') AS attempts
  FROM (SELECT u.item, u.agent, u.attempt,
               row_number() OVER (PARTITION BY u.agent ORDER BY u.item) AS nth
          FROM unnest(:ids::bigint[], :agents::bigint[], :attempts::integer[])
               AS u(item, agent, attempt)
         WHERE u.agent = ANY (:locked::bigint[])) AS c
  LEFT JOIN (SELECT l.agent_id, count(*) AS n
               FROM warp.open_leases l
              WHERE l.agent_id = ANY (:locked::bigint[]) AND l.expires_at > warp.now()
              GROUP BY l.agent_id) AS a ON a.agent_id = c.agent
 WHERE coalesce(a.n, 0) + c.nth <= :bound::integer
\gset
-- 4. Bump each agent's fencing counter by its number of items; hand out the tokens in order.
WITH e AS (SELECT u.item, u.agent,
                  row_number() OVER (PARTITION BY u.agent ORDER BY u.item) AS nth
             FROM unnest(:ids::bigint[], :agents::bigint[]) AS u(item, agent)),
     c AS (SELECT e.agent, count(*) AS n FROM e GROUP BY e.agent),
     b AS (UPDATE warp.agents ag SET fencing_counter = ag.fencing_counter + c.n
             FROM c
            WHERE ag.agent_id = c.agent
           RETURNING ag.agent_id, ag.fencing_counter - c.n AS base)
SELECT coalesce(array_agg(b.base + e.nth ORDER BY e.item), '{}') AS tokens
  FROM e JOIN b ON b.agent_id = e.agent
\gset
-- 5. Insert the leases.
WITH ins AS (
  INSERT INTO warp.agent_leases (agent_id, work_item_id, fencing_token, holder_instance,
                                 holder_run_id, acquired_at, renewed_at, expires_at)
  SELECT u.agent, u.item, u.token, 'pgbench', :run_id::bigint, warp.now(), warp.now(),
         warp.now() + :ttl_s::integer * interval '1 second'
    FROM unnest(:ids::bigint[], :agents::bigint[], :tokens::bigint[]) AS u(item, agent, token)
  RETURNING lease_id, work_item_id)
SELECT coalesce(array_agg(ins.lease_id ORDER BY ins.work_item_id), '{}') AS leases FROM ins
\gset
-- 6. Insert the dispatch decisions.
INSERT INTO warp.dispatch_decisions (run_id, cycle_id, work_item_id, agent_id, attempt,
                                     decision, lease_id, reason, at)
SELECT :run_id::bigint, 'pgbench', u.item, u.agent, u.attempt, 'dispatched', u.lease, '',
       warp.now()
  FROM unnest(:ids::bigint[], :agents::bigint[], :attempts::integer[], :leases::bigint[])
       AS u(item, agent, attempt, lease);
-- 7. Mark the items dispatched.
UPDATE warp.work_items w
   SET state = 'dispatched', attempts = u.attempt, lease_id = u.lease,
       retry_backoff = interval '10 seconds', retry_backoff_max = interval '10 minutes',
       updated_at = warp.now()
  FROM unnest(:ids::bigint[], :attempts::integer[], :leases::bigint[]) AS u(item, attempt, lease)
 WHERE w.work_item_id = u.item;
COMMIT;
-- Transaction 2, completion (fencing-checked): release the leases, mark the items done.
BEGIN;
UPDATE warp.agent_leases l
   SET released_at = warp.now(), release_reason = 'completed'
  FROM unnest(:leases::bigint[], :tokens::bigint[]) AS u(lease, token)
 WHERE l.lease_id = u.lease AND l.fencing_token = u.token AND l.released_at IS NULL;
UPDATE warp.work_items w
   SET state = 'done', last_error = '', updated_at = warp.now()
  FROM unnest(:ids::bigint[], :leases::bigint[]) AS u(item, lease)
 WHERE w.work_item_id = u.item AND w.lease_id = u.lease;
COMMIT;
