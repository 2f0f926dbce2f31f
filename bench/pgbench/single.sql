-- pgbench script "single": one work item per iteration, in the two transactions warpd uses.
-- Variables (pgbench -D): run_id (a warp.scheduler_runs row), bound (the agent's lease bound,
-- warpd's leasing.default_max_active = 1), ttl_s (lease TTL, leasing.ttl = 60 s).
-- Needs -M prepared or -M extended (variables are bound as parameters).
--
-- Transaction 1, dispatch: claim the first due item, try the agent's advisory lock, count the
-- agent's active leases, bump its fencing counter, insert the lease and the dispatch decision,
-- mark the item dispatched. A contended agent or a reached bound rolls back (the item stays
-- pending); run.sh checks afterwards that every iteration dispatched and completed one item.
BEGIN;
SELECT coalesce(max(s.work_item_id), 0) AS item, coalesce(max(s.agent_id), 0) AS agent,
       coalesce(max(s.attempts), 0) + 1 AS attempt
  FROM (SELECT w.work_item_id, w.agent_id, w.attempts
          FROM warp.work_queue q JOIN warp.work_items w USING (work_item_id)
         WHERE q.state IN ('pending', 'failed') AND q.due_at <= warp.now()
           -- Rechecked on the row as locked: another client may have claimed it since this
           -- statement's snapshot, and a skipped lock is not the only way to learn that.
           AND w.state IN ('pending', 'failed') AND w.due_at <= warp.now()
         ORDER BY q.priority DESC, q.due_at, q.work_item_id
         LIMIT 1
           FOR UPDATE OF w SKIP LOCKED) AS s
\gset
SELECT pg_try_advisory_xact_lock(warp.agent_lock_key(:agent::bigint))::integer AS locked
\gset
SELECT count(*) AS active
  FROM warp.open_leases l
 WHERE l.agent_id = :agent::bigint AND l.expires_at > warp.now()
\gset
\if :item > 0 and :locked = 1 and :active < :bound
UPDATE warp.agents SET fencing_counter = fencing_counter + 1
 WHERE agent_id = :agent::bigint
RETURNING fencing_counter AS token
\gset
INSERT INTO warp.agent_leases (agent_id, work_item_id, fencing_token, holder_instance,
                               holder_run_id, acquired_at, renewed_at, expires_at)
VALUES (:agent::bigint, :item::bigint, :token::bigint, 'pgbench', :run_id::bigint,
        warp.now(), warp.now(), warp.now() + :ttl_s::integer * interval '1 second')
RETURNING lease_id
\gset
INSERT INTO warp.dispatch_decisions (run_id, cycle_id, work_item_id, agent_id, attempt,
                                     decision, lease_id, reason, at)
VALUES (:run_id::bigint, 'pgbench', :item::bigint, :agent::bigint, :attempt::integer,
        'dispatched', :lease_id::bigint, '', warp.now());
UPDATE warp.work_items
   SET state = 'dispatched', attempts = :attempt::integer, lease_id = :lease_id::bigint,
       retry_backoff = interval '10 seconds', retry_backoff_max = interval '10 minutes',
       updated_at = warp.now()
 WHERE work_item_id = :item::bigint;
COMMIT;
-- Transaction 2, completion (fencing-checked): release the lease, mark the item done.
BEGIN;
UPDATE warp.agent_leases
   SET released_at = warp.now(), release_reason = 'completed'
 WHERE lease_id = :lease_id::bigint AND fencing_token = :token::bigint AND released_at IS NULL;
UPDATE warp.work_items
   SET state = 'done', last_error = '', updated_at = warp.now()
 WHERE work_item_id = :item::bigint AND lease_id = :lease_id::bigint AND state = 'dispatched';
COMMIT;
\else
ROLLBACK;
\endif
