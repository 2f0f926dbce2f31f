// Domain records of the warp control plane (SPEC section 2), shared by every store backend.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace warp::store {

/// Wall-clock instant. Stores hand out *their* time (database time for PostgreSQL, the injected
/// clock for the memory store); the host clock never decides a lease or a cycle.
using TimePoint = std::chrono::system_clock::time_point;
using Duration = std::chrono::milliseconds;

using AgentId = std::int64_t;
using WorkItemId = std::int64_t;
using LeaseId = std::int64_t;
using RunId = std::int64_t;
using FencingToken = std::int64_t;

enum class Lifecycle { kActive, kPaused, kRetired };
enum class WorkState { kPending, kDispatched, kDone, kFailed, kDead };
enum class RunStatus { kRunning, kCompleted, kAbandoned, kFailed };

/// The dispatch decisions of SPEC section 4, one per work item a cycle considered.
enum class Decision {
  kDispatched,
  kDeferredLeaseHeld,  ///< the agent's bound of active leases is reached
  kDeferredContended,  ///< another instance holds the agent's advisory lock right now
  kSkippedPaused,      ///< agent not active
  kSkippedCapability,  ///< work kind outside the agent's tool profile
  kFailed,             ///< transport error; retried with backoff until max_attempts
};

std::string_view ToString(Lifecycle v);
std::string_view ToString(WorkState v);
std::string_view ToString(RunStatus v);
std::string_view ToString(Decision v);
std::optional<Lifecycle> ParseLifecycle(std::string_view s);
std::optional<WorkState> ParseWorkState(std::string_view s);
std::optional<RunStatus> ParseRunStatus(std::string_view s);
std::optional<Decision> ParseDecision(std::string_view s);

/// `^[a-z0-9][a-z0-9-]{0,62}$`
bool IsValidSlug(std::string_view slug);

/// Work payloads are JSON objects of at most this many bytes (SPEC section 11).
inline constexpr std::size_t kMaxPayloadBytes = 64 * 1024;
/// Empty when `text` is an acceptable payload, else what is wrong with it.
std::string PayloadProblem(std::string_view text);

struct ToolProfile {
  std::string tool_profile_id;
  std::vector<std::string> capabilities;
  std::vector<std::string> operations;  ///< work kinds agents with this profile may receive
  std::map<std::string, std::string> system_overlays;
};

struct NewAgent {
  std::string agent_slug;
  std::string display_name;
  std::string domain_id;
  std::string tool_profile_id;
  std::string runner;
  std::string business_link;  ///< required, non-empty (seed guardrail)
  int max_active_leases = 0;  ///< 0: use leasing.default_max_active
  Lifecycle lifecycle = Lifecycle::kActive;
  std::map<std::string, std::string> labels;
};

/// Empty when `agent` may be registered, else what is wrong with it (bad slug, no business
/// link, negative bound). Both stores check it; PostgreSQL enforces the same with CHECKs.
std::string NewAgentProblem(const NewAgent& agent);

struct Agent : NewAgent {
  AgentId agent_id = 0;
  FencingToken fencing_counter = 0;  ///< last token handed out for this agent
};

struct NewWork {
  std::string agent_slug;
  std::string kind;
  std::string payload_json = "{}";  ///< a JSON object
  int priority = 0;                 ///< higher runs first
  std::optional<TimePoint> due_at;  ///< default: now
  std::string idempotency_key;      ///< empty: the store assigns a unique one
  int max_attempts = 0;             ///< 0: scheduler.max_attempts
};

struct WorkItem {
  WorkItemId work_item_id = 0;
  AgentId agent_id = 0;
  std::string kind;
  std::string payload_json;
  int priority = 0;
  TimePoint due_at;
  std::string idempotency_key;
  int attempts = 0;  ///< dispatches started so far
  int max_attempts = 0;
  WorkState state = WorkState::kPending;
  std::string last_error;
  std::optional<LeaseId> lease_id;  ///< lease of the current or last dispatch
};

struct Lease {
  LeaseId lease_id = 0;
  AgentId agent_id = 0;
  WorkItemId work_item_id = 0;
  FencingToken fencing_token = 0;
  std::string holder_instance;
  RunId holder_run_id = 0;
  TimePoint acquired_at;
  TimePoint renewed_at;
  TimePoint expires_at;
  std::optional<TimePoint> released_at;
  std::string release_reason;
};

struct RunCounts {
  int due = 0;  ///< work items considered
  int dispatched = 0;
  int deferred = 0;
  int skipped = 0;
  int failed = 0;
  int materialized = 0;  ///< work items created from schedules
  int requeued = 0;      ///< expired leases whose work went back to pending
};

struct SchedulerRun {
  RunId run_id = 0;
  std::string cycle_id;
  std::string group;
  std::string instance;
  RunStatus status = RunStatus::kRunning;
  TimePoint started_at;
  TimePoint heartbeat_at;
  std::optional<TimePoint> finished_at;
  RunCounts counts;
  std::string error;
};

struct DispatchDecision {
  RunId run_id = 0;
  std::string cycle_id;
  WorkItemId work_item_id = 0;
  AgentId agent_id = 0;
  int attempt = 0;
  Decision decision = Decision::kDispatched;
  std::optional<LeaseId> lease_id;
  std::string reason;
  TimePoint at;
};

}  // namespace warp::store
