-- (Re-)seeds the benchmark data set; run by run.sh with psql variables :agents and :items.
-- Empties every table the dispatch path writes, then creates :agents active agents, one
-- scheduler run (the run_id the dispatch decisions reference), a history of one completed item
-- per agent (kind 'bench-history') and :items work items (kind 'bench') that are all due,
-- assigned round-robin over the agents (item i belongs to agent (i-1) % :agents + 1).
\set ON_ERROR_STOP on
TRUNCATE warp.dispatch_decisions, warp.agent_leases, warp.work_items, warp.scheduler_runs,
         warp.workspaces, warp.learning_proposals, warp.watchdog_observations, warp.agents,
         warp.tool_profiles
  RESTART IDENTITY CASCADE;

INSERT INTO warp.tool_profiles (tool_profile_id) VALUES ('bench');

INSERT INTO warp.agents (agent_slug, tool_profile_id, runner, business_link)
SELECT 'bench-' || g, 'bench', 'noop', 'bench://agent/' || g
  FROM generate_series(1, :agents) AS g;

INSERT INTO warp.scheduler_runs (cycle_id, "group", instance, status, started_at, heartbeat_at)
VALUES ('pgbench', 'bench', 'pgbench', 'running', warp.now(), warp.now());

-- History: one completed item per agent (lease released, decision recorded, fencing counter 1),
-- as a database in production has. Besides realism, this keeps the planner from taking
-- agent_leases for an empty table: the foreign-key checks against it are planned once per
-- session, and a plan made for an empty table scans it sequentially for the whole run.
INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts, state,
                             attempts)
SELECT g, 'bench-history', warp.now() - interval '2 hours', 'bench-history:' || g, 3, 'done', 1
  FROM generate_series(1, :agents) AS g;
INSERT INTO warp.agent_leases (agent_id, work_item_id, fencing_token, holder_instance,
                               holder_run_id, acquired_at, renewed_at, expires_at, released_at,
                               release_reason)
SELECT w.agent_id, w.work_item_id, 1, 'pgbench', r.run_id, w.due_at, w.due_at,
       w.due_at + interval '60 seconds', w.due_at + interval '1 second', 'completed'
  FROM warp.work_items w, warp.scheduler_runs r
 WHERE w.kind = 'bench-history';
UPDATE warp.agents SET fencing_counter = 1;
UPDATE warp.work_items w SET lease_id = l.lease_id
  FROM warp.agent_leases l
 WHERE l.work_item_id = w.work_item_id AND w.kind = 'bench-history';
INSERT INTO warp.dispatch_decisions (run_id, cycle_id, work_item_id, agent_id, attempt,
                                     decision, lease_id, reason, at)
SELECT l.holder_run_id, 'pgbench-history', l.work_item_id, l.agent_id, 1, 'dispatched',
       l.lease_id, '', l.acquired_at
  FROM warp.agent_leases l;

-- The due work: identities restart at 1, so agent i has agent_id i. All items share one due
-- time, so the claim order (priority DESC, due_at, work_item_id) is the insertion order.
INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts)
SELECT (g - 1) % :agents + 1, 'bench', warp.now() - interval '1 hour', 'bench:' || g, 3
  FROM generate_series(1, :items) AS g;

VACUUM (ANALYZE) warp.agents, warp.work_items, warp.agent_leases, warp.dispatch_decisions,
                 warp.scheduler_runs;
