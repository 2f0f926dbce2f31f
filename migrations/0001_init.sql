-- warp control plane schema, version 1 (SPEC sections 2-5, 7, 12).
-- Applied by the project's migrator inside one transaction; it creates schema `warp` and
-- warp.schema_migrations itself before running this file.

CREATE SCHEMA IF NOT EXISTS warp;

-- Database time. Every lease, expiry and cycle decision reads it, never the host clock.
-- A session may pin it with `SET warp.test_now = '2024-01-15 09:00:00+00'`: the store contract
-- tests control time that way; production sessions never set it.
CREATE FUNCTION warp.now() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
  -- pg_catalog-qualified: under `SET search_path = warp` a bare now() would be this function.
  SELECT coalesce(nullif(pg_catalog.current_setting('warp.test_now', true), '')::timestamptz,
                  pg_catalog.now())
$$;

-- The advisory lock key of an agent (pg_try_advisory_xact_lock); namespaced by a hash so it does
-- not collide with other users of advisory locks in the same database.
CREATE FUNCTION warp.agent_lock_key(p_agent_id bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
  SELECT hashtextextended('warp.agent:' || p_agent_id::text, 0)
$$;

CREATE TABLE warp.tool_profiles (
  tool_profile_id text PRIMARY KEY CHECK (tool_profile_id <> ''),
  capabilities    text[] NOT NULL DEFAULT '{}',
  operations      text[] NOT NULL DEFAULT '{}',
  system_overlays jsonb  NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(system_overlays) = 'object'),
  created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE warp.agents (
  agent_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  agent_slug        text NOT NULL UNIQUE CHECK (agent_slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
  display_name      text NOT NULL DEFAULT '',
  domain_id         text NOT NULL DEFAULT '',
  -- No foreign key: a missing profile is something the watchdog reports
  -- (agent_tool_profile_missing) and the dispatcher skips, not something that blocks writes.
  tool_profile_id   text NOT NULL,
  lifecycle         text NOT NULL DEFAULT 'active' CHECK (lifecycle IN ('active', 'paused', 'retired')),
  runner            text NOT NULL CHECK (runner <> ''),
  max_active_leases integer CHECK (max_active_leases >= 1),  -- NULL: leasing.default_max_active
  labels            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
  -- The seed's guardrail: a persistent agent record requires a Spindle business link.
  business_link     text NOT NULL CHECK (btrim(business_link) <> ''),
  fencing_counter   bigint NOT NULL DEFAULT 0 CHECK (fencing_counter >= 0),
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Retirement is final: a retired agent never becomes active or paused again.
CREATE FUNCTION warp.agents_retired_is_final() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.lifecycle = 'retired' AND NEW.lifecycle <> 'retired' THEN
    RAISE EXCEPTION 'agent % is retired for good', OLD.agent_slug USING ERRCODE = 'P0001';
  END IF;
  IF NEW.fencing_counter < OLD.fencing_counter THEN
    RAISE EXCEPTION 'fencing counter of agent % must not go back', OLD.agent_slug
      USING ERRCODE = 'P0001';
  END IF;
  NEW.updated_at := now();
  RETURN NEW;
END
$$;
CREATE TRIGGER agents_guard BEFORE UPDATE ON warp.agents
  FOR EACH ROW EXECUTE FUNCTION warp.agents_retired_is_final();

CREATE TABLE warp.workspaces (
  workspace_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  path             text NOT NULL UNIQUE CHECK (path <> ''),
  agent_id         bigint REFERENCES warp.agents,
  lifecycle        text NOT NULL DEFAULT 'active' CHECK (lifecycle IN ('active', 'archived', 'deleted')),
  retention_policy text NOT NULL DEFAULT '',
  retain_until     timestamptz,
  created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX workspaces_one_per_agent ON warp.workspaces (agent_id)
  WHERE agent_id IS NOT NULL AND lifecycle = 'active';

CREATE TABLE warp.learning_proposals (
  proposal_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  agent_id      bigint NOT NULL REFERENCES warp.agents,
  title         text NOT NULL DEFAULT '',
  review_status text NOT NULL DEFAULT 'proposed'
                CHECK (review_status IN ('proposed', 'in_review', 'approved', 'rejected')),
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  reviewed_at   timestamptz
);

CREATE TABLE warp.audit_events (
  event_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at         timestamptz NOT NULL DEFAULT now(),
  actor      text NOT NULL CHECK (actor <> ''),
  event_type text NOT NULL CHECK (event_type <> ''),
  subject    text NOT NULL,
  detail     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(detail) = 'object')
);

CREATE TABLE warp.work_items (
  work_item_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  agent_id          bigint NOT NULL REFERENCES warp.agents,
  kind              text NOT NULL CHECK (kind <> ''),
  payload           jsonb NOT NULL DEFAULT '{}'
                    CHECK (jsonb_typeof(payload) = 'object' AND octet_length(payload::text) <= 65536),
  priority          integer NOT NULL DEFAULT 0,
  due_at            timestamptz NOT NULL,
  idempotency_key   text NOT NULL UNIQUE CHECK (idempotency_key <> ''),
  attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  max_attempts      integer NOT NULL CHECK (max_attempts >= 1),
  state             text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'dispatched', 'done', 'failed', 'dead')),
  last_error        text NOT NULL DEFAULT '',
  lease_id          bigint,  -- the lease of the current or last dispatch (FK below)
  -- The retry policy of the instance that dispatched it, so warp.complete_work called by an
  -- agent applies the same backoff as the daemon would.
  retry_backoff     interval NOT NULL DEFAULT '10 seconds',
  retry_backoff_max interval NOT NULL DEFAULT '10 minutes',
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now()
);
-- A cycle's cost follows due work, not the table: only pending/failed rows are in this index.
CREATE INDEX work_items_due ON warp.work_items (priority DESC, due_at, work_item_id)
  WHERE state IN ('pending', 'failed');
CREATE INDEX work_items_dispatched ON warp.work_items (lease_id) WHERE state = 'dispatched';
CREATE INDEX work_items_agent ON warp.work_items (agent_id);

CREATE TABLE warp.scheduler_runs (
  run_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  cycle_id     text NOT NULL CHECK (cycle_id <> ''),
  "group"      text NOT NULL,
  instance     text NOT NULL,
  status       text NOT NULL DEFAULT 'running'
               CHECK (status IN ('running', 'completed', 'abandoned', 'failed')),
  started_at   timestamptz NOT NULL,
  heartbeat_at timestamptz NOT NULL,
  finished_at  timestamptz,
  counts       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(counts) = 'object'),
  error        text NOT NULL DEFAULT ''
);
-- At most one running or completed run per cycle.
CREATE UNIQUE INDEX scheduler_runs_one_live ON warp.scheduler_runs (cycle_id)
  WHERE status IN ('running', 'completed');
