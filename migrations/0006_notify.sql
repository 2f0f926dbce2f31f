-- The notify runner (SPEC section 6): pg_notify(channel, dispatch notice) in the transaction
-- that records the dispatch, so that an agent is notified if and only if its dispatch is
-- recorded (a claim that rolls back sends nothing: PostgreSQL delivers notifications at
-- commit). Called by store/postgres/postgres_store.cpp (ClaimDispatches).
--
-- The notice is a JSON object: work_id, kind, payload, agent, lease_id, fencing_token,
-- cycle_id, lease_expires_at (RFC 3339, UTC, milliseconds; database time) and `complete`, how
-- to report the outcome (warp.complete_work(lease_id, fencing_token, outcome, detail)).
-- PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; a notice that would reach that
-- carries "truncated": true and the ids only (no kind, no payload): the agent reads them from
-- warp.work_items by work_id.

-- The notice of the dispatch under `p_lease_id` (NULL for an unknown lease).
CREATE FUNCTION warp.dispatch_notice(p_lease_id bigint, p_cycle_id text) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN octet_length(n.full_notice) < 8000 THEN n.full_notice ELSE n.ids_notice END
    FROM (SELECT (d.ids || jsonb_build_object('kind', w.kind, 'payload', w.payload))::text
                   AS full_notice,
                 (d.ids || jsonb_build_object('truncated', true))::text AS ids_notice
            FROM warp.agent_leases l
            JOIN warp.work_items w ON w.work_item_id = l.work_item_id
            JOIN warp.agents a ON a.agent_id = l.agent_id
            CROSS JOIN LATERAL (
              SELECT jsonb_build_object(
                       'work_id', w.work_item_id,
                       'agent', a.agent_slug,
                       'lease_id', l.lease_id,
                       'fencing_token', l.fencing_token,
                       'cycle_id', p_cycle_id,
                       'lease_expires_at',
                         to_char(l.expires_at AT TIME ZONE 'UTC',
                                 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                       'complete', jsonb_build_object(
                         'outcomes', jsonb_build_array('done', 'failed'),
                         'sql', format('SELECT warp.complete_work(%s, %s, ''done'', ''{}''::jsonb)',
                                       l.lease_id, l.fencing_token),
                         'warpctl', format('warpctl complete %s %s --outcome done',
                                           l.lease_id, l.fencing_token))) AS ids) d
           WHERE l.lease_id = p_lease_id) n
$$;

-- claim_dispatches (0003) plus p_channels: candidate i that is dispatched is announced with
-- pg_notify(p_channels[i], its notice) when p_channels[i] is neither NULL nor empty. Same rows
-- as the 11-argument function; notifications in candidate order.
CREATE FUNCTION warp.claim_dispatches(
  p_run_id bigint, p_cycle_id text, p_instance text, p_ttl interval,
  p_items bigint[], p_agents bigint[], p_bounds integer[], p_verdicts text[], p_reasons text[],
  p_backoff interval, p_backoff_max interval, p_channels text[])
RETURNS TABLE (idx integer, recorded boolean, decision text, reason text, attempt integer,
               at timestamptz, lease_id bigint, fencing_token bigint, expires_at timestamptz)
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
