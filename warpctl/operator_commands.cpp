// The commands that change things: agents register|pause|resume|retire, enqueue, complete
// (and agents list, their read side). Each change is one transaction that also writes its
// audit_events row (actor: the OS user; event types agent.register, agent.pause,
// agent.resume, agent.retire, work.enqueue, work.complete; subjects agent:SLUG, work:ID,
// lease:ID).
#include <sysexits.h>

#include <random>

#include "warpctl/commands.hpp"
#include "warpctl/impl/command_context.hpp"

namespace warp::warpctl {

namespace {

using impl::BadData;
using impl::Context;
using impl::Json;
using impl::Refused;
using impl::Table;
using impl::TimeJson;
using impl::TimeText;

/// The payload limit of warp.work_items (its CHECK) and of --detail.
constexpr std::size_t kMaxPayloadBytes = 65536;

constexpr const char* kListAgents = R"sql(
SELECT a.agent_id, a.agent_slug, a.display_name, a.domain_id, a.tool_profile_id, a.lifecycle,
       a.runner, a.max_active_leases, a.business_link, a.fencing_counter,
       warp.epoch_us(a.created_at) AS created_us, warp.epoch_us(a.updated_at) AS updated_us,
       p.tool_profile_id IS NOT NULL AS profile_exists,
       (SELECT count(*) FROM warp.agent_leases l
         WHERE l.agent_id = a.agent_id AND l.released_at IS NULL
           AND l.expires_at > warp.now()) AS active_leases
  FROM warp.agents a LEFT JOIN warp.tool_profiles p ON p.tool_profile_id = a.tool_profile_id
 WHERE $1::text IS NULL OR a.lifecycle = $1
 ORDER BY a.agent_slug
)sql";

constexpr const char* kToolProfileExists =
    "SELECT 1 FROM warp.tool_profiles WHERE tool_profile_id = $1";

constexpr const char* kInsertAgent = R"sql(
INSERT INTO warp.agents (agent_slug, display_name, domain_id, tool_profile_id, runner,
                         max_active_leases, business_link)
VALUES ($1, $2, $3, $4, $5, $6::integer, $7)
ON CONFLICT (agent_slug) DO NOTHING
RETURNING agent_id
)sql";

constexpr const char* kAgentId = "SELECT agent_id FROM warp.agents WHERE agent_slug = $1";

/// Serializes a lifecycle change with the dispatcher's claims of the agent (they hold this
/// lock while they lease it), so that a claim in flight commits first and later ones see it.
constexpr const char* kLockAgent =
    "SELECT pg_advisory_xact_lock(warp.agent_lock_key($1::bigint)) IS NULL AS locked";

constexpr const char* kAgentForUpdate = R"sql(
SELECT a.lifecycle,
       (SELECT count(*) FROM warp.agent_leases l
         WHERE l.agent_id = a.agent_id AND l.released_at IS NULL
           AND l.expires_at > warp.now()) AS active_leases
  FROM warp.agents a WHERE a.agent_id = $1::bigint FOR UPDATE
)sql";

constexpr const char* kSetLifecycle =
    "UPDATE warp.agents SET lifecycle = $2 WHERE agent_id = $1::bigint";

constexpr const char* kAgentForWork = R"sql(
SELECT a.agent_id, a.lifecycle, a.tool_profile_id,
       coalesce($2 = ANY (p.operations), false) AS kind_allowed,
       p.tool_profile_id IS NOT NULL AS profile_exists
  FROM warp.agents a LEFT JOIN warp.tool_profiles p ON p.tool_profile_id = a.tool_profile_id
 WHERE a.agent_slug = $1
)sql";

constexpr const char* kInsertWork = R"sql(
INSERT INTO warp.work_items (agent_id, kind, payload, priority, due_at, idempotency_key,
                             max_attempts)
VALUES ($1::bigint, $2, $3::jsonb, $4::integer,
        coalesce(to_timestamp($5::numeric / 1000000), warp.now()), $6, $7::integer)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING work_item_id, state, warp.epoch_us(due_at) AS due_us
)sql";

