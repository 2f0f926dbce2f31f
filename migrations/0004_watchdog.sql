-- The watchdog (SPEC section 7): indexes that keep a pass's one scan proportional to the
-- anomalies it finds rather than to the tables, a durable record of refused completions
-- (late_completion), the scan (warp.watchdog_facts) and the serialized apply of a pass's
-- observations (warp.apply_observations). Both are read and written by
-- store/postgres/postgres_watchdog.cpp.

-- Running runs (cycle_abandoned, cycle_overrun): a handful among every run ever recorded.
CREATE INDEX scheduler_runs_running ON warp.scheduler_runs (run_id) WHERE status = 'running';

-- Agents with failing work (dispatch_failure_streak candidates), read by a skip scan. Only
-- failing rows enter it: the dispatch and completion of healthy work never touch it.
CREATE INDEX work_items_failing ON warp.work_items (agent_id) WHERE state IN ('failed', 'dead');

-- Completions accepted after expiry (late_completion); rare, so the index stays tiny.
CREATE INDEX agent_leases_late ON warp.agent_leases (released_at)
  WHERE release_reason = 'completed_late';

-- Refused completions and other audit events by type and time (late_completion).
CREATE INDEX audit_events_type_at ON warp.audit_events (event_type, at);

-- Distinct tool profiles named by agents that are not retired (agent_tool_profile_missing),
-- read by a skip scan: a few probes per profile instead of a pass over every agent.
CREATE INDEX agents_tool_profile ON warp.agents (tool_profile_id) WHERE lifecycle <> 'retired';

CREATE INDEX workspaces_retention ON warp.workspaces (retain_until)
  WHERE lifecycle <> 'deleted' AND retain_until IS NOT NULL;

CREATE INDEX learning_proposals_pending ON warp.learning_proposals (created_at)
  WHERE review_status IN ('proposed', 'in_review');

-- An observation's history by key (was it resolved after a pass's judgment? warpctl).
CREATE INDEX watchdog_observations_history
  ON warp.watchdog_observations (kind, subject, resolved_at);

-- Records refused completions (verdict unknown_lease, released or overtaken) as audit events
-- `completion_refused`, subject `lease:<id>`: a refusal changes no row, so without this a
-- stale holder's completion would leave no trace for late_completion. Accepted ones are
-- skipped. Inputs are parallel arrays, as finish_work_batch's. The actor is p_actor, else the
-- session's application_name (warpd sets `warpd/<instance>`), else the session user.
CREATE FUNCTION warp.record_completion_refusals(p_lease_ids bigint[], p_tokens bigint[],
                                                p_verdicts text[], p_actor text)
RETURNS integer
LANGUAGE sql AS $$
  WITH recorded AS (
    INSERT INTO warp.audit_events (at, actor, event_type, subject, detail)
    SELECT warp.now(),
           coalesce(nullif(p_actor, ''), nullif(current_setting('application_name', true), ''),
                    session_user),
           'completion_refused',
           'lease:' || u.lease_id,
           jsonb_build_object('lease_id', u.lease_id, 'fencing_token', u.token,
                              'verdict', u.verdict, 'agent_id', l.agent_id,
                              'work_item_id', l.work_item_id)
      FROM unnest(p_lease_ids, p_tokens, p_verdicts) AS u(lease_id, token, verdict)
      LEFT JOIN warp.agent_leases l ON l.lease_id = u.lease_id
     WHERE u.verdict NOT IN ('accepted', 'accepted_late')
    RETURNING 1)
  SELECT count(*)::integer FROM recorded
$$;
REVOKE ALL ON FUNCTION warp.record_completion_refusals(bigint[], bigint[], text[], text)
  FROM PUBLIC;

