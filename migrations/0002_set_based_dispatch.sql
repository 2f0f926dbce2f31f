-- Set-based dispatch and completion: a cycle's claims and a burst of completions each cost a
-- handful of statements over the whole batch instead of a plpgsql loop of statements per item.
-- Same signatures and the same semantics as 0001 (the store contract suite runs against both
-- stores); finish_work and complete_work now go through finish_work_batch.

-- The current instant, not the transaction's start (warp.now()); pinned like warp.now() by
-- `SET warp.test_now`. An acquisition is stamped with it after its locks are held.
CREATE FUNCTION warp.clock_now() RETURNS timestamptz
LANGUAGE sql VOLATILE AS $$
  SELECT coalesce(nullif(pg_catalog.current_setting('warp.test_now', true), '')::timestamptz,
                  pg_catalog.clock_timestamp())
$$;

-- Recent releases, for the bound check of claim_dispatches (below).
CREATE INDEX agent_leases_released ON warp.agent_leases (released_at)
  WHERE released_at IS NOT NULL;

-- Decide, lease and record a cycle's candidates in one call (SPEC sections 4 and 5). Candidate i
-- is (p_items[i], p_agents[i], p_bounds[i]); a non-NULL p_verdicts[i] is a decision already
-- taken (a skip). For the others: try each agent's advisory lock once, count its active leases
-- in database time, and grant candidates in batch order while the agent stays within its bound:
-- the fencing counter is bumped by the number granted and each lease gets the next token.
-- One row per candidate, in order. recorded = false: this cycle already decided on that
-- attempt, the item is no longer due, or it appeared earlier in the same batch.
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
BEGIN
  -- Row locks in id order, so concurrent claimers of overlapping batches cannot deadlock.
  PERFORM 1 FROM warp.work_items w WHERE w.work_item_id = ANY (p_items)
    ORDER BY w.work_item_id FOR UPDATE;
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
  SELECT coalesce(array_agg(a.agent) FILTER (WHERE a.got), '{}') INTO locked
    FROM (SELECT d.agent, pg_try_advisory_xact_lock(warp.agent_lock_key(d.agent)) AS got
            FROM (SELECT DISTINCT u.agent
                    FROM unnest(p_items, p_agents, p_verdicts) AS u(item, agent, verdict)
                    JOIN warp.work_items w ON w.work_item_id = u.item
                   WHERE u.verdict IS NULL AND w.state IN ('pending', 'failed')
                     AND w.due_at <= t) d) a;
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
        p_reasons, p_backoff, p_backoff_max, locked, t;
END
$$;

-- Completions of many leases in one call: the fencing rule of SPEC section 5 for each, then the
-- accepted ones release their lease and move their item (done; failed with doubling backoff;
-- dead when out of attempts or not retryable). One row per input, in order, with the verdict
-- (accepted, accepted_late, unknown_lease, released, overtaken), the lease's work item id when
-- the lease exists, and, when accepted, the item as it is now. A lease listed twice is completed once; the repeat gets 'released'.
CREATE FUNCTION warp.finish_work_batch(
  p_lease_ids bigint[], p_tokens bigint[], p_outcomes text[], p_details text[],
  p_transport_errors boolean[], p_retries boolean[],
  p_backoff interval DEFAULT NULL, p_backoff_max interval DEFAULT NULL)
RETURNS TABLE (idx integer, verdict text, work_item_id bigint, item warp.work_items)
LANGUAGE plpgsql AS $$
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
  -- An expired lease is judged under its agent's advisory lock, so that "nobody acquired since
  -- expiry" stays true until this transaction commits; taken in key order (no deadlocks).
  FOR k IN SELECT DISTINCT warp.agent_lock_key(l.agent_id) AS key
             FROM unnest(p_lease_ids, p_tokens) AS u(id, token)
             JOIN warp.agent_leases l ON l.lease_id = u.id AND l.fencing_token = u.token
            WHERE l.released_at IS NULL AND l.expires_at <= t
            ORDER BY 1 LOOP
    PERFORM pg_advisory_xact_lock(k);
  END LOOP;

  -- Dynamic for the same reason as claim_dispatches: planned with the batch at hand.
  RETURN QUERY EXECUTE $sql$
  WITH input AS (
    SELECT u.idx::integer AS idx, u.lease_id, u.token, u.outcome, coalesce(u.detail, '') AS detail,
           coalesce(u.transport_error, false) AS transport_error, coalesce(u.retry, true) AS retry
      FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::boolean[], $6::boolean[])
           WITH ORDINALITY AS u(lease_id, token, outcome, detail, transport_error, retry, idx)
  ), judged AS MATERIALIZED (
    SELECT i.*, l.work_item_id,
           CASE WHEN l.lease_id IS NULL OR l.fencing_token <> i.token THEN 'unknown_lease'
                WHEN l.released_at IS NOT NULL THEN 'released'
                WHEN i.idx <> min(i.idx) OVER (PARTITION BY i.lease_id) THEN 'released'
                WHEN l.expires_at > $9 THEN 'accepted'
                WHEN EXISTS (SELECT 1 FROM warp.agent_leases o
                              WHERE o.agent_id = l.agent_id AND o.lease_id <> l.lease_id
                                AND o.acquired_at >= l.expires_at) THEN 'overtaken'
                ELSE 'accepted_late' END AS verdict
      FROM input i LEFT JOIN warp.agent_leases l ON l.lease_id = i.lease_id
  ), accepted AS (
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
REVOKE ALL ON FUNCTION warp.finish_work_batch(bigint[], bigint[], text[], text[], boolean[],
                                              boolean[], interval, interval) FROM PUBLIC;

-- The single completion of 0001, now one row of the batch.
CREATE OR REPLACE FUNCTION warp.finish_work(
  p_lease_id bigint, p_fencing_token bigint, p_outcome text, p_detail text,
  p_transport_error boolean, p_retry boolean,
  p_backoff interval DEFAULT NULL, p_backoff_max interval DEFAULT NULL)
RETURNS TABLE (verdict text, work_item_id bigint, state text, attempts integer,
               due_at timestamptz, last_error text)
LANGUAGE sql AS $$
  SELECT b.verdict, b.work_item_id, (b.item).state, (b.item).attempts, (b.item).due_at,
         (b.item).last_error
    FROM warp.finish_work_batch(ARRAY[p_lease_id], ARRAY[p_fencing_token], ARRAY[p_outcome],
                                ARRAY[p_detail], ARRAY[p_transport_error], ARRAY[p_retry],
                                p_backoff, p_backoff_max) AS b
$$;