constexpr const char* kWorkByKey = R"sql(
SELECT w.work_item_id, w.agent_id, a.agent_slug, w.kind, w.state,
       warp.epoch_us(w.due_at) AS due_us
  FROM warp.work_items w JOIN warp.agents a ON a.agent_id = w.agent_id
 WHERE w.idempotency_key = $1
)sql";

constexpr const char* kCompleteWork =
    "SELECT warp.complete_work($1::bigint, $2::bigint, $3, $4::jsonb) AS verdict";

constexpr const char* kLeaseAfterCompletion = R"sql(
SELECT l.work_item_id, a.agent_slug, w.state, w.attempts, w.last_error,
       warp.epoch_us(w.due_at) AS due_us
  FROM warp.agent_leases l
  LEFT JOIN warp.agents a ON a.agent_id = l.agent_id
  LEFT JOIN warp.work_items w ON w.work_item_id = l.work_item_id
 WHERE l.lease_id = $1::bigint
)sql";

std::string Str(std::int64_t n) {
  return std::to_string(n);
}

/// A fresh idempotency key for an enqueue without --key.
std::string RandomKey() {
  std::random_device random;
  return fmt::format("warpctl:{:08x}{:08x}{:08x}{:08x}", random(), random(), random(), random());
}

const char* ActionVerb(LifecycleAction action) {
  switch (action) {
    case LifecycleAction::kPause:
      return "pause";
    case LifecycleAction::kResume:
      return "resume";
    case LifecycleAction::kRetire:
      return "retire";
  }
  return "?";
}

}  // namespace

int ListAgents(const Options& options, const std::optional<std::string>& lifecycle,
               std::ostream& out, std::ostream& err) {
  return impl::RunCommand(options, "agents list", out, err, [&](Context& ctx, Json& doc) {
    const auto rows = ctx.db().Query(kListAgents, {lifecycle});
    Json agents = Json::array();
    Table table({"SLUG", "ID", "DOMAIN", "TOOL_PROFILE", "RUNNER", "LIFECYCLE", "MAX_ACTIVE",
                 "ACTIVE_LEASES", "BUSINESS_LINK"});
    for (int i = 0; i < rows.size(); ++i) {
      const auto max_active = rows.OptionalInt(i, "max_active_leases");
      agents.push_back({
          {"agent_id", rows.Int(i, "agent_id")},
          {"agent_slug", rows.Text(i, "agent_slug")},
          {"display_name", rows.Text(i, "display_name")},
          {"domain_id", rows.Text(i, "domain_id")},
          {"tool_profile_id", rows.Text(i, "tool_profile_id")},
          {"tool_profile_exists", rows.Bool(i, "profile_exists")},
          {"lifecycle", rows.Text(i, "lifecycle")},
          {"runner", rows.Text(i, "runner")},
          {"max_active_leases", max_active ? Json(*max_active) : Json(nullptr)},
          {"active_leases", rows.Int(i, "active_leases")},
          {"business_link", rows.Text(i, "business_link")},
          {"fencing_counter", rows.Int(i, "fencing_counter")},
          {"created_at", TimeJson(rows.Int(i, "created_us"))},
          {"updated_at", TimeJson(rows.Int(i, "updated_us"))},
      });
      table.Add(
          {rows.Text(i, "agent_slug"), rows.Text(i, "agent_id"),
           rows.Text(i, "domain_id").empty() ? "-" : rows.Text(i, "domain_id"),
           rows.Text(i, "tool_profile_id") + (rows.Bool(i, "profile_exists") ? "" : " (missing)"),
           rows.Text(i, "runner"), rows.Text(i, "lifecycle"),
           max_active ? Str(*max_active) : "default", rows.Text(i, "active_leases"),
           rows.Text(i, "business_link")});
    }
    doc["agents"] = std::move(agents);
    if (!ctx.json())
      table.Print(out, "(no agents)");
    return EX_OK;
  });
}