-- What agents call, as in 0001, now also recording a refusal. Same signature and verdicts;
-- still SECURITY DEFINER so that an agent's role needs EXECUTE on this function only.
CREATE OR REPLACE FUNCTION warp.complete_work(p_lease_id bigint, p_fencing_token bigint,
                                              p_outcome text, p_detail jsonb DEFAULT '{}')
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = warp, pg_catalog, pg_temp AS $$
DECLARE
  v text;
BEGIN
  SELECT f.verdict INTO v
    FROM warp.finish_work(p_lease_id, p_fencing_token, p_outcome,
                          CASE WHEN p_detail IS NULL OR p_detail = '{}'::jsonb
                               THEN '' ELSE p_detail::text END,
                          false, true) AS f;
  PERFORM warp.record_completion_refusals(ARRAY[p_lease_id], ARRAY[p_fencing_token], ARRAY[v],
                                          session_user);
  RETURN v;
END
$$;
REVOKE ALL ON FUNCTION warp.complete_work(bigint, bigint, text, jsonb) FROM PUBLIC;

-- One watchdog pass's observations (Store::ApplyObservations), atomically and serialized with
-- the passes of other instances by a transaction-scoped advisory lock; the unique index
-- watchdog_observations_open is the last line of defence. Desired observation i is
-- (p_kinds[i], p_subjects[i], p_agent_ids[i], p_severities[i], p_evidence[i]); scope j is
-- (p_scope_kinds[j], p_scope_subjects[j]), a NULL subject covering every subject of the kind.
-- For each key: desired and open -> persisted or escalated (severity only rises); desired and
-- not open -> opened; open, in a scope and not desired -> resolved. A pass judged at p_at never
-- overrides a newer one: rows last seen after p_at are left alone, keys resolved after p_at are
-- not reopened. Returns one row per change, ordered by kind and subject.
CREATE FUNCTION warp.apply_observations(
  p_at timestamptz, p_scope_kinds text[], p_scope_subjects text[],
  p_kinds text[], p_subjects text[], p_agent_ids bigint[], p_severities text[], p_evidence text[])
RETURNS TABLE (change text, previous_severity text, observation_id bigint, kind text,
               subject text, agent_id bigint, severity text, evidence jsonb,
               first_seen timestamptz, last_seen timestamptz, occurrences integer,
               resolved_at timestamptz)
LANGUAGE plpgsql SET jit = off AS $$
#variable_conflict use_column
DECLARE
  bad record;
