// The in-memory store ("fixture-memory"): non-durable, single-threaded, the embedded default of
// the quick start and the reference the contract suite holds PostgreSQL to.
#pragma once

#include <functional>
#include <map>
#include <set>

#include "store/store.hpp"

namespace warp::store {

/// A clock the memory store reads as "database time". Tests inject a manual one.
using WallClock = std::function<TimePoint()>;

/// Thread-safety: none; use it from one event loop thread.
class MemoryStore final : public Store {
 public:
  explicit MemoryStore(WallClock clock);

  /// Simulates another instance holding agent `id`'s advisory lock (tests of
  /// `deferred_contended`).
  void SetAgentLockedElsewhere(AgentId id, bool locked);

  Task<TimePoint> Now() override;
  Task<void> PutToolProfile(ToolProfile profile) override;
  Task<std::vector<ToolProfile>> ListToolProfiles() override;
  Task<Agent> RegisterAgent(NewAgent agent) override;
  Task<std::vector<Agent>> ListAgents() override;
  Task<std::vector<Agent>> GetAgents(std::vector<AgentId> ids) override;
  Task<bool> SetAgentLifecycle(std::string slug, Lifecycle lifecycle) override;
  Task<EnqueueResult> EnqueueWork(NewWork work, int default_max_attempts) override;
  Task<std::optional<WorkItem>> GetWork(WorkItemId id) override;
  Task<std::vector<WorkItem>> ListWork(std::optional<WorkState> state) override;
  Task<std::vector<WorkItem>> SelectDueWork(int limit, int default_max_active) override;
  Task<int> RequeueExpiredWork() override;
  Task<ClaimResult> ClaimCycle(CycleClaim claim) override;
  Task<bool> HeartbeatRun(RunId run) override;
  Task<void> FinishRun(RunId run, RunStatus status, RunCounts counts, std::string error) override;
  Task<std::vector<SchedulerRun>> ListRuns(std::string cycle_id) override;
  Task<std::vector<DispatchDecision>> ListDecisions(std::string cycle_id) override;
  Task<std::vector<DispatchClaim>> ClaimDispatches(DispatchBatch batch) override;
  Task<std::vector<std::optional<TimePoint>>> RenewLeases(std::vector<LeaseRef> leases,
                                                          Duration ttl) override;
  Task<std::vector<CompletionResult>> CompleteWorkBatch(std::vector<Completion> completions,
                                                        RetryPolicy retry) override;
  Task<std::vector<Lease>> ListLeases(std::optional<AgentId> agent, bool active_only) override;
  Task<void> HeartbeatInstance(InstanceInfo info) override;
  // The watchdog's verbs: memory_watchdog.cpp.
  Task<Workspace> PutWorkspace(NewWorkspace workspace) override;
  Task<LearningProposal> PutLearningProposal(LearningProposal proposal) override;
  Task<WatchdogFacts> ScanWatchdogFacts(WatchdogScan scan) override;
  Task<std::vector<ObservationChange>> ApplyObservations(ObservationBatch batch) override;
  Task<std::vector<Observation>> ListObservations(bool open_only) override;

 private:
  struct DecisionKey {
    std::string cycle_id;
    WorkItemId work_item_id;
    int attempt;
    auto operator<=>(const DecisionKey&) const = default;
  };
  struct Instance {
    InstanceInfo info;
    TimePoint started_at;
    TimePoint heartbeat_at;
  };

  int ActiveLeases(AgentId agent, TimePoint now) const;
  CompletionResult CompleteOne(const Completion& completion, const RetryPolicy& retry);
  void FailWork(WorkItem& item, const std::string& error, bool retry, const RetryPolicy& policy,
                TimePoint now);
  /// Keeps a refused completion for late_completion (PostgreSQL: an audit event).
  void RecordRefusedCompletion(const Completion& completion, CompletionResult::Verdict verdict);

  WallClock clock_;
  std::map<std::string, ToolProfile> tool_profiles_;
  std::map<AgentId, Agent> agents_;
  std::map<WorkItemId, WorkItem> work_;
  std::map<std::string, WorkItemId> work_by_key_;
  std::map<LeaseId, Lease> leases_;
  std::map<RunId, SchedulerRun> runs_;
  std::map<DecisionKey, DispatchDecision> decisions_;
  std::map<std::string, Instance> instances_;
  std::set<AgentId> locked_elsewhere_;
  // The watchdog's records (memory_watchdog.cpp).
  struct RefusedCompletion {
    LeaseId lease_id;
    FencingToken fencing_token;
    CompletionResult::Verdict verdict;
    TimePoint at;
  };
  std::map<WorkspaceId, Workspace> workspaces_;
  std::map<ProposalId, LearningProposal> proposals_;
  std::vector<RefusedCompletion> refused_completions_;
  std::map<ObservationId, Observation> observations_;
  WorkspaceId next_workspace_ = 1;
  ProposalId next_proposal_ = 1;
  ObservationId next_observation_ = 1;
  AgentId next_agent_ = 1;
  WorkItemId next_work_ = 1;
  LeaseId next_lease_ = 1;
  RunId next_run_ = 1;
};

}  // namespace warp::store