int RegisterAgent(const Options& options, const RegisterAgentArgs& args, std::ostream& out,
                  std::ostream& err) {
  return impl::RunCommand(options, "agents register", out, err, [&](Context& ctx, Json& doc) {
    impl::CheckSlug("slug", args.slug);
    if (args.business_link.find_first_not_of(" \t\r\n") == std::string::npos)
      BadData("business-link",
              "a persistent agent needs a business link (the Spindle registration request)");
    if (args.tool_profile.empty())
      BadData("tool-profile", "must not be empty");
    if (args.max_active && *args.max_active < 1)
      BadData("max-active", fmt::format("{} is below 1", *args.max_active));
    // The runner must be one the operator declared in the config (SPEC section 6).
    const auto& runners = ctx.settings().runners;
    if (!runners.contains(args.runner)) {
      std::string known;
      for (const auto& [name, runner] : runners)
        known += (known.empty() ? "" : ", ") + name;
      BadData("runner", fmt::format("no runner '{}' in {} (configured: {})", args.runner,
                                    options.config_path.value_or(kDefaultConfigPath).string(),
                                    known.empty() ? "none" : known));
    }
    Db& db = ctx.db();
    Transaction tx(db);
    if (db.Query(kToolProfileExists, {args.tool_profile}).empty())
      BadData("tool-profile", "no tool profile '" + args.tool_profile + "' in the database");
    const auto max_active = args.max_active ? Param(Str(*args.max_active)) : std::nullopt;
    const auto inserted =
        db.Query(kInsertAgent, {args.slug, args.display_name, args.domain, args.tool_profile,
                                args.runner, max_active, args.business_link});
    if (inserted.empty())
      Refused("agent '" + args.slug + "' already exists");
    const auto id = inserted.Int(0, "agent_id");
    Json agent = {{"agent_id", id},
                  {"agent_slug", args.slug},
                  {"display_name", args.display_name},
                  {"domain_id", args.domain},
                  {"tool_profile_id", args.tool_profile},
                  {"runner", args.runner},
                  {"max_active_leases", args.max_active ? Json(*args.max_active) : Json(nullptr)},
                  {"business_link", args.business_link},
                  {"lifecycle", "active"}};
    impl::Audit(ctx, "agent.register", "agent:" + args.slug, agent);
    tx.Commit();
    doc["agent"] = std::move(agent);
    if (!ctx.json())
      out << fmt::format("registered agent {} (id {}), active\n", args.slug, id);
    return EX_OK;
  });
}

int ChangeLifecycle(const Options& options, LifecycleAction action, const std::string& slug,
                    std::ostream& out, std::ostream& err) {
  const std::string verb = ActionVerb(action);
  return impl::RunCommand(options, "agents " + verb, out, err, [&](Context& ctx, Json& doc) {
    impl::CheckSlug("slug", slug);
    Db& db = ctx.db();
    Transaction tx(db);
    const auto found = db.Query(kAgentId, {slug});
    if (found.empty())
      BadData("slug", "no agent '" + slug + "'");
    const std::string id = found.Text(0, "agent_id");
    db.Query(kLockAgent, {id});
    const auto agent = db.Query(kAgentForUpdate, {id});
    const std::string from = agent.Text(0, "lifecycle");
    const auto active_leases = agent.Int(0, "active_leases");
    const std::string to = action == LifecycleAction::kPause    ? "paused"
                           : action == LifecycleAction::kResume ? "active"
                                                                : "retired";
    if (from == "retired" && to != "retired")
      Refused(fmt::format("agent {} is retired for good; it cannot be {}d", slug, verb));
    doc["agent_slug"] = slug;
    doc["from"] = from;
    doc["to"] = to;
    doc["changed"] = from != to;
    doc["active_leases"] = active_leases;
    if (from == to) {
      if (!ctx.json())
        out << fmt::format("agent {} is already {}; nothing changed\n", slug, to);
      return EX_OK;
    }
    db.Query(kSetLifecycle, {id, to});
    impl::Audit(ctx, "agent." + verb, "agent:" + slug,
                {{"agent_id", std::stoll(id)}, {"from", from}, {"to", to}});
    tx.Commit();
    if (!ctx.json()) {
      out << fmt::format("agent {}: {} -> {}", slug, from, to);
      if (to != "active" && active_leases > 0)
        out << fmt::format(" ({} active lease(s) run to completion; no new ones)", active_leases);
      out << "\n";
    }
    return EX_OK;
  });
}

