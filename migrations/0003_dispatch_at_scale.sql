-- Dispatch at scale (issue 3 benchmarks, docs/BENCHMARKS.md): what a 40,000-item claim spent
-- its time on, and what two instances claiming overlapping batches ran into.

-- 1. Foreign keys on the dispatch path. Each is a trigger running one lookup per row: eight
-- per dispatched item (three on the lease, one on the item's lease_id, four on the decision),
-- about half the time of a large claim. These rows are written only by warp.claim_dispatches,
-- which takes every referenced id from rows it has just read or inserted in the same statement,
-- so the checks could not fail there. What the keys also did, refuse to delete a referenced
-- row, the delete guards below keep doing. The keys on what producers and operators write
-- (work_items.agent_id, workspaces, learning_proposals, watchdog_observations) stay.
ALTER TABLE warp.agent_leases DROP CONSTRAINT agent_leases_agent_id_fkey,
                              DROP CONSTRAINT agent_leases_work_item_id_fkey,
                              DROP CONSTRAINT agent_leases_holder_run_id_fkey;
ALTER TABLE warp.work_items DROP CONSTRAINT work_items_lease_fk;
ALTER TABLE warp.dispatch_decisions DROP CONSTRAINT dispatch_decisions_run_id_fkey,
                                    DROP CONSTRAINT dispatch_decisions_work_item_id_fkey,
                                    DROP CONSTRAINT dispatch_decisions_agent_id_fkey,
                                    DROP CONSTRAINT dispatch_decisions_lease_id_fkey;

-- Agents are retired, never deleted; items, runs and leases the dispatch history refers to
-- stay as long as it does. Deleting unreferenced rows (a mistyped agent, a test item) is still
-- allowed. TRUNCATE is not a row delete and stays with whoever owns the database.
CREATE FUNCTION warp.refuse_delete_referenced() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  referenced boolean;
BEGIN
  CASE TG_TABLE_NAME
    WHEN 'agents' THEN
      referenced := EXISTS (SELECT 1 FROM warp.agent_leases l WHERE l.agent_id = OLD.agent_id);
    WHEN 'work_items' THEN
      referenced := OLD.lease_id IS NOT NULL
                 OR EXISTS (SELECT 1 FROM warp.dispatch_decisions d
                             WHERE d.work_item_id = OLD.work_item_id);
    WHEN 'scheduler_runs' THEN
      referenced := EXISTS (SELECT 1 FROM warp.dispatch_decisions d WHERE d.run_id = OLD.run_id)
                 OR EXISTS (SELECT 1 FROM warp.agent_leases l WHERE l.holder_run_id = OLD.run_id);
    ELSE
      referenced := true;  -- agent_leases: the fencing history is never deleted
  END CASE;
  IF referenced THEN
    RAISE EXCEPTION 'this warp.% row is part of the dispatch history and cannot be deleted',
      TG_TABLE_NAME USING ERRCODE = '23503';
  END IF;
  RETURN OLD;
END
$$;
CREATE TRIGGER agents_keep_history BEFORE DELETE ON warp.agents
  FOR EACH ROW EXECUTE FUNCTION warp.refuse_delete_referenced();
CREATE TRIGGER work_items_keep_history BEFORE DELETE ON warp.work_items
  FOR EACH ROW EXECUTE FUNCTION warp.refuse_delete_referenced();
CREATE TRIGGER scheduler_runs_keep_history BEFORE DELETE ON warp.scheduler_runs
  FOR EACH ROW EXECUTE FUNCTION warp.refuse_delete_referenced();
CREATE TRIGGER agent_leases_keep_history BEFORE DELETE ON warp.agent_leases
  FOR EACH ROW EXECUTE FUNCTION warp.refuse_delete_referenced();
-- agent_leases_history serves the agents guard. The others scan: an index per guard would
-- cost every dispatch an index insert, to speed up deletes that are rare operator actions.

-- 2. The guard on agents fired for every fencing bump (one per agent per claim). A bump moves
-- the counter forward and changes nothing the guard checks; updated_at records operator
-- changes, not dispatches.
DROP TRIGGER agents_guard ON warp.agents;
CREATE TRIGGER agents_guard BEFORE UPDATE ON warp.agents
  FOR EACH ROW
  WHEN (NEW.fencing_counter <= OLD.fencing_counter OR NEW.lifecycle <> OLD.lifecycle)
  EXECUTE FUNCTION warp.agents_retired_is_final();

-- The bump itself: room on every page of agents lets it be a heap-only update (the counter is
-- in no index), instead of a new row version and an entry in each of the table's indexes for
-- every agent of every claim. Applies to pages written from now on; VACUUM FULL rewrites old
-- ones.
ALTER TABLE warp.agents SET (fillfactor = 50);

-- 3. Requeueing expired work ran every cycle as a join whose plan followed the statistics:
-- planned while agent_leases was nearly empty, it scanned the leases once per dispatched item,
-- and a benchmark cycle spent minutes in it. It now starts from the expired unreleased leases
-- (an index of unreleased leases by expiry) and looks each item up by key, whatever the
-- statistics say.
CREATE INDEX agent_leases_unreleased_expiry ON warp.agent_leases (expires_at)
  WHERE released_at IS NULL;
CREATE OR REPLACE FUNCTION warp.requeue_expired_work() RETURNS integer
LANGUAGE sql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
  WITH expired AS MATERIALIZED (
    SELECT l.lease_id, l.work_item_id FROM warp.agent_leases l
     WHERE l.released_at IS NULL AND l.expires_at <= warp.now()
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

-- 4. Claims skip rows another transaction holds (see below).
-- Decide, lease and record a cycle's candidates in one call (SPEC sections 4 and 5). Candidate i
-- is (p_items[i], p_agents[i], p_bounds[i]); a non-NULL p_verdicts[i] is a decision already
-- taken (a skip). For the others: try each agent's advisory lock once, count its active leases
-- in database time, and grant candidates in batch order while the agent stays within its bound:
-- the fencing counter is bumped by the number granted and each lease gets the next token.
-- One row per candidate, in order. recorded = false: this cycle already decided on that
-- attempt, the item is no longer due, it appeared earlier in the same batch, or another
-- transaction holds its row (another instance is claiming or finishing it right now).
CREATE OR REPLACE FUNCTION warp.claim_dispatches(
  p_run_id bigint, p_cycle_id text, p_instance text, p_ttl interval,
  p_items bigint[], p_agents bigint[], p_bounds integer[], p_verdicts text[], p_reasons text[],
  p_backoff interval, p_backoff_max interval)
RETURNS TABLE (idx integer, recorded boolean, decision text, reason text, attempt integer,
               at timestamptz, lease_id bigint, fencing_token bigint, expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  t timestamptz := warp.now();
  missing record;
  locked bigint[];
  held bigint[];
BEGIN
  -- Row locks, skipping rows another transaction holds: two instances claiming overlapping
  -- batches split them instead of queueing behind each other (0002 waited, and a claim of
  -- tens of thousands of items could then wait past the statement deadline).
  SELECT coalesce(array_agg(s.work_item_id), '{}') INTO held
    FROM (SELECT w.work_item_id FROM warp.work_items w WHERE w.work_item_id = ANY (p_items)
           ORDER BY w.work_item_id FOR UPDATE SKIP LOCKED) s;
  SELECT u.item, u.agent INTO missing
    FROM unnest(p_items, p_agents) AS u(item, agent)
    LEFT JOIN warp.work_items w ON w.work_item_id = u.item
   WHERE w.work_item_id IS NULL OR w.agent_id <> u.agent
   LIMIT 1;
  IF FOUND THEN
    -- Raised before anything is written: all or nothing.
    RAISE EXCEPTION 'work item % of agent % does not exist', missing.item, missing.agent
      USING ERRCODE = 'P0002';
  END IF;

  -- Each agent's advisory lock, tried once, in a statement of its own: the active leases and
  -- the fencing counters are read by the next statement, whose snapshot then includes every
  -- lease another instance committed before releasing the lock.
  -- Dynamic, like the main statement below: a generic plan takes the arrays for a row or two
  -- and joins them in nested loops, quadratic in the batch (seconds for a 5,000-item chunk).
  EXECUTE $sql$
    SELECT coalesce(array_agg(a.agent) FILTER (WHERE a.got), '{}')
      FROM (SELECT d.agent, pg_try_advisory_xact_lock(warp.agent_lock_key(d.agent)) AS got
              FROM (SELECT DISTINCT u.agent
                      FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS u(item, agent, verdict)
                      JOIN warp.work_items w ON w.work_item_id = u.item
                      JOIN unnest($4::bigint[]) AS h(item) ON h.item = u.item
                     WHERE u.verdict IS NULL AND w.state IN ('pending', 'failed')
                       AND w.due_at <= $5) d) a
  $sql$ INTO locked USING p_items, p_agents, p_verdicts, held, t;
  -- The acquisition instant: after the locks (which may have waited behind row locks above),
  -- so that it follows every acquisition and release the next statement sees.
  t := warp.clock_now();

  -- Dynamic, so that it is planned with the batch at hand (array sizes known): a generic plan
  -- guesses a few rows per array and picks nested loops that are quadratic in the batch size.
  RETURN QUERY EXECUTE $sql$
  WITH input AS (
    SELECT u.idx::integer AS idx, u.item, u.agent, u.bound, u.verdict,
           coalesce(u.reason, '') AS reason
      FROM unnest($5::bigint[], $6::bigint[], $7::integer[], $8::text[], $9::text[])
           WITH ORDINALITY AS u(item, agent, bound, verdict, reason, idx)
  ), candidates AS MATERIALIZED (
    SELECT i.*, w.attempts + 1 AS attempt,
           (w.state IN ('pending', 'failed') AND w.due_at <= $13
            AND i.idx = min(i.idx) OVER (PARTITION BY i.item)
            AND NOT EXISTS (SELECT 1 FROM warp.dispatch_decisions dd
                             WHERE dd.cycle_id = $2 AND dd.work_item_id = i.item
                               AND dd.attempt = w.attempts + 1)) AS eligible,
           i.agent = ANY ($12::bigint[]) AS locked
      FROM input i JOIN warp.work_items w ON w.work_item_id = i.item
                   JOIN unnest($14::bigint[]) AS h(item) ON h.item = i.item
  ), active AS MATERIALIZED (
    -- A release is stamped with its transaction's start, which may be later than $13 although
    -- it committed before this snapshot: such a lease still counts, so that the durable
    -- records never show more than the bound at any instant (SPEC section 5).
    SELECT a.agent_id, count(*)::integer AS n
      FROM (SELECT l.agent_id FROM warp.agent_leases l
             WHERE l.agent_id = ANY ($12::bigint[]) AND l.released_at IS NULL
               AND l.expires_at > $13
            UNION ALL
            SELECT l.agent_id FROM warp.agent_leases l
             WHERE l.released_at > $13 AND l.agent_id = ANY ($12::bigint[])
               AND l.expires_at > $13) a
     GROUP BY a.agent_id
  ), ranked AS MATERIALIZED (
    SELECT c.idx, c.item, c.agent, c.bound, coalesce(ac.n, 0) AS n_active,
           row_number() OVER (PARTITION BY c.agent ORDER BY c.idx) AS rank
      FROM candidates c LEFT JOIN active ac ON ac.agent_id = c.agent
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
    SELECT g.agent, g.item, ag.fencing_counter + g.nth, $3, $1, $13, $13, $13 + $4
      FROM granted g JOIN warp.agents ag ON ag.agent_id = g.agent
     ORDER BY g.agent, g.nth
    RETURNING l.lease_id, l.work_item_id, l.fencing_token, l.expires_at
  ), moved AS (
    UPDATE warp.work_items wi
       SET state = 'dispatched', attempts = wi.attempts + 1, lease_id = ld.lease_id,
           retry_backoff = $10, retry_backoff_max = $11, updated_at = $13
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
    SELECT $1, $2, d.item, d.agent, d.attempt, d.decision, d.lease_id, d.reason, $13
      FROM decided d
  )
  SELECT i.idx, d.idx IS NOT NULL, d.decision, d.reason, d.attempt,
         CASE WHEN d.idx IS NOT NULL THEN $13 END, d.lease_id, d.fencing_token, d.expires_at
    FROM input i LEFT JOIN decided d ON d.idx = i.idx
   ORDER BY i.idx
  $sql$
  USING p_run_id, p_cycle_id, p_instance, p_ttl, p_items, p_agents, p_bounds, p_verdicts,
        p_reasons, p_backoff, p_backoff_max, locked, t, held;
END
$$;
