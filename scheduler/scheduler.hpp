// The scheduler: idempotent cycles on aligned slots (SPEC section 4).
//
// Each tick (at the next slot boundary of database time, plus jitter) runs one cycle:
//   claim the cycle -> requeue work of expired leases -> materialize schedules -> select due
//   work -> decide per item (paused, capability, runner) -> lease and record decisions in one
//   store call -> start dispatches -> finish the run with its counts.
// Dispatches outlive the cycle: the lease keeper renews their leases, their runner reports the
// outcome, and the outcome is completed through the fencing check.
//
// Config keys: daemon.instance, daemon.group, daemon.shutdown_grace, scheduler.*, leasing.*,
// runner.*, schedule. Tables: scheduler_runs, dispatch_decisions, agent_leases, work_items.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/settings.hpp"
#include "leasing/lease_keeper.hpp"
#include "logging/log.hpp"
#include "scheduler/runners/runner.hpp"
#include "scheduler/schedule.hpp"
#include "store/store.hpp"

namespace warp::scheduler {

/// What one call of RunCycle did.
struct CycleReport {
  enum class Outcome { kRan, kAlreadyCompleted, kRunningElsewhere, kGroupBusy, kFailed };
  Outcome outcome = Outcome::kRan;
  std::string cycle_id;
  std::optional<std::int64_t> slot;  ///< the slot cycle_id names, once it is known
  store::RunId run_id = 0;
  /// For kAlreadyCompleted, kRunningElsewhere and kGroupBusy: the run in the way.
  store::SchedulerRun blocked_by;
  bool took_over = false;
  store::RunCounts counts;
  std::chrono::milliseconds duration{0};
  std::string error;
  bool store_unavailable = false;  ///< kFailed because the store could not be reached
};

/// Runner instances by name. Shared so that a reload can replace the set while dispatches
/// started by the old runners finish.
using RunnerSet = std::map<std::string, std::shared_ptr<Runner>>;

/// Builds the runners of `settings.runners`.
RunnerSet MakeRunners(const config::Settings& settings, boost::asio::any_io_executor executor,
                      const logging::Logger& log);

/// Thread-safety: use from the executor's thread only.
class Scheduler {
 public:
  /// A cycle claims its candidates in chunks of this many (one store call each) and starts
  /// each chunk's dispatches before claiming the next.
  static constexpr std::size_t kClaimChunk = 5000;
  /// A cycle of more than one chunk splits its candidates by agent into this many lanes and
  /// claims them at once, one store call per lane at a time: a claim keeps one database
  /// backend busy, and two of them (with the completions beside them) use both cores of a
  /// small host. Lanes never share an agent, so they never contend for its lock or bound.
  /// A lane's chunks are kClaimChunk / kClaimLanes: the advisory locks held at once (one per
  /// agent of a chunk, until it commits) stay within one chunk's, which PostgreSQL's default
  /// lock table (64 x 100 entries) holds.
  static constexpr std::size_t kClaimLanes = 2;
  /// Finished dispatches are recorded in store calls of at most this many, so that one
  /// statement stays well within its deadline (one of 40,000 ran into it) and in-flight slots
  /// free up chunk by chunk rather than all at the end.
  static constexpr std::size_t kCompletionChunk = 5000;
  /// At most this many completion calls at once: a second starts when a whole chunk waits.
  static constexpr std::size_t kCompletionLanes = 2;
  /// A completion call that failed for want of the database (timeout, lost connection, no
  /// free connection) is retried after this, doubling up to kCompletionRetryMax, until the
  /// lease TTL has passed since the first attempt. A retry is safe: the fencing check refuses
  /// a completion whose earlier attempt did commit (verdict released).
  static constexpr store::Duration kCompletionRetry{std::chrono::milliseconds(200)};
  static constexpr store::Duration kCompletionRetryMax{std::chrono::seconds(5)};

  Scheduler(boost::asio::any_io_executor executor, store::Store& store,
            leasing::LeaseKeeper& lease_keeper, const config::Settings& settings, RunnerSet runners,
            logging::Logger log);

  /// Starts ticking at slot boundaries.
  void Start();
  /// Applies reloaded settings; the next tick uses the new interval.
  void Reconfigure(const config::Settings& settings, RunnerSet runners);

  /// Runs one cycle for `slot` (default: the slot of the store's current time). Never throws:
  /// a failure is logged and reported as kFailed.
  store::Task<CycleReport> RunCycle(std::optional<std::int64_t> slot = std::nullopt);

  /// Stops ticking, lets in-flight dispatches finish for up to `grace`, then stops the rest;
  /// their leases are left to expire so their work returns to pending.
  store::Task<void> Drain(store::Duration grace);

  /// Called after every cycle (the daemon reports it to systemd).
  void OnCycle(std::function<void(const CycleReport&)> callback) {
    on_cycle_ = std::move(callback);
  }

