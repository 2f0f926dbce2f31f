-- Heap-only dispatch (issue 3, docs/BENCHMARKS.md): a dispatched item used to cost five new
-- row versions and eighteen index entries. Most came from partial indexes whose predicates
-- name a column the dispatch path changes: work_items.state, agent_leases.released_at and
-- release_reason. PostgreSQL can update a row in place (a heap-only tuple, no index entry)
-- only when no index refers to a changed column, predicates included. So every index of those
-- two tables that mentions a changing column goes. What they served moves to two narrow side
-- tables, kept by statement-level triggers, so that SQL written by hand keeps them right:
--
--   warp.work_queue   one row per pending, failed or dead item (the due scan, the watchdog's
--                     backlog and failing work); rows are inserted and deleted, never updated.
--   warp.open_leases  one row per unreleased lease (bound checks, expiry, the watchdog).
--
-- Per dispatched item this leaves: the lease (two index entries), the decision (two), and
-- heap-only updates of the item (twice) and of the lease (at release).

-- 1. Side tables.
CREATE TABLE warp.work_queue (
  work_item_id bigint PRIMARY KEY,
  agent_id     bigint NOT NULL,
  priority     integer NOT NULL,
  due_at       timestamptz NOT NULL,
  state        text NOT NULL CHECK (state IN ('pending', 'failed', 'dead'))
);
-- The due scan (priority, then due_at) over what may be dispatched.
CREATE INDEX work_queue_due ON warp.work_queue (priority DESC, due_at, work_item_id)
  WHERE state IN ('pending', 'failed');
