-- 0009: one running cycle per group at a time.
--
-- A cycle claims its work in two steps: it selects due items, then leases them chunk by chunk
-- over the following seconds. Cycles of one group used to run side by side whenever one took
-- longer than the interval: another instance claimed the next slot and selected the same due
-- items, which the first had selected but not leased yet. The two then raced for the same rows
-- and agents; the loser's selection and claims were work thrown away. With 4 instances and
-- 40,000-item cycles the cycles selected 3.5 items for every item dispatched
-- (docs/BENCHMARKS.md). Selecting and leasing are database work, so cycles side by side never
-- added throughput: the dispatched work itself still runs on every instance.
--
-- Now a claim is skipped, with the outcome 'group_busy', while another cycle of the same group
-- is running under a live owner (its heartbeat younger than p_takeover_after, the same test as
-- 'running_elsewhere'). A run that stopped heartbeating stops blocking the group after
-- p_takeover_after; a frozen instance cannot hold the group up for longer. The running runs
-- are found through scheduler_runs_running (0004), a partial index of the few running ones.

-- Claim a cycle (SPEC section 4): skip it when completed or running under a live owner, or
-- while another cycle of the group runs under a live owner; mark a running run of this cycle
-- whose heartbeat is older than p_takeover_after abandoned and take it over.
-- Outcomes: claimed, took_over, already_completed, running_elsewhere, group_busy; for the
-- skips, the run returned is the one in the way, and its cycle_id says which cycle that is (a
-- new column, hence DROP and CREATE: a function's result type cannot be replaced).
DROP FUNCTION warp.claim_cycle(text, text, text, interval);
CREATE FUNCTION warp.claim_cycle(p_cycle_id text, p_group text, p_instance text,
                                 p_takeover_after interval)
RETURNS TABLE (outcome text, run_id bigint, cycle_id text, instance text, status text,
               started_at timestamptz, heartbeat_at timestamptz, abandoned_run_id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  t timestamptz;
  r warp.scheduler_runs;
  abandoned bigint;
  new_id bigint;
BEGIN
  -- Claimers of one group queue here: the check for a running cycle and the insert of a new
  -- one are one step for the whole group.
  PERFORM pg_advisory_xact_lock(hashtextextended('warp.cycle-group:' || p_group, 0));
  -- After the lock: a run another claimer started while we waited counts as live.
  t := warp.clock_now();
  SELECT * INTO r FROM warp.scheduler_runs s
   WHERE s.cycle_id = p_cycle_id AND s.status IN ('running', 'completed');
  IF FOUND THEN
    IF r.status = 'completed' THEN
      RETURN QUERY SELECT 'already_completed'::text, r.run_id, r.cycle_id, r.instance, r.status,
                          r.started_at, r.heartbeat_at, NULL::bigint;
      RETURN;
    END IF;
    IF r.heartbeat_at + p_takeover_after >= t THEN
      RETURN QUERY SELECT 'running_elsewhere'::text, r.run_id, r.cycle_id, r.instance, r.status,
                          r.started_at, r.heartbeat_at, NULL::bigint;
      RETURN;
    END IF;
  END IF;
  SELECT * INTO r FROM warp.scheduler_runs s
   WHERE s."group" = p_group AND s.status = 'running' AND s.cycle_id <> p_cycle_id
     AND s.heartbeat_at + p_takeover_after >= t
   ORDER BY s.started_at DESC, s.run_id DESC LIMIT 1;
  IF FOUND THEN
    RETURN QUERY SELECT 'group_busy'::text, r.run_id, r.cycle_id, r.instance, r.status,
                        r.started_at, r.heartbeat_at, NULL::bigint;
    RETURN;
  END IF;
  UPDATE warp.scheduler_runs s
     SET status = 'abandoned', finished_at = t,
         error = format('heartbeat older than takeover_after; taken over by %s', p_instance)
   WHERE s.cycle_id = p_cycle_id AND s.status = 'running'
  RETURNING s.run_id INTO abandoned;
  INSERT INTO warp.scheduler_runs (cycle_id, "group", instance, status, started_at, heartbeat_at)
  VALUES (p_cycle_id, p_group, p_instance, 'running', t, t)
  RETURNING scheduler_runs.run_id INTO new_id;
  RETURN QUERY SELECT CASE WHEN abandoned IS NULL THEN 'claimed' ELSE 'took_over' END,
                      new_id, p_cycle_id, p_instance, 'running'::text, t, t, abandoned;
END
$$;
