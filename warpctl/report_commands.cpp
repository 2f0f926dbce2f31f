// The read side: status, work list, leases, runs, observations, workspaces list, proposals
// list, and audit leases (the lease invariant over the durable history). Lists are newest
// first and page with --limit and --before ID (keyset paging: a page costs the same however
// deep it is).
#include <sysexits.h>

#include "migrations/schema_version.hpp"
#include "warpctl/commands.hpp"
#include "warpctl/impl/command_context.hpp"

namespace warp::warpctl {

namespace {

using impl::BadData;
using impl::Context;
using impl::Json;
using impl::Table;
using impl::TimeJson;
using impl::TimeText;

constexpr const char* kAgentExists = "SELECT 1 FROM warp.agents WHERE agent_slug = $1";

constexpr const char* kDatabaseTime = "SELECT warp.epoch_us(warp.now()) AS now_us";

constexpr const char* kInstances = R"sql(
SELECT i.instance, i."group", i.host, i.pid, i.version, warp.epoch_us(i.started_at) AS started_us,
       warp.epoch_us(i.heartbeat_at) AS heartbeat_us,
       warp.epoch_us(warp.now()) - warp.epoch_us(i.heartbeat_at) AS age_us
  FROM warp.scheduler_instances i
 ORDER BY i."group", i.instance
)sql";

/// The last three runs of each group an instance belongs to (scheduler_runs_recent per group).
constexpr const char* kRecentRuns = R"sql(
SELECT g."group", r.run_id, r.cycle_id, r.instance, r.status,
       warp.epoch_us(r.started_at) AS started_us, warp.epoch_us(r.finished_at) AS finished_us,
       r.counts::text AS counts, r.error
  FROM (SELECT DISTINCT i."group" FROM warp.scheduler_instances i) g
  CROSS JOIN LATERAL (SELECT s.* FROM warp.scheduler_runs s WHERE s."group" = g."group"
                       ORDER BY s.started_at DESC LIMIT 3) r
 ORDER BY g."group", r.started_at DESC
)sql";

constexpr const char* kActiveLeases = R"sql(
SELECT count(*) AS leases, count(DISTINCT l.agent_id) AS agents
  FROM warp.agent_leases l WHERE l.released_at IS NULL AND l.expires_at > warp.now()
)sql";

/// Open work only (the partial indexes): done items are history, not backlog.
constexpr const char* kBacklog = R"sql(
SELECT w.state, count(*) AS items,
       count(*) FILTER (WHERE w.state IN ('pending', 'failed') AND w.due_at <= warp.now()) AS due,
       warp.epoch_us(min(w.due_at)) AS oldest_due_us
  FROM warp.work_items w
 WHERE w.state IN ('pending', 'failed', 'dispatched', 'dead')
 GROUP BY w.state
)sql";

constexpr const char* kOpenObservations = R"sql(
SELECT o.severity, count(*) AS open
  FROM warp.watchdog_observations o WHERE o.resolved_at IS NULL GROUP BY o.severity
)sql";

constexpr const char* kListWork = R"sql(
SELECT w.work_item_id, a.agent_slug, w.kind, w.state, w.priority,
       warp.epoch_us(w.due_at) AS due_us, w.attempts, w.max_attempts, w.idempotency_key,
       w.lease_id, w.last_error, w.payload::text AS payload,
       warp.epoch_us(w.created_at) AS created_us, warp.epoch_us(w.updated_at) AS updated_us
  FROM warp.work_items w JOIN warp.agents a ON a.agent_id = w.agent_id
 WHERE ($1::text IS NULL OR w.state = $1) AND ($2::text IS NULL OR a.agent_slug = $2)
   AND ($3::bigint IS NULL OR w.work_item_id < $3)
 ORDER BY w.work_item_id DESC
 LIMIT $4::integer
)sql";

