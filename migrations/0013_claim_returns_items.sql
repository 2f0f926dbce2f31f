-- 0013: a claim returns the items it decided on, and probes the cycle's decisions by key.
--
-- The store read each claimed chunk's items back after the claim (one more statement and round
-- trip per chunk, 4 µs per item over a benchmark run: docs/BENCHMARKS.md). warp.claim_dispatches
-- now returns each recorded candidate's item as the claim left it, in a new column `item`. A
-- new result type: both forms of the function (0007, and 0006's with notify channels) are
-- dropped and made again, the same otherwise, except for one more change:
--
-- Whether a candidate already has a decision in this cycle was answered by hashing all the
-- cycle's decisions so far, once per chunk: a cycle of 16 chunks read 8 decisions per item.
-- It is now one probe of the decisions' key per candidate (OFFSET 0 keeps it from being hashed).

DROP FUNCTION warp.claim_dispatches(bigint, text, text, interval, bigint[], bigint[], integer[],
                                    text[], text[], interval, interval, text[]);
DROP FUNCTION warp.claim_dispatches(bigint, text, text, interval, bigint[], bigint[], integer[],
                                    text[], text[], interval, interval);

CREATE FUNCTION warp.claim_dispatches(
  p_run_id bigint, p_cycle_id text, p_instance text, p_ttl interval,
  p_items bigint[], p_agents bigint[], p_bounds integer[], p_verdicts text[], p_reasons text[],
  p_backoff interval, p_backoff_max interval)
RETURNS TABLE (idx integer, recorded boolean, decision text, reason text, attempt integer,
               at timestamptz, lease_id bigint, fencing_token bigint, expires_at timestamptz,
               item warp.work_items)
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
                               AND dd.attempt = h.attempts + 1 OFFSET 0)) AS eligible,
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
  ), moved AS MATERIALIZED (
    UPDATE warp.work_items wi
       SET state = 'dispatched', attempts = wi.attempts + 1, lease_id = ld.lease_id,
           retry_backoff = $10, retry_backoff_max = $11, updated_at = (SELECT c.t FROM clock c)
      FROM leased ld
     WHERE wi.work_item_id = ld.work_item_id
    RETURNING wi
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
         d.fencing_token, d.expires_at,
         -- The item as this claim left it: dispatched ones from the update, the others (locked
         -- by this transaction, so unchanged) by key.
         CASE WHEN m.wi IS NOT NULL THEN m.wi
              WHEN d.idx IS NOT NULL THEN (SELECT w0 FROM warp.work_items w0
                                            WHERE w0.work_item_id = d.item) END
    FROM input i
    LEFT JOIN decided d ON d.idx = i.idx
    LEFT JOIN moved m ON (m.wi).work_item_id = d.item AND d.decision = 'dispatched'
   ORDER BY i.idx
  $sql$
  USING p_run_id, p_cycle_id, p_instance, p_ttl, p_items, p_agents, p_bounds, p_verdicts,
        p_reasons, p_backoff, p_backoff_max, locked, held, held_attempts, held_due;
END
$$;

-- As 0006, passing the item through.
CREATE FUNCTION warp.claim_dispatches(
  p_run_id bigint, p_cycle_id text, p_instance text, p_ttl interval,
  p_items bigint[], p_agents bigint[], p_bounds integer[], p_verdicts text[], p_reasons text[],
  p_backoff interval, p_backoff_max interval, p_channels text[])
RETURNS TABLE (idx integer, recorded boolean, decision text, reason text, attempt integer,
               at timestamptz, lease_id bigint, fencing_token bigint, expires_at timestamptz,
               item warp.work_items)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  r record;
  notify_leases bigint[] := '{}';
  notify_channels text[] := '{}';
BEGIN
  FOR r IN SELECT c.* FROM warp.claim_dispatches(p_run_id, p_cycle_id, p_instance, p_ttl,
                                                 p_items, p_agents, p_bounds, p_verdicts,
                                                 p_reasons, p_backoff, p_backoff_max) c
  LOOP
    idx := r.idx;
    recorded := r.recorded;
    decision := r.decision;
    reason := r.reason;
    attempt := r.attempt;
    at := r.at;
    lease_id := r.lease_id;
    fencing_token := r.fencing_token;
    expires_at := r.expires_at;
    item := r.item;
    RETURN NEXT;
    IF r.recorded AND r.decision = 'dispatched' AND coalesce(p_channels[r.idx], '') <> '' THEN
      notify_leases := notify_leases || r.lease_id;
      notify_channels := notify_channels || p_channels[r.idx];
    END IF;
  END LOOP;
  -- In this transaction: sent at its commit, never if it rolls back.
  PERFORM pg_notify(n.channel, warp.dispatch_notice(n.lease, p_cycle_id))
     FROM unnest(notify_leases, notify_channels) WITH ORDINALITY AS n(lease, channel, ord)
    ORDER BY n.ord;
END
$$;
