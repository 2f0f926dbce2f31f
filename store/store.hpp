// The store interface: domain verbs over agents, tool profiles, work items, leases, scheduler
// runs and dispatch decisions (SPEC sections 2-5), and the watchdog's observations (section 7).
//
// Every verb is asynchronous (an Asio awaitable) because the PostgreSQL store runs
// non-blocking on the daemon's event loop; the memory store completes immediately. Expected
// outcomes (bound reached, stale completion, cycle already claimed) are values; real failures
// throw StoreError. Multi-row verbs are atomic: they apply completely or not at all.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "store/model.hpp"
#include "store/observation.hpp"

namespace warp::store {

template <typename T>
using Task = boost::asio::awaitable<T>;

/// A real failure of the store. `kind` says whether retrying can help.
class StoreError : public std::runtime_error {
 public:
  enum class Kind {
    kUnavailable,  ///< connection lost or not established; retry with backoff
    kInvalid,      ///< the request violates a constraint (bad slug, no business link...)
    kConflict,     ///< a unique key already exists
    kNotFound,     ///< a referenced record does not exist
    kInternal,     ///< anything else
  };
  StoreError(Kind kind, const std::string& what) : std::runtime_error(what), kind_(kind) {}
  Kind kind() const noexcept { return kind_; }

 private:
  Kind kind_;
};

/// SelectDueWork considers at most this many times its limit of due items (see there).
inline constexpr int kDueScanFactor = 4;

/// Retry policy applied when a dispatch fails: the n-th failed attempt waits
/// min(backoff * 2^(n-1), backoff_max) before the work is due again.
struct RetryPolicy {
  Duration backoff{std::chrono::seconds(10)};
  Duration backoff_max{std::chrono::minutes(10)};
  Duration DelayAfter(int attempts) const;
};

struct EnqueueResult {
  WorkItem item;
  bool created = false;  ///< false: the idempotency key existed; `item` is the existing one
};

struct CycleClaim {
  std::string cycle_id;
  std::string group;
  std::string instance;
  Duration takeover_after{std::chrono::seconds(30)};
};

struct ClaimResult {
  enum class Outcome {
    kClaimed,           ///< a new run owns the cycle
    kTookOver,          ///< a stale running run was marked abandoned; a new run owns the cycle
    kAlreadyCompleted,  ///< the cycle is done: skip it
    kRunningElsewhere,  ///< another live run owns it: skip it
    kGroupBusy,         ///< another cycle of the group runs under a live owner: skip this one
  };
  Outcome outcome = Outcome::kClaimed;
  SchedulerRun run;  ///< the new run, or the one that blocks the claim (its own cycle_id)
  std::optional<RunId> abandoned_run;  ///< for kTookOver
};

/// One work item a cycle considered. Without `verdict` the store tries to lease the agent.
struct DispatchCandidate {
  WorkItemId work_item_id = 0;
  AgentId agent_id = 0;
  int max_active = 1;               ///< the agent's lease bound
  std::optional<Decision> verdict;  ///< a decision already taken (skips)
  std::string reason;
  /// Non-empty: when this candidate is dispatched, pg_notify(notify_channel, dispatch notice)
  /// in the same transaction that records it (the notify runner). Only the PostgreSQL store
  /// can; the memory store throws StoreError(kInvalid) for it.
  std::string notify_channel;
};

struct DispatchBatch {
  RunId run_id = 0;
  std::string cycle_id;
  std::string instance;
  Duration lease_ttl{std::chrono::seconds(60)};
  std::vector<DispatchCandidate> candidates;
  /// Stored with each dispatched item, so a completion an agent reports itself (SQL
  /// warp.complete_work) backs off as this instance would.
  RetryPolicy retry;
};

struct DispatchClaim {
  bool recorded = false;  ///< false: this cycle already decided on this attempt, or the item
                          ///< is no longer dispatchable; nothing was written for it
  DispatchDecision decision;
  std::optional<Lease> lease;    ///< for kDispatched
  std::optional<WorkItem> item;  ///< the item as dispatched (attempts already counted)
};

struct LeaseRef {
  LeaseId lease_id = 0;
  FencingToken fencing_token = 0;
};

enum class Outcome { kDone, kFailed };

struct Completion {
  LeaseRef lease;
  Outcome outcome = Outcome::kDone;
  std::string detail;            ///< JSON text or a short message; stored as last_error on failure
  bool transport_error = false;  ///< the dispatch never reached the agent: decision becomes kFailed
  bool retry = true;             ///< false: a failure is final (dead) whatever the attempts left
};

struct CompletionResult {
  enum class Verdict {
    kAccepted,
    kAcceptedLate,  ///< after expiry, but nobody leased the agent since
    kUnknownLease,  ///< no such lease, or the token does not match
    kReleased,      ///< the lease was already released
    kOvertaken,     ///< expired and a newer lease of the agent was acquired at/after expiry
  };
  Verdict verdict = Verdict::kAccepted;
  std::optional<WorkItem> item;  ///< the work item after the completion was applied
  bool accepted() const {
    return verdict == Verdict::kAccepted || verdict == Verdict::kAcceptedLate;
  }
};

std::string_view ToString(CompletionResult::Verdict v);
std::string_view ToString(ClaimResult::Outcome v);

struct InstanceInfo {
  std::string instance;
  std::string group;
  std::string host;
  int pid = 0;
  std::string version;
};

class Store {
 public:
  virtual ~Store() = default;