constexpr const char* kListLeases = R"sql(
SELECT l.lease_id, l.agent_id, a.agent_slug, l.fencing_token, l.holder_instance,
       l.holder_run_id, l.work_item_id, warp.epoch_us(l.acquired_at) AS acquired_us,
       warp.epoch_us(l.renewed_at) AS renewed_us, warp.epoch_us(l.expires_at) AS expires_us,
       warp.epoch_us(l.released_at) AS released_us, l.release_reason,
       CASE WHEN l.released_at IS NOT NULL THEN 'released'
            WHEN l.expires_at > warp.now() THEN 'active' ELSE 'expired' END AS state
  FROM warp.agent_leases l LEFT JOIN warp.agents a ON a.agent_id = l.agent_id
 WHERE (NOT $1::boolean OR (l.released_at IS NULL AND l.expires_at > warp.now()))
   AND ($2::text IS NULL OR a.agent_slug = $2)
   AND ($3::bigint IS NULL OR l.lease_id < $3)
 ORDER BY l.lease_id DESC
 LIMIT $4::integer
)sql";

constexpr const char* kListRuns = R"sql(
SELECT r.run_id, r.cycle_id, r."group", r.instance, r.status,
       warp.epoch_us(r.started_at) AS started_us, warp.epoch_us(r.heartbeat_at) AS heartbeat_us,
       warp.epoch_us(r.finished_at) AS finished_us, r.counts::text AS counts, r.error
  FROM warp.scheduler_runs r
 WHERE $1::bigint IS NULL OR r.run_id < $1
 ORDER BY r.run_id DESC
 LIMIT $2::integer
)sql";

constexpr const char* kListObservations = R"sql(
SELECT o.observation_id, o.kind, o.subject, o.agent_id, a.agent_slug, o.severity,
       o.evidence::text AS evidence, warp.epoch_us(o.first_seen) AS first_us,
       warp.epoch_us(o.last_seen) AS last_us, o.occurrences,
       warp.epoch_us(o.resolved_at) AS resolved_us
  FROM warp.watchdog_observations o LEFT JOIN warp.agents a ON a.agent_id = o.agent_id
 WHERE (NOT $1::boolean OR o.resolved_at IS NULL) AND ($2::text IS NULL OR o.severity = $2)
   AND ($3::text IS NULL OR a.agent_slug = $3)
   AND ($4::bigint IS NULL OR o.observation_id < $4)
 ORDER BY o.observation_id DESC
 LIMIT $5::integer
)sql";

/// Retention state, as the watchdog's workspace_retention_overdue rule judges it.
constexpr const char* kListWorkspaces = R"sql(
SELECT w.workspace_id, w.path, a.agent_slug, w.lifecycle, w.retention_policy,
       warp.epoch_us(w.retain_until) AS retain_until_us, warp.epoch_us(w.created_at) AS created_us,
       CASE WHEN w.lifecycle = 'deleted' THEN 'deleted'
            WHEN w.retain_until IS NULL THEN 'no_limit'
            WHEN w.retain_until <= warp.now() THEN 'overdue'
            ELSE 'retained' END AS retention_state
  FROM warp.workspaces w LEFT JOIN warp.agents a ON a.agent_id = w.agent_id
 WHERE ($1::text IS NULL OR a.agent_slug = $1) AND ($2::bigint IS NULL OR w.workspace_id < $2)
 ORDER BY w.workspace_id DESC
 LIMIT $3::integer
)sql";

constexpr const char* kListProposals = R"sql(
SELECT p.proposal_id, a.agent_slug, p.title, p.review_status,
       warp.epoch_us(p.created_at) AS created_us, warp.epoch_us(p.updated_at) AS updated_us,
       warp.epoch_us(p.reviewed_at) AS reviewed_us,
       p.review_status IN ('proposed', 'in_review') AS pending,
       warp.epoch_us(warp.now()) - warp.epoch_us(p.created_at) AS age_us
  FROM warp.learning_proposals p JOIN warp.agents a ON a.agent_id = p.agent_id
 WHERE ($1::text IS NULL OR p.review_status = $1) AND ($2::text IS NULL OR a.agent_slug = $2)
   AND ($3::bigint IS NULL OR p.proposal_id < $3)
 ORDER BY p.proposal_id DESC
 LIMIT $4::integer
)sql";