CREATE INDEX scheduler_runs_recent ON warp.scheduler_runs ("group", started_at DESC);

CREATE TABLE warp.agent_leases (
  lease_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  agent_id        bigint NOT NULL REFERENCES warp.agents,
  work_item_id    bigint REFERENCES warp.work_items,
  fencing_token   bigint NOT NULL CHECK (fencing_token >= 1),
  holder_instance text NOT NULL,
  holder_run_id   bigint REFERENCES warp.scheduler_runs,
  acquired_at     timestamptz NOT NULL,
  renewed_at      timestamptz NOT NULL,
  expires_at      timestamptz NOT NULL,
  released_at     timestamptz,
  release_reason  text NOT NULL DEFAULT '',
  UNIQUE (agent_id, fencing_token),
  CHECK (expires_at > acquired_at),
  CHECK (renewed_at >= acquired_at),
  CHECK (released_at IS NULL OR released_at >= acquired_at)
);
-- Active leases: what the bound check and the renewals read.
CREATE INDEX agent_leases_active ON warp.agent_leases (agent_id, expires_at)
  WHERE released_at IS NULL;
CREATE INDEX agent_leases_history ON warp.agent_leases (agent_id, acquired_at);

ALTER TABLE warp.work_items
  ADD CONSTRAINT work_items_lease_fk FOREIGN KEY (lease_id) REFERENCES warp.agent_leases;

