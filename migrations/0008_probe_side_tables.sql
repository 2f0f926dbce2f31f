-- 0008: the side tables' triggers find the rows to delete by probing, whatever the statistics.
--
-- warp.work_queue and warp.open_leases (0007) empty and fill with every cycle, so autovacuum
-- can analyze one while it holds only dead rows. The planner then takes it for an empty table
-- (zero tuples over its pages), and 0007's "DELETE ... USING <transition table>" chose a nested
-- loop that walked the whole side table and scanned the changed rows once per side-table row:
-- releasing 5,000 leases against 5,000 open ones compared 25 million pairs and took 9.7 s, so
-- a completion batch ran past its deadline and its leases were left to expire. The plan of a
-- trigger statement is made at its first use in a session and kept until the next ANALYZE, so
-- the choice stuck for whole cycles.
--
-- Now the rows to delete are collected first, one index probe per changed row (a LATERAL
-- subquery with OFFSET 0 cannot be turned into a join the other way round), and deleted by
-- their row identifiers: there is no join left for the planner to get wrong.
-- tests/dispatch_sql_pg_test.cpp (TriggerStatementsReadWhatChanged...) reproduces the
-- statistics and counts the rows read.

CREATE OR REPLACE FUNCTION warp.work_queue_sync() RETURNS trigger
LANGUAGE plpgsql SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    DELETE FROM warp.work_queue q
     WHERE q.ctid = ANY (ARRAY(
             SELECT p.ctid
               FROM old_items o
              CROSS JOIN LATERAL (SELECT q0.ctid FROM warp.work_queue q0
                                   WHERE q0.work_item_id = o.work_item_id OFFSET 0) p
              WHERE o.state IN ('pending', 'failed', 'dead')));
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

CREATE OR REPLACE FUNCTION warp.open_leases_update() RETURNS trigger
LANGUAGE plpgsql SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
BEGIN
  DELETE FROM warp.open_leases o
   WHERE o.ctid = ANY (ARRAY(
           SELECT p.ctid
             FROM new_leases n
            CROSS JOIN LATERAL (SELECT o0.ctid FROM warp.open_leases o0
                                 WHERE o0.agent_id = n.agent_id AND o0.lease_id = n.lease_id
                                OFFSET 0) p
            WHERE n.released_at IS NOT NULL));
  INSERT INTO warp.open_leases AS o (agent_id, lease_id, work_item_id, expires_at)
  SELECT n.agent_id, n.lease_id, n.work_item_id, n.expires_at
    FROM new_leases n WHERE n.released_at IS NULL
  ON CONFLICT (agent_id, lease_id) DO UPDATE SET expires_at = excluded.expires_at
   WHERE o.expires_at IS DISTINCT FROM excluded.expires_at;
  RETURN NULL;
END
$$;