constexpr const char* kLeaseHistorySize = R"sql(
SELECT count(*) AS leases, count(DISTINCT l.agent_id) AS agents FROM warp.agent_leases l
)sql";

constexpr const char* kLeaseViolations = R"sql(
SELECT v.violation, v.agent_id, v.agent_slug, warp.epoch_us(v.at) AS at_us,
       v.evidence::text AS evidence
  FROM warp.lease_invariant_violations($1::integer) v
)sql";

std::string Str(std::int64_t n) {
  return std::to_string(n);
}

Param OptionalParam(const std::optional<std::int64_t>& n) {
  return n ? Param(Str(*n)) : std::nullopt;
}

/// A filter naming an agent must name one that exists (65 otherwise).
void CheckAgentFilter(Context& ctx, const std::optional<std::string>& agent) {
  if (!agent)
    return;
  impl::CheckSlug("agent", *agent);
  if (ctx.db().Query(kAgentExists, {*agent}).empty())
    BadData("agent", "no agent '" + *agent + "'");
}

/// "90s", "12m", "3h", "2d": a rough age for tables.
std::string Age(std::int64_t us) {
  const std::int64_t s = us / 1000000;
  if (s < 120)
    return Str(s) + "s";
  if (s < 7200)
    return Str(s / 60) + "m";
  if (s < 172800)
    return Str(s / 3600) + "h";
  return Str(s / 86400) + "d";
}

/// The non-zero counts of a run, "dispatched=3 deferred=1", for tables.
std::string CountsText(const Json& counts) {
  std::string text;
  for (const auto& [key, value] : counts.items()) {
    if (value.is_number() && value.get<double>() != 0)
      text += (text.empty() ? "" : " ") + key + "=" + value.dump();
  }
  return text.empty() ? "-" : text;
}

std::string Dash(const std::string& text) {
  return text.empty() ? "-" : text;
}

/// Runs a page query with limit + 1 and returns the rows and whether there were more.
struct PageRows {
  Rows rows;
  bool more;
  int shown() const { return more ? rows.size() - 1 : rows.size(); }
};

}  // namespace