  /// The store's clock (database time). Every lease and cycle decision uses it.
  virtual Task<TimePoint> Now() = 0;

  // --- agents and tool profiles -------------------------------------------------------
  virtual Task<void> PutToolProfile(ToolProfile profile) = 0;
  virtual Task<std::vector<ToolProfile>> ListToolProfiles() = 0;
  /// Throws StoreError(kInvalid) for a bad slug or an empty business_link, kConflict for a
  /// slug that exists.
  virtual Task<Agent> RegisterAgent(NewAgent agent) = 0;
  virtual Task<std::vector<Agent>> ListAgents() = 0;
  /// The agents of `ids` that exist, in id order (a cycle reads only the agents it dispatches to).
  virtual Task<std::vector<Agent>> GetAgents(std::vector<AgentId> ids) = 0;
  /// Returns false when no agent has that slug.
  virtual Task<bool> SetAgentLifecycle(std::string slug, Lifecycle lifecycle) = 0;

  // --- work -----------------------------------------------------------------------------
  /// Idempotent on the idempotency key. Throws kNotFound for an unknown agent, kInvalid for a
  /// payload that is not a JSON object.
  virtual Task<EnqueueResult> EnqueueWork(NewWork work, int default_max_attempts) = 0;
  virtual Task<std::optional<WorkItem>> GetWork(WorkItemId id) = 0;
  virtual Task<std::vector<WorkItem>> ListWork(std::optional<WorkState> state) = 0;
  /// Due work (pending or failed-awaiting-retry, due_at <= now): priority descending, then
  /// due_at, then id; at most `limit` items, and at most max(1, bound - active leases) items of
  /// one agent (its bound is max_active_leases, else `default_max_active`), so an agent at its
  /// bound yields one item (to be recorded deferred) rather than crowding out the others. Only
  /// the first kDueScanFactor * limit due items are considered.
  virtual Task<std::vector<WorkItem>> SelectDueWork(int limit, int default_max_active) = 0;
  /// Dispatched work whose lease expired unreleased goes back to pending (dead when out of
  /// attempts). The lease itself is left as it is. Returns how many items moved.
  virtual Task<int> RequeueExpiredWork() = 0;

  // --- cycles ---------------------------------------------------------------------------
  virtual Task<ClaimResult> ClaimCycle(CycleClaim claim) = 0;
  /// Returns false when the run is no longer `running` (taken over).
  virtual Task<bool> HeartbeatRun(RunId run) = 0;
  virtual Task<void> FinishRun(RunId run, RunStatus status, RunCounts counts,
                               std::string error) = 0;
  virtual Task<std::vector<SchedulerRun>> ListRuns(std::string cycle_id) = 0;
  virtual Task<std::vector<DispatchDecision>> ListDecisions(std::string cycle_id) = 0;

