-- 0012: the due scan tries a middle window before the wide one.
--
-- warp.select_due_work (0010) looks at the first p_limit queued items, and at p_limit *
-- p_factor when agents at their bound leave that short. Under steady load it is short by a
-- little in nearly every cycle: the agents of the previous cycle's last dispatches, still in
-- flight, have room for fewer items than they have among the first p_limit. The benchmark's
-- cycles (docs/BENCHMARKS.md) then took 37,500 items of 37,500 + 150,000 looked at, 280 ms,
-- while nothing else of the cycle can start.
--
-- Now a second pass looks at a quarter more than the first (or twice the shortfall, if that is
-- more), and only a third looks at p_limit * p_factor. Each pass returns what the wide one
-- would have when it fills p_limit, for the reason 0010 gives: an item's number among its
-- agent's items depends only on the items before it.

CREATE OR REPLACE FUNCTION warp.select_due_work(p_limit integer, p_default_bound integer,
                                                p_factor integer)
RETURNS SETOF warp.work_items
LANGUAGE plpgsql STABLE
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_nestloop = off
SET enable_mergejoin = off SET jit = off
AS $$
DECLARE
  t timestamptz := warp.now();
  scan integer := p_limit;
  ids bigint[];
  scanned integer;
  passes integer := 1;
BEGIN
  LOOP
    WITH due AS MATERIALIZED (
      SELECT q.work_item_id, q.agent_id, q.priority, q.due_at,
             row_number() OVER (PARTITION BY q.agent_id
                                ORDER BY q.priority DESC, q.due_at, q.work_item_id) AS nth
        FROM (SELECT q0.work_item_id, q0.agent_id, q0.priority, q0.due_at
                FROM warp.work_queue q0
               WHERE q0.state IN ('pending', 'failed') AND q0.due_at <= t
               ORDER BY q0.priority DESC, q0.due_at, q0.work_item_id
               LIMIT scan) q
    ), room AS MATERIALIZED (
      SELECT d.agent_id, greatest(1, coalesce(a.max_active_leases, p_default_bound) - b.n) AS n
        FROM (SELECT DISTINCT due.agent_id FROM due) d
       CROSS JOIN LATERAL (SELECT a0.max_active_leases FROM warp.agents a0
                            WHERE a0.agent_id = d.agent_id OFFSET 0) a
       CROSS JOIN LATERAL (SELECT count(*) AS n FROM warp.open_leases o
                            WHERE o.agent_id = d.agent_id AND o.expires_at > t) b
    ), chosen AS MATERIALIZED (
      SELECT due.work_item_id, due.priority, due.due_at
        FROM due JOIN room ON room.agent_id = due.agent_id
       WHERE due.nth <= room.n
       ORDER BY due.priority DESC, due.due_at, due.work_item_id
       LIMIT p_limit
    )
    SELECT coalesce((SELECT array_agg(c.work_item_id
                                      ORDER BY c.priority DESC, c.due_at, c.work_item_id)
                       FROM chosen c), '{}'),
           (SELECT count(*) FROM due)
      INTO ids, scanned;
    -- Full, or nothing more is queued, or this was the wide pass already.
    EXIT WHEN cardinality(ids) >= p_limit OR scanned < scan OR scan >= p_limit * p_factor;
    passes := passes + 1;
    -- The middle pass: a quarter more, or twice the shortfall if that is more. Then the wide.
    scan := CASE WHEN passes = 2
                 THEN least(p_limit * p_factor,
                            scan + greatest(p_limit / 4, 2 * (p_limit - cardinality(ids))))
                 ELSE p_limit * p_factor END;
  END LOOP;
  RETURN QUERY
  SELECT w.*
    FROM unnest(ids) WITH ORDINALITY AS c(work_item_id, ord)
   CROSS JOIN LATERAL (SELECT w0.* FROM warp.work_items w0
                        WHERE w0.work_item_id = c.work_item_id OFFSET 0) w
   ORDER BY c.ord;
END
$$;