int Status(const Options& options, std::ostream& out, std::ostream& err) {
  return impl::RunCommand(options, "status", out, err, [&](Context& ctx, Json& doc) {
    Db& db = ctx.db();
    // One snapshot for every section.
    db.Query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    const auto schema = db.Query(kDatabaseTime);
    const int version = migrations::DatabaseVersion(db.get());
    const auto instances = db.Query(kInstances);
    const auto runs = db.Query(kRecentRuns);
    const auto leases = db.Query(kActiveLeases);
    const auto backlog = db.Query(kBacklog);
    const auto observations = db.Query(kOpenObservations);
    db.Query("COMMIT");

    doc["database_time"] = TimeJson(schema.Int(0, "now_us"));
    doc["schema_version"] = version;
    doc["expected_schema_version"] = migrations::kExpectedSchemaVersion;
    Json inst = Json::array();
    Table inst_table({"INSTANCE", "GROUP", "HOST", "PID", "VERSION", "HEARTBEAT", "AGE"});
    for (int i = 0; i < instances.size(); ++i) {
      inst.push_back({{"instance", instances.Text(i, "instance")},
                      {"group", instances.Text(i, "group")},
                      {"host", instances.Text(i, "host")},
                      {"pid", instances.Int(i, "pid")},
                      {"version", instances.Text(i, "version")},
                      {"started_at", TimeJson(instances.Int(i, "started_us"))},
                      {"heartbeat_at", TimeJson(instances.Int(i, "heartbeat_us"))},
                      {"heartbeat_age_seconds", instances.Int(i, "age_us") / 1e6}});
      inst_table.Add({instances.Text(i, "instance"), instances.Text(i, "group"),
                      Dash(instances.Text(i, "host")), instances.Text(i, "pid"),
                      Dash(instances.Text(i, "version")),
                      TimeText(instances.Int(i, "heartbeat_us")), Age(instances.Int(i, "age_us"))});
    }
    doc["instances"] = std::move(inst);
    Json cycles = Json::array();
    Table run_table(
        {"GROUP", "RUN", "CYCLE", "INSTANCE", "STATUS", "STARTED", "FINISHED", "COUNTS"});
    for (int i = 0; i < runs.size(); ++i) {
      const Json counts = Json::parse(runs.Text(i, "counts"));
      cycles.push_back({{"group", runs.Text(i, "group")},
                        {"run_id", runs.Int(i, "run_id")},
                        {"cycle_id", runs.Text(i, "cycle_id")},
                        {"instance", runs.Text(i, "instance")},
                        {"status", runs.Text(i, "status")},
                        {"started_at", TimeJson(runs.Int(i, "started_us"))},
                        {"finished_at", TimeJson(runs.OptionalInt(i, "finished_us"))},
                        {"counts", counts},
                        {"error", runs.Text(i, "error")}});
      run_table.Add({runs.Text(i, "group"), runs.Text(i, "run_id"), runs.Text(i, "cycle_id"),
                     runs.Text(i, "instance"), runs.Text(i, "status"),
                     TimeText(runs.Int(i, "started_us")),
                     TimeText(runs.OptionalInt(i, "finished_us")), CountsText(counts)});
    }
    doc["recent_cycles"] = std::move(cycles);
    doc["active_leases"] = {{"leases", leases.Int(0, "leases")},
                            {"agents", leases.Int(0, "agents")}};
    Json states = Json::object();
    Table backlog_table({"STATE", "ITEMS", "DUE_NOW", "OLDEST_DUE"});
    for (const char* state : {"pending", "failed", "dispatched", "dead"}) {
      Json entry = {{"items", 0}, {"due_now", 0}, {"oldest_due_at", nullptr}};
      for (int i = 0; i < backlog.size(); ++i) {
        if (backlog.Text(i, "state") == state)
          entry = {{"items", backlog.Int(i, "items")},
                   {"due_now", backlog.Int(i, "due")},
                   {"oldest_due_at", TimeJson(backlog.OptionalInt(i, "oldest_due_us"))}};
      }
      backlog_table.Add({state, entry["items"].dump(), entry["due_now"].dump(),
                         entry["oldest_due_at"].is_null()
                             ? "-"
                             : entry["oldest_due_at"].get<std::string>().substr(0, 19) + "Z"});
      states[state] = std::move(entry);
    }
    doc["backlog"] = std::move(states);
    Json open = {{"critical", 0}, {"warning", 0}, {"info", 0}};
    for (int i = 0; i < observations.size(); ++i)
      open[observations.Text(i, "severity")] = observations.Int(i, "open");
    doc["open_observations"] = open;
    if (!ctx.json()) {
      out << fmt::format("database time {}; schema version {} (this warpctl expects {})\n\n",
                         TimeText(schema.Int(0, "now_us")), version,
                         migrations::kExpectedSchemaVersion);
      out << "INSTANCES\n";
      inst_table.Print(out, "(no instance has registered)");
      out << "\nRECENT CYCLES\n";
      run_table.Print(out, "(no cycles)");
      out << fmt::format("\nACTIVE LEASES  {} on {} agent(s)\n", leases.Int(0, "leases"),
                         leases.Int(0, "agents"));
      out << "\nBACKLOG\n";
      backlog_table.Print(out);
      out << fmt::format("\nOPEN OBSERVATIONS  critical {}, warning {}, info {}\n",
                         open["critical"].get<std::int64_t>(), open["warning"].get<std::int64_t>(),
                         open["info"].get<std::int64_t>());
    }
    return EX_OK;
  });
}