  // --- dispatch and leases -------------------------------------------------------------
  /// For each candidate, atomically: record its decision; for those without a verdict, try the
  /// agent's lock, check the bound against active leases, bump the fencing counter, insert the
  /// lease and mark the item dispatched. Results are in candidate order.
  virtual Task<std::vector<DispatchClaim>> ClaimDispatches(DispatchBatch batch) = 0;
  /// Extends each live lease to now + ttl. Result i is the new expiry, or nullopt when lease i
  /// is expired, released or unknown (its holder must stop the work).
  virtual Task<std::vector<std::optional<TimePoint>>> RenewLeases(std::vector<LeaseRef> leases,
                                                                  Duration ttl) = 0;
  /// The fencing-checked completion of SPEC section 5 (warp.complete_work) for many leases in
  /// one call, each judged on its own; results are in input order. A lease listed twice is
  /// completed once (the repeat gets kReleased).
  virtual Task<std::vector<CompletionResult>> CompleteWorkBatch(std::vector<Completion> completions,
                                                                RetryPolicy retry) = 0;
  /// One completion: a batch of one.
  Task<CompletionResult> CompleteWork(Completion completion, RetryPolicy retry) {
    std::vector<Completion> one;
    one.push_back(std::move(completion));
    auto results = co_await CompleteWorkBatch(std::move(one), retry);
    co_return std::move(results.at(0));
  }
  virtual Task<std::vector<Lease>> ListLeases(std::optional<AgentId> agent, bool active_only) = 0;

  // --- instances ------------------------------------------------------------------------
  virtual Task<void> HeartbeatInstance(InstanceInfo info) = 0;

  // --- watchdog (SPEC section 7; store/observation.hpp) ----------------------------------
  // The watchdog reads through ScanWatchdogFacts and writes only through ApplyObservations:
  // neither changes any record outside the observations.

  /// Registers a workspace, or updates the one with the same path (owner, lifecycle,
  /// retention). Throws kInvalid for an empty path, kNotFound for an unknown owner, kConflict
  /// for a second active workspace of one agent.
  virtual Task<Workspace> PutWorkspace(NewWorkspace workspace) = 0;
  /// Records a new learning proposal (proposal_id 0), or updates the title and review status
  /// of an existing one. Throws kNotFound for an unknown agent or proposal.
  virtual Task<LearningProposal> PutLearningProposal(LearningProposal proposal) = 0;
  /// The candidate facts of the store-backed rules `scan.rules` names, in one consistent read
  /// at one instant of store time (`now` of the result). Its cost follows the anomalies found,
  /// not the size of the tables.
  virtual Task<WatchdogFacts> ScanWatchdogFacts(WatchdogScan scan) = 0;
  /// Applies one pass atomically, serialized with concurrent passes (one open observation per
  /// (kind, subject), whatever the number of instances). For every key: desired and open ->
  /// last_seen = at, occurrences + 1, evidence and agent replaced, severity raised when the
  /// desired one is higher (never lowered while open); desired and not open -> a new
  /// observation (first_seen = last_seen = at); open, in a scope, not desired -> resolved_at =
  /// at. A pass never overrides a newer judgment: an observation whose last_seen is after `at`
  /// is left alone, and one resolved after `at` is not reopened. Returns every change, ordered
  /// by (kind, subject). Throws kInvalid for a duplicate key or a desired observation outside
  /// the scopes.
  virtual Task<std::vector<ObservationChange>> ApplyObservations(ObservationBatch batch) = 0;
  /// Observations ordered by observation_id; only the open ones when `open_only`.
  virtual Task<std::vector<Observation>> ListObservations(bool open_only) = 0;
};

}  // namespace warp::store