CREATE TABLE warp.dispatch_decisions (
  run_id       bigint NOT NULL REFERENCES warp.scheduler_runs,
  cycle_id     text NOT NULL,
  work_item_id bigint NOT NULL REFERENCES warp.work_items,
  agent_id     bigint NOT NULL REFERENCES warp.agents,
  attempt      integer NOT NULL CHECK (attempt >= 1),
  decision     text NOT NULL CHECK (decision IN ('dispatched', 'deferred_lease_held',
                 'deferred_contended', 'skipped_paused', 'skipped_capability', 'failed')),
  lease_id     bigint REFERENCES warp.agent_leases,
  reason       text NOT NULL DEFAULT '',
  at           timestamptz NOT NULL,
  -- A cycle re-run after a crash never decides on (and so never dispatches) an attempt twice.
  PRIMARY KEY (cycle_id, work_item_id, attempt),
  CHECK ((decision = 'dispatched') = (lease_id IS NOT NULL) OR decision = 'failed')
);
CREATE INDEX dispatch_decisions_lease ON warp.dispatch_decisions (lease_id)
  WHERE lease_id IS NOT NULL;

CREATE TABLE warp.watchdog_observations (
  observation_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  kind           text NOT NULL CHECK (kind <> ''),
  subject        text NOT NULL CHECK (subject <> ''),
  agent_id       bigint REFERENCES warp.agents,
  severity       text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
  evidence       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(evidence) = 'object'),
  first_seen     timestamptz NOT NULL,
  last_seen      timestamptz NOT NULL,
  occurrences    integer NOT NULL DEFAULT 1 CHECK (occurrences >= 1),
  resolved_at    timestamptz,
  CHECK (last_seen >= first_seen)
);
-- One open observation per (kind, subject).
CREATE UNIQUE INDEX watchdog_observations_open ON warp.watchdog_observations (kind, subject)
  WHERE resolved_at IS NULL;

CREATE TABLE warp.scheduler_instances (
  instance     text PRIMARY KEY CHECK (instance ~ '^[a-z0-9-]{1,63}$'),
  "group"      text NOT NULL,
  host         text NOT NULL DEFAULT '',
  pid          integer NOT NULL DEFAULT 0,
  version      text NOT NULL DEFAULT '',
  started_at   timestamptz NOT NULL,
  heartbeat_at timestamptz NOT NULL
);

-- The fencing-checked completion of SPEC section 5, with the daemon's extra knobs.
-- Verdicts: accepted, accepted_late, unknown_lease, released, overtaken.
CREATE FUNCTION warp.finish_work(
  p_lease_id bigint, p_fencing_token bigint, p_outcome text, p_detail text,
  p_transport_error boolean, p_retry boolean,
  p_backoff interval DEFAULT NULL, p_backoff_max interval DEFAULT NULL)
RETURNS TABLE (verdict text, work_item_id bigint, state text, attempts integer,
               due_at timestamptz, last_error text)
LANGUAGE plpgsql AS $$
DECLARE
  l warp.agent_leases;
  w warp.work_items;
  t timestamptz := warp.now();
  v text := 'accepted';
  delay interval;