int ListWork(const Options& options, const WorkFilter& filter, const Page& page, std::ostream& out,
             std::ostream& err) {
  return impl::RunCommand(options, "work list", out, err, [&](Context& ctx, Json& doc) {
    impl::CheckLimit(page.limit);
    CheckAgentFilter(ctx, filter.agent);
    const auto rows = ctx.db().Query(
        kListWork, {filter.state, filter.agent, OptionalParam(page.before), Str(page.limit + 1)});
    const PageRows p{rows, rows.size() > page.limit};
    Json items = Json::array();
    Table table({"ID", "AGENT", "KIND", "STATE", "PRIORITY", "DUE", "ATTEMPTS", "LEASE", "KEY",
                 "LAST_ERROR"});
    for (int i = 0; i < p.shown(); ++i) {
      const auto lease = rows.OptionalInt(i, "lease_id");
      items.push_back({{"work_item_id", rows.Int(i, "work_item_id")},
                       {"agent_slug", rows.Text(i, "agent_slug")},
                       {"kind", rows.Text(i, "kind")},
                       {"state", rows.Text(i, "state")},
                       {"priority", rows.Int(i, "priority")},
                       {"due_at", TimeJson(rows.Int(i, "due_us"))},
                       {"attempts", rows.Int(i, "attempts")},
                       {"max_attempts", rows.Int(i, "max_attempts")},
                       {"idempotency_key", rows.Text(i, "idempotency_key")},
                       {"lease_id", lease ? Json(*lease) : Json(nullptr)},
                       {"last_error", rows.Text(i, "last_error")},
                       {"payload", Json::parse(rows.Text(i, "payload"))},
                       {"created_at", TimeJson(rows.Int(i, "created_us"))},
                       {"updated_at", TimeJson(rows.Int(i, "updated_us"))}});
      table.Add({rows.Text(i, "work_item_id"), rows.Text(i, "agent_slug"), rows.Text(i, "kind"),
                 rows.Text(i, "state"), rows.Text(i, "priority"), TimeText(rows.Int(i, "due_us")),
                 rows.Text(i, "attempts") + "/" + rows.Text(i, "max_attempts"),
                 lease ? Str(*lease) : "-", rows.Text(i, "idempotency_key"),
                 Dash(rows.Text(i, "last_error"))});
    }
    doc["work_items"] = std::move(items);
    if (!ctx.json())
      table.Print(out, "(no work items)");
    impl::PageEnd(ctx, doc, out, p.more, p.shown() ? rows.Int(p.shown() - 1, "work_item_id") : 0);
    return EX_OK;
  });
}

int ListLeases(const Options& options, const LeaseFilter& filter, const Page& page,
               std::ostream& out, std::ostream& err) {
  return impl::RunCommand(options, "leases", out, err, [&](Context& ctx, Json& doc) {
    impl::CheckLimit(page.limit);
    CheckAgentFilter(ctx, filter.agent);
    const auto rows =
        ctx.db().Query(kListLeases, {filter.active ? "true" : "false", filter.agent,
                                     OptionalParam(page.before), Str(page.limit + 1)});
    const PageRows p{rows, rows.size() > page.limit};
    Json leases = Json::array();
    Table table({"LEASE", "AGENT", "TOKEN", "HOLDER", "RUN", "WORK", "ACQUIRED", "EXPIRES", "STATE",
                 "RELEASED", "REASON"});
    for (int i = 0; i < p.shown(); ++i) {
      const auto run = rows.OptionalInt(i, "holder_run_id");
      const auto work = rows.OptionalInt(i, "work_item_id");
      leases.push_back(
          {{"lease_id", rows.Int(i, "lease_id")},
           {"agent_id", rows.Int(i, "agent_id")},
           {"agent_slug",
            rows.Optional(i, "agent_slug") ? Json(rows.Text(i, "agent_slug")) : Json(nullptr)},
           {"fencing_token", rows.Int(i, "fencing_token")},
           {"holder_instance", rows.Text(i, "holder_instance")},
           {"holder_run_id", run ? Json(*run) : Json(nullptr)},
           {"work_item_id", work ? Json(*work) : Json(nullptr)},
           {"acquired_at", TimeJson(rows.Int(i, "acquired_us"))},
           {"renewed_at", TimeJson(rows.Int(i, "renewed_us"))},
           {"expires_at", TimeJson(rows.Int(i, "expires_us"))},
           {"released_at", TimeJson(rows.OptionalInt(i, "released_us"))},
           {"release_reason", rows.Text(i, "release_reason")},
           {"state", rows.Text(i, "state")}});
      table.Add({rows.Text(i, "lease_id"), Dash(rows.Text(i, "agent_slug")),
                 rows.Text(i, "fencing_token"), rows.Text(i, "holder_instance"),
                 run ? Str(*run) : "-", work ? Str(*work) : "-",
                 TimeText(rows.Int(i, "acquired_us")), TimeText(rows.Int(i, "expires_us")),
                 rows.Text(i, "state"), TimeText(rows.OptionalInt(i, "released_us")),
                 Dash(rows.Text(i, "release_reason"))});
    }
    doc["leases"] = std::move(leases);
    if (!ctx.json())
      table.Print(out, filter.active ? "(no active leases)" : "(no leases)");
    impl::PageEnd(ctx, doc, out, p.more, p.shown() ? rows.Int(p.shown() - 1, "lease_id") : 0);
    return EX_OK;
  });
}

