-- 0010: the due scan reads 4 times its limit only when it has to.
--
-- warp.select_due_work (0007) takes at most p_limit due items, and of one agent only the room
-- left under its bound (at least one). To fill p_limit when agents at their bound give up
-- their place, it looked at the first p_limit * p_factor queued items, numbered them per agent
-- (a sort of all of them) and probed the room of every agent among them: with a limit of
-- 40,000, 160,000 rows for 40,000 taken, about 22 µs per item taken (docs/BENCHMARKS.md).
--
-- Now a first pass looks at the first p_limit items only. When the room of their agents lets
-- all of them through, they are the answer the wide scan would have given: an item's number
-- among its agent's items depends only on the items before it. Otherwise, and when more items
-- are queued, a second pass looks at p_limit * p_factor, as before.
--
-- Bitmap scans are off too: on a queue without statistics (never analyzed) the planner chose a
-- bitmap scan of every queued item and a sort over them, instead of reading the due-order
-- index up to the limit (tests/dispatch_sql_pg_test.cpp, TheDueScanReadsOnlyItsLimit...).

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
    scan := p_limit * p_factor;
  END LOOP;
  RETURN QUERY
  SELECT w.*
    FROM unnest(ids) WITH ORDINALITY AS c(work_item_id, ord)
   CROSS JOIN LATERAL (SELECT w0.* FROM warp.work_items w0
                        WHERE w0.work_item_id = c.work_item_id OFFSET 0) w
   ORDER BY c.ord;
END
$$;