BEGIN
  IF p_outcome NOT IN ('done', 'failed') THEN
    RAISE EXCEPTION 'outcome must be done or failed, not %', p_outcome USING ERRCODE = '22023';
  END IF;
  SELECT * INTO l FROM warp.agent_leases a WHERE a.lease_id = p_lease_id FOR UPDATE;
  IF NOT FOUND OR l.fencing_token <> p_fencing_token THEN
    RETURN QUERY SELECT 'unknown_lease'::text, NULL::bigint, NULL::text, NULL::integer,
                        NULL::timestamptz, NULL::text;
    RETURN;
  END IF;
  IF l.released_at IS NOT NULL THEN
    RETURN QUERY SELECT 'released'::text, l.work_item_id, NULL::text, NULL::integer,
                        NULL::timestamptz, NULL::text;
    RETURN;
  END IF;
  IF l.expires_at <= t THEN
    -- Serialize with acquirers of this agent, so "nobody acquired since expiry" stays true
    -- until this transaction commits.
    PERFORM pg_advisory_xact_lock(warp.agent_lock_key(l.agent_id));
    IF EXISTS (SELECT 1 FROM warp.agent_leases o
               WHERE o.agent_id = l.agent_id AND o.lease_id <> l.lease_id
                 AND o.acquired_at >= l.expires_at) THEN
      RETURN QUERY SELECT 'overtaken'::text, l.work_item_id, NULL::text, NULL::integer,
                          NULL::timestamptz, NULL::text;
      RETURN;
    END IF;
    v := 'accepted_late';
  END IF;

  UPDATE warp.agent_leases a
     SET released_at = t, release_reason = CASE v WHEN 'accepted' THEN 'completed' ELSE 'completed_late' END
   WHERE a.lease_id = l.lease_id;

  SELECT * INTO w FROM warp.work_items i WHERE i.work_item_id = l.work_item_id FOR UPDATE;
  IF p_outcome = 'done' THEN
    w.state := 'done';
    w.last_error := '';
  ELSIF NOT p_retry OR w.attempts >= w.max_attempts THEN
    w.state := 'dead';
    w.last_error := coalesce(p_detail, '');
  ELSE
    delay := coalesce(p_backoff, w.retry_backoff) * power(2, greatest(w.attempts - 1, 0));
    w.state := 'failed';
    w.last_error := coalesce(p_detail, '');
    w.due_at := t + least(delay, coalesce(p_backoff_max, w.retry_backoff_max));
  END IF;
  UPDATE warp.work_items i
     SET state = w.state, last_error = w.last_error, due_at = w.due_at, updated_at = t
   WHERE i.work_item_id = w.work_item_id;

  IF p_transport_error THEN
    UPDATE warp.dispatch_decisions d SET decision = 'failed', reason = coalesce(p_detail, '')
     WHERE d.lease_id = l.lease_id;
  END IF;
  RETURN QUERY SELECT v, w.work_item_id, w.state, w.attempts, w.due_at, w.last_error;
END
$$;

-- What agents call: `SELECT warp.complete_work(lease_id, fencing_token, 'done', '{}')`.
-- SECURITY DEFINER so that an agent's role needs EXECUTE on this function and nothing else.
CREATE FUNCTION warp.complete_work(p_lease_id bigint, p_fencing_token bigint, p_outcome text,
                                   p_detail jsonb DEFAULT '{}')
RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = warp, pg_catalog, pg_temp AS $$
  SELECT verdict FROM warp.finish_work(p_lease_id, p_fencing_token, p_outcome,
                                       CASE WHEN p_detail IS NULL OR p_detail = '{}'::jsonb
                                            THEN '' ELSE p_detail::text END,
                                       false, true)