int ListRuns(const Options& options, const Page& page, std::ostream& out, std::ostream& err) {
  return impl::RunCommand(options, "runs", out, err, [&](Context& ctx, Json& doc) {
    impl::CheckLimit(page.limit);
    const auto rows = ctx.db().Query(kListRuns, {OptionalParam(page.before), Str(page.limit + 1)});
    const PageRows p{rows, rows.size() > page.limit};
    Json runs = Json::array();
    Table table(
        {"RUN", "CYCLE", "GROUP", "INSTANCE", "STATUS", "STARTED", "FINISHED", "COUNTS", "ERROR"});
    for (int i = 0; i < p.shown(); ++i) {
      const Json counts = Json::parse(rows.Text(i, "counts"));
      runs.push_back({{"run_id", rows.Int(i, "run_id")},
                      {"cycle_id", rows.Text(i, "cycle_id")},
                      {"group", rows.Text(i, "group")},
                      {"instance", rows.Text(i, "instance")},
                      {"status", rows.Text(i, "status")},
                      {"started_at", TimeJson(rows.Int(i, "started_us"))},
                      {"heartbeat_at", TimeJson(rows.Int(i, "heartbeat_us"))},
                      {"finished_at", TimeJson(rows.OptionalInt(i, "finished_us"))},
                      {"counts", counts},
                      {"error", rows.Text(i, "error")}});
      table.Add({rows.Text(i, "run_id"), rows.Text(i, "cycle_id"), rows.Text(i, "group"),
                 rows.Text(i, "instance"), rows.Text(i, "status"),
                 TimeText(rows.Int(i, "started_us")), TimeText(rows.OptionalInt(i, "finished_us")),
                 CountsText(counts), Dash(rows.Text(i, "error"))});
    }
    doc["runs"] = std::move(runs);
    if (!ctx.json())
      table.Print(out, "(no runs)");
    impl::PageEnd(ctx, doc, out, p.more, p.shown() ? rows.Int(p.shown() - 1, "run_id") : 0);
    return EX_OK;
  });
}