int Enqueue(const Options& options, const EnqueueArgs& args, std::ostream& out, std::ostream& err) {
  return impl::RunCommand(options, "enqueue", out, err, [&](Context& ctx, Json& doc) {
    impl::CheckSlug("agent", args.agent);
    if (args.kind.empty() || args.kind.size() > 200 ||
        args.kind.find_first_of(" \t\r\n") != std::string::npos)
      BadData("kind", "must be 1 to 200 characters without white space");
    const Json payload = args.payload
                             ? impl::ParseObject("payload", *args.payload, kMaxPayloadBytes)
                             : Json::object();
    const std::string key = args.key.value_or(RandomKey());
    if (key.empty() || key.size() > 500)
      BadData("key", "must be 1 to 500 characters");
    if (args.max_attempts && *args.max_attempts < 1)
      BadData("max-attempts", fmt::format("{} is below 1", *args.max_attempts));
    const int max_attempts =
        args.max_attempts.value_or(options.config_path ? ctx.settings().scheduler.max_attempts : 5);
    std::optional<std::int64_t> due;
    if (args.due)
      due = impl::ParseTime(ctx, "due", *args.due);

    Db& db = ctx.db();
    Transaction tx(db);
    const auto agent = db.Query(kAgentForWork, {args.agent, args.kind});
    if (agent.empty())
      BadData("agent", "no agent '" + args.agent + "'");
    const std::string lifecycle = agent.Text(0, "lifecycle");
    if (lifecycle == "retired")
      Refused("agent " + args.agent + " is retired: it takes no new work");
    const std::string agent_id = agent.Text(0, "agent_id");
    Rows inserted = [&] {
      try {
        return db.Query(kInsertWork,
                        {agent_id, args.kind, payload.dump(), Str(args.priority),
                         due ? Param(Str(*due)) : std::nullopt, key, Str(max_attempts)});
      } catch (const DbError& e) {
        if (e.sqlstate() == "23514" && e.constraint() == "work_items_payload_check")
          BadData("payload", fmt::format("larger than {} bytes as stored", kMaxPayloadBytes));
        throw;
      }
    }();
    Json item = {{"agent_slug", args.agent}, {"kind", args.kind}, {"idempotency_key", key}};
    if (inserted.empty()) {
      const auto existing = db.Query(kWorkByKey, {key});
      const std::string other_agent = existing.Text(0, "agent_slug");
      const std::string other_kind = existing.Text(0, "kind");
      if (other_agent != args.agent || other_kind != args.kind)
        Refused(
            fmt::format("key: idempotency key '{}' already names work item {} of agent {} "
                        "(kind {})",
                        key, existing.Text(0, "work_item_id"), other_agent, other_kind));
      item["work_item_id"] = existing.Int(0, "work_item_id");
      item["state"] = existing.Text(0, "state");
      item["due_at"] = TimeJson(existing.Int(0, "due_us"));
      doc["created"] = false;
      doc["work_item"] = std::move(item);
      tx.Commit();
      if (!ctx.json())
        out << fmt::format(
            "work item {} already exists with key {} (state {}); nothing "
            "enqueued\n",
            existing.Text(0, "work_item_id"), key, existing.Text(0, "state"));
      return EX_OK;
    }
    const auto id = inserted.Int(0, "work_item_id");
    item["work_item_id"] = id;
    item["state"] = inserted.Text(0, "state");
    item["priority"] = args.priority;
    item["due_at"] = TimeJson(inserted.Int(0, "due_us"));
    item["max_attempts"] = max_attempts;
    impl::Audit(ctx, "work.enqueue", "work:" + Str(id),
                {{"work_item_id", id},
                 {"agent_slug", args.agent},
                 {"kind", args.kind},
                 {"idempotency_key", key},
                 {"priority", args.priority},
                 {"due_at", item["due_at"]},
                 {"max_attempts", max_attempts},
                 {"payload_bytes", payload.dump().size()}});
    tx.Commit();
    std::vector<std::string> warnings;
    if (!agent.Bool(0, "profile_exists"))
      warnings.push_back(
          fmt::format("tool profile '{}' of agent {} does not exist: the "
                      "dispatcher will skip this work (skipped_capability)",
                      agent.Text(0, "tool_profile_id"), args.agent));
    else if (!agent.Bool(0, "kind_allowed"))
      warnings.push_back(
          fmt::format("kind '{}' is not an operation of tool profile '{}': the "
                      "dispatcher will skip it (skipped_capability)",
                      args.kind, agent.Text(0, "tool_profile_id")));
    if (lifecycle == "paused")
      warnings.push_back("agent " + args.agent +
                         " is paused: the work waits until it is resumed (skipped_paused)");
    for (const auto& w : warnings)
      err << "warpctl: warning: " << w << "\n";
    doc["created"] = true;
    doc["work_item"] = std::move(item);
    doc["warnings"] = warnings;
    if (!ctx.json())
      out << fmt::format("enqueued work item {} for {} (kind {}, key {}, due {})\n", id, args.agent,
                         args.kind, key, TimeText(inserted.Int(0, "due_us")));
    return EX_OK;
  });
}