$$;
REVOKE ALL ON FUNCTION warp.complete_work(bigint, bigint, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION warp.finish_work(bigint, bigint, text, text, boolean, boolean, interval, interval) FROM PUBLIC;

-- Claim a cycle (SPEC section 4): skip it when completed or running under a live owner; mark a
-- running run whose heartbeat is older than p_takeover_after abandoned and take it over.
-- Outcomes: claimed, took_over, already_completed, running_elsewhere.
CREATE FUNCTION warp.claim_cycle(p_cycle_id text, p_group text, p_instance text,
                                 p_takeover_after interval)
RETURNS TABLE (outcome text, run_id bigint, instance text, status text,
               started_at timestamptz, heartbeat_at timestamptz, abandoned_run_id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  t timestamptz := warp.now();
  r warp.scheduler_runs;
  abandoned bigint;
  new_id bigint;
BEGIN
  -- Claimers of one cycle queue here instead of racing into the unique index.
  PERFORM pg_advisory_xact_lock(hashtextextended('warp.cycle:' || p_cycle_id, 0));
  SELECT * INTO r FROM warp.scheduler_runs s
   WHERE s.cycle_id = p_cycle_id AND s.status IN ('running', 'completed');
  IF FOUND THEN
    IF r.status = 'completed' THEN
      RETURN QUERY SELECT 'already_completed'::text, r.run_id, r.instance, r.status,
                          r.started_at, r.heartbeat_at, NULL::bigint;
      RETURN;
    END IF;
    IF r.heartbeat_at + p_takeover_after >= t THEN
      RETURN QUERY SELECT 'running_elsewhere'::text, r.run_id, r.instance, r.status,
                          r.started_at, r.heartbeat_at, NULL::bigint;
      RETURN;
    END IF;
    UPDATE warp.scheduler_runs s
       SET status = 'abandoned', finished_at = t,
           error = format('heartbeat older than takeover_after; taken over by %s', p_instance)
     WHERE s.run_id = r.run_id;
    abandoned := r.run_id;
  END IF;
  INSERT INTO warp.scheduler_runs (cycle_id, "group", instance, status, started_at, heartbeat_at)
  VALUES (p_cycle_id, p_group, p_instance, 'running', t, t)
  RETURNING scheduler_runs.run_id INTO new_id;
  RETURN QUERY SELECT CASE WHEN abandoned IS NULL THEN 'claimed' ELSE 'took_over' END,
                      new_id, p_instance, 'running'::text, t, t, abandoned;
END
$$;

-- Decide, lease and record a cycle's candidates in one call (SPEC sections 4 and 5). Candidate i
-- is (p_items[i], p_agents[i], p_bounds[i]); a non-NULL p_verdicts[i] is a decision already
-- taken (a skip). For the others: try the agent's advisory lock, count its active leases in
-- database time, bump its fencing counter and insert the lease. One row per candidate, in order.
-- recorded = false: this cycle already decided on that attempt, or the item is no longer due.
CREATE FUNCTION warp.claim_dispatches(
  p_run_id bigint, p_cycle_id text, p_instance text, p_ttl interval,
  p_items bigint[], p_agents bigint[], p_bounds integer[], p_verdicts text[], p_reasons text[],
  p_backoff interval, p_backoff_max interval)
RETURNS TABLE (idx integer, recorded boolean, decision text, reason text, attempt integer,
               at timestamptz, lease_id bigint, fencing_token bigint, expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  t timestamptz := warp.now();
  w warp.work_items;
  d text;
  r text;
  a integer;
  active integer;
  token bigint;
  new_lease bigint;
  lease_expiry timestamptz;
BEGIN
  FOR i IN 1 .. coalesce(array_length(p_items, 1), 0) LOOP
    SELECT * INTO w FROM warp.work_items wi WHERE wi.work_item_id = p_items[i] FOR UPDATE;
    IF NOT FOUND OR w.agent_id <> p_agents[i] THEN
      -- Raised mid-loop, it rolls back what earlier candidates wrote: all or nothing.
      RAISE EXCEPTION 'work item % of agent % does not exist', p_items[i], p_agents[i]
        USING ERRCODE = 'P0002';
    END IF;
    a := w.attempts + 1;
    IF w.state NOT IN ('pending', 'failed') OR w.due_at > t OR EXISTS (
         SELECT 1 FROM warp.dispatch_decisions dd
          WHERE dd.cycle_id = p_cycle_id AND dd.work_item_id = w.work_item_id AND dd.attempt = a)
    THEN
      RETURN QUERY SELECT i, false, NULL::text, NULL::text, NULL::integer, NULL::timestamptz,
                          NULL::bigint, NULL::bigint, NULL::timestamptz;
      CONTINUE;
    END IF;
    d := p_verdicts[i];
    r := coalesce(p_reasons[i], '');
    new_lease := NULL;
    token := NULL;
    lease_expiry := NULL;
    IF d IS NULL THEN
      IF NOT pg_try_advisory_xact_lock(warp.agent_lock_key(p_agents[i])) THEN
        d := 'deferred_contended';
        r := 'agent lock held by another instance';
      ELSE
        SELECT count(*) INTO active FROM warp.agent_leases l
         WHERE l.agent_id = p_agents[i] AND l.released_at IS NULL AND l.expires_at > t;
        IF active >= p_bounds[i] THEN
          d := 'deferred_lease_held';
          r := format('bound of %s active lease(s) reached', p_bounds[i]);
        ELSE
          UPDATE warp.agents ag SET fencing_counter = ag.fencing_counter + 1
           WHERE ag.agent_id = p_agents[i]
          RETURNING ag.fencing_counter INTO token;
          lease_expiry := t + p_ttl;
          INSERT INTO warp.agent_leases (agent_id, work_item_id, fencing_token, holder_instance,
                                         holder_run_id, acquired_at, renewed_at, expires_at)
          VALUES (p_agents[i], w.work_item_id, token, p_instance, p_run_id, t, t, lease_expiry)
          RETURNING agent_leases.lease_id INTO new_lease;
          UPDATE warp.work_items wi
             SET state = 'dispatched', attempts = a, lease_id = new_lease,
                 retry_backoff = p_backoff, retry_backoff_max = p_backoff_max, updated_at = t
           WHERE wi.work_item_id = w.work_item_id;
          d := 'dispatched';
        END IF;
      END IF;
    END IF;
    INSERT INTO warp.dispatch_decisions (run_id, cycle_id, work_item_id, agent_id, attempt,
                                         decision, lease_id, reason, at)
    VALUES (p_run_id, p_cycle_id, w.work_item_id, p_agents[i], a, d, new_lease, r, t);
    RETURN QUERY SELECT i, true, d, r, a, t, new_lease, token, lease_expiry;
  END LOOP;
END
$$;

-- Extend live leases (released_at IS NULL, not expired, token matches) to now + p_ttl.
-- Returns the renewed ones; a lease missing from the result is lost to its holder.
CREATE FUNCTION warp.renew_leases(p_lease_ids bigint[], p_tokens bigint[], p_ttl interval)
RETURNS TABLE (lease_id bigint, expires_at timestamptz)
LANGUAGE sql AS $$
  UPDATE warp.agent_leases l
     SET renewed_at = warp.now(), expires_at = warp.now() + p_ttl
    FROM unnest(p_lease_ids, p_tokens) AS r(id, token)
   WHERE l.lease_id = r.id AND l.fencing_token = r.token
     AND l.released_at IS NULL AND l.expires_at > warp.now()
  RETURNING l.lease_id, l.expires_at
$$;

-- Dispatched work whose lease expired unreleased goes back to pending (dead when out of
-- attempts). The lease is left as it is: a late completion nobody overtook is still accepted.
CREATE FUNCTION warp.requeue_expired_work() RETURNS integer
LANGUAGE sql AS $$
  WITH moved AS (
    UPDATE warp.work_items w
       SET state = CASE WHEN w.attempts >= w.max_attempts THEN 'dead' ELSE 'pending' END,
           last_error = format('lease %s expired without completion', w.lease_id),
           updated_at = warp.now()
      FROM warp.agent_leases l
     WHERE w.state = 'dispatched' AND l.lease_id = w.lease_id
       AND l.released_at IS NULL AND l.expires_at <= warp.now()
    RETURNING 1)
  SELECT count(*)::integer FROM moved
$$;