int ListObservations(const Options& options, const ObservationFilter& filter, const Page& page,
                     std::ostream& out, std::ostream& err) {
  return impl::RunCommand(options, "observations", out, err, [&](Context& ctx, Json& doc) {
    impl::CheckLimit(page.limit);
    CheckAgentFilter(ctx, filter.agent);
    const auto rows = ctx.db().Query(kListObservations,
                                     {filter.open ? "true" : "false", filter.severity, filter.agent,
                                      OptionalParam(page.before), Str(page.limit + 1)});
    const PageRows p{rows, rows.size() > page.limit};
    Json list = Json::array();
    Table table({"ID", "KIND", "SUBJECT", "AGENT", "SEVERITY", "FIRST_SEEN", "LAST_SEEN", "N",
                 "RESOLVED", "EVIDENCE"});
    for (int i = 0; i < p.shown(); ++i) {
      const auto agent_id = rows.OptionalInt(i, "agent_id");
      list.push_back({{"observation_id", rows.Int(i, "observation_id")},
                      {"kind", rows.Text(i, "kind")},
                      {"subject", rows.Text(i, "subject")},
                      {"agent_id", agent_id ? Json(*agent_id) : Json(nullptr)},
                      {"agent_slug", agent_id ? Json(rows.Text(i, "agent_slug")) : Json(nullptr)},
                      {"severity", rows.Text(i, "severity")},
                      {"evidence", Json::parse(rows.Text(i, "evidence"))},
                      {"first_seen", TimeJson(rows.Int(i, "first_us"))},
                      {"last_seen", TimeJson(rows.Int(i, "last_us"))},
                      {"occurrences", rows.Int(i, "occurrences")},
                      {"resolved_at", TimeJson(rows.OptionalInt(i, "resolved_us"))}});
      table.Add({rows.Text(i, "observation_id"), rows.Text(i, "kind"), rows.Text(i, "subject"),
                 Dash(rows.Text(i, "agent_slug")), rows.Text(i, "severity"),
                 TimeText(rows.Int(i, "first_us")), TimeText(rows.Int(i, "last_us")),
                 rows.Text(i, "occurrences"), TimeText(rows.OptionalInt(i, "resolved_us")),
                 rows.Text(i, "evidence")});
    }
    doc["observations"] = std::move(list);
    if (!ctx.json())
      table.Print(out, "(no observations)");
    impl::PageEnd(ctx, doc, out, p.more, p.shown() ? rows.Int(p.shown() - 1, "observation_id") : 0);
    return EX_OK;
  });
}

int ListWorkspaces(const Options& options, const std::optional<std::string>& agent,
                   const Page& page, std::ostream& out, std::ostream& err) {
  return impl::RunCommand(options, "workspaces list", out, err, [&](Context& ctx, Json& doc) {
    impl::CheckLimit(page.limit);
    CheckAgentFilter(ctx, agent);
    const auto rows =
        ctx.db().Query(kListWorkspaces, {agent, OptionalParam(page.before), Str(page.limit + 1)});
    const PageRows p{rows, rows.size() > page.limit};
    Json list = Json::array();
    Table table({"ID", "PATH", "AGENT", "LIFECYCLE", "POLICY", "RETAIN_UNTIL", "RETENTION"});
    for (int i = 0; i < p.shown(); ++i) {
      const auto owner = rows.Optional(i, "agent_slug");
      list.push_back({{"workspace_id", rows.Int(i, "workspace_id")},
                      {"path", rows.Text(i, "path")},
                      {"agent_slug", owner ? Json(*owner) : Json(nullptr)},
                      {"lifecycle", rows.Text(i, "lifecycle")},
                      {"retention_policy", rows.Text(i, "retention_policy")},
                      {"retain_until", TimeJson(rows.OptionalInt(i, "retain_until_us"))},
                      {"retention_state", rows.Text(i, "retention_state")},
                      {"created_at", TimeJson(rows.Int(i, "created_us"))}});
      table.Add({rows.Text(i, "workspace_id"), rows.Text(i, "path"), owner.value_or("-"),
                 rows.Text(i, "lifecycle"), Dash(rows.Text(i, "retention_policy")),
                 TimeText(rows.OptionalInt(i, "retain_until_us")),
                 rows.Text(i, "retention_state")});
    }
    doc["workspaces"] = std::move(list);
    if (!ctx.json())
      table.Print(out, "(no workspaces)");
    impl::PageEnd(ctx, doc, out, p.more, p.shown() ? rows.Int(p.shown() - 1, "workspace_id") : 0);
    return EX_OK;
  });
}