BEGIN
  -- Every statement below takes its snapshot after this lock: it sees the rows of every pass
  -- that committed before.
  PERFORM pg_advisory_xact_lock(hashtextextended('warp.watchdog.apply', 0));

  SELECT d.kind, d.subject INTO bad
    FROM unnest(p_kinds, p_subjects) AS d(kind, subject)
   WHERE NOT EXISTS (SELECT 1 FROM unnest(p_scope_kinds, p_scope_subjects) AS s(kind, subject)
                      WHERE s.kind = d.kind AND (s.subject IS NULL OR s.subject = d.subject))
   LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'observation % % is outside the pass''s scopes', bad.kind, bad.subject
      USING ERRCODE = '22023';
  END IF;
  SELECT d.kind, d.subject INTO bad
    FROM unnest(p_kinds, p_subjects) AS d(kind, subject)
   GROUP BY d.kind, d.subject HAVING count(*) > 1
   LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'observation % % appears twice', bad.kind, bad.subject
      USING ERRCODE = '22023';
  END IF;

  -- Dynamic, so that it is planned with the arrays at hand (see claim_dispatches in 0002).
  RETURN QUERY EXECUTE $sql$
  WITH desired AS MATERIALIZED (
    SELECT d.kind, d.subject, d.agent_id, d.severity, d.evidence::jsonb AS evidence,
           array_position(ARRAY['info', 'warning', 'critical'], d.severity) AS rank
      FROM unnest($4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[])
           AS d(kind, subject, agent_id, severity, evidence)
  ), open AS MATERIALIZED (
    -- The open rows of the scopes' kinds (index watchdog_observations_open).
    SELECT o.observation_id, o.kind, o.subject, o.severity, o.last_seen
      FROM warp.watchdog_observations o
     WHERE o.resolved_at IS NULL AND o.kind = ANY ($2::text[])
  ), plan AS MATERIALIZED (
    -- Every key of either side once. A full join is hashed or merged: linear whatever the
    -- planner guesses about the sizes (a nested NOT EXISTS was quadratic at 50,000 keys).
    SELECT coalesce(d.kind, o.kind) AS kind, coalesce(d.subject, o.subject) AS subject,
           d.kind IS NOT NULL AS wanted, d.agent_id, d.severity, d.evidence, d.rank,
           o.observation_id, o.severity AS old_severity, o.last_seen
      FROM desired d FULL JOIN open o ON o.kind = d.kind AND o.subject = d.subject
  ), resolved AS (
    UPDATE warp.watchdog_observations w SET resolved_at = $1
      FROM plan p
     WHERE w.observation_id = p.observation_id AND NOT p.wanted AND p.last_seen <= $1
       AND EXISTS (SELECT 1 FROM unnest($2::text[], $3::text[]) AS s(kind, subject)
                    WHERE s.kind = p.kind AND (s.subject IS NULL OR s.subject = p.subject))
    RETURNING 'resolved'::text AS change, NULL::text AS previous_severity, w.*
  ), updated AS (
    UPDATE warp.watchdog_observations w
       SET last_seen = $1, occurrences = w.occurrences + 1, evidence = p.evidence,
           agent_id = coalesce(p.agent_id, w.agent_id),
           severity = CASE WHEN p.rank > array_position(ARRAY['info', 'warning', 'critical'],
                                                        p.old_severity)
                           THEN p.severity ELSE p.old_severity END
      FROM plan p
     WHERE w.observation_id = p.observation_id AND p.wanted AND p.last_seen <= $1
    RETURNING CASE WHEN w.severity <> p.old_severity THEN 'escalated' ELSE 'persisted' END,
              CASE WHEN w.severity <> p.old_severity THEN p.old_severity END, w.*
  ), opened AS (
    INSERT INTO warp.watchdog_observations AS w (kind, subject, agent_id, severity, evidence,
                                                 first_seen, last_seen)
    SELECT p.kind, p.subject, p.agent_id, p.severity, p.evidence, $1, $1
      FROM plan p
     WHERE p.wanted AND p.observation_id IS NULL
       AND NOT EXISTS (SELECT 1 FROM warp.watchdog_observations r
                        WHERE r.kind = p.kind AND r.subject = p.subject AND r.resolved_at > $1)
    ON CONFLICT (kind, subject) WHERE resolved_at IS NULL DO NOTHING
    RETURNING 'opened'::text, NULL::text, w.*
  )
  SELECT c.* FROM (SELECT * FROM resolved UNION ALL SELECT * FROM updated
                   UNION ALL SELECT * FROM opened) c
   ORDER BY c.kind, c.subject
  $sql$
  USING p_at, p_scope_kinds, p_scope_subjects, p_kinds, p_subjects, p_agent_ids, p_severities,
        p_evidence;
END
$$;
REVOKE ALL ON FUNCTION warp.apply_observations(timestamptz, text[], text[], text[], text[],
                                               bigint[], text[], text[]) FROM PUBLIC;

