-- Governance (issue 6): what warpctl's operator commands rely on the database to enforce or
-- compute, so that SQL written by hand gets the same answers.
--
-- Already enforced by 0001 and kept as is: a persistent agent needs a business link
-- (agents.business_link NOT NULL, CHECK btrim(business_link) <> '' on insert and update) and
-- retirement is final (agents_guard).

-- 1. A retired agent never gets a new lease. The dispatcher skips agents that are not active
-- (skipped_paused) from the rows it read at the start of the cycle; an agent retired between
-- that read and the claim would still be leased. This check closes the gap in the database:
-- one statement-level look at the inserted leases, so a claim of thousands of items pays one
-- join, not a trigger per row. It raises, so the claim (one statement) is rolled back whole;
-- the next cycle reads the agent as retired and skips it. warpctl's retire takes the agent's
-- advisory lock first, so it waits for a claim of that agent in flight to commit.
CREATE FUNCTION warp.refuse_leases_of_retired_agents() RETURNS trigger
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
  RETURN NULL;
END
$$;
CREATE TRIGGER agent_leases_not_retired AFTER INSERT ON warp.agent_leases
  REFERENCING NEW TABLE AS new_leases
  FOR EACH STATEMENT EXECUTE FUNCTION warp.refuse_leases_of_retired_agents();

-- An instant as RFC 3339 UTC with microseconds ("2024-01-15T09:00:00.000000Z"), whatever the
-- session's TimeZone: how instants appear inside JSON evidence.
CREATE FUNCTION warp.rfc3339(t timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- 2. The lease invariant of SPEC section 5 over the whole durable history (warpctl audit
-- leases). One row per violation, with its evidence:
--   bound_exceeded          at the instant a lease was acquired, more leases of its agent were
--                           live (acquired_at <= t < min(released_at, expires_at)) than the
--                           agent's bound (max_active_leases, else p_default_bound). One row
--                           per (agent, instant). The bound is today's: the history does not
--                           record earlier bounds.
--   fencing_not_increasing  a lease acquired later than another of its agent carries a token
--                           that is not greater.
--   fencing_counter_behind  a lease's token is above its agent's fencing counter, so a future
--                           lease would reuse a token.
--   unknown_agent           a lease names an agent that does not exist (no foreign key since
--                           0003).
-- The live count changes only at acquisitions and ends, so checking every acquisition instant
-- checks every instant: a sweep (+1 at acquired_at, -1 at the end; a lease ending at t no
-- longer counts at t) sums the live leases per agent in one sort of the history; the evidence
-- (the live leases themselves) is looked up for the violating instants only, through
-- agent_leases_history (agent_id, acquired_at).
CREATE FUNCTION warp.lease_invariant_violations(p_default_bound integer)
RETURNS TABLE (violation text, agent_id bigint, agent_slug text, at timestamptz, evidence jsonb)
LANGUAGE sql STABLE AS $$
  WITH leases AS MATERIALIZED (
    SELECT l.lease_id, l.agent_id, l.fencing_token, l.acquired_at,
           least(coalesce(l.released_at, 'infinity'::timestamptz), l.expires_at) AS ends_at,
           a.agent_slug, a.fencing_counter, a.agent_id IS NULL AS orphan,
           coalesce(a.max_active_leases, p_default_bound) AS bound
      FROM warp.agent_leases l LEFT JOIN warp.agents a ON a.agent_id = l.agent_id
  ), events AS (
    SELECT l.agent_id, l.acquired_at AS t, 1 AS delta FROM leases l
    UNION ALL
    SELECT l.agent_id, l.ends_at, -1 FROM leases l WHERE l.ends_at < 'infinity'
  ), instants AS (
    SELECT e.agent_id, e.t, sum(e.delta) AS delta, bool_or(e.delta = 1) AS acquisition
      FROM events e GROUP BY e.agent_id, e.t
  ), running AS (
    SELECT i.agent_id, i.t, i.acquisition,
           sum(i.delta) OVER (PARTITION BY i.agent_id ORDER BY i.t) AS live
      FROM instants i
  ), over_bound AS (
    SELECT r.agent_id, a.agent_slug, r.t, r.live,
           coalesce(a.max_active_leases, p_default_bound) AS bound
      FROM running r JOIN warp.agents a ON a.agent_id = r.agent_id
     WHERE r.acquisition AND r.live > coalesce(a.max_active_leases, p_default_bound)
  ), ordered AS (
    SELECT l.*, lag(l.lease_id) OVER w AS prev_lease, lag(l.fencing_token) OVER w AS prev_token,
           lag(l.acquired_at) OVER w AS prev_acquired
      FROM leases l
    WINDOW w AS (PARTITION BY l.agent_id ORDER BY l.acquired_at, l.fencing_token, l.lease_id)
  )
  SELECT 'bound_exceeded', b.agent_id, b.agent_slug, b.t,
         jsonb_build_object(
           'bound', b.bound, 'live', b.live,
           'leases', (SELECT jsonb_agg(jsonb_build_object(
                               'lease_id', o.lease_id, 'fencing_token', o.fencing_token,
                               'holder', o.holder_instance,
                               'acquired_at', warp.rfc3339(o.acquired_at),
                               'expires_at', warp.rfc3339(o.expires_at),
                               'released_at', warp.rfc3339(o.released_at))
                             ORDER BY o.acquired_at, o.lease_id)
                        FROM warp.agent_leases o
                       WHERE o.agent_id = b.agent_id AND o.acquired_at <= b.t
                         AND b.t < least(coalesce(o.released_at, 'infinity'::timestamptz),
                                         o.expires_at)))
    FROM over_bound b
  UNION ALL
  SELECT 'fencing_not_increasing', d.agent_id, d.agent_slug, d.acquired_at,
         jsonb_build_object('lease_id', d.lease_id, 'fencing_token', d.fencing_token,
                            'previous_lease_id', d.prev_lease,
                            'previous_fencing_token', d.prev_token,
                            'previous_acquired_at', warp.rfc3339(d.prev_acquired))
    FROM ordered d
   WHERE d.prev_token IS NOT NULL AND d.fencing_token <= d.prev_token
  UNION ALL
  SELECT 'fencing_counter_behind', l.agent_id, l.agent_slug, l.acquired_at,
         jsonb_build_object('lease_id', l.lease_id, 'fencing_token', l.fencing_token,
                            'fencing_counter', l.fencing_counter)
    FROM leases l
   WHERE NOT l.orphan AND l.fencing_token > l.fencing_counter
  UNION ALL
  SELECT 'unknown_agent', l.agent_id, NULL, l.acquired_at,
         jsonb_build_object('lease_id', l.lease_id, 'fencing_token', l.fencing_token)
    FROM leases l
   WHERE l.orphan
  ORDER BY 4, 1, 2
$$;
