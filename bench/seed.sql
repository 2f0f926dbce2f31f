-- The benchmark data set of bench/throughput.sh and bench/ceiling.sh, in a freshly migrated
-- database: :agents agents and :items work items due a minute ago, round-robin over the agents
-- (item n belongs to agent n mod :agents).
--   psql DSN -v agents=10000 -v items=200000 -f bench/seed.sql
\set ON_ERROR_STOP 1
INSERT INTO warp.tool_profiles (tool_profile_id, operations) VALUES ('bench', '{noop}');
INSERT INTO warp.agents (agent_slug, tool_profile_id, runner, business_link)
SELECT 'agent-' || g, 'bench', 'noop', 'spindle:bench/' || g FROM generate_series(1, :agents) g;
INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts)
SELECT a.agent_id, 'noop', now() - interval '1 minute', 'bench-' || g, 3
  FROM generate_series(0, :items - 1) g
  JOIN warp.agents a ON a.agent_slug = 'agent-' || (g % :agents + 1)
 ORDER BY g;
-- Only the seeded tables: ANALYZE of the still-empty lease and decision tables would make the
-- foreign-key checks of long-lived sessions plan sequential scans (see docs/BENCHMARKS.md).
VACUUM ANALYZE warp.agents, warp.work_items;
