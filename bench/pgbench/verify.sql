-- Consistency check after a run; prints one line of key=value counts (run.sh parses it).
-- run_done: items the run completed; the other counts include seed.sql's history.
-- Expected: unreleased=0 dispatched=0 done=leases=decisions, bad_items=0 (every done item's
-- lease is its own, released as completed), bad_fencing=0 (each agent's fencing counter equals
-- its number of leases and its highest token).
SELECT format('run_done=%s done=%s leases=%s decisions=%s unreleased=%s dispatched=%s pending=%s bad_items=%s bad_fencing=%s',
  (SELECT count(*) FROM warp.work_items WHERE state = 'done' AND kind = 'bench'),
  (SELECT count(*) FROM warp.work_items WHERE state = 'done'),
  (SELECT count(*) FROM warp.agent_leases),
  (SELECT count(*) FROM warp.dispatch_decisions WHERE decision = 'dispatched'),
  (SELECT count(*) FROM warp.agent_leases WHERE released_at IS NULL),
  (SELECT count(*) FROM warp.work_items WHERE state = 'dispatched'),
  (SELECT count(*) FROM warp.work_items WHERE state = 'pending'),
  (SELECT count(*)
     FROM warp.work_items w
     LEFT JOIN warp.agent_leases l ON l.lease_id = w.lease_id
     LEFT JOIN warp.dispatch_decisions d
            ON d.work_item_id = w.work_item_id AND d.lease_id = w.lease_id
    WHERE w.state = 'done'
      AND (l.lease_id IS NULL OR l.work_item_id <> w.work_item_id OR l.agent_id <> w.agent_id
           OR l.released_at IS NULL OR l.release_reason <> 'completed' OR d.work_item_id IS NULL
           OR w.attempts <> 1)),
  (SELECT count(*)
     FROM warp.agents a
     LEFT JOIN (SELECT agent_id, count(*) AS n, max(fencing_token) AS top
                  FROM warp.agent_leases GROUP BY agent_id) AS l ON l.agent_id = a.agent_id
    WHERE a.fencing_counter <> coalesce(l.n, 0) OR a.fencing_counter <> coalesce(l.top, 0)));