int Complete(const Options& options, const CompleteArgs& args, std::ostream& out,
             std::ostream& err) {
  return impl::RunCommand(options, "complete", out, err, [&](Context& ctx, Json& doc) {
    const Json detail =
        args.detail ? impl::ParseObject("detail", *args.detail, kMaxPayloadBytes) : Json::object();
    if (args.outcome != "done" && args.outcome != "failed")
      BadData("outcome", "must be done or failed");
    Db& db = ctx.db();
    Transaction tx(db);
    const std::string verdict =
        db.Query(kCompleteWork,
                 {Str(args.lease_id), Str(args.fencing_token), args.outcome, detail.dump()})
            .Text(0, "verdict");
    const auto lease = db.Query(kLeaseAfterCompletion, {Str(args.lease_id)});
    const bool accepted = verdict == "accepted" || verdict == "accepted_late";
    Json result = {{"lease_id", args.lease_id},
                   {"fencing_token", args.fencing_token},
                   {"outcome", args.outcome},
                   {"verdict", verdict},
                   {"accepted", accepted}};
    if (!lease.empty()) {
      result["work_item_id"] =
          lease.OptionalInt(0, "work_item_id") ? Json(lease.Int(0, "work_item_id")) : Json(nullptr);
      result["agent_slug"] = lease.Text(0, "agent_slug");
      if (accepted) {
        result["state"] = lease.Text(0, "state");
        result["attempts"] = lease.Int(0, "attempts");
      }
    }
    // Refusals are audited too (warp.complete_work also records completion_refused, with the
    // database user as actor): the OS user who tried is worth keeping.
    Json audit = result;
    audit["detail"] = detail;
    impl::Audit(ctx, "work.complete", "lease:" + Str(args.lease_id), audit);
    tx.Commit();
    doc["completion"] = result;
    if (accepted) {
      if (!ctx.json())
        out << fmt::format("lease {}: {}; work item {} is now {}\n", args.lease_id, verdict,
                           lease.Text(0, "work_item_id"), lease.Text(0, "state"));
      return EX_OK;
    }
    std::string why;
    if (verdict == "unknown_lease")
      why = fmt::format(
          "lease {} with fencing token {} does not exist (a stale or mistyped "
          "token)",
          args.lease_id, args.fencing_token);
    else if (verdict == "released")
      why = fmt::format("lease {} was already released", args.lease_id);
    else if (verdict == "overtaken")
      why =
          fmt::format("lease {} expired and a newer lease of its agent overtook it", args.lease_id);
    else
      why = fmt::format("lease {}: verdict {}", args.lease_id, verdict);
    err << "warpctl: refused: " << why << "\n";
    doc["error"] = "refused: " + why;
    return 1;
  });
}

}  // namespace warp::warpctl
