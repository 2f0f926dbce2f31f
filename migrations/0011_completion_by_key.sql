-- 0011: a completion batch reads the leases it names, not every lease there is.
--
-- warp.finish_work_batch (0007) joined its batch to warp.agent_leases twice: to find the
-- expired leases whose agents it must lock, and to judge each completion. Both joins were left
-- to the planner, which hashed the whole table for a batch of a few thousand: every
-- completion call read every lease ever granted. Over a 200,000-item benchmark run that made
-- completion 50 µs per item where a batch on an empty history takes 17 (docs/BENCHMARKS.md),
-- and it grows without bound with the history. Now each lease is looked up by key (LATERAL ...
-- OFFSET 0, as in 0007's due scan), whatever the statistics say. Same signature, same results.

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
            CROSS JOIN LATERAL (SELECT l0.agent_id, l0.fencing_token, l0.released_at, l0.expires_at
                                  FROM warp.agent_leases l0 WHERE l0.lease_id = u.id OFFSET 0) l
            WHERE l.fencing_token = u.token AND l.released_at IS NULL AND l.expires_at <= t
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
      FROM input i
      LEFT JOIN LATERAL (SELECT l0.lease_id, l0.fencing_token, l0.released_at, l0.expires_at,
                                l0.work_item_id, l0.agent_id
                           FROM warp.agent_leases l0 WHERE l0.lease_id = i.lease_id OFFSET 0) l
        ON true
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