int ListProposals(const Options& options, const std::optional<std::string>& status,
                  const std::optional<std::string>& agent, const Page& page, std::ostream& out,
                  std::ostream& err) {
  return impl::RunCommand(options, "proposals list", out, err, [&](Context& ctx, Json& doc) {
    impl::CheckLimit(page.limit);
    CheckAgentFilter(ctx, agent);
    const auto rows = ctx.db().Query(
        kListProposals, {status, agent, OptionalParam(page.before), Str(page.limit + 1)});
    const PageRows p{rows, rows.size() > page.limit};
    Json list = Json::array();
    Table table({"ID", "AGENT", "STATUS", "CREATED", "REVIEWED", "WAITING", "TITLE"});
    for (int i = 0; i < p.shown(); ++i) {
      const bool pending = rows.Bool(i, "pending");
      list.push_back({{"proposal_id", rows.Int(i, "proposal_id")},
                      {"agent_slug", rows.Text(i, "agent_slug")},
                      {"title", rows.Text(i, "title")},
                      {"review_status", rows.Text(i, "review_status")},
                      {"pending_review", pending},
                      {"created_at", TimeJson(rows.Int(i, "created_us"))},
                      {"updated_at", TimeJson(rows.Int(i, "updated_us"))},
                      {"reviewed_at", TimeJson(rows.OptionalInt(i, "reviewed_us"))}});
      table.Add({rows.Text(i, "proposal_id"), rows.Text(i, "agent_slug"),
                 rows.Text(i, "review_status"), TimeText(rows.Int(i, "created_us")),
                 TimeText(rows.OptionalInt(i, "reviewed_us")),
                 pending ? Age(rows.Int(i, "age_us")) : "-", Dash(rows.Text(i, "title"))});
    }
    doc["proposals"] = std::move(list);
    if (!ctx.json())
      table.Print(out, "(no learning proposals)");
    impl::PageEnd(ctx, doc, out, p.more, p.shown() ? rows.Int(p.shown() - 1, "proposal_id") : 0);
    return EX_OK;
  });
}

int AuditLeases(const Options& options, std::optional<int> default_max_active, std::ostream& out,
                std::ostream& err) {
  return impl::RunCommand(options, "audit leases", out, err, [&](Context& ctx, Json& doc) {
    if (default_max_active && *default_max_active < 1)
      BadData("default-max-active", fmt::format("{} is below 1", *default_max_active));
    const int bound = default_max_active.value_or(
        options.config_path ? ctx.settings().leasing.default_max_active : 1);
    Db& db = ctx.db();
    db.Query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    const auto size = db.Query(kLeaseHistorySize);
    const auto rows = db.Query(kLeaseViolations, {Str(bound)});
    db.Query("COMMIT");
    Json violations = Json::array();
    for (int i = 0; i < rows.size(); ++i) {
      const auto slug = rows.Optional(i, "agent_slug");
      const Json evidence = Json::parse(rows.Text(i, "evidence"));
      violations.push_back({{"violation", rows.Text(i, "violation")},
                            {"agent_id", rows.Int(i, "agent_id")},
                            {"agent_slug", slug ? Json(*slug) : Json(nullptr)},
                            {"at", TimeJson(rows.Int(i, "at_us"))},
                            {"evidence", evidence}});
      if (!ctx.json())
        out << fmt::format("VIOLATION {} agent {} (id {}) at {}\n  evidence: {}\n",
                           rows.Text(i, "violation"), slug.value_or("?"), rows.Text(i, "agent_id"),
                           impl::Rfc3339(rows.Int(i, "at_us"), true), evidence.dump());
    }
    doc["default_max_active"] = bound;
    doc["leases_checked"] = size.Int(0, "leases");
    doc["agents_checked"] = size.Int(0, "agents");
    doc["violations"] = std::move(violations);
    const std::string summary =
        fmt::format("checked {} lease(s) of {} agent(s): {} violation(s) of the lease invariant",
                    size.Int(0, "leases"), size.Int(0, "agents"), rows.size());
    if (!ctx.json())
      out << summary << "\n";
    if (!rows.empty()) {
      err << "warpctl: " << summary << "\n";
      doc["error"] = summary;
      return 1;
    }
    return EX_OK;
  });
}

}  // namespace warp::warpctl