  /// A tick for `slot` arrived: runs its cycle unless the previous one still runs. Then it
  /// counts an overrun, and the cycle of the latest such slot starts as soon as the running
  /// one ends (late, once: missed slots are not replayed one by one).
  void OnTick(std::optional<std::int64_t> slot = std::nullopt);

  std::size_t inflight() const { return inflight_.size(); }
  std::uint64_t overruns() const { return overruns_; }
  const CycleReport& last_report() const { return last_report_; }

 private:
  struct Inflight {
    DispatchRequest request;
    std::shared_ptr<Runner> runner;  // keeps a replaced runner alive until its work ends
    std::shared_ptr<Execution> execution;
    std::string stop_reason;  // set when we stopped it: no completion is reported then
    bool handed_off = false;  // the agent completes the work itself (on_handed_off)
  };

  /// After a cycle: starts the cycle of the latest slot whose tick it made skip, if any.
  void RunDeferredTick(const CycleReport& finished);
  store::Task<CycleReport> RunCycleUnguarded(std::optional<std::int64_t> slot, CycleReport& report);
  /// The cycle after its run was claimed: materialize, select, claim, dispatch, finish.
  store::Task<void> RunClaimedCycle(store::TimePoint now, CycleReport& report);
  /// Heartbeats the cycle's run every takeover_after / 3 until `beat->done` (see
  /// migrations/0009: a run that stops heartbeating is taken over, and stops holding the
  /// group's other cycles back).
  struct RunBeat;
  store::Task<void> HeartbeatRun(CycleReport& report, std::shared_ptr<RunBeat> beat);
  /// Counts a chunk's recorded decisions into the report and starts its dispatches.
  /// `runners` is the set the cycle's candidates were built with: a reload while the claim
  /// runs must not hand a claimed dispatch to another transport (a notify dispatch's notice
  /// is already part of the claim).
  void Account(const std::vector<store::DispatchClaim>& claims, CycleReport& report,
               const std::unordered_map<store::AgentId, const store::Agent*>& by_id,
               const RunnerSet& runners);
  void StartDispatch(const store::DispatchClaim& claim, const store::Agent& agent,
                     const RunnerSet& runners);
  /// Claims `candidates` in chunks of `chunk_size`, in order, accounting each chunk.
  store::Task<void> ClaimLane(const store::DispatchBatch& batch,
                              std::vector<store::DispatchCandidate> candidates,
                              std::size_t chunk_size, CycleReport& report,
                              const std::unordered_map<store::AgentId, const store::Agent*>& by_id,
                              const RunnerSet& runners);
  /// Queues a finished dispatch; completions that arrive while a batch is being recorded go
  /// into the next batch (one store round trip per batch, not per dispatch).
  void FinishDispatch(store::LeaseId lease_id, DispatchResult result);
  store::Task<void> RecordCompletions();
  /// One store call for `completions`, retried as kCompletionRetry says; throws the last
  /// error when it gives up. `attempts` counts the calls made.
  store::Task<std::vector<store::CompletionResult>> CompleteWithRetry(
      const std::vector<store::Completion>& completions, int& attempts);
  store::Task<void> TickLoop();
  /// Waits until no cycle runs and nothing is in flight, or `deadline`; true when idle.
  store::Task<bool> WaitIdle(std::chrono::steady_clock::time_point deadline);
  void NotifyIfIdle();

  boost::asio::any_io_executor executor_;
  store::Store& store_;
  leasing::LeaseKeeper& lease_keeper_;
  config::DaemonSettings daemon_;
  config::SchedulerSettings settings_;
  config::LeasingSettings leasing_;
  std::vector<Schedule> schedules_;
  RunnerSet runners_;
  logging::Logger log_;
  boost::asio::steady_timer tick_timer_;
  boost::asio::steady_timer idle_timer_;  // cancelled when the last dispatch finishes
  std::map<store::LeaseId, Inflight> inflight_;
  std::deque<std::pair<store::LeaseId, DispatchResult>> finished_;  // awaiting RecordCompletions
  std::size_t recorders_ = 0;  // RecordCompletions coroutines running (kCompletionLanes at most)
  std::mt19937_64 jitter_rng_{std::random_device{}()};
  bool ticking_ = false;
  bool cycle_running_ = false;
  std::string running_cycle_id_;  ///< the running cycle's, once it has named its slot
  std::uint64_t overruns_ = 0;
  /// The latest slot whose tick came while a cycle ran, and the interval it is a slot of.
  struct DeferredTick {
    std::int64_t slot;
    store::Duration interval;
  };
  std::optional<DeferredTick> deferred_tick_;
  CycleReport last_report_;
  std::function<void(const CycleReport&)> on_cycle_;
};

}  // namespace warp::scheduler
