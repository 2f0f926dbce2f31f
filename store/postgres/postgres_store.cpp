#include "store/postgres/postgres_store.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <unordered_map>

#include "store/postgres/impl/encoding.hpp"

namespace warp::store::postgres {
namespace {

using std::chrono::microseconds;

using encoding::FromUs;
using encoding::Ms;
using encoding::Us;

template <typename Enum>
Enum ParseOrThrow(std::string_view text, std::optional<Enum> (*parse)(std::string_view)) {
  auto v = parse(text);
  if (!v)
    throw StoreError(StoreError::Kind::kInternal, fmt::format("unknown value '{}'", text));
  return *v;
}

/// jsonb comes back re-formatted by the server; hand out compact JSON like the memory store.
std::string CompactJson(std::string_view text) {
  auto json = nlohmann::json::parse(text, nullptr, false);
  return json.is_discarded() ? std::string(text) : json.dump();
}

// --- SQL -----------------------------------------------------------------------------------

// The WARP_US / WARP_TS / WARP_MS fragments: store/postgres/impl/encoding.hpp.

constexpr const char* kNow = "SELECT " WARP_US("warp.now()") " AS now_us";

constexpr const char* kMigrationsTableExists =
    "SELECT to_regclass('warp.schema_migrations') IS NOT NULL AS present";
constexpr const char* kSchemaVersion =
    "SELECT coalesce(max(version), 0) AS version FROM warp.schema_migrations";

constexpr const char* kPinNow = "SELECT set_config('warp.test_now', $1, false)";

constexpr const char* kPutToolProfile =
    "INSERT INTO warp.tool_profiles (tool_profile_id, capabilities, operations, system_overlays) "
    "VALUES ($1, $2::text[], $3::text[], $4::jsonb) "
    "ON CONFLICT (tool_profile_id) DO UPDATE SET capabilities = EXCLUDED.capabilities, "
    "operations = EXCLUDED.operations, system_overlays = EXCLUDED.system_overlays";

constexpr const char* kListToolProfiles =
    "SELECT tool_profile_id, capabilities, operations, system_overlays::text AS system_overlays "
    "FROM warp.tool_profiles ORDER BY tool_profile_id";

#define WARP_AGENT_COLUMNS                                                                       \
  "agent_id, agent_slug, display_name, domain_id, tool_profile_id, lifecycle, runner, "          \
  "coalesce(max_active_leases, 0) AS max_active_leases, labels::text AS labels, business_link, " \
  "fencing_counter"

constexpr const char* kRegisterAgent =
    "INSERT INTO warp.agents (agent_slug, display_name, domain_id, tool_profile_id, lifecycle, "
    "runner, max_active_leases, labels, business_link) "
    "VALUES ($1, $2, $3, $4, $5, $6, nullif($7::integer, 0), $8::jsonb, $9) "
    "RETURNING " WARP_AGENT_COLUMNS;

constexpr const char* kListAgents =
    "SELECT " WARP_AGENT_COLUMNS " FROM warp.agents ORDER BY agent_id";

constexpr const char* kGetAgents = "SELECT " WARP_AGENT_COLUMNS
                                   " FROM warp.agents WHERE agent_id = ANY($1::bigint[]) "
                                   "ORDER BY agent_id";

constexpr const char* kSetLifecycle =
    "UPDATE warp.agents SET lifecycle = $2 WHERE agent_slug = $1 RETURNING agent_id";

#define WARP_WORK_COLUMNS                                                       \
  "work_item_id, agent_id, kind, payload::text AS payload, priority, " WARP_US( \
      "due_at") " AS due_us, idempotency_key, attempts, max_attempts, state, last_error, lease_id"

// A key-less item gets `work:<its id>:<uuid>`: the id is drawn first, and the uuid keeps a
// producer's key of the same shape from turning a new item into a duplicate.
constexpr const char* kEnqueueWork =
    "WITH a AS (SELECT agent_id FROM warp.agents WHERE agent_slug = $1), "
    "n AS (SELECT nextval(pg_get_serial_sequence('warp.work_items', 'work_item_id')) AS id) "
    "INSERT INTO warp.work_items (work_item_id, agent_id, kind, payload, priority, due_at, "
    "idempotency_key, max_attempts) OVERRIDING SYSTEM VALUE "
    "SELECT n.id, a.agent_id, $2, $3::jsonb, $4::integer, "
    "coalesce(" WARP_TS("$5") ", warp.now()), coalesce(nullif($6, ''), 'work:' || n.id || ':' || gen_random_uuid()), "
    "$7::integer FROM a, n "
    "ON CONFLICT (idempotency_key) DO NOTHING RETURNING " WARP_WORK_COLUMNS;

constexpr const char* kWorkByKey =
    "SELECT " WARP_WORK_COLUMNS " FROM warp.work_items WHERE idempotency_key = $1";
constexpr const char* kAgentExists = "SELECT 1 FROM warp.agents WHERE agent_slug = $1";
constexpr const char* kGetWork =
    "SELECT " WARP_WORK_COLUMNS " FROM warp.work_items WHERE work_item_id = $1::bigint";
constexpr const char* kListWork = "SELECT " WARP_WORK_COLUMNS
                                  " FROM warp.work_items WHERE $1::text IS NULL OR state = $1 "
                                  "ORDER BY work_item_id";
// warp.select_due_work (migration 0007): the narrow rows of warp.work_queue, the room per agent
// from warp.open_leases, then only the chosen items from work_items. The cost follows the
// limit, not the tables.
constexpr const char* kSelectDueWork =
    "SELECT " WARP_WORK_COLUMNS
    " FROM warp.select_due_work($1::integer, $2::integer, $3::integer) "
    "ORDER BY priority DESC, due_at, work_item_id";

constexpr const char* kRequeueExpired = "SELECT warp.requeue_expired_work() AS moved";

#define WARP_RUN_COLUMNS \
  "run_id, cycle_id, \"group\" AS group_name, instance, status, " WARP_US("started_at")      \
  " AS started_us, " WARP_US("heartbeat_at") " AS heartbeat_us, " WARP_US("finished_at")     \
  " AS finished_us, counts::text AS counts, error"

constexpr const char* kClaimCycle =
    "SELECT outcome, run_id, cycle_id, instance, status, "
    WARP_US("started_at") " AS started_us, "
    WARP_US("heartbeat_at") " AS heartbeat_us, abandoned_run_id "
    "FROM warp.claim_cycle($1, $2, $3, " WARP_MS("$4") ")";

constexpr const char* kHeartbeatRun =
    "UPDATE warp.scheduler_runs SET heartbeat_at = warp.now() "
    "WHERE run_id = $1::bigint AND status = 'running' RETURNING run_id";

constexpr const char* kFinishRun =
    "UPDATE warp.scheduler_runs SET status = $2, counts = $3::jsonb, error = $4, "
    "finished_at = warp.now(), heartbeat_at = warp.now() "
    "WHERE run_id = $1::bigint AND status = 'running' RETURNING run_id";
constexpr const char* kRunExists = "SELECT 1 FROM warp.scheduler_runs WHERE run_id = $1::bigint";

constexpr const char* kListRuns = "SELECT " WARP_RUN_COLUMNS
                                  " FROM warp.scheduler_runs WHERE $1 = '' OR cycle_id = $1 "
                                  "ORDER BY run_id";

constexpr const char* kListDecisions =
    "SELECT run_id, cycle_id, work_item_id, agent_id, attempt, decision, lease_id, reason, " WARP_US(
        "at") " AS at_us FROM warp.dispatch_decisions WHERE $1 = '' OR cycle_id = $1 "
              "ORDER BY at, work_item_id";

// Each recorded candidate comes with its item as the claim left it (migration 0013); the
// claim's lease_id is renamed, so that the item's columns are unambiguous.
#define WARP_CLAIM_QUERY(args) \
  "SELECT c.idx, c.recorded, c.decision, c.reason, c.attempt, " WARP_US("c.at") " AS at_us, "     \
  "c.granted_lease, c.fencing_token, " WARP_US("c.expires_at") " AS expires_us, "                 \
  WARP_WORK_COLUMNS " FROM (SELECT idx, recorded, decision, reason, attempt, at, "                \
  "lease_id AS granted_lease, fencing_token, expires_at, item FROM warp.claim_dispatches(" args   \
  ")) c LEFT JOIN LATERAL (SELECT (c.item).*) i ON true ORDER BY c.idx"

constexpr const char* kClaimDispatches = WARP_CLAIM_QUERY("$1::bigint, $2, $3, " WARP_MS(
    "$4") ", $5::bigint[], $6::bigint[], $7::integer[], "
          "$8::text[], $9::text[], " WARP_MS("$10") ", " WARP_MS("$11"));

// The same with per-candidate notify channels (the notify runner; migration *_notify.sql):
// pg_notify in the claim's own transaction.
constexpr const char* kClaimDispatchesNotify = WARP_CLAIM_QUERY("$1::bigint, $2, $3, " WARP_MS(
    "$4") ", $5::bigint[], $6::bigint[], $7::integer[], "
          "$8::text[], $9::text[], " WARP_MS("$10") ", " WARP_MS("$11") ", $12::text[]");

constexpr const char* kRenewLeases =
    "SELECT lease_id, " WARP_US("expires_at") " AS expires_us "
    "FROM warp.renew_leases($1::bigint[], $2::bigint[], " WARP_MS("$3") ")";

// `f` without its work_item_id column, so that the item's columns are unambiguous.
constexpr const char* kFinishWorkBatch =
    "SELECT f.idx, f.verdict, " WARP_WORK_COLUMNS
    " FROM (SELECT idx, verdict, item FROM warp.finish_work_batch($1::bigint[], $2::bigint[], "
    "$3::text[], $4::text[], $5::boolean[], $6::boolean[], " WARP_MS("$7") ", " WARP_MS("$8") ")) f "
    "LEFT JOIN LATERAL (SELECT (f.item).*) i ON true ORDER BY f.idx";

constexpr const char* kListLeases =
    "SELECT lease_id, agent_id, work_item_id, fencing_token, holder_instance, "
    "coalesce(holder_run_id, 0) AS holder_run_id, " WARP_US("acquired_at") " AS acquired_us, " WARP_US(
        "renewed_at") " AS renewed_us, " WARP_US("expires_at") " AS expires_us, " WARP_US("released_at") " AS released_us, "
                                                                                             "release_reason "
                                                                                             "FROM warp.agent_leases "
                                                                                             "WHERE ($1::bigint IS NULL OR agent_id = $1::bigint) "
                                                                                             "AND (NOT $2::boolean OR (released_at IS NULL AND expires_at > warp.now())) "
                                                                                             "ORDER BY lease_id";

constexpr const char* kHeartbeatInstance =
    "INSERT INTO warp.scheduler_instances (instance, \"group\", host, pid, version, started_at, "
    "heartbeat_at) VALUES ($1, $2, $3, $4::integer, $5, warp.now(), warp.now()) "
    "ON CONFLICT (instance) DO UPDATE SET \"group\" = EXCLUDED.\"group\", host = EXCLUDED.host, "
    "pid = EXCLUDED.pid, version = EXCLUDED.version, heartbeat_at = EXCLUDED.heartbeat_at, "
    "started_at = CASE WHEN warp.scheduler_instances.pid = EXCLUDED.pid "
    "THEN warp.scheduler_instances.started_at ELSE EXCLUDED.started_at END";

#undef WARP_US
#undef WARP_TS
#undef WARP_MS

// --- decoding ------------------------------------------------------------------------------

Agent AgentAt(const Result& r, int row) {
  Agent a;
  a.agent_id = r.GetInt64(row, "agent_id");
  a.agent_slug = r.GetString(row, "agent_slug");
  a.display_name = r.GetString(row, "display_name");
  a.domain_id = r.GetString(row, "domain_id");
  a.tool_profile_id = r.GetString(row, "tool_profile_id");
  a.lifecycle = ParseOrThrow(r.GetString(row, "lifecycle"), &ParseLifecycle);
  a.runner = r.GetString(row, "runner");
  a.max_active_leases = static_cast<int>(r.GetInt64(row, "max_active_leases"));
  a.business_link = r.GetString(row, "business_link");
  a.fencing_counter = r.GetInt64(row, "fencing_counter");
  const auto labels = nlohmann::json::parse(r.GetString(row, "labels"));
  for (const auto& [key, value] : labels.items()) {
    a.labels[key] = value.is_string() ? value.get<std::string>() : value.dump();
  }
  return a;
}

WorkItem WorkAt(const Result& r, int row) {
  WorkItem w;
  w.work_item_id = r.GetInt64(row, "work_item_id");
  w.agent_id = r.GetInt64(row, "agent_id");
  w.kind = r.GetString(row, "kind");
  w.payload_json = CompactJson(r.GetString(row, "payload"));
  w.priority = static_cast<int>(r.GetInt64(row, "priority"));
  w.due_at = FromUs(r.GetInt64(row, "due_us"));
  w.idempotency_key = r.GetString(row, "idempotency_key");
  w.attempts = static_cast<int>(r.GetInt64(row, "attempts"));
  w.max_attempts = static_cast<int>(r.GetInt64(row, "max_attempts"));
  w.state = ParseOrThrow(r.GetString(row, "state"), &ParseWorkState);
  w.last_error = r.GetString(row, "last_error");
  w.lease_id = r.GetOptionalInt64(row, r.Column("lease_id"));
  return w;
}

std::vector<WorkItem> WorkRows(const Result& r) {
  std::vector<WorkItem> out;
  out.reserve(static_cast<std::size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i)
    out.push_back(WorkAt(r, i));
  return out;
}

SchedulerRun RunAt(const Result& r, int row) {
  SchedulerRun run;
  run.run_id = r.GetInt64(row, "run_id");
  run.cycle_id = r.GetString(row, "cycle_id");
  run.group = r.GetString(row, "group_name");
  run.instance = r.GetString(row, "instance");
  run.status = ParseOrThrow(r.GetString(row, "status"), &ParseRunStatus);
  run.started_at = FromUs(r.GetInt64(row, "started_us"));
  run.heartbeat_at = FromUs(r.GetInt64(row, "heartbeat_us"));
  if (auto f = r.GetOptionalInt64(row, r.Column("finished_us")))
    run.finished_at = FromUs(*f);
  auto counts = nlohmann::json::parse(r.GetString(row, "counts"));
  auto count = [&](const char* key) { return counts.value(key, 0); };
  run.counts =
      RunCounts{count("due"),    count("dispatched"),   count("deferred"), count("skipped"),
                count("failed"), count("materialized"), count("requeued")};
  run.error = r.GetString(row, "error");
  return run;
}

store::Lease LeaseAt(const Result& r, int row) {
  store::Lease l;
  l.lease_id = r.GetInt64(row, "lease_id");
  l.agent_id = r.GetInt64(row, "agent_id");
  l.work_item_id = r.GetOptionalInt64(row, r.Column("work_item_id")).value_or(0);
  l.fencing_token = r.GetInt64(row, "fencing_token");
  l.holder_instance = r.GetString(row, "holder_instance");
  l.holder_run_id = r.GetInt64(row, "holder_run_id");
  l.acquired_at = FromUs(r.GetInt64(row, "acquired_us"));
  l.renewed_at = FromUs(r.GetInt64(row, "renewed_us"));
  l.expires_at = FromUs(r.GetInt64(row, "expires_us"));
  if (auto rel = r.GetOptionalInt64(row, r.Column("released_us")))
    l.released_at = FromUs(*rel);
  l.release_reason = r.GetString(row, "release_reason");
  return l;
}

std::optional<std::string> Optional(const std::string& s) {
  return s.empty() ? std::nullopt : std::optional<std::string>(s);
}

}  // namespace

namespace {
/// `settings` with the store's own session settings after the caller's:
/// - The server's side of a statement deadline. When a deadline fires the client closes the
///   connection, but the server only notices a closed socket when it next writes to it, so an
///   abandoned claim would go on holding its row and advisory locks until it finished. The
///   server checks its client every second and gives up a statement shortly after the client.
/// - work_mem: a cycle's due scan sorts up to kDueScanFactor * max_dispatch_per_cycle narrow
///   rows and a claim sorts its chunk; the default 4 MB made both spill to disk at 40,000 items.
/// - jit: compiling a statement costs more than the statements of this workload run for.
PostgresStoreSettings WithSessionSettings(PostgresStoreSettings settings) {
  const auto server_timeout = settings.statement_timeout + std::chrono::seconds(2);
  std::string setup = fmt::format(
      "SET client_connection_check_interval = '1s'; SET statement_timeout = '{}ms'; "
      "SET work_mem = '32MB'; SET jit = off",
      std::chrono::duration_cast<std::chrono::milliseconds>(server_timeout).count());
  if (!settings.pool.session_setup.empty())
    setup = settings.pool.session_setup + "; " + setup;
  settings.pool.session_setup = std::move(setup);
  return settings;
}
}  // namespace

PostgresStore::PostgresStore(boost::asio::any_io_executor executor, PostgresStoreSettings settings,
                             logging::Logger log)
    : settings_(WithSessionSettings(std::move(settings))),
      log_(log),
      pool_(executor, settings_.pool, std::move(log)) {}

// Callers pass named Params: GCC 12 destroys a braced temporary twice when it is an argument
// of a coroutine call inside a co_await expression.
Task<Result> PostgresStore::Query(std::string_view sql, Params params) {
  auto connection = co_await pool_.Acquire();
  co_return co_await connection->Execute(sql, std::move(params), settings_.statement_timeout);
}

Task<int> PostgresStore::SchemaVersion() {
  Params none;
  auto present = co_await Query(kMigrationsTableExists, std::move(none));
  if (!present.GetBool(0, "present"))
    co_return 0;  // never migrated
  Params again;
  auto r = co_await Query(kSchemaVersion, std::move(again));
  co_return static_cast<int>(r.GetInt64(0, "version"));
}

Task<void> PostgresStore::PinNowForTests(TimePoint t) {
  const auto us = std::chrono::duration_cast<microseconds>(t.time_since_epoch()).count();
  const auto secs = us / 1'000'000;
  const auto frac = us % 1'000'000;
  // An unambiguous timestamptz literal: epoch seconds through to_timestamp would round.
  auto text = fmt::format("{:%Y-%m-%d %H:%M:%S}.{:06}+00",
                          std::chrono::sys_seconds(std::chrono::seconds(secs)), frac);
  Params params{std::move(text)};
  co_await Query(kPinNow, std::move(params));
}

Task<TimePoint> PostgresStore::Now() {
  Params none;
  auto r = co_await Query(kNow, std::move(none));
  co_return FromUs(r.GetInt64(0, "now_us"));
}

Task<void> PostgresStore::PutToolProfile(ToolProfile profile) {
  if (profile.tool_profile_id.empty()) {
    throw StoreError(StoreError::Kind::kInvalid, "tool profile id must not be empty");
  }
  nlohmann::json overlays = nlohmann::json::object();
  for (const auto& [k, v] : profile.system_overlays)
    overlays[k] = v;
  Params params{profile.tool_profile_id, ArrayLiteral(profile.capabilities),
                ArrayLiteral(profile.operations), overlays.dump()};
  co_await Query(kPutToolProfile, std::move(params));
}

Task<std::vector<ToolProfile>> PostgresStore::ListToolProfiles() {
  Params none;
  auto r = co_await Query(kListToolProfiles, std::move(none));
  std::vector<ToolProfile> out;
  for (int i = 0; i < r.rows(); ++i) {
    ToolProfile p;
    p.tool_profile_id = r.GetString(i, "tool_profile_id");
    p.capabilities = r.GetStringArray(i, "capabilities");
    p.operations = r.GetStringArray(i, "operations");
    const auto overlays = nlohmann::json::parse(r.GetString(i, "system_overlays"));
    for (const auto& [k, v] : overlays.items()) {
      p.system_overlays[k] = v.is_string() ? v.get<std::string>() : v.dump();
    }
    out.push_back(std::move(p));
  }
  co_return out;
}

Task<Agent> PostgresStore::RegisterAgent(NewAgent agent) {
  // The database enforces these rules as well (CHECKs); checking here gives a clearer message.
  if (auto problem = NewAgentProblem(agent); !problem.empty()) {
    throw StoreError(StoreError::Kind::kInvalid, problem);
  }
  nlohmann::json labels = nlohmann::json::object();
  for (const auto& [k, v] : agent.labels)
    labels[k] = v;
  Params params{agent.agent_slug,
                agent.display_name,
                agent.domain_id,
                agent.tool_profile_id,
                std::string(ToString(agent.lifecycle)),
                agent.runner,
                std::to_string(agent.max_active_leases),
                labels.dump(),
                agent.business_link};
  auto r = co_await Query(kRegisterAgent, std::move(params));
  co_return AgentAt(r, 0);
}

Task<std::vector<Agent>> PostgresStore::GetAgents(std::vector<AgentId> ids) {
  Params params{ArrayLiteral(ids)};
  auto r = co_await Query(kGetAgents, std::move(params));
  std::vector<Agent> out;
  out.reserve(static_cast<std::size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i)
    out.push_back(AgentAt(r, i));
  co_return out;
}

Task<std::vector<Agent>> PostgresStore::ListAgents() {
  Params none;
  auto r = co_await Query(kListAgents, std::move(none));
  std::vector<Agent> out;
  out.reserve(static_cast<std::size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i)
    out.push_back(AgentAt(r, i));
  co_return out;
}

Task<bool> PostgresStore::SetAgentLifecycle(std::string slug, Lifecycle lifecycle) {
  Params params{slug, std::string(ToString(lifecycle))};
  auto r = co_await Query(kSetLifecycle, std::move(params));
  co_return r.rows() > 0;
}

Task<EnqueueResult> PostgresStore::EnqueueWork(NewWork work, int default_max_attempts) {
  if (auto problem = PayloadProblem(work.payload_json); !problem.empty()) {
    throw StoreError(StoreError::Kind::kInvalid, problem);
  }
  if (work.kind.empty())
    throw StoreError(StoreError::Kind::kInvalid, "work kind is empty");
  const int max_attempts = work.max_attempts > 0 ? work.max_attempts : default_max_attempts;
  std::optional<std::string> due;
  if (work.due_at)
    due = Us(*work.due_at);
  Params params{work.agent_slug,
                work.kind,
                work.payload_json,
                std::to_string(work.priority),
                due,
                work.idempotency_key,
                std::to_string(max_attempts)};
  auto inserted = co_await Query(kEnqueueWork, std::move(params));
  if (inserted.rows() > 0)
    co_return EnqueueResult{WorkAt(inserted, 0), true};
  if (!work.idempotency_key.empty()) {
    Params by_key{work.idempotency_key};
    auto existing = co_await Query(kWorkByKey, std::move(by_key));
    if (existing.rows() > 0)
      co_return EnqueueResult{WorkAt(existing, 0), false};
  }
  Params by_slug{work.agent_slug};
  auto agent = co_await Query(kAgentExists, std::move(by_slug));
  if (agent.rows() == 0) {
    throw StoreError(StoreError::Kind::kNotFound, "unknown agent '" + work.agent_slug + "'");
  }
  throw StoreError(StoreError::Kind::kInternal, "work item was neither inserted nor found");
}

Task<std::optional<WorkItem>> PostgresStore::GetWork(WorkItemId id) {
  Params params{std::to_string(id)};
  auto r = co_await Query(kGetWork, std::move(params));
  if (r.rows() == 0)
    co_return std::nullopt;
  co_return WorkAt(r, 0);
}

Task<std::vector<WorkItem>> PostgresStore::ListWork(std::optional<WorkState> state) {
  std::optional<std::string> s;
  if (state)
    s = std::string(ToString(*state));
  Params params{s};
  auto r = co_await Query(kListWork, std::move(params));
  co_return WorkRows(r);
}

Task<std::vector<WorkItem>> PostgresStore::SelectDueWork(int limit, int default_max_active) {
  Params params{std::to_string(std::max(limit, 0)), std::to_string(default_max_active),
                std::to_string(kDueScanFactor)};
  auto r = co_await Query(kSelectDueWork, std::move(params));
  co_return WorkRows(r);
}

Task<int> PostgresStore::RequeueExpiredWork() {
  Params none;
  auto r = co_await Query(kRequeueExpired, std::move(none));
  co_return static_cast<int>(r.GetInt64(0, "moved"));
}

Task<ClaimResult> PostgresStore::ClaimCycle(CycleClaim claim) {
  Params params{claim.cycle_id, claim.group, claim.instance, Ms(claim.takeover_after)};
  auto r = co_await Query(kClaimCycle, std::move(params));
  ClaimResult result;
  const auto outcome = r.GetString(0, "outcome");
  bool known = false;
  for (auto o : {ClaimResult::Outcome::kClaimed, ClaimResult::Outcome::kTookOver,
                 ClaimResult::Outcome::kAlreadyCompleted, ClaimResult::Outcome::kRunningElsewhere,
                 ClaimResult::Outcome::kGroupBusy}) {
    if (ToString(o) == outcome) {
      result.outcome = o;
      known = true;
    }
  }
  if (!known)
    throw StoreError(StoreError::Kind::kInternal,
                     "warp.claim_cycle returned an unknown outcome '" + outcome + "'");
  result.run.run_id = r.GetInt64(0, "run_id");
  result.run.cycle_id = r.GetString(0, "cycle_id");
  result.run.group = claim.group;
  result.run.instance = r.GetString(0, "instance");
  result.run.status = ParseOrThrow(r.GetString(0, "status"), &ParseRunStatus);
  result.run.started_at = FromUs(r.GetInt64(0, "started_us"));
  result.run.heartbeat_at = FromUs(r.GetInt64(0, "heartbeat_us"));
  result.abandoned_run = r.GetOptionalInt64(0, r.Column("abandoned_run_id"));
  co_return result;
}

Task<bool> PostgresStore::HeartbeatRun(RunId run) {
  Params params{std::to_string(run)};
  auto r = co_await Query(kHeartbeatRun, std::move(params));
  co_return r.rows() > 0;
}

Task<void> PostgresStore::FinishRun(RunId run, RunStatus status, RunCounts counts,
                                    std::string error) {
  const nlohmann::json c{{"due", counts.due},           {"dispatched", counts.dispatched},
                         {"deferred", counts.deferred}, {"skipped", counts.skipped},
                         {"failed", counts.failed},     {"materialized", counts.materialized},
                         {"requeued", counts.requeued}};
  Params params{std::to_string(run), std::string(ToString(status)), c.dump(), std::move(error)};
  auto r = co_await Query(kFinishRun, std::move(params));
  if (r.rows() > 0)
    co_return;
  // Not running any more (taken over): it stays as it is. Unknown: an error.
  Params by_id{std::to_string(run)};
  auto exists = co_await Query(kRunExists, std::move(by_id));
  if (exists.rows() == 0)
    throw StoreError(StoreError::Kind::kNotFound, "unknown run");
}

Task<std::vector<SchedulerRun>> PostgresStore::ListRuns(std::string cycle_id) {
  Params params{std::move(cycle_id)};
  auto r = co_await Query(kListRuns, std::move(params));
  std::vector<SchedulerRun> out;
  for (int i = 0; i < r.rows(); ++i)
    out.push_back(RunAt(r, i));
  co_return out;
}

Task<std::vector<DispatchDecision>> PostgresStore::ListDecisions(std::string cycle_id) {
  Params params{std::move(cycle_id)};
  auto r = co_await Query(kListDecisions, std::move(params));
  std::vector<DispatchDecision> out;
  for (int i = 0; i < r.rows(); ++i) {
    DispatchDecision d;
    d.run_id = r.GetInt64(i, "run_id");
    d.cycle_id = r.GetString(i, "cycle_id");
    d.work_item_id = r.GetInt64(i, "work_item_id");
    d.agent_id = r.GetInt64(i, "agent_id");
    d.attempt = static_cast<int>(r.GetInt64(i, "attempt"));
    d.decision = ParseOrThrow(r.GetString(i, "decision"), &ParseDecision);
    d.lease_id = r.GetOptionalInt64(i, r.Column("lease_id"));
    d.reason = r.GetString(i, "reason");
    d.at = FromUs(r.GetInt64(i, "at_us"));
    out.push_back(std::move(d));
  }
  co_return out;
}

Task<std::vector<DispatchClaim>> PostgresStore::ClaimDispatches(DispatchBatch batch) {
  std::vector<DispatchClaim> out(batch.candidates.size());
  if (batch.candidates.empty())
    co_return out;
  std::vector<std::int64_t> items;
  std::vector<std::int64_t> agents;
  std::vector<std::int64_t> bounds;
  std::vector<std::optional<std::string>> verdicts;
  std::vector<std::optional<std::string>> reasons;
  std::vector<std::optional<std::string>> channels;
  bool notify = false;
  for (const auto& c : batch.candidates) {
    channels.push_back(Optional(c.notify_channel));
    notify = notify || !c.notify_channel.empty();
    items.push_back(c.work_item_id);
    agents.push_back(c.agent_id);
    bounds.push_back(c.max_active);
    verdicts.push_back(c.verdict ? std::optional<std::string>(std::string(ToString(*c.verdict)))
                                 : std::nullopt);
    reasons.push_back(Optional(c.reason));
  }
  const RetryPolicy& policy = batch.retry;
  Params params{std::to_string(batch.run_id), batch.cycle_id,         batch.instance,
                Ms(batch.lease_ttl),          ArrayLiteral(items),    ArrayLiteral(agents),
                ArrayLiteral(bounds),         ArrayLiteral(verdicts), ArrayLiteral(reasons),
                Ms(policy.backoff),           Ms(policy.backoff_max)};
  if (notify)
    params.push_back(ArrayLiteral(channels));
  auto r = co_await Query(notify ? kClaimDispatchesNotify : kClaimDispatches, std::move(params));

  for (int i = 0; i < r.rows(); ++i) {
    const auto idx = static_cast<std::size_t>(r.GetInt64(i, "idx") - 1);
    const auto& c = batch.candidates.at(idx);
    DispatchClaim& claim = out.at(idx);
    claim.recorded = r.GetBool(i, "recorded");
    if (!claim.recorded)
      continue;
    DispatchDecision& d = claim.decision;
    d.run_id = batch.run_id;
    d.cycle_id = batch.cycle_id;
    d.work_item_id = c.work_item_id;
    d.agent_id = c.agent_id;
    d.attempt = static_cast<int>(r.GetInt64(i, "attempt"));
    d.decision = ParseOrThrow(r.GetString(i, "decision"), &ParseDecision);
    d.reason = r.GetString(i, "reason");
    d.at = FromUs(r.GetInt64(i, "at_us"));
    d.lease_id = r.GetOptionalInt64(i, r.Column("granted_lease"));
    if (d.lease_id) {
      store::Lease lease;
      lease.lease_id = *d.lease_id;
      lease.agent_id = c.agent_id;
      lease.work_item_id = c.work_item_id;
      lease.fencing_token = r.GetInt64(i, "fencing_token");
      lease.holder_instance = batch.instance;
      lease.holder_run_id = batch.run_id;
      lease.acquired_at = lease.renewed_at = d.at;
      lease.expires_at = FromUs(r.GetInt64(i, "expires_us"));
      claim.lease = lease;
    }
    if (!r.IsNull(i, "work_item_id"))
      claim.item = WorkAt(r, i);
  }
  co_return out;
}

Task<std::vector<std::optional<TimePoint>>> PostgresStore::RenewLeases(std::vector<LeaseRef> leases,
                                                                       Duration ttl) {
  std::vector<std::optional<TimePoint>> out(leases.size());
  if (leases.empty())
    co_return out;
  std::vector<std::int64_t> ids;
  std::vector<std::int64_t> tokens;
  for (const auto& l : leases) {
    ids.push_back(l.lease_id);
    tokens.push_back(l.fencing_token);
  }
  Params params{ArrayLiteral(ids), ArrayLiteral(tokens), Ms(ttl)};
  auto r = co_await Query(kRenewLeases, std::move(params));
  std::unordered_map<LeaseId, TimePoint> renewed;
  for (int i = 0; i < r.rows(); ++i) {
    renewed[r.GetInt64(i, "lease_id")] = FromUs(r.GetInt64(i, "expires_us"));
  }
  for (std::size_t i = 0; i < leases.size(); ++i) {
    if (auto it = renewed.find(leases[i].lease_id); it != renewed.end())
      out[i] = it->second;
  }
  co_return out;
}

Task<std::vector<CompletionResult>> PostgresStore::CompleteWorkBatch(
    std::vector<Completion> completions, RetryPolicy retry) {
  std::vector<CompletionResult> out(completions.size());
  if (completions.empty())
    co_return out;
  std::vector<std::int64_t> ids;
  std::vector<std::int64_t> tokens;
  std::vector<std::optional<std::string>> outcomes;
  std::vector<std::optional<std::string>> details;
  std::vector<std::optional<std::string>> transport_errors;
  std::vector<std::optional<std::string>> retries;
  for (const auto& c : completions) {
    ids.push_back(c.lease.lease_id);
    tokens.push_back(c.lease.fencing_token);
    outcomes.emplace_back(c.outcome == Outcome::kDone ? "done" : "failed");
    details.emplace_back(c.detail);
    transport_errors.emplace_back(c.transport_error ? "true" : "false");
    retries.emplace_back(c.retry ? "true" : "false");
  }
  Params params{ArrayLiteral(ids),     ArrayLiteral(tokens),           ArrayLiteral(outcomes),
                ArrayLiteral(details), ArrayLiteral(transport_errors), ArrayLiteral(retries),
                Ms(retry.backoff),     Ms(retry.backoff_max)};
  auto r = co_await Query(kFinishWorkBatch, std::move(params));
  using V = CompletionResult::Verdict;
  for (int i = 0; i < r.rows(); ++i) {
    CompletionResult& result = out.at(static_cast<std::size_t>(r.GetInt64(i, "idx") - 1));
    const auto verdict = r.GetString(i, "verdict");
    for (auto v : {V::kAccepted, V::kAcceptedLate, V::kUnknownLease, V::kReleased, V::kOvertaken}) {
      if (ToString(v) == verdict)
        result.verdict = v;
    }
    if (result.accepted() && r.GetOptionalInt64(i, r.Column("work_item_id")))
      result.item = WorkAt(r, i);
  }
  co_await RecordRefusedCompletions(completions, out);
  co_return out;
}

Task<std::vector<store::Lease>> PostgresStore::ListLeases(std::optional<AgentId> agent,
                                                          bool active_only) {
  std::optional<std::string> a;
  if (agent)
    a = std::to_string(*agent);
  Params params{a, active_only ? "true" : "false"};
  auto r = co_await Query(kListLeases, std::move(params));
  std::vector<store::Lease> out;
  out.reserve(static_cast<std::size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i)
    out.push_back(LeaseAt(r, i));
  co_return out;
}

Task<void> PostgresStore::HeartbeatInstance(InstanceInfo info) {
  Params params{info.instance, info.group, info.host, std::to_string(info.pid), info.version};
  co_await Query(kHeartbeatInstance, std::move(params));
}

}  // namespace warp::store::postgres