-- Microseconds since the epoch: how instants travel to the store (exact both ways).
CREATE FUNCTION warp.epoch_us(t timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
  SELECT (extract(epoch FROM t) * 1000000)::bigint
$$;

-- The candidate facts of one watchdog pass (Store::ScanWatchdogFacts), in ONE statement: each
-- store-backed rule is a branch of a UNION ALL yielding (rule, fact as JSON), gated by p_rules
-- (a branch of a rule not asked for is a false one-time filter and reads nothing). Each branch
-- starts from an index that holds the anomalies rather than the table, so a pass over a healthy
-- store of 100,000 agents and leases costs a few index probes:
--   lease_expired_unreleased  agent_leases_unreleased_expiry (0003)
--   agent_unresponsive ...... the unreleased leases: in-flight work, bounded by max_inflight
--   cycle_* ................. scheduler_runs_running; per group, scheduler_runs_recent
--   work_backlog_age ........ work_items_due, one range scan per distinct priority (skip scan)
--   dispatch_failure_streak . candidates from work_items_failing (skip scan over agents), the
--                             expired leases and the open streak observations; then at most
--                             2 x p_failure_streak leases each (agent_leases_history)
--   late_completion ......... agent_leases_late, audit_events_type_at
--   agent_tool_profile_missing  agents_tool_profile (skip scan over the distinct profile ids)
-- Agents are looked up by key per fact row. Its rows also include ('now', now_us): the instant
-- the facts are true at. JIT is off: the planner's guesses for the recursive parts are large
-- enough to trigger a compilation that costs seconds, for a query that runs in milliseconds.
CREATE FUNCTION warp.watchdog_facts(p_rules text[], p_backlog_age interval,
                                    p_failure_streak integer, p_unresponsive_after interval,
                                    p_review_stale_after interval, p_recent interval)
RETURNS TABLE (rule text, fact json)
LANGUAGE sql STABLE SET jit = off AS $$
  WITH RECURSIVE
  -- The expired unreleased leases: holders that vanished, whether or not overtaken since.
  expired AS MATERIALIZED (
    SELECT l.lease_id, l.agent_id, l.work_item_id, l.fencing_token, l.holder_instance,
           l.holder_run_id, l.acquired_at, l.renewed_at, l.expires_at
      FROM warp.agent_leases l
     WHERE l.released_at IS NULL AND l.expires_at <= warp.now()
       AND p_rules && ARRAY['lease_expired_unreleased', 'dispatch_failure_streak']
  ),
  -- Every unreleased lease (a live one may have been renewed for long).
  unreleased AS MATERIALIZED (
    SELECT l.lease_id, l.agent_id, l.acquired_at FROM warp.agent_leases l
     WHERE l.released_at IS NULL AND 'agent_unresponsive' = ANY (p_rules)
  ),
  -- Distinct agents with failed or dead work.
  failing (agent_id) AS (
    (SELECT w.agent_id FROM warp.work_items w
      WHERE w.state IN ('failed', 'dead') AND 'dispatch_failure_streak' = ANY (p_rules)
      ORDER BY w.agent_id LIMIT 1)
    UNION ALL
    SELECT (SELECT w.agent_id FROM warp.work_items w
             WHERE w.state IN ('failed', 'dead') AND w.agent_id > f.agent_id
             ORDER BY w.agent_id LIMIT 1)
      FROM failing f WHERE f.agent_id IS NOT NULL
  ),
  streak_candidates AS (
    SELECT f.agent_id FROM failing f WHERE f.agent_id IS NOT NULL
    UNION SELECT e.agent_id FROM expired e WHERE 'dispatch_failure_streak' = ANY (p_rules)
    UNION SELECT o.agent_id FROM warp.watchdog_observations o
           WHERE o.kind = 'dispatch_failure_streak' AND o.resolved_at IS NULL
             AND o.agent_id IS NOT NULL AND 'dispatch_failure_streak' = ANY (p_rules)
  ),
  -- A finished attempt (a lease released or expired) failed when its lease expired unreleased,
  -- or its item moved on to another lease (done work is never dispatched again), or its item
  -- is failed or dead. The streak is the run of failures from the most recent attempt back.
  streaks AS (
    SELECT c.agent_id, s.streak, s.lease_ids, s.last_attempt_at, s.last_error
      FROM streak_candidates c
     CROSS JOIN LATERAL (
       SELECT count(*) FILTER (WHERE x.leading) AS streak,
              array_agg(x.lease_id ORDER BY x.nth) FILTER (WHERE x.leading) AS lease_ids,
              min(x.acquired_at) FILTER (WHERE x.nth = 1 AND x.leading) AS last_attempt_at,
              min(x.last_error) FILTER (WHERE x.nth = 1 AND x.leading) AS last_error
         FROM (SELECT y.*, bool_and(y.failed) OVER (ORDER BY y.nth) AS leading
                 FROM (SELECT l.lease_id, l.acquired_at, w.last_error,
                              row_number() OVER (ORDER BY l.acquired_at DESC, l.lease_id DESC)
                                AS nth,
                              (l.released_at IS NULL
                               OR (w.work_item_id IS NOT NULL
                                   AND (w.lease_id IS DISTINCT FROM l.lease_id
                                        OR w.state IN ('failed', 'dead')))) AS failed
                         FROM (SELECT l0.* FROM warp.agent_leases l0
                                WHERE l0.agent_id = c.agent_id
                                  AND (l0.released_at IS NOT NULL
                                       OR l0.expires_at <= warp.now())
                                ORDER BY l0.acquired_at DESC, l0.lease_id DESC
                                LIMIT 2 * p_failure_streak) l
                         LEFT JOIN warp.work_items w ON w.work_item_id = l.work_item_id) y) x
     ) s
     WHERE s.streak >= p_failure_streak
  ),
  -- Distinct priorities of pending or failed work.
  priorities (priority) AS (
    (SELECT w.priority FROM warp.work_items w
      WHERE w.state IN ('pending', 'failed') AND 'work_backlog_age' = ANY (p_rules)
      ORDER BY w.priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT w.priority FROM warp.work_items w
             WHERE w.state IN ('pending', 'failed') AND w.priority < p.priority
             ORDER BY w.priority DESC LIMIT 1)
      FROM priorities p WHERE p.priority IS NOT NULL
  ),
  backlog AS (
    SELECT b.* FROM (
      SELECT w.agent_id, w.work_item_id, w.kind, w.due_at,
             count(*) OVER (PARTITION BY w.agent_id) AS old_items,
             row_number() OVER (PARTITION BY w.agent_id ORDER BY w.due_at, w.work_item_id)
               AS nth
        FROM priorities p
       CROSS JOIN LATERAL (
         SELECT w0.* FROM warp.work_items w0
          WHERE w0.priority = p.priority AND w0.state IN ('pending', 'failed')
            AND w0.due_at <= warp.now() - p_backlog_age
         OFFSET 0) w
       WHERE p.priority IS NOT NULL) b
     WHERE b.nth = 1
  ),
  -- Distinct tool profiles named by agents that are not retired.
  named_profiles (id) AS (
    (SELECT a.tool_profile_id FROM warp.agents a
      WHERE a.lifecycle <> 'retired' AND 'agent_tool_profile_missing' = ANY (p_rules)
      ORDER BY a.tool_profile_id LIMIT 1)
    UNION ALL
    SELECT (SELECT a.tool_profile_id FROM warp.agents a
             WHERE a.lifecycle <> 'retired' AND a.tool_profile_id > n.id
             ORDER BY a.tool_profile_id LIMIT 1)
      FROM named_profiles n WHERE n.id IS NOT NULL
  )
  SELECT 'now', json_build_object('now_us', warp.epoch_us(warp.now()))

  UNION ALL
  SELECT 'lease_expired_unreleased', json_build_object(
           'lease_id', e.lease_id, 'agent_id', e.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = e.agent_id),
           'work_item_id', e.work_item_id, 'fencing_token', e.fencing_token,
           'holder_instance', e.holder_instance, 'holder_run_id', e.holder_run_id,
           'acquired_us', warp.epoch_us(e.acquired_at),
           'renewed_us', warp.epoch_us(e.renewed_at),
           'expires_us', warp.epoch_us(e.expires_at))
    FROM expired e
   WHERE 'lease_expired_unreleased' = ANY (p_rules)
     AND NOT EXISTS (SELECT 1 FROM warp.agent_leases o
                      WHERE o.agent_id = e.agent_id AND o.acquired_at >= e.expires_at)

  UNION ALL
  SELECT 'running_run', json_build_object(
           'run_id', r.run_id, 'cycle_id', r.cycle_id, 'group', r."group",
           'instance', r.instance, 'started_us', warp.epoch_us(r.started_at),
           'heartbeat_us', warp.epoch_us(r.heartbeat_at))
    FROM warp.scheduler_runs r
   WHERE r.status = 'running' AND p_rules && ARRAY['cycle_abandoned', 'cycle_overrun']

  UNION ALL
  SELECT 'cycle_missed', json_build_object(
           'group', g.grp, 'first_started_us', warp.epoch_us(g.first_started),
           'last_run_id', c.run_id, 'last_cycle_id', c.cycle_id, 'last_instance', c.instance,
           'last_started_us', warp.epoch_us(c.started_at),
           'last_finished_us', warp.epoch_us(c.finished_at),
           'latest_cycle_id', lt.cycle_id)
    FROM (SELECT i."group" AS grp, min(i.started_at) AS first_started
            FROM warp.scheduler_instances i
           WHERE 'cycle_missed' = ANY (p_rules)
           GROUP BY i."group") g
    LEFT JOIN LATERAL (
      SELECT r.run_id, r.cycle_id, r.instance, r.started_at, r.finished_at
        FROM warp.scheduler_runs r
       WHERE r."group" = g.grp AND r.status = 'completed'
       ORDER BY r.started_at DESC, r.run_id DESC LIMIT 1) c ON true
    LEFT JOIN LATERAL (
      SELECT r.cycle_id FROM warp.scheduler_runs r
       WHERE r."group" = g.grp
       ORDER BY r.started_at DESC, r.run_id DESC LIMIT 1) lt ON true

  UNION ALL
  SELECT 'work_backlog_age', json_build_object(
           'agent_id', b.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = b.agent_id),
           'lifecycle', (SELECT a.lifecycle FROM warp.agents a WHERE a.agent_id = b.agent_id),
           'work_item_id', b.work_item_id, 'kind', b.kind,
           'due_us', warp.epoch_us(b.due_at), 'old_items', b.old_items)
    FROM backlog b

  UNION ALL
  SELECT 'dispatch_failure_streak', json_build_object(
           'agent_id', s.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = s.agent_id),
           'streak', s.streak, 'lease_ids', s.lease_ids,
           'last_attempt_us', warp.epoch_us(s.last_attempt_at), 'last_error', s.last_error)
    FROM streaks s

  UNION ALL
  -- A lease unreleased since p_unresponsive_after or longer, and no lease of its agent
  -- acquired after it released: nothing handed to the agent since has come back.
  SELECT 'agent_unresponsive', json_build_object(
           'agent_id', g.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = g.agent_id),
           'first_lease_id', g.first_lease_id, 'since_us', warp.epoch_us(g.since),
           'unanswered_leases', n.n, 'last_completion_us', warp.epoch_us(lc.released_at))
    FROM (SELECT u.agent_id, min(u.acquired_at) AS since,
                 (array_agg(u.lease_id ORDER BY u.acquired_at, u.lease_id))[1] AS first_lease_id
            FROM unreleased u
           WHERE u.acquired_at <= warp.now() - p_unresponsive_after
             AND NOT EXISTS (SELECT 1 FROM warp.agent_leases r
                              WHERE r.agent_id = u.agent_id AND r.acquired_at > u.acquired_at
                                AND r.released_at IS NOT NULL)
           GROUP BY u.agent_id) g
   CROSS JOIN LATERAL (
     SELECT count(*) AS n FROM warp.agent_leases x
      WHERE x.agent_id = g.agent_id AND x.acquired_at >= g.since) n
    LEFT JOIN LATERAL (
      SELECT x.released_at FROM warp.agent_leases x
       WHERE x.agent_id = g.agent_id AND x.acquired_at < g.since AND x.released_at IS NOT NULL
       ORDER BY x.acquired_at DESC LIMIT 1) lc ON true

  UNION ALL
  SELECT 'instance_stale', json_build_object(
           'instance', i.instance, 'group', i."group", 'host', i.host, 'pid', i.pid,
           'version', i.version, 'started_us', warp.epoch_us(i.started_at),
           'heartbeat_us', warp.epoch_us(i.heartbeat_at))
    FROM warp.scheduler_instances i
   WHERE 'instance_stale' = ANY (p_rules)

  UNION ALL
  SELECT 'late_completion', json_build_object(
           'agent_id', l.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = l.agent_id),
           'lease_id', l.lease_id, 'fencing_token', l.fencing_token, 'accepted', true,
           'at_us', warp.epoch_us(l.released_at))
    FROM warp.agent_leases l
   WHERE 'late_completion' = ANY (p_rules) AND l.release_reason = 'completed_late'
     AND l.released_at > warp.now() - p_recent

  UNION ALL
  SELECT 'late_completion', json_build_object(
           'agent_id', l.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = l.agent_id),
           'lease_id', l.lease_id, 'fencing_token', (e.detail->>'fencing_token')::bigint,
           'accepted', false, 'at_us', warp.epoch_us(e.at))
    FROM warp.audit_events e
    JOIN warp.agent_leases l ON l.lease_id = (e.detail->>'lease_id')::bigint
   WHERE 'late_completion' = ANY (p_rules) AND e.event_type = 'completion_refused'
     AND e.at > warp.now() - p_recent AND e.detail->>'verdict' = 'overtaken'

  UNION ALL
  SELECT 'workspace_retention_overdue', json_build_object(
           'workspace_id', w.workspace_id, 'path', w.path, 'agent_id', w.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = w.agent_id),
           'lifecycle', w.lifecycle, 'retention_policy', w.retention_policy,
           'retain_until_us', warp.epoch_us(w.retain_until),
           'created_us', warp.epoch_us(w.created_at))
    FROM warp.workspaces w
   WHERE 'workspace_retention_overdue' = ANY (p_rules) AND w.lifecycle <> 'deleted'
     AND w.retain_until <= warp.now()

  UNION ALL
  SELECT 'learning_proposal_review_stale', json_build_object(
           'proposal_id', p.proposal_id, 'agent_id', p.agent_id,
           'agent_slug', (SELECT a.agent_slug FROM warp.agents a WHERE a.agent_id = p.agent_id),
           'title', p.title, 'review_status', p.review_status,
           'created_us', warp.epoch_us(p.created_at))
    FROM warp.learning_proposals p
   WHERE 'learning_proposal_review_stale' = ANY (p_rules)
     AND p.review_status IN ('proposed', 'in_review')
     AND p.created_at <= warp.now() - p_review_stale_after

  UNION ALL
  SELECT 'agent_tool_profile_missing', json_build_object(
           'agent_id', a.agent_id, 'agent_slug', a.agent_slug,
           'tool_profile_id', a.tool_profile_id, 'lifecycle', a.lifecycle)
    FROM named_profiles n
   CROSS JOIN LATERAL (
     SELECT a0.agent_id, a0.agent_slug, a0.tool_profile_id, a0.lifecycle
       FROM warp.agents a0
      WHERE a0.tool_profile_id = n.id AND a0.lifecycle <> 'retired'
     OFFSET 0) a
   WHERE n.id IS NOT NULL
     AND NOT EXISTS (SELECT 1 FROM warp.tool_profiles t WHERE t.tool_profile_id = n.id)
$$;
REVOKE ALL ON FUNCTION warp.watchdog_facts(text[], interval, integer, interval, interval,
                                           interval) FROM PUBLIC;
