// The PostgreSQL store: the durable Store of SPEC sections 2-5 and 12, non-blocking on the
// daemon's event loop through a small connection Pool.
//
// Every multi-row verb is one statement (a server-side function of migrations/, or one SQL
// statement over arrays), so it is atomic and costs one round trip whatever the batch size:
// ClaimDispatches, RenewLeases, RequeueExpiredWork, ClaimCycle, CompleteWork.
// SQL lives in named constants in postgres_store.cpp, always with `$n` parameters.
//
// Tables: all of schema `warp` (migrations/). Time: warp.now() (database time).
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio/any_io_executor.hpp>
#include <memory>
#include <optional>
#include <string>

#include "logging/log.hpp"
#include "store/postgres/connection.hpp"
#include "store/store.hpp"

namespace warp::store::postgres {

struct PostgresStoreSettings {
  PoolSettings pool;
  Duration statement_timeout{std::chrono::seconds(10)};  ///< deadline of every statement
};

/// Thread-safety: none; use from the executor's thread only.
class PostgresStore final : public Store {
 public:
  PostgresStore(boost::asio::any_io_executor executor, PostgresStoreSettings settings,
                logging::Logger log);

  /// The highest migration version recorded in warp.schema_migrations (0 when the table does
  /// not exist). Throws StoreError(kUnavailable) when the database cannot be reached.
  Task<int> SchemaVersion();

  /// Tests only: pins warp.now() of this store's sessions to `t` (`warp.test_now`). Use with a
  /// pool of one connection.
  Task<void> PinNowForTests(TimePoint t);

  Pool& pool() { return pool_; }

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
  Task<std::vector<store::Lease>> ListLeases(std::optional<AgentId> agent,
                                             bool active_only) override;
  Task<void> HeartbeatInstance(InstanceInfo info) override;
  // The watchdog's verbs: postgres_watchdog.cpp.
  Task<Workspace> PutWorkspace(NewWorkspace workspace) override;
  Task<LearningProposal> PutLearningProposal(LearningProposal proposal) override;
  Task<WatchdogFacts> ScanWatchdogFacts(WatchdogScan scan) override;
  Task<std::vector<ObservationChange>> ApplyObservations(ObservationBatch batch) override;
  Task<std::vector<Observation>> ListObservations(bool open_only) override;

 private:
  /// Runs one statement on a pooled connection under the statement timeout.
  Task<Result> Query(std::string_view sql, Params params);
  /// Records the refused ones of `results` as audit events (late_completion); no round trip
  /// when every completion was accepted. postgres_watchdog.cpp.
  Task<void> RecordRefusedCompletions(const std::vector<Completion>& completions,
                                      const std::vector<CompletionResult>& results);

  PostgresStoreSettings settings_;
  logging::Logger log_;
  Pool pool_;
};

}  // namespace warp::store::postgres