-- Agents with failing work (the watchdog's dispatch_failure_streak candidates, a skip scan).
CREATE INDEX work_queue_failing ON warp.work_queue (agent_id) WHERE state IN ('failed', 'dead');

-- A lease stays here from acquisition to release. Expired unreleased leases stay too (their
-- holder vanished): the watchdog reports them, and a late completion may still release them.
CREATE TABLE warp.open_leases (
  agent_id     bigint NOT NULL,
  lease_id     bigint NOT NULL,
  work_item_id bigint,
  expires_at   timestamptz NOT NULL,
  PRIMARY KEY (agent_id, lease_id)
);

INSERT INTO warp.work_queue (work_item_id, agent_id, priority, due_at, state)
SELECT w.work_item_id, w.agent_id, w.priority, w.due_at, w.state
  FROM warp.work_items w WHERE w.state IN ('pending', 'failed', 'dead');
INSERT INTO warp.open_leases (agent_id, lease_id, work_item_id, expires_at)
SELECT l.agent_id, l.lease_id, l.work_item_id, l.expires_at
  FROM warp.agent_leases l WHERE l.released_at IS NULL;

-- 2. Triggers: one set-based statement per statement on the main table, never one per row.
-- Rows leave the queue as their old versions were queued and enter it as their new versions
-- are: an update moves a queued item (priority, due_at, state) by a delete and an insert.
-- Index probes only, whatever the statistics say: the side tables empty and fill all the time,
-- and one analyzed while empty looked like a one-row table to the planner, which then scanned
-- it once per changed row (seconds for a 5,000-row batch).
CREATE FUNCTION warp.work_queue_sync() RETURNS trigger
LANGUAGE plpgsql SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    DELETE FROM warp.work_queue q USING old_items o
     WHERE o.state IN ('pending', 'failed', 'dead') AND q.work_item_id = o.work_item_id;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO warp.work_queue (work_item_id, agent_id, priority, due_at, state)
    SELECT n.work_item_id, n.agent_id, n.priority, n.due_at, n.state
      FROM new_items n WHERE n.state IN ('pending', 'failed', 'dead');
  END IF;
  IF TG_OP = 'TRUNCATE' THEN
    TRUNCATE warp.work_queue;
  END IF;
  RETURN NULL;
END
$$;
CREATE TRIGGER work_items_queue_insert AFTER INSERT ON warp.work_items
  REFERENCING NEW TABLE AS new_items
  FOR EACH STATEMENT EXECUTE FUNCTION warp.work_queue_sync();
CREATE TRIGGER work_items_queue_update AFTER UPDATE ON warp.work_items
  REFERENCING OLD TABLE AS old_items NEW TABLE AS new_items
  FOR EACH STATEMENT EXECUTE FUNCTION warp.work_queue_sync();
CREATE TRIGGER work_items_queue_delete AFTER DELETE ON warp.work_items
  REFERENCING OLD TABLE AS old_items
  FOR EACH STATEMENT EXECUTE FUNCTION warp.work_queue_sync();
CREATE TRIGGER work_items_queue_truncate AFTER TRUNCATE ON warp.work_items
  FOR EACH STATEMENT EXECUTE FUNCTION warp.work_queue_sync();

-- New leases: refused for retired agents (0005), recorded as open.
CREATE OR REPLACE FUNCTION warp.refuse_leases_of_retired_agents() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  slug text;
BEGIN
  SELECT a.agent_slug INTO slug
    FROM new_leases n JOIN warp.agents a ON a.agent_id = n.agent_id
   WHERE a.lifecycle = 'retired'
   LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'agent % is retired: it gets no new lease', slug USING ERRCODE = 'P0001';
  END IF;
  INSERT INTO warp.open_leases (agent_id, lease_id, work_item_id, expires_at)
  SELECT n.agent_id, n.lease_id, n.work_item_id, n.expires_at
    FROM new_leases n WHERE n.released_at IS NULL;
  RETURN NULL;
END
$$;
-- Released leases leave; renewed ones carry their new expiry (an upsert, so that a lease made
-- unreleased again by hand is open again too).
CREATE FUNCTION warp.open_leases_update() RETURNS trigger
LANGUAGE plpgsql SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
BEGIN
  DELETE FROM warp.open_leases o USING new_leases n
   WHERE n.released_at IS NOT NULL AND o.agent_id = n.agent_id AND o.lease_id = n.lease_id;
  INSERT INTO warp.open_leases AS o (agent_id, lease_id, work_item_id, expires_at)
  SELECT n.agent_id, n.lease_id, n.work_item_id, n.expires_at
    FROM new_leases n WHERE n.released_at IS NULL
  ON CONFLICT (agent_id, lease_id) DO UPDATE SET expires_at = excluded.expires_at
   WHERE o.expires_at IS DISTINCT FROM excluded.expires_at;
  RETURN NULL;
END
$$;
CREATE FUNCTION warp.open_leases_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE warp.open_leases;
  RETURN NULL;
END
$$;
CREATE TRIGGER agent_leases_open_update AFTER UPDATE ON warp.agent_leases
  REFERENCING NEW TABLE AS new_leases
  FOR EACH STATEMENT EXECUTE FUNCTION warp.open_leases_update();
CREATE TRIGGER agent_leases_open_truncate AFTER TRUNCATE ON warp.agent_leases
  FOR EACH STATEMENT EXECUTE FUNCTION warp.open_leases_truncate();

-- 3. The indexes that kept dispatch from updating in place, and room for it to do so. The
-- fillfactor applies to pages written from now on; VACUUM FULL rewrites the old ones.
DROP INDEX warp.work_items_due, warp.work_items_dispatched, warp.work_items_failing;
-- The history by agent is (agent_id, fencing_token) from here on (its unique constraint):
-- tokens rise with acquisition time per agent.
DROP INDEX warp.agent_leases_active, warp.agent_leases_history, warp.agent_leases_released,
           warp.agent_leases_unreleased_expiry, warp.agent_leases_late;
ALTER TABLE warp.work_items SET (fillfactor = 50);
ALTER TABLE warp.agent_leases SET (fillfactor = 60);

-- Accepted late completions leave an audit event, like refused ones (0004): the watchdog's
-- late_completion reads both from audit_events. Backfilled for the last day.
INSERT INTO warp.audit_events (at, actor, event_type, subject, detail)
SELECT l.released_at, 'warp-migrate', 'completion_late', 'lease:' || l.lease_id,
       jsonb_build_object('lease_id', l.lease_id, 'fencing_token', l.fencing_token,
                          'verdict', 'accepted_late', 'agent_id', l.agent_id,
                          'work_item_id', l.work_item_id)
  FROM warp.agent_leases l
 WHERE l.release_reason = 'completed_late' AND l.released_at > now() - interval '1 day';

-- 4. Dispatch. As 0003, with four changes: the active leases are read from open_leases; the
-- acquisition instant is taken inside the main statement, after its snapshot, so that every
-- release stamped before that instant is already visible (0003 counted recent releases
-- instead, through an index on released_at); the batch's items are read once, by key, when
-- they are locked (0003 read them three times, and the planner merge-joined, walking the
-- primary key from its start); and the advisory locks are tried in that same statement.
-- JIT is off: the estimates for these batches (arrays of unknown size) can exceed its cost
-- threshold, and compiling a plan this size took longer than running it (1-2 s). Sequential
-- scans are off: open_leases and dispatch_decisions are probed by key (see the triggers).
CREATE OR REPLACE FUNCTION warp.claim_dispatches(
  p_run_id bigint, p_cycle_id text, p_instance text, p_ttl interval,
  p_items bigint[], p_agents bigint[], p_bounds integer[], p_verdicts text[], p_reasons text[],
  p_backoff interval, p_backoff_max interval)
RETURNS TABLE (idx integer, recorded boolean, decision text, reason text, attempt integer,
               at timestamptz, lease_id bigint, fencing_token bigint, expires_at timestamptz)
LANGUAGE plpgsql SET jit = off SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
  t timestamptz := warp.now();
  missing record;
  mismatch bigint;
  locked bigint[];
  held bigint[];
  held_attempts integer[];
  held_due boolean[];
BEGIN
  -- One statement: lock the batch's rows, skipping rows another transaction holds (see 0003),
  -- read what the decision needs from them (locked, they cannot change until we commit), and
  -- try the advisory lock of each agent with due work once. The locks are taken here, before
  -- the main statement, whose snapshot then includes every lease another instance committed
  -- before releasing an agent's lock.
  EXECUTE $sql$
    WITH h AS MATERIALIZED (
      SELECT w.work_item_id, w.agent_id, w.attempts,
             w.state IN ('pending', 'failed') AND w.due_at <= $4 AS due
        FROM warp.work_items w WHERE w.work_item_id = ANY ($1::bigint[])
       ORDER BY w.work_item_id FOR UPDATE SKIP LOCKED
    ), j AS MATERIALIZED (
      SELECT u.item, u.agent, u.verdict, h.agent_id AS actual, h.due
        FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS u(item, agent, verdict)
        JOIN h ON h.work_item_id = u.item
    )
    SELECT (SELECT coalesce(array_agg(h.work_item_id ORDER BY h.work_item_id), '{}') FROM h),
           (SELECT coalesce(array_agg(h.attempts ORDER BY h.work_item_id), '{}') FROM h),
           (SELECT coalesce(array_agg(h.due ORDER BY h.work_item_id), '{}') FROM h),
           (SELECT j.item FROM j WHERE j.actual <> j.agent LIMIT 1),
           (SELECT coalesce(array_agg(a.agent) FILTER (WHERE a.got), '{}')
              FROM (SELECT d.agent, pg_try_advisory_xact_lock(warp.agent_lock_key(d.agent)) AS got
                      FROM (SELECT DISTINCT j.agent FROM j
                             WHERE j.verdict IS NULL AND j.due AND j.actual = j.agent) d) a)
  $sql$ INTO held, held_attempts, held_due, mismatch, locked
  USING p_items, p_agents, p_verdicts, t;
  -- Raised before anything is written: all or nothing. Rows another transaction holds are
  -- looked up only when there are some.
  IF mismatch IS NOT NULL THEN
    SELECT u.item, u.agent INTO missing FROM unnest(p_items, p_agents) AS u(item, agent)
     WHERE u.item = mismatch LIMIT 1;
    RAISE EXCEPTION 'work item % of agent % does not exist', missing.item, missing.agent
      USING ERRCODE = 'P0002';
  END IF;
  IF cardinality(held) < (SELECT count(DISTINCT x) FROM unnest(p_items) AS x) THEN
    SELECT u.item, u.agent INTO missing
      FROM unnest(p_items, p_agents) AS u(item, agent)
      LEFT JOIN warp.work_items w ON w.work_item_id = u.item
     WHERE w.work_item_id IS NULL OR w.agent_id <> u.agent
     LIMIT 1;
    IF FOUND THEN
      RAISE EXCEPTION 'work item % of agent % does not exist', missing.item, missing.agent
        USING ERRCODE = 'P0002';
    END IF;
  END IF;

  RETURN QUERY EXECUTE $sql$
  WITH clock AS MATERIALIZED (
    -- The acquisition instant: after the locks and after this statement's snapshot. A release
    -- is stamped with its transaction's start; one stamped after this instant cannot have
    -- committed before the snapshot, so its lease is still open here and counts.
    SELECT warp.clock_now() AS t
  ), input AS (
    SELECT u.idx::integer AS idx, u.item, u.agent, u.bound, u.verdict,
           coalesce(u.reason, '') AS reason
      FROM unnest($5::bigint[], $6::bigint[], $7::integer[], $8::text[], $9::text[])
           WITH ORDINALITY AS u(item, agent, bound, verdict, reason, idx)
  ), candidates AS MATERIALIZED (
    SELECT i.*, c.t, h.attempts + 1 AS attempt,
           (h.due AND i.idx = min(i.idx) OVER (PARTITION BY i.item)
            AND NOT EXISTS (SELECT 1 FROM warp.dispatch_decisions dd
                             WHERE dd.cycle_id = $2 AND dd.work_item_id = i.item
                               AND dd.attempt = h.attempts + 1)) AS eligible,
           i.agent = ANY ($12::bigint[]) AS locked
      FROM input i
      JOIN unnest($13::bigint[], $14::integer[], $15::boolean[]) AS h(item, attempts, due)
        ON h.item = i.item
     CROSS JOIN clock c
  ), ranked AS MATERIALIZED (
    -- The agent's active leases: a probe of open_leases by agent (its primary key).
    SELECT c.idx, c.item, c.agent, c.bound,
           (SELECT count(*) FROM warp.open_leases o
             WHERE o.agent_id = c.agent AND o.expires_at > c.t) AS n_active,
           row_number() OVER (PARTITION BY c.agent ORDER BY c.idx) AS rank
      FROM candidates c
     WHERE c.eligible AND c.verdict IS NULL AND c.locked
  ), granted AS MATERIALIZED (
    SELECT r.*, row_number() OVER (PARTITION BY r.agent ORDER BY r.idx) AS nth,
           count(*) OVER (PARTITION BY r.agent) AS k
      FROM ranked r
     WHERE r.n_active + r.rank <= r.bound
  ), bumped AS (
    -- This agent's counter is ours while we hold its lock: the snapshot's value is current.
    UPDATE warp.agents ag SET fencing_counter = ag.fencing_counter + g.k
      FROM (SELECT DISTINCT gr.agent, gr.k FROM granted gr) g
     WHERE ag.agent_id = g.agent
  ), leased AS MATERIALIZED (
    INSERT INTO warp.agent_leases AS l (agent_id, work_item_id, fencing_token, holder_instance,
                                        holder_run_id, acquired_at, renewed_at, expires_at)
    SELECT g.agent, g.item, ag.fencing_counter + g.nth, $3, $1, c.t, c.t, c.t + $4
      FROM granted g JOIN warp.agents ag ON ag.agent_id = g.agent CROSS JOIN clock c
     ORDER BY g.agent, g.nth
    RETURNING l.lease_id, l.work_item_id, l.fencing_token, l.expires_at
  ), moved AS (
    UPDATE warp.work_items wi
       SET state = 'dispatched', attempts = wi.attempts + 1, lease_id = ld.lease_id,
           retry_backoff = $10, retry_backoff_max = $11, updated_at = (SELECT c.t FROM clock c)
      FROM leased ld
     WHERE wi.work_item_id = ld.work_item_id
  ), decided AS MATERIALIZED (
    SELECT c.idx, c.item, c.agent, c.attempt, ld.lease_id, ld.fencing_token, ld.expires_at,
           CASE WHEN c.verdict IS NOT NULL THEN c.verdict
                WHEN NOT c.locked THEN 'deferred_contended'
                WHEN ld.lease_id IS NOT NULL THEN 'dispatched'
                ELSE 'deferred_lease_held' END AS decision,
           CASE WHEN c.verdict IS NOT NULL THEN c.reason
                WHEN NOT c.locked THEN 'agent lock held by another instance'
                WHEN ld.lease_id IS NOT NULL THEN c.reason
                ELSE format('bound of %s active lease(s) reached', c.bound) END AS reason
      FROM candidates c
      LEFT JOIN leased ld ON ld.work_item_id = c.item
     WHERE c.eligible
  ), recorded AS (
    INSERT INTO warp.dispatch_decisions (run_id, cycle_id, work_item_id, agent_id, attempt,
                                         decision, lease_id, reason, at)
    SELECT $1, $2, d.item, d.agent, d.attempt, d.decision, d.lease_id, d.reason, c.t
      FROM decided d CROSS JOIN clock c
  )
  SELECT i.idx, d.idx IS NOT NULL, d.decision, d.reason, d.attempt,
         CASE WHEN d.idx IS NOT NULL THEN (SELECT c.t FROM clock c) END, d.lease_id,
         d.fencing_token, d.expires_at
    FROM input i LEFT JOIN decided d ON d.idx = i.idx
   ORDER BY i.idx
  $sql$
  USING p_run_id, p_cycle_id, p_instance, p_ttl, p_items, p_agents, p_bounds, p_verdicts,
        p_reasons, p_backoff, p_backoff_max, locked, held, held_attempts, held_due;
END
$$;

-- Expired unreleased leases, from open_leases; each item is looked up by key.
CREATE OR REPLACE FUNCTION warp.requeue_expired_work() RETURNS integer
LANGUAGE sql
SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
  WITH expired AS MATERIALIZED (
    SELECT o.lease_id, o.work_item_id FROM warp.open_leases o
     WHERE o.expires_at <= warp.now() AND o.work_item_id IS NOT NULL
  ), moved AS (
    UPDATE warp.work_items w
       SET state = CASE WHEN w.attempts >= w.max_attempts THEN 'dead' ELSE 'pending' END,
           last_error = format('lease %s expired without completion', w.lease_id),
           updated_at = warp.now()
      FROM expired e
     WHERE w.work_item_id = e.work_item_id AND w.lease_id = e.lease_id
       AND w.state = 'dispatched'
    RETURNING 1)
  SELECT count(*)::integer FROM moved
$$;

-- The due scan of a cycle (Store::SelectDueWork): the first p_limit * p_factor due items of
-- work_queue in (priority, due_at) order, at most as many per agent as it has room for under
-- its bound (at least one), then the first p_limit of those, read from work_items. Its plan
-- shape does not depend on the statistics of the side tables: the CTEs are joined by hashing,
-- and every table lookup is an index probe per row (LATERAL ... OFFSET 0).
CREATE FUNCTION warp.select_due_work(p_limit integer, p_default_bound integer, p_factor integer)
RETURNS SETOF warp.work_items
LANGUAGE sql STABLE
SET enable_seqscan = off SET enable_nestloop = off SET enable_mergejoin = off SET jit = off
AS $$
  WITH due AS MATERIALIZED (
    SELECT q.work_item_id, q.agent_id, q.priority, q.due_at,
           row_number() OVER (PARTITION BY q.agent_id
                              ORDER BY q.priority DESC, q.due_at, q.work_item_id) AS nth
      FROM (SELECT q0.work_item_id, q0.agent_id, q0.priority, q0.due_at FROM warp.work_queue q0
             WHERE q0.state IN ('pending', 'failed') AND q0.due_at <= warp.now()
             ORDER BY q0.priority DESC, q0.due_at, q0.work_item_id
             LIMIT p_limit * p_factor) q
  ), room AS MATERIALIZED (
    SELECT d.agent_id, greatest(1, coalesce(a.max_active_leases, p_default_bound) - b.n) AS n
      FROM (SELECT DISTINCT due.agent_id FROM due) d
     CROSS JOIN LATERAL (SELECT a0.max_active_leases FROM warp.agents a0
                          WHERE a0.agent_id = d.agent_id OFFSET 0) a
     CROSS JOIN LATERAL (SELECT count(*) AS n FROM warp.open_leases o
                          WHERE o.agent_id = d.agent_id AND o.expires_at > warp.now()) b
  ), chosen AS MATERIALIZED (
    SELECT due.work_item_id, due.priority, due.due_at
      FROM due JOIN room ON room.agent_id = due.agent_id
     WHERE due.nth <= room.n
     ORDER BY due.priority DESC, due.due_at, due.work_item_id
     LIMIT p_limit
  )
  SELECT w.*
    FROM chosen c
   CROSS JOIN LATERAL (SELECT w0.* FROM warp.work_items w0
                        WHERE w0.work_item_id = c.work_item_id OFFSET 0) w
   ORDER BY c.priority DESC, c.due_at, c.work_item_id
$$;

-- 5. Completion. As 0002, with: leases looked up by key (a hash join read all of
-- agent_leases per batch; the planner's estimate for the batch is a guess), the overtaking lease found through (agent_id, fencing_token), and
-- an audit event for each completion accepted late.
CREATE OR REPLACE FUNCTION warp.finish_work_batch(
  p_lease_ids bigint[], p_tokens bigint[], p_outcomes text[], p_details text[],
  p_transport_errors boolean[], p_retries boolean[],
  p_backoff interval DEFAULT NULL, p_backoff_max interval DEFAULT NULL)
RETURNS TABLE (idx integer, verdict text, work_item_id bigint, item warp.work_items)
LANGUAGE plpgsql SET enable_seqscan = off SET enable_mergejoin = off SET jit = off AS $$
#variable_conflict use_column
DECLARE
  t timestamptz := warp.now();
  bad text;
  k bigint;
BEGIN
  SELECT o INTO bad FROM unnest(p_outcomes) AS o
   WHERE o IS NULL OR o NOT IN ('done', 'failed') LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'outcome must be done or failed, not %', coalesce(bad, 'NULL')
      USING ERRCODE = '22023';
  END IF;
  PERFORM 1 FROM warp.agent_leases l WHERE l.lease_id = ANY (p_lease_ids)
    ORDER BY l.lease_id FOR UPDATE;
  FOR k IN SELECT DISTINCT warp.agent_lock_key(l.agent_id) AS key
             FROM unnest(p_lease_ids, p_tokens) AS u(id, token)
             JOIN warp.agent_leases l ON l.lease_id = u.id AND l.fencing_token = u.token
            WHERE l.released_at IS NULL AND l.expires_at <= t
            ORDER BY 1 LOOP
    PERFORM pg_advisory_xact_lock(k);
  END LOOP;

  RETURN QUERY EXECUTE $sql$
  WITH input AS (
    SELECT u.idx::integer AS idx, u.lease_id, u.token, u.outcome, coalesce(u.detail, '') AS detail,
           coalesce(u.transport_error, false) AS transport_error, coalesce(u.retry, true) AS retry
      FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::boolean[], $6::boolean[])
           WITH ORDINALITY AS u(lease_id, token, outcome, detail, transport_error, retry, idx)
  ), judged AS MATERIALIZED (
    SELECT i.*, l.work_item_id, l.agent_id,
           CASE WHEN l.lease_id IS NULL OR l.fencing_token <> i.token THEN 'unknown_lease'
                WHEN l.released_at IS NOT NULL THEN 'released'
                WHEN i.idx <> min(i.idx) OVER (PARTITION BY i.lease_id) THEN 'released'
                WHEN l.expires_at > $9 THEN 'accepted'
                WHEN EXISTS (SELECT 1 FROM warp.agent_leases o
                              WHERE o.agent_id = l.agent_id
                                AND o.fencing_token > l.fencing_token
                                AND o.acquired_at >= l.expires_at) THEN 'overtaken'
                ELSE 'accepted_late' END AS verdict
      FROM input i LEFT JOIN warp.agent_leases l ON l.lease_id = i.lease_id
  ), accepted AS MATERIALIZED (
    SELECT j.* FROM judged j WHERE j.verdict IN ('accepted', 'accepted_late')
  ), released AS (
    UPDATE warp.agent_leases l
       SET released_at = $9,
           release_reason = CASE a.verdict WHEN 'accepted' THEN 'completed' ELSE 'completed_late' END
      FROM accepted a
     WHERE l.lease_id = a.lease_id
  ), moved AS MATERIALIZED (
    UPDATE warp.work_items w
       SET state = CASE WHEN a.outcome = 'done' THEN 'done'
                        WHEN NOT a.retry OR w.attempts >= w.max_attempts THEN 'dead'
                        ELSE 'failed' END,
           last_error = CASE WHEN a.outcome = 'done' THEN '' ELSE a.detail END,
           due_at = CASE WHEN a.outcome = 'done' OR NOT a.retry OR w.attempts >= w.max_attempts
                         THEN w.due_at
                         ELSE $9 + least(coalesce($7, w.retry_backoff)
                                          * power(2, greatest(w.attempts - 1, 0)),
                                        coalesce($8, w.retry_backoff_max)) END,
           updated_at = $9
      FROM accepted a
     WHERE w.work_item_id = a.work_item_id
    RETURNING w
  ), failed_transport AS (
    UPDATE warp.dispatch_decisions d SET decision = 'failed', reason = a.detail
      FROM accepted a
     WHERE d.lease_id = a.lease_id AND a.transport_error
  ), late AS (
    INSERT INTO warp.audit_events (at, actor, event_type, subject, detail)
    SELECT $9, coalesce(nullif(current_setting('application_name', true), ''), session_user),
           'completion_late', 'lease:' || a.lease_id,
           jsonb_build_object('lease_id', a.lease_id, 'fencing_token', a.token,
                              'verdict', a.verdict, 'agent_id', a.agent_id,
                              'work_item_id', a.work_item_id)
      FROM accepted a WHERE a.verdict = 'accepted_late'
  )
  SELECT j.idx, j.verdict, j.work_item_id, m.w
    FROM judged j
    LEFT JOIN moved m ON (m.w).work_item_id = j.work_item_id
                     AND j.verdict IN ('accepted', 'accepted_late')
   ORDER BY j.idx
  $sql$
  USING p_lease_ids, p_tokens, p_outcomes, p_details, p_transport_errors, p_retries, p_backoff,
        p_backoff_max, t;
END
$$;

-- 6. The watchdog's scan (0004) over the new places: expired and unreleased leases from
-- open_leases, failing work and the backlog from work_queue, an agent's history through
-- (agent_id, fencing_token), accepted late completions from audit_events.
CREATE OR REPLACE FUNCTION warp.watchdog_facts(p_rules text[], p_backlog_age interval,
                                    p_failure_streak integer, p_unresponsive_after interval,
                                    p_review_stale_after interval, p_recent interval)
RETURNS TABLE (rule text, fact json)
LANGUAGE sql STABLE SET jit = off AS $$
  WITH RECURSIVE
  -- The expired unreleased leases: holders that vanished, whether or not overtaken since.
  expired AS MATERIALIZED (
    SELECT l.lease_id, l.agent_id, l.work_item_id, l.fencing_token, l.holder_instance,
           l.holder_run_id, l.acquired_at, l.renewed_at, l.expires_at
      FROM warp.open_leases o JOIN warp.agent_leases l ON l.lease_id = o.lease_id
     WHERE o.expires_at <= warp.now() AND l.released_at IS NULL AND l.expires_at <= warp.now()
       AND p_rules && ARRAY['lease_expired_unreleased', 'dispatch_failure_streak']
  ),
  -- Every unreleased lease (a live one may have been renewed for long).
  unreleased AS MATERIALIZED (
    SELECT l.lease_id, l.agent_id, l.acquired_at, l.fencing_token
      FROM warp.open_leases o JOIN warp.agent_leases l ON l.lease_id = o.lease_id
     WHERE l.released_at IS NULL AND 'agent_unresponsive' = ANY (p_rules)
  ),
  -- Distinct agents with failed or dead work.
  failing (agent_id) AS (
    (SELECT w.agent_id FROM warp.work_queue w
      WHERE w.state IN ('failed', 'dead') AND 'dispatch_failure_streak' = ANY (p_rules)
      ORDER BY w.agent_id LIMIT 1)
    UNION ALL
    SELECT (SELECT w.agent_id FROM warp.work_queue w
             WHERE w.state IN ('failed', 'dead') AND w.agent_id > f.agent_id
             ORDER BY w.agent_id LIMIT 1)
      FROM failing f WHERE f.agent_id IS NOT NULL
  ),
  streak_candidates AS (
    SELECT f.agent_id FROM failing f WHERE f.agent_id IS NOT NULL
    UNION SELECT e.agent_id FROM expired e WHERE 'dispatch_failure_streak' = ANY (p_rules)
    UNION SELECT o.agent_id FROM warp.watchdog_observations o
           WHERE o.kind = 'dispatch_failure_streak' AND o.resolved_at IS NULL
             AND o.agent_id IS NOT NULL AND 'dispatch_failure_streak' = ANY (p_rules)
  ),
  -- A finished attempt (a lease released or expired) failed when its lease expired unreleased,
  -- or its item moved on to another lease (done work is never dispatched again), or its item
  -- is failed or dead. The streak is the run of failures from the most recent attempt back.
  streaks AS (
    SELECT c.agent_id, s.streak, s.lease_ids, s.last_attempt_at, s.last_error
      FROM streak_candidates c
     CROSS JOIN LATERAL (
       SELECT count(*) FILTER (WHERE x.leading) AS streak,
              array_agg(x.lease_id ORDER BY x.nth) FILTER (WHERE x.leading) AS lease_ids,
              min(x.acquired_at) FILTER (WHERE x.nth = 1 AND x.leading) AS last_attempt_at,
              min(x.last_error) FILTER (WHERE x.nth = 1 AND x.leading) AS last_error
         FROM (SELECT y.*, bool_and(y.failed) OVER (ORDER BY y.nth) AS leading
                 FROM (SELECT l.lease_id, l.acquired_at, w.last_error,
                              row_number() OVER (ORDER BY l.acquired_at DESC, l.lease_id DESC)
                                AS nth,
                              (l.released_at IS NULL
                               OR (w.work_item_id IS NOT NULL
                                   AND (w.lease_id IS DISTINCT FROM l.lease_id
                                        OR w.state IN ('failed', 'dead')))) AS failed
                         FROM (SELECT l0.* FROM warp.agent_leases l0
                                WHERE l0.agent_id = c.agent_id
                                  AND (l0.released_at IS NOT NULL
                                       OR l0.expires_at <= warp.now())
                                ORDER BY l0.fencing_token DESC
                                LIMIT 2 * p_failure_streak) l
                         LEFT JOIN warp.work_items w ON w.work_item_id = l.work_item_id) y) x
     ) s
     WHERE s.streak >= p_failure_streak
  ),
  -- Distinct priorities of pending or failed work.
  priorities (priority) AS (
    (SELECT w.priority FROM warp.work_queue w
      WHERE w.state IN ('pending', 'failed') AND 'work_backlog_age' = ANY (p_rules)
      ORDER BY w.priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT w.priority FROM warp.work_queue w
             WHERE w.state IN ('pending', 'failed') AND w.priority < p.priority
             ORDER BY w.priority DESC LIMIT 1)
      FROM priorities p WHERE p.priority IS NOT NULL
  ),
  backlog AS (
    SELECT b.* FROM (
      SELECT w.agent_id, w.work_item_id, w.due_at,
             count(*) OVER (PARTITION BY w.agent_id) AS old_items,
             row_number() OVER (PARTITION BY w.agent_id ORDER BY w.due_at, w.work_item_id)
               AS nth
        FROM priorities p
       CROSS JOIN LATERAL (
         SELECT w0.* FROM warp.work_queue w0
          WHERE w0.priority = p.priority AND w0.state IN ('pending', 'failed')
            AND w0.due_at <= warp.now() - p_backlog_age
         OFFSET 0) w
       WHERE p.priority IS NOT NULL) b
     WHERE b.nth = 1
  ),
  -- Distinct tool profiles named by agents that are not retired.
  named_profiles (id) AS (
    (SELECT a.tool_profile_id FROM warp.agents a
      WHERE a.lifecycle <> 'retired' AND 'agent_tool_profile_missing' = ANY (p_rules)
      ORDER BY a.tool_profile_id LIMIT 1)
    UNION ALL
    SELECT (SELECT a.tool_profile_id FROM warp.agents a
             WHERE a.lifecycle <> 'retired' AND a.tool_profile_id > n.id
             ORDER BY a.tool_profile_id LIMIT 1)
      FROM named_profiles n WHERE n.id IS NOT NULL
  )
  SELECT 'now', json_build_object('now_us', warp.epoch_us(warp.now()))

  UNION ALL
  SELECT 'lease_expired_unreleased', json_build_object(
           'lease_id', e.lease_id, 'agent_id', e.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = e.agent_id),
           'work_item_id', e.work_item_id, 'fencing_token', e.fencing_token,
           'holder_instance', e.holder_instance, 'holder_run_id', e.holder_run_id,
           'acquired_us', warp.epoch_us(e.acquired_at),
           'renewed_us', warp.epoch_us(e.renewed_at),
           'expires_us', warp.epoch_us(e.expires_at))
    FROM expired e
   WHERE 'lease_expired_unreleased' = ANY (p_rules)
     AND NOT EXISTS (SELECT 1 FROM warp.agent_leases o
                      WHERE o.agent_id = e.agent_id AND o.fencing_token > e.fencing_token
                        AND o.acquired_at >= e.expires_at)

  UNION ALL
  SELECT 'running_run', json_build_object(
           'run_id', r.run_id, 'cycle_id', r.cycle_id, 'group', r."group",
           'instance', r.instance, 'started_us', warp.epoch_us(r.started_at),
           'heartbeat_us', warp.epoch_us(r.heartbeat_at))
    FROM warp.scheduler_runs r
   WHERE r.status = 'running' AND p_rules && ARRAY['cycle_abandoned', 'cycle_overrun']

  UNION ALL
  SELECT 'cycle_missed', json_build_object(
           'group', g.grp, 'first_started_us', warp.epoch_us(g.first_started),
           'last_run_id', c.run_id, 'last_cycle_id', c.cycle_id, 'last_instance', c.instance,
           'last_started_us', warp.epoch_us(c.started_at),
           'last_finished_us', warp.epoch_us(c.finished_at),
           'latest_cycle_id', lt.cycle_id)
    FROM (SELECT i."group" AS grp, min(i.started_at) AS first_started
            FROM warp.scheduler_instances i
           WHERE 'cycle_missed' = ANY (p_rules)
           GROUP BY i."group") g
    LEFT JOIN LATERAL (
      SELECT r.run_id, r.cycle_id, r.instance, r.started_at, r.finished_at
        FROM warp.scheduler_runs r
       WHERE r."group" = g.grp AND r.status = 'completed'
       ORDER BY r.started_at DESC, r.run_id DESC LIMIT 1) c ON true
    LEFT JOIN LATERAL (
      SELECT r.cycle_id FROM warp.scheduler_runs r
       WHERE r."group" = g.grp
       ORDER BY r.started_at DESC, r.run_id DESC LIMIT 1) lt ON true

  UNION ALL
  SELECT 'work_backlog_age', json_build_object(
           'agent_id', b.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = b.agent_id),
           'lifecycle', (SELECT a.lifecycle FROM warp.agents a WHERE a.agent_id = b.agent_id),
           'work_item_id', b.work_item_id,
           'kind', (SELECT wi.kind FROM warp.work_items wi WHERE wi.work_item_id = b.work_item_id),
           'due_us', warp.epoch_us(b.due_at), 'old_items', b.old_items)
    FROM backlog b

  UNION ALL
  SELECT 'dispatch_failure_streak', json_build_object(
           'agent_id', s.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = s.agent_id),
           'streak', s.streak, 'lease_ids', s.lease_ids,
           'last_attempt_us', warp.epoch_us(s.last_attempt_at), 'last_error', s.last_error)
    FROM streaks s

  UNION ALL
  -- A lease unreleased since p_unresponsive_after or longer, and no lease of its agent
  -- acquired after it released: nothing handed to the agent since has come back.
  SELECT 'agent_unresponsive', json_build_object(
           'agent_id', g.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = g.agent_id),
           'first_lease_id', g.first_lease_id, 'since_us', warp.epoch_us(g.since),
           'unanswered_leases', n.n, 'last_completion_us', warp.epoch_us(lc.released_at))
    FROM (SELECT u.agent_id, min(u.acquired_at) AS since,
                 (array_agg(u.lease_id ORDER BY u.acquired_at, u.lease_id))[1] AS first_lease_id,
                 (array_agg(u.fencing_token ORDER BY u.acquired_at, u.lease_id))[1] AS first_token
            FROM unreleased u
           WHERE u.acquired_at <= warp.now() - p_unresponsive_after
             AND NOT EXISTS (SELECT 1 FROM warp.agent_leases r
                              WHERE r.agent_id = u.agent_id AND r.fencing_token > u.fencing_token
                                AND r.acquired_at > u.acquired_at
                                AND r.released_at IS NOT NULL)
           GROUP BY u.agent_id) g
   CROSS JOIN LATERAL (
     SELECT count(*) AS n FROM warp.agent_leases x
      WHERE x.agent_id = g.agent_id AND x.fencing_token >= g.first_token
        AND x.acquired_at >= g.since) n
    LEFT JOIN LATERAL (
      SELECT x.released_at FROM warp.agent_leases x
       WHERE x.agent_id = g.agent_id AND x.fencing_token < g.first_token
         AND x.released_at IS NOT NULL
       ORDER BY x.fencing_token DESC LIMIT 1) lc ON true

  UNION ALL
  SELECT 'instance_stale', json_build_object(
           'instance', i.instance, 'group', i."group", 'host', i.host, 'pid', i.pid,
           'version', i.version, 'started_us', warp.epoch_us(i.started_at),
           'heartbeat_us', warp.epoch_us(i.heartbeat_at))
    FROM warp.scheduler_instances i
   WHERE 'instance_stale' = ANY (p_rules)

  UNION ALL
  SELECT 'late_completion', json_build_object(
           'agent_id', l.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = l.agent_id),
           'lease_id', l.lease_id, 'fencing_token', l.fencing_token, 'accepted', true,
           'at_us', warp.epoch_us(e.at))
    FROM warp.audit_events e
    JOIN warp.agent_leases l ON l.lease_id = (e.detail->>'lease_id')::bigint
   WHERE 'late_completion' = ANY (p_rules) AND e.event_type = 'completion_late'
     AND e.at > warp.now() - p_recent

  UNION ALL
  SELECT 'late_completion', json_build_object(
           'agent_id', l.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = l.agent_id),
           'lease_id', l.lease_id, 'fencing_token', (e.detail->>'fencing_token')::bigint,
           'accepted', false, 'at_us', warp.epoch_us(e.at))
    FROM warp.audit_events e
    JOIN warp.agent_leases l ON l.lease_id = (e.detail->>'lease_id')::bigint
   WHERE 'late_completion' = ANY (p_rules) AND e.event_type = 'completion_refused'
     AND e.at > warp.now() - p_recent AND e.detail->>'verdict' = 'overtaken'

  UNION ALL
  SELECT 'workspace_retention_overdue', json_build_object(
           'workspace_id', w.workspace_id, 'path', w.path, 'agent_id', w.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = w.agent_id),
           'lifecycle', w.lifecycle, 'retention_policy', w.retention_policy,
           'retain_until_us', warp.epoch_us(w.retain_until),
           'created_us', warp.epoch_us(w.created_at))
    FROM warp.workspaces w
   WHERE 'workspace_retention_overdue' = ANY (p_rules) AND w.lifecycle <> 'deleted'
     AND w.retain_until <= warp.now()

  UNION ALL
  SELECT 'learning_proposal_review_stale', json_build_object(
           'proposal_id', p.proposal_id, 'agent_id', p.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = p.agent_id),
           'title', p.title, 'review_status', p.review_status,
           'created_us', warp.epoch_us(p.created_at))
    FROM warp.learning_proposals p
   WHERE 'learning_proposal_review_stale' = ANY (p_rules)
     AND p.review_status IN ('proposed', 'in_review')
     AND p.created_at <= warp.now() - p_review_stale_after

  UNION ALL
  SELECT 'agent_tool_profile_missing', json_build_object(
           'agent_id', a.agent_id, 'agent_slug', a.agent_slug,
           'tool_profile_id', a.tool_profile_id, 'lifecycle', a.lifecycle)
    FROM named_profiles n
   CROSS JOIN LATERAL (
     SELECT a0.agent_id, a0.agent_slug, a0.tool_profile_id, a0.lifecycle
       FROM warp.agents a0
      WHERE a0.tool_profile_id = n.id AND a0.lifecycle <> 'retired'
     OFFSET 0) a
   WHERE n.id IS NOT NULL
     AND NOT EXISTS (SELECT 1 FROM warp.tool_profiles t WHERE t.tool_profile_id = n.id)
$$;
REVOKE ALL ON FUNCTION warp.watchdog_facts(text[], interval, integer, interval, interval,
                                           interval) FROM PUBLIC;
