// The PostgreSQL store's watchdog verbs (Store's watchdog section; SPEC section 7).
//
// ScanWatchdogFacts is one call of warp.watchdog_facts, ApplyObservations one call of
// warp.apply_observations (migrations/0004_watchdog.sql, where the SQL and the indexes each rule
// reads are explained): a pass costs the same two round trips at any size of the store.
// Refused completions are recorded as audit events (late_completion) right after the batch that
// refused them.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "store/postgres/impl/encoding.hpp"
#include "store/postgres/postgres_store.hpp"

namespace warp::store::postgres {
namespace {

using nlohmann::json;

using encoding::FromUs;
using encoding::Ms;
using encoding::Us;

// warp.watchdog_facts (migrations/0004_watchdog.sql): one statement, one row per fact.
constexpr const char* kScanWatchdogFacts =
    "SELECT rule, fact::text AS fact FROM warp.watchdog_facts($1::text[], " WARP_MS("$2") ","
    " $3::integer, " WARP_MS("$4") ", " WARP_MS("$5") ", " WARP_MS("$6") ")";

constexpr const char* kApplyObservations =
    "SELECT change, previous_severity, observation_id, kind, subject, agent_id, severity,"
    " evidence::text AS evidence, warp.epoch_us(first_seen) AS first_seen_us,"
    " warp.epoch_us(last_seen) AS last_seen_us, occurrences,"
    " warp.epoch_us(resolved_at) AS resolved_us"
    " FROM warp.apply_observations(" WARP_TS("$1") ", $2::text[], $3::text[], $4::text[],"
    " $5::text[], $6::bigint[], $7::text[], $8::text[])";

constexpr const char* kListObservations =
    "SELECT observation_id, kind, subject, agent_id, severity, evidence::text AS evidence,"
    " warp.epoch_us(first_seen) AS first_seen_us, warp.epoch_us(last_seen) AS last_seen_us,"
    " occurrences, warp.epoch_us(resolved_at) AS resolved_us"
    " FROM warp.watchdog_observations WHERE NOT $1::boolean OR resolved_at IS NULL"
    " ORDER BY observation_id";

constexpr const char* kPutWorkspace =
    "INSERT INTO warp.workspaces (path, agent_id, lifecycle, retention_policy, retain_until,"
    " created_at) VALUES ($1, $2::bigint, $3, $4, " WARP_TS("$5") ", warp.now())"
    " ON CONFLICT (path) DO UPDATE SET agent_id = EXCLUDED.agent_id,"
    " lifecycle = EXCLUDED.lifecycle, retention_policy = EXCLUDED.retention_policy,"
    " retain_until = EXCLUDED.retain_until"
    " RETURNING workspace_id, warp.epoch_us(created_at) AS created_us";

constexpr const char* kInsertLearningProposal =
    "INSERT INTO warp.learning_proposals (agent_id, title, review_status, created_at, updated_at)"
    " SELECT $1::bigint, $2, $3, t, t FROM (SELECT coalesce(" WARP_TS("$4") ", warp.now()) AS t) n"
    " RETURNING proposal_id, agent_id, warp.epoch_us(created_at) AS created_us";

constexpr const char* kUpdateLearningProposal =
    "UPDATE warp.learning_proposals SET title = $2, review_status = $3, updated_at = warp.now(),"
    " reviewed_at = CASE WHEN $3 IN ('approved', 'rejected') THEN warp.now() END"
    " WHERE proposal_id = $1::bigint"
    " RETURNING proposal_id, agent_id, warp.epoch_us(created_at) AS created_us";

constexpr const char* kRecordRefusals =
    "SELECT warp.record_completion_refusals($1::bigint[], $2::bigint[], $3::text[], '')"
    " AS recorded";

#undef WARP_US
#undef WARP_TS
#undef WARP_MS

// --- decoding ------------------------------------------------------------------------------

TimePoint TimeOf(const json& j, const char* key) {
  return FromUs(j.at(key).get<std::int64_t>());
}
std::optional<TimePoint> OptionalTimeOf(const json& j, const char* key) {
  if (!j.contains(key) || j.at(key).is_null())
    return std::nullopt;
  return TimeOf(j, key);
}
std::string StringOf(const json& j, const char* key) {
  if (!j.contains(key) || j.at(key).is_null())
    return {};
  return j.at(key).get<std::string>();
}
std::int64_t IntOf(const json& j, const char* key) {
  if (!j.contains(key) || j.at(key).is_null())
    return 0;
  return j.at(key).get<std::int64_t>();
}
Lifecycle LifecycleOf(const json& j) {
  return ParseLifecycle(StringOf(j, "lifecycle")).value_or(Lifecycle::kActive);
}

void AddFact(WatchdogFacts& facts, std::string_view rule, const json& j) {
  if (rule == "now") {
    facts.now = TimeOf(j, "now_us");
  } else if (rule == "lease_expired_unreleased") {
    ExpiredLeaseFact f;
    f.lease.lease_id = IntOf(j, "lease_id");
    f.lease.agent_id = IntOf(j, "agent_id");
    f.lease.work_item_id = IntOf(j, "work_item_id");
    f.lease.fencing_token = IntOf(j, "fencing_token");
    f.lease.holder_instance = StringOf(j, "holder_instance");
    f.lease.holder_run_id = IntOf(j, "holder_run_id");
    f.lease.acquired_at = TimeOf(j, "acquired_us");
    f.lease.renewed_at = TimeOf(j, "renewed_us");
    f.lease.expires_at = TimeOf(j, "expires_us");
    f.agent_slug = StringOf(j, "agent_slug");
    facts.expired_leases.push_back(std::move(f));
  } else if (rule == "running_run") {
    SchedulerRun r;
    r.run_id = IntOf(j, "run_id");
    r.cycle_id = StringOf(j, "cycle_id");
    r.group = StringOf(j, "group");
    r.instance = StringOf(j, "instance");
    r.status = RunStatus::kRunning;
    r.started_at = TimeOf(j, "started_us");
    r.heartbeat_at = TimeOf(j, "heartbeat_us");
    facts.running_runs.push_back(std::move(r));
  } else if (rule == "cycle_missed") {
    GroupFact g;
    g.group = StringOf(j, "group");
    g.first_instance_started_at = TimeOf(j, "first_started_us");
    g.latest_cycle_id = StringOf(j, "latest_cycle_id");
    if (!j.at("last_run_id").is_null()) {
      SchedulerRun r;
      r.run_id = IntOf(j, "last_run_id");
      r.cycle_id = StringOf(j, "last_cycle_id");
      r.group = g.group;
      r.instance = StringOf(j, "last_instance");
      r.status = RunStatus::kCompleted;
      r.started_at = TimeOf(j, "last_started_us");
      r.finished_at = OptionalTimeOf(j, "last_finished_us");
      r.heartbeat_at = r.finished_at.value_or(r.started_at);
      g.last_completed = std::move(r);
    }
    facts.groups.push_back(std::move(g));
  } else if (rule == "work_backlog_age") {
    BacklogFact b;
    b.agent_id = IntOf(j, "agent_id");
    b.agent_slug = StringOf(j, "agent_slug");
    b.lifecycle = LifecycleOf(j);
    b.oldest_work_item_id = IntOf(j, "work_item_id");
    b.oldest_kind = StringOf(j, "kind");
    b.oldest_due_at = TimeOf(j, "due_us");
    b.old_items = IntOf(j, "old_items");
    facts.backlogs.push_back(std::move(b));
  } else if (rule == "dispatch_failure_streak") {
    FailureStreakFact f;
    f.agent_id = IntOf(j, "agent_id");
    f.agent_slug = StringOf(j, "agent_slug");
    f.streak = static_cast<int>(IntOf(j, "streak"));
    if (j.contains("lease_ids") && j.at("lease_ids").is_array())
      f.lease_ids = j.at("lease_ids").get<std::vector<LeaseId>>();
    f.last_attempt_at = TimeOf(j, "last_attempt_us");
    f.last_error = StringOf(j, "last_error");
    facts.failure_streaks.push_back(std::move(f));
  } else if (rule == "agent_unresponsive") {
    UnresponsiveFact f;
    f.agent_id = IntOf(j, "agent_id");
    f.agent_slug = StringOf(j, "agent_slug");
    f.first_lease_id = IntOf(j, "first_lease_id");
    f.outstanding_since = TimeOf(j, "since_us");
    f.unanswered_leases = IntOf(j, "unanswered_leases");
    f.last_completion_at = OptionalTimeOf(j, "last_completion_us");
    facts.unresponsive_agents.push_back(std::move(f));
  } else if (rule == "instance_stale") {
    InstanceFact f;
    f.instance = StringOf(j, "instance");
    f.group = StringOf(j, "group");
    f.host = StringOf(j, "host");
    f.pid = static_cast<int>(IntOf(j, "pid"));
    f.version = StringOf(j, "version");
    f.started_at = TimeOf(j, "started_us");
    f.heartbeat_at = TimeOf(j, "heartbeat_us");
    facts.instances.push_back(std::move(f));
  } else if (rule == "late_completion") {
    LateCompletionFact f;
    f.agent_id = IntOf(j, "agent_id");
    f.agent_slug = StringOf(j, "agent_slug");
    f.lease_id = IntOf(j, "lease_id");
    f.fencing_token = IntOf(j, "fencing_token");
    f.accepted = j.at("accepted").get<bool>();
    f.at = TimeOf(j, "at_us");
    facts.late_completions.push_back(std::move(f));
  } else if (rule == "workspace_retention_overdue") {
    WorkspaceFact f;
    f.workspace.workspace_id = IntOf(j, "workspace_id");
    f.workspace.path = StringOf(j, "path");
    if (!j.at("agent_id").is_null())
      f.workspace.agent_id = IntOf(j, "agent_id");
    f.workspace.lifecycle =
        ParseWorkspaceLifecycle(StringOf(j, "lifecycle")).value_or(WorkspaceLifecycle::kActive);
    f.workspace.retention_policy = StringOf(j, "retention_policy");
    f.workspace.retain_until = OptionalTimeOf(j, "retain_until_us");
    f.workspace.created_at = TimeOf(j, "created_us");
    f.agent_slug = StringOf(j, "agent_slug");
    facts.overdue_workspaces.push_back(std::move(f));
  } else if (rule == "learning_proposal_review_stale") {
    ProposalFact f;
    f.proposal.proposal_id = IntOf(j, "proposal_id");
    f.proposal.agent_id = IntOf(j, "agent_id");
    f.proposal.title = StringOf(j, "title");
    f.proposal.review_status =
        ParseReviewStatus(StringOf(j, "review_status")).value_or(ReviewStatus::kProposed);
    f.proposal.created_at = TimeOf(j, "created_us");
    f.agent_slug = StringOf(j, "agent_slug");
    facts.stale_proposals.push_back(std::move(f));
  } else if (rule == "agent_tool_profile_missing") {
    MissingToolProfileFact f;
    f.agent_id = IntOf(j, "agent_id");
    f.agent_slug = StringOf(j, "agent_slug");
    f.tool_profile_id = StringOf(j, "tool_profile_id");
    f.lifecycle = LifecycleOf(j);
    facts.missing_tool_profiles.push_back(std::move(f));
  }
}

Observation ObservationAt(const Result& r, int row) {
  Observation o;
  o.observation_id = r.GetInt64(row, "observation_id");
  o.kind = r.GetString(row, "kind");
  o.subject = r.GetString(row, "subject");
  o.agent_id = r.GetOptionalInt64(row, "agent_id");
  const auto severity = r.GetString(row, "severity");
  o.severity = ParseSeverity(severity).value_or(Severity::kWarning);
  const auto evidence = json::parse(r.GetString(row, "evidence"), nullptr, false);
  o.evidence_json = evidence.is_discarded() ? r.GetString(row, "evidence") : evidence.dump();
  o.first_seen = FromUs(r.GetInt64(row, "first_seen_us"));
  o.last_seen = FromUs(r.GetInt64(row, "last_seen_us"));
  o.occurrences = static_cast<int>(r.GetInt64(row, "occurrences"));
  if (auto resolved = r.GetOptionalInt64(row, "resolved_us"))
    o.resolved_at = FromUs(*resolved);
  return o;
}

}  // namespace

Task<Workspace> PostgresStore::PutWorkspace(NewWorkspace workspace) {
  if (workspace.path.empty())
    throw StoreError(StoreError::Kind::kInvalid, "workspace path must not be empty");
  std::optional<std::string> agent;
  if (workspace.agent_id)
    agent = std::to_string(*workspace.agent_id);
  std::optional<std::string> retain_until;
  if (workspace.retain_until)
    retain_until = Us(*workspace.retain_until);
  Params params{workspace.path, agent, std::string(ToString(workspace.lifecycle)),
                workspace.retention_policy, retain_until};
  Result r;
  try {
    r = co_await Query(kPutWorkspace, std::move(params));
  } catch (const DatabaseError& e) {
    if (e.sqlstate() == "23503")  // foreign_key_violation: no such agent
      throw StoreError(StoreError::Kind::kNotFound, "unknown agent of workspace");
    throw;
  }
  Workspace w;
  static_cast<NewWorkspace&>(w) = std::move(workspace);
  w.workspace_id = r.GetInt64(0, "workspace_id");
  w.created_at = FromUs(r.GetInt64(0, "created_us"));
  co_return w;
}

Task<LearningProposal> PostgresStore::PutLearningProposal(LearningProposal proposal) {
  const std::string status(ToString(proposal.review_status));
  Result r;
  if (proposal.proposal_id != 0) {
    Params params{std::to_string(proposal.proposal_id), proposal.title, status};
    r = co_await Query(kUpdateLearningProposal, std::move(params));
    if (r.rows() == 0)
      throw StoreError(StoreError::Kind::kNotFound, "unknown learning proposal");
  } else {
    std::optional<std::string> created;
    if (proposal.created_at)
      created = Us(*proposal.created_at);
    Params params{std::to_string(proposal.agent_id), proposal.title, status, created};
    try {
      r = co_await Query(kInsertLearningProposal, std::move(params));
    } catch (const DatabaseError& e) {
      if (e.sqlstate() == "23503")  // foreign_key_violation: no such agent
        throw StoreError(StoreError::Kind::kNotFound, "unknown agent of learning proposal");
      throw;
    }
  }
  proposal.proposal_id = r.GetInt64(0, "proposal_id");
  proposal.agent_id = r.GetInt64(0, "agent_id");
  proposal.created_at = FromUs(r.GetInt64(0, "created_us"));
  co_return proposal;
}

Task<WatchdogFacts> PostgresStore::ScanWatchdogFacts(WatchdogScan scan) {
  Params params{ArrayLiteral(scan.rules),
                Ms(scan.backlog_age),
                std::to_string(std::max(scan.failure_streak, 1)),
                Ms(scan.agent_unresponsive_after),
                Ms(scan.proposal_review_stale_after),
                Ms(scan.recent)};
  auto r = co_await Query(kScanWatchdogFacts, std::move(params));
  WatchdogFacts facts;
  for (int i = 0; i < r.rows(); ++i) {
    const auto rule = r.GetString(i, "rule");
    const auto fact = json::parse(r.GetString(i, "fact"), nullptr, false);
    if (fact.is_discarded()) {
      throw StoreError(StoreError::Kind::kInternal,
                       fmt::format("watchdog scan: malformed {} fact", rule));
    }
    AddFact(facts, rule, fact);
  }
  co_return facts;
}

Task<std::vector<ObservationChange>> PostgresStore::ApplyObservations(ObservationBatch batch) {
  std::vector<std::string> scope_kinds;
  std::vector<std::optional<std::string>> scope_subjects;
  for (const auto& s : batch.scopes) {
    scope_kinds.push_back(s.kind);
    scope_subjects.push_back(s.subject);
  }
  std::vector<std::string> kinds;
  std::vector<std::string> subjects;
  std::vector<std::optional<std::string>> agents;
  std::vector<std::string> severities;
  std::vector<std::string> evidence;
  for (const auto& d : batch.observations) {
    kinds.push_back(d.kind);
    subjects.push_back(d.subject);
    agents.push_back(d.agent_id ? std::optional<std::string>(std::to_string(*d.agent_id))
                                : std::nullopt);
    severities.emplace_back(ToString(d.severity));
    evidence.push_back(d.evidence_json);
  }
  Params params{Us(batch.at),
                ArrayLiteral(scope_kinds),
                ArrayLiteral(scope_subjects),
                ArrayLiteral(kinds),
                ArrayLiteral(subjects),
                ArrayLiteral(agents),
                ArrayLiteral(severities),
                ArrayLiteral(evidence)};
  auto r = co_await Query(kApplyObservations, std::move(params));
  std::vector<ObservationChange> out;
  out.reserve(static_cast<std::size_t>(r.rows()));
  using K = ObservationChange::Kind;
  for (int i = 0; i < r.rows(); ++i) {
    ObservationChange c;
    const auto change = r.GetString(i, "change");
    for (auto k : {K::kOpened, K::kPersisted, K::kEscalated, K::kResolved}) {
      if (ToString(k) == change)
        c.change = k;
    }
    if (auto previous = r.GetOptionalString(i, "previous_severity"))
      c.previous_severity = ParseSeverity(*previous);
    c.observation = ObservationAt(r, i);
    out.push_back(std::move(c));
  }
  co_return out;
}

Task<std::vector<Observation>> PostgresStore::ListObservations(bool open_only) {
  Params params{open_only ? "true" : "false"};
  auto r = co_await Query(kListObservations, std::move(params));
  std::vector<Observation> out;
  out.reserve(static_cast<std::size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i)
    out.push_back(ObservationAt(r, i));
  co_return out;
}

Task<void> PostgresStore::RecordRefusedCompletions(const std::vector<Completion>& completions,
                                                   const std::vector<CompletionResult>& results) {
  std::vector<std::int64_t> ids;
  std::vector<std::int64_t> tokens;
  std::vector<std::string> verdicts;
  for (std::size_t i = 0; i < completions.size() && i < results.size(); ++i) {
    if (results[i].accepted())
      continue;
    ids.push_back(completions[i].lease.lease_id);
    tokens.push_back(completions[i].lease.fencing_token);
    verdicts.emplace_back(ToString(results[i].verdict));
  }
  if (ids.empty())
    co_return;
  // The completions are decided and committed: failing to record the refusals must not turn
  // them into an error for the caller. late_completion then misses them; the log says so.
  try {
    Params params{ArrayLiteral(ids), ArrayLiteral(tokens), ArrayLiteral(verdicts)};
    co_await Query(kRecordRefusals, std::move(params));
  } catch (const std::exception& e) {
    log_.Warn(logging::Event::kStoreError, {}, "cannot record {} refused completion(s): {}",
              ids.size(), e.what());
  }
}

}  // namespace warp::store::postgres
