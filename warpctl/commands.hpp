// warpctl's commands (SPEC section 10): `migrate`, `check-config`, and the operator commands
// over the PostgreSQL store (status, agents, enqueue, work, leases, runs, observations,
// complete, audit leases, workspaces, proposals). Each returns a
// sysexits code and writes its report to `out` (a table, or one JSON document with --json) and
// its errors, one line each, to `err`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <ostream>
#include <string>

namespace warp::warpctl {

/// The configuration file when --config is not given.
inline constexpr const char* kDefaultConfigPath = "/etc/warp/warpd.toml";

/// warpctl's global options.
struct Options {
  /// --config; when unset, kDefaultConfigPath, except that --dsn alone needs no config file.
  std::optional<std::filesystem::path> config_path;
  bool json = false;  ///< --json: one JSON document on `out`
  /// --dsn: a libpq conninfo replacing the config's store.dsn (its password_file still applies
  /// when a config is given).
  std::optional<std::string> dsn;
  /// --migrations; default migrations::DefaultMigrationsDir().
  std::optional<std::filesystem::path> migrations_dir;
};

enum class MigrateAction { kStatus, kUp, kVerify };

/// `migrate ACTION`. Exit codes: 0 ok (status reports problems but still exits 0), 1 verify
/// found a problem or up was refused or failed, 69 database unreachable, 70 internal error,
/// 78 configuration error (config file, password file, migrations directory).
int Migrate(const Options& options, MigrateAction action, std::ostream& out, std::ostream& err);

/// `check-config [PATH]`: loads and validates PATH (default: --config, else the default path)
/// and the fixtures file it names. One line; 0 when valid, 78 when not.
int CheckConfig(const Options& options, const std::optional<std::filesystem::path>& path,
                std::ostream& out, std::ostream& err);

/// Paging of the lists, newest first: at most `limit` rows (1..10000) with an id below
/// `before`.
struct Page {
  int limit = 50;
  std::optional<std::int64_t> before;
};

/// `agents register`'s arguments.
struct RegisterAgentArgs {
  std::string slug;
  std::string domain;
  std::string tool_profile;
  std::string runner;
  std::string business_link;
  std::string display_name;
  std::optional<int> max_active;
};

enum class LifecycleAction { kPause, kResume, kRetire };

/// `enqueue`'s arguments.
struct EnqueueArgs {
  std::string agent;
  std::string kind;
  std::optional<std::string> payload;  ///< a JSON object; default {}
  std::optional<std::string> key;      ///< default: a new random key
  std::optional<std::string> due;      ///< RFC 3339; default: now (database time)
  int priority = 0;
  std::optional<int> max_attempts;  ///< default: the config's scheduler.max_attempts, else 5
};

/// `complete`'s arguments.
struct CompleteArgs {
  std::int64_t lease_id = 0;
  std::int64_t fencing_token = 0;
  std::string outcome;                ///< done | failed
  std::optional<std::string> detail;  ///< a JSON object
};

/// The list filters; unset means any.
struct WorkFilter {
  std::optional<std::string> state;
  std::optional<std::string> agent;
};
struct LeaseFilter {
  bool active = false;
  std::optional<std::string> agent;
};
struct ObservationFilter {
  bool open = false;
  std::optional<std::string> severity;
  std::optional<std::string> agent;
};

// The operator commands. Exit codes (SPEC section 10): 0 ok; 1 refused (a stale completion, a
// retired agent, a conflicting idempotency key) or, for `audit leases`, a violation found;
// 65 bad input data (one line naming the field); 69 database unreachable (after the connect
// timeout); 70 internal error; 78 configuration error. Usage errors (64) are main's.
// Every change writes an audit_events row in the change's transaction.

/// `status`: instances, recent cycles per group, active leases, backlog, open observations.
int Status(const Options& options, std::ostream& out, std::ostream& err);
/// `agents list [--lifecycle L]`.
int ListAgents(const Options& options, const std::optional<std::string>& lifecycle,
               std::ostream& out, std::ostream& err);
/// `agents register`: checks the slug, the business link, the runner (in the config file) and
/// the tool profile (in the database).
int RegisterAgent(const Options& options, const RegisterAgentArgs& args, std::ostream& out,
                  std::ostream& err);
/// `agents pause|resume|retire SLUG`.
int ChangeLifecycle(const Options& options, LifecycleAction action, const std::string& slug,
                    std::ostream& out, std::ostream& err);
/// `enqueue AGENT KIND`: a re-enqueue with the same key reports the existing item.
int Enqueue(const Options& options, const EnqueueArgs& args, std::ostream& out, std::ostream& err);
/// `complete LEASE_ID FENCING_TOKEN`: through warp.complete_work; a refusal exits 1.
int Complete(const Options& options, const CompleteArgs& args, std::ostream& out,
             std::ostream& err);
/// `work list`.
int ListWork(const Options& options, const WorkFilter& filter, const Page& page, std::ostream& out,
             std::ostream& err);
/// `leases`.
int ListLeases(const Options& options, const LeaseFilter& filter, const Page& page,
               std::ostream& out, std::ostream& err);
/// `runs`.
int ListRuns(const Options& options, const Page& page, std::ostream& out, std::ostream& err);
/// `observations`.
int ListObservations(const Options& options, const ObservationFilter& filter, const Page& page,
                     std::ostream& out, std::ostream& err);
/// `workspaces list [--agent SLUG]`: with the retention state.
int ListWorkspaces(const Options& options, const std::optional<std::string>& agent,
                   const Page& page, std::ostream& out, std::ostream& err);
/// `proposals list [--status S] [--agent SLUG]`: with the review state.
int ListProposals(const Options& options, const std::optional<std::string>& status,
                  const std::optional<std::string>& agent, const Page& page, std::ostream& out,
                  std::ostream& err);
/// `audit leases [--default-max-active N]`: the lease invariant over the durable history; 1 when
/// a violation is found. The bound of agents without their own is N, else the config's
/// leasing.default_max_active when a config file is given, else 1.
int AuditLeases(const Options& options, std::optional<int> default_max_active, std::ostream& out,
                std::ostream& err);

}  // namespace warp::warpctl
