#include "scheduler/scheduler.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include <boost/asio/post.hpp>

#include "scheduler/cycle.hpp"
#include "store/memory/memory_store.hpp"
#include "tests/support/async.hpp"
#include "tests/support/flaky_store.hpp"

namespace warp::scheduler {
namespace {

using namespace std::chrono_literals;
using store::Decision;
using store::WorkState;

/// A runner whose dispatches finish when the test says so.
class FakeRunner final : public Runner {
 public:
  struct Dispatch {
    DispatchRequest request;
    OnDone on_done;
    std::string stop_reason;
    bool finished = false;
  };

  class FakeExecution final : public Execution {
   public:
    FakeExecution(FakeRunner& runner, std::size_t index) : runner_(runner), index_(index) {}
    void Stop(std::string reason) override {
      auto& d = runner_.dispatches.at(index_);
      d.stop_reason = reason;
      runner_.Finish(index_, {DispatchResult::Status::kStopped, "stopped: " + reason, true});
    }

   private:
    FakeRunner& runner_;
    std::size_t index_;
  };

  explicit FakeRunner(boost::asio::io_context& io) : io_(io) {}

  std::shared_ptr<Execution> Start(DispatchRequest request, OnDone on_done) override {
    dispatches.push_back({std::move(request), std::move(on_done), "", false});
    return std::make_shared<FakeExecution>(*this, dispatches.size() - 1);
  }

  void Finish(std::size_t index, DispatchResult result) {
    auto& d = dispatches.at(index);
    if (d.finished)
      return;
    d.finished = true;
    boost::asio::post(io_, [cb = d.on_done, result] { cb(result); });
  }

  std::vector<Dispatch> dispatches;

 private:
  boost::asio::io_context& io_;
};

class SchedulerTest : public ::testing::Test {
 protected:
  // 1 second into a 60 s slot: tests advance the clock within one slot unless they say so.
  SchedulerTest()
      : clock_(store::TimePoint(std::chrono::sys_days(std::chrono::year{2026} / 11 / 25)) + 1s),
        store_(clock_.AsFunction()) {
    settings_.daemon.instance = "test-a";
    settings_.scheduler.interval = 60s;
    settings_.scheduler.takeover_after = 5s;
    settings_.scheduler.retry_backoff = 10s;
    settings_.scheduler.retry_backoff_max = 15s;
    settings_.scheduler.max_attempts = 3;
    settings_.leasing.ttl = 30s;
    settings_.leasing.renew_every = 10s;
    settings_.runners["fake"] = config::RunnerSettings{.name = "fake"};
    store::ToolProfile profile;
    profile.tool_profile_id = "erp";
    profile.operations = {"sync", "report"};
    test::Await(io_, store_.PutToolProfile(profile));
  }

  void Build() {
    keeper_.emplace(io_.get_executor(), store_, settings_.leasing, log_);
    auto runner = std::make_shared<FakeRunner>(io_);
    runner_ = runner.get();
    scheduler_.emplace(io_.get_executor(), flaky_, *keeper_, settings_, RunnerSet{{"fake", runner}},
                       log_);
  }

  store::Agent Agent(std::string slug, int max_active = 1,
                     store::Lifecycle lifecycle = store::Lifecycle::kActive) {
    store::NewAgent a;
    a.agent_slug = std::move(slug);
    a.domain_id = "sales";
    a.tool_profile_id = "erp";
    a.runner = "fake";
    a.business_link = "spindle:req-1";
    a.max_active_leases = max_active;
    a.lifecycle = lifecycle;
    return test::Await(io_, store_.RegisterAgent(a));
  }

  store::WorkItem Enqueue(const std::string& agent, std::string kind = "sync", int priority = 0) {
    store::NewWork w;
    w.agent_slug = agent;
    w.kind = std::move(kind);
    w.priority = priority;
    return test::Await(io_, store_.EnqueueWork(w, settings_.scheduler.max_attempts)).item;
  }

  /// Build() for cycles of up to n dispatches, with n items spread over 10 agents of bound n.
  void BuildWithSpreadWork(int n) {
    settings_.scheduler.max_dispatch_per_cycle = n;
    settings_.scheduler.max_inflight = n;
    Build();
    for (int a = 0; a < 10; ++a)
      Agent("erp-" + std::to_string(a), n);
    for (int i = 0; i < n; ++i)
      Enqueue("erp-" + std::to_string(i % 10));
  }

  CycleReport Cycle() { return test::Await(io_, scheduler_->RunCycle()); }
  store::WorkItem Work(store::WorkItemId id) { return *test::Await(io_, store_.GetWork(id)); }
  std::vector<store::DispatchDecision> Decisions(const std::string& cycle_id) {
    return test::Await(io_, store_.ListDecisions(cycle_id));
  }
  /// Lets posted completions run.
  void Settle() { test::RunFor(io_, 20ms); }

  boost::asio::io_context io_;
  test::ManualClock clock_;
  store::MemoryStore store_;
  test::FlakyStore flaky_{store_};  // what the scheduler uses: store_, with injected failures
  config::Settings settings_;
  logging::Logger log_;
  std::optional<leasing::LeaseKeeper> keeper_;
  std::optional<Scheduler> scheduler_;
  FakeRunner* runner_ = nullptr;
};

TEST_F(SchedulerTest, ACycleLeasesDispatchesAndRecordsOneDecisionPerItem) {
  Build();
  Agent("erp-sales", 1);
  Agent("erp-finance", 2);
  const auto s1 = Enqueue("erp-sales");
  const auto s2 = Enqueue("erp-sales");
  const auto f1 = Enqueue("erp-finance");
  const auto f2 = Enqueue("erp-finance");
  const auto f3 = Enqueue("erp-finance");

  // Each agent yields the room under its bound: the extra items wait without a decision.
  auto report = Cycle();
  EXPECT_EQ(report.outcome, CycleReport::Outcome::kRan);
  EXPECT_EQ(report.counts.due, 3);
  EXPECT_EQ(report.counts.dispatched, 3);
  EXPECT_EQ(report.counts.deferred, 0);
  ASSERT_EQ(runner_->dispatches.size(), 3u);

  std::map<store::WorkItemId, Decision> by_item;
  for (const auto& d : Decisions(report.cycle_id))
    by_item[d.work_item_id] = d.decision;
  EXPECT_EQ(by_item.size(), 3u);
  EXPECT_EQ(by_item.at(s1.work_item_id), Decision::kDispatched);
  EXPECT_EQ(by_item.at(f1.work_item_id), Decision::kDispatched);
  EXPECT_EQ(by_item.at(f2.work_item_id), Decision::kDispatched);

  // The next slot's cycle (run early, while the leases live): both agents are at their
  // bound and yield one item each, recorded as deferred.
  const auto slot = SlotAt(clock_.Now(), settings_.scheduler.interval).index + 1;
  const auto next = test::Await(io_, scheduler_->RunCycle(slot));
  EXPECT_EQ(next.counts.due, 2);
  EXPECT_EQ(next.counts.dispatched, 0);
  EXPECT_EQ(next.counts.deferred, 2);
  by_item.clear();
  for (const auto& d : Decisions(next.cycle_id))
    by_item[d.work_item_id] = d.decision;
  EXPECT_EQ(by_item.at(s2.work_item_id), Decision::kDeferredLeaseHeld);
  EXPECT_EQ(by_item.at(f3.work_item_id), Decision::kDeferredLeaseHeld);

  const auto& req = runner_->dispatches[0].request;
  EXPECT_EQ(req.agent_slug, "erp-sales");
  EXPECT_EQ(req.work_id, s1.work_item_id);
  EXPECT_EQ(req.cycle_id, report.cycle_id);
  EXPECT_GT(req.fencing_token, 0);
  EXPECT_EQ(Work(s1.work_item_id).state, WorkState::kDispatched);
}

TEST_F(SchedulerTest, CompletionReleasesTheLeaseAndTheNextCycleDispatchesTheQueuedItem) {
  Build();
  Agent("erp-sales", 1);
  const auto a = Enqueue("erp-sales");
  const auto b = Enqueue("erp-sales");
  Cycle();
  ASSERT_EQ(runner_->dispatches.size(), 1u);
  runner_->Finish(0, {DispatchResult::Status::kDone, "", true});
  Settle();
  EXPECT_EQ(Work(a.work_item_id).state, WorkState::kDone);
  EXPECT_EQ(scheduler_->inflight(), 0u);

  clock_.Advance(60s);
  Cycle();
  ASSERT_EQ(runner_->dispatches.size(), 2u);
  EXPECT_EQ(runner_->dispatches[1].request.work_id, b.work_item_id);
  EXPECT_GT(runner_->dispatches[1].request.fencing_token,
            runner_->dispatches[0].request.fencing_token);
}

TEST_F(SchedulerTest, HigherPriorityWorkIsDispatchedFirst) {
  Build();
  Agent("erp-sales", 1);
  Enqueue("erp-sales", "sync", 0);
  const auto urgent = Enqueue("erp-sales", "report", 9);
  Cycle();
  ASSERT_EQ(runner_->dispatches.size(), 1u);
  EXPECT_EQ(runner_->dispatches[0].request.work_id, urgent.work_item_id);
}

TEST_F(SchedulerTest, ASecondRunOfACompletedCycleIsSkipped) {
  Build();
  Agent("erp-sales", 3);
  Enqueue("erp-sales");
  EXPECT_EQ(Cycle().outcome, CycleReport::Outcome::kRan);
  Enqueue("erp-sales");
  auto again = Cycle();
  EXPECT_EQ(again.outcome, CycleReport::Outcome::kAlreadyCompleted);
  EXPECT_EQ(runner_->dispatches.size(), 1u);
}

TEST_F(SchedulerTest, ACycleRunningUnderALiveOwnerIsSkipped) {
  Build();
  const auto slot = SlotAt(clock_.Now(), settings_.scheduler.interval);
  const auto cycle_id = CycleId("default", settings_.scheduler.interval, slot.index);
  auto other = test::Await(io_, store_.ClaimCycle({cycle_id, "default", "test-b", 5s}));
  ASSERT_EQ(other.outcome, store::ClaimResult::Outcome::kClaimed);
  EXPECT_EQ(Cycle().outcome, CycleReport::Outcome::kRunningElsewhere);
}

TEST_F(SchedulerTest, ACycleIsSkippedWhileAnotherCycleOfTheGroupRunsUnderALiveOwner) {
  Build();
  Agent("erp-sales", 3);
  const auto item = Enqueue("erp-sales");
  // Another instance is still running the previous slot's cycle.
  const auto slot = SlotAt(clock_.Now(), settings_.scheduler.interval);
  const auto previous = CycleId("default", settings_.scheduler.interval, slot.index - 1);
  auto other = test::Await(io_, store_.ClaimCycle({previous, "default", "test-b", 5s}));
  ASSERT_EQ(other.outcome, store::ClaimResult::Outcome::kClaimed);

  const auto skipped = Cycle();
  EXPECT_EQ(skipped.outcome, CycleReport::Outcome::kGroupBusy);
  EXPECT_EQ(skipped.blocked_by.run_id, other.run.run_id);
  EXPECT_EQ(skipped.blocked_by.cycle_id, previous);
  EXPECT_EQ(skipped.blocked_by.instance, "test-b");
  EXPECT_TRUE(runner_->dispatches.empty());
  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kPending);
  EXPECT_TRUE(test::Await(io_, store_.ListRuns(skipped.cycle_id)).empty());

  // Once it finished, the next slot's cycle runs (this slot's tick was skipped for good).
  test::Await(io_, store_.FinishRun(other.run.run_id, store::RunStatus::kCompleted, {}, ""));
  clock_.Advance(settings_.scheduler.interval);
  EXPECT_EQ(Cycle().outcome, CycleReport::Outcome::kRan);
  EXPECT_EQ(runner_->dispatches.size(), 1u);
}

TEST_F(SchedulerTest, ARunHeartbeatsWhileItsCycleRunsAndStopsWhenItEnds) {
  settings_.scheduler.takeover_after = 300ms;  // a heartbeat every 100 ms
  Build();
  Agent("erp-sales", 3);
  Enqueue("erp-sales");
  flaky_.HoldClaims(450ms);
  const auto report = Cycle();
  ASSERT_EQ(report.outcome, CycleReport::Outcome::kRan);
  const auto beats = flaky_.run_heartbeats();
  EXPECT_GE(beats.size(), 2u);  // 4 on time; a slow machine may fire late, never early
  for (const auto run : beats)
    EXPECT_EQ(run, report.run_id);
  test::RunFor(io_, 300ms);
  EXPECT_EQ(flaky_.run_heartbeats().size(), beats.size()) << "the heartbeat outlived its cycle";
}

TEST_F(SchedulerTest, TakeoverAfterACrashDispatchesNothingTwice) {
  Build();
  const auto agent = Agent("erp-sales", 3);
  const auto decided = Enqueue("erp-sales");
  const auto deferred = Enqueue("erp-sales");
  const auto untouched = Enqueue("erp-sales");

  // Instance B claims the cycle, records two decisions, starts one dispatch and dies.
  const auto slot = SlotAt(clock_.Now(), settings_.scheduler.interval);
  const auto cycle_id = CycleId("default", settings_.scheduler.interval, slot.index);
  auto crashed = test::Await(io_, store_.ClaimCycle({cycle_id, "default", "test-b", 5s}));
  store::DispatchBatch batch{crashed.run.run_id, cycle_id, "test-b", 30s, {}};
  batch.candidates.push_back({decided.work_item_id, agent.agent_id, 3, std::nullopt, ""});
  batch.candidates.push_back(
      {deferred.work_item_id, agent.agent_id, 3, Decision::kDeferredContended, "test"});
  test::Await(io_, store_.ClaimDispatches(batch));

  clock_.Advance(6s);  // B's heartbeat is now older than takeover_after
  auto report = Cycle();
  EXPECT_EQ(report.outcome, CycleReport::Outcome::kRan);
  EXPECT_TRUE(report.took_over);
  EXPECT_EQ(report.cycle_id, cycle_id);

  // Only the item B never decided on is dispatched by the takeover.
  ASSERT_EQ(runner_->dispatches.size(), 1u);
  EXPECT_EQ(runner_->dispatches[0].request.work_id, untouched.work_item_id);
  std::map<store::WorkItemId, int> decisions_per_item;
  for (const auto& d : Decisions(cycle_id))
    ++decisions_per_item[d.work_item_id];
  for (const auto& [item, n] : decisions_per_item)
    EXPECT_EQ(n, 1) << "item " << item;

  auto runs = test::Await(io_, store_.ListRuns(cycle_id));
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].status, store::RunStatus::kAbandoned);
  EXPECT_EQ(runs[1].status, store::RunStatus::kCompleted);
  EXPECT_EQ(runs[1].instance, "test-a");
}

TEST_F(SchedulerTest, ATickWhileTheCycleStillRunsIsSkippedAndCounted) {
  Build();
  Agent("erp-sales");
  Enqueue("erp-sales");
  scheduler_->OnTick();
  scheduler_->OnTick();  // arrives before the first cycle could finish
  EXPECT_EQ(scheduler_->overruns(), 1u);
  Settle();
  EXPECT_EQ(scheduler_->last_report().outcome, CycleReport::Outcome::kRan);
  EXPECT_EQ(runner_->dispatches.size(), 1u);
  clock_.Advance(60s);
  scheduler_->OnTick();  // the previous cycle has finished: not an overrun
  EXPECT_EQ(scheduler_->overruns(), 1u);
  Settle();
}

TEST_F(SchedulerTest, TheLatestSlotWhoseTickAnOverrunSkippedRunsAsSoonAsTheCycleEnds) {
  Build();
  Agent("erp-sales", 3);
  const auto first = Enqueue("erp-sales");
  const auto interval = settings_.scheduler.interval;
  const auto k = SlotAt(clock_.Now(), interval).index;
  flaky_.HoldClaims(200ms);  // slot k's cycle is still claiming when the next ticks come
  scheduler_->OnTick(k);
  test::RunFor(io_, 50ms);
  const auto second = Enqueue("erp-sales");  // after slot k's due scan
  scheduler_->OnTick(k + 1);
  scheduler_->OnTick(k + 2);
  EXPECT_EQ(scheduler_->overruns(), 2u);
  test::RunFor(io_, 600ms);

  // Slot k + 2 ran at once after slot k, and dispatched what came in meanwhile; k + 1 never ran.
  EXPECT_TRUE(test::Await(io_, store_.ListRuns(CycleId("default", interval, k + 1))).empty());
  const auto late = test::Await(io_, store_.ListRuns(CycleId("default", interval, k + 2)));
  ASSERT_EQ(late.size(), 1u);
  EXPECT_EQ(late[0].status, store::RunStatus::kCompleted);
  EXPECT_EQ(scheduler_->last_report().cycle_id, CycleId("default", interval, k + 2));
  ASSERT_EQ(runner_->dispatches.size(), 2u);
  EXPECT_EQ(runner_->dispatches[0].request.work_id, first.work_item_id);
  EXPECT_EQ(runner_->dispatches[1].request.work_id, second.work_item_id);
  EXPECT_EQ(runner_->dispatches[1].request.cycle_id, CycleId("default", interval, k + 2));

  // Once only: nothing else starts by itself.
  test::RunFor(io_, 300ms);
  EXPECT_EQ(test::Await(io_, store_.ListRuns(CycleId("default", interval, k + 2))).size(), 1u);
  EXPECT_EQ(scheduler_->overruns(), 2u);
}

TEST_F(SchedulerTest, ASkippedTickOfTheSlotThatRanOrFromBeforeAReloadStartsNothing) {
  Build();
  Agent("erp-sales", 3);
  Enqueue("erp-sales");
  const auto interval = settings_.scheduler.interval;
  const auto k = SlotAt(clock_.Now(), interval).index;
  flaky_.HoldClaims(100ms);
  scheduler_->OnTick(k);
  scheduler_->OnTick(k);  // the same slot: its run is the one that just ran
  test::RunFor(io_, 300ms);
  EXPECT_EQ(scheduler_->overruns(), 1u);
  EXPECT_EQ(scheduler_->last_report().cycle_id, CycleId("default", interval, k));
  EXPECT_EQ(scheduler_->last_report().outcome, CycleReport::Outcome::kRan);

  // A tick of the old interval, deferred across a reload to another interval, is dropped.
  Enqueue("erp-sales");
  scheduler_->OnTick(k + 1);
  scheduler_->OnTick(k + 2);
  test::RunFor(io_, 50ms);  // slot k + 1's cycle has named its cycle and is claiming
  auto reloaded = settings_;
  reloaded.scheduler.interval = 30s;
  scheduler_->Reconfigure(reloaded, RunnerSet{{"fake", std::make_shared<FakeRunner>(io_)}});
  test::RunFor(io_, 300ms);
  EXPECT_EQ(scheduler_->last_report().cycle_id, CycleId("default", interval, k + 1));
  EXPECT_TRUE(test::Await(io_, store_.ListRuns(CycleId("default", interval, k + 2))).empty());
  EXPECT_TRUE(test::Await(io_, store_.ListRuns(CycleId("default", 30s, k + 2))).empty());
}

TEST_F(SchedulerTest, FailedWorkIsRetriedWithDoublingBackoffThenDead) {
  Build();
  Agent("erp-sales");
  const auto item = Enqueue("erp-sales");
  auto fail_latest = [&] {
    runner_->Finish(runner_->dispatches.size() - 1,
                    {DispatchResult::Status::kFailed, "exit status 1", true});
    Settle();
  };

  Cycle();
  ASSERT_EQ(runner_->dispatches.size(), 1u);
  const auto failed_at = clock_.Now();
  fail_latest();
  auto w = Work(item.work_item_id);
  EXPECT_EQ(w.state, WorkState::kFailed);
  EXPECT_EQ(w.attempts, 1);
  EXPECT_EQ(w.due_at, failed_at + 10s);
  EXPECT_EQ(w.last_error, "exit status 1");

  clock_.Advance(60s);  // next slot, past the 10 s backoff
  Cycle();
  ASSERT_EQ(runner_->dispatches.size(), 2u);
  const auto second_failed_at = clock_.Now();
  fail_latest();
  EXPECT_EQ(Work(item.work_item_id).due_at, second_failed_at + 15s) << "20 s capped at 15 s";

  clock_.Advance(60s);
  Cycle();
  ASSERT_EQ(runner_->dispatches.size(), 3u);
  fail_latest();
  w = Work(item.work_item_id);
  EXPECT_EQ(w.state, WorkState::kDead);
  EXPECT_EQ(w.attempts, 3);

  clock_.Advance(60s);
  Cycle();
  EXPECT_EQ(runner_->dispatches.size(), 3u) << "dead work is never dispatched again";
}

TEST_F(SchedulerTest, ALostLeaseStopsTheWorkAndTheWorkReturnsToPending) {
  Build();
  Agent("erp-sales");
  const auto item = Enqueue("erp-sales");
  Cycle();
  ASSERT_EQ(runner_->dispatches.size(), 1u);
  const auto first_token = runner_->dispatches[0].request.fencing_token;

  clock_.Advance(31s);  // past the 30 s ttl without a renewal (the process was paused)
  test::Await(io_, keeper_->RenewAll());
  Settle();
  EXPECT_NE(runner_->dispatches[0].stop_reason.find("lease lost"), std::string::npos);
  EXPECT_EQ(scheduler_->inflight(), 0u);
  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kDispatched)
      << "a stopped dispatch is not completed; its lease expires";

  clock_.Advance(60s);
  auto report = Cycle();
  EXPECT_EQ(report.counts.requeued, 1);
  ASSERT_EQ(runner_->dispatches.size(), 2u);
  EXPECT_EQ(runner_->dispatches[1].request.work_id, item.work_item_id);
  EXPECT_GT(runner_->dispatches[1].request.fencing_token, first_token);
  EXPECT_EQ(Work(item.work_item_id).attempts, 2);
}

TEST_F(SchedulerTest, RenewalKeepsALongDispatchAlive) {
  Build();
  Agent("erp-sales");
  Enqueue("erp-sales");
  Cycle();
  for (int i = 0; i < 5; ++i) {
    clock_.Advance(10s);
    test::Await(io_, keeper_->RenewAll());
  }
  Settle();
  EXPECT_TRUE(runner_->dispatches[0].stop_reason.empty());
  EXPECT_EQ(scheduler_->inflight(), 1u);
  auto leases = test::Await(io_, store_.ListLeases(std::nullopt, true));
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(leases[0].expires_at, clock_.Now() + 30s);
}

TEST_F(SchedulerTest, PausedAgentsAndKindsOutsideTheToolProfileAreSkipped) {
  Build();
  Agent("erp-paused", 1, store::Lifecycle::kPaused);
  Agent("erp-sales");
  const auto paused = Enqueue("erp-paused");
  const auto forbidden = Enqueue("erp-sales", "delete-everything");
  auto report = Cycle();
  EXPECT_EQ(report.counts.skipped, 2);
  EXPECT_TRUE(runner_->dispatches.empty());
  std::map<store::WorkItemId, store::DispatchDecision> by_item;
  for (const auto& d : Decisions(report.cycle_id))
    by_item[d.work_item_id] = d;
  EXPECT_EQ(by_item.at(paused.work_item_id).decision, Decision::kSkippedPaused);
  EXPECT_EQ(by_item.at(forbidden.work_item_id).decision, Decision::kSkippedCapability);
  EXPECT_NE(by_item.at(forbidden.work_item_id).reason.find("delete-everything"), std::string::npos);
  EXPECT_EQ(Work(paused.work_item_id).state, WorkState::kPending);
}

TEST_F(SchedulerTest, RetiredAgentsAreSkippedAndNeverLeased) {
  Build();
  Agent("erp-old", 1, store::Lifecycle::kRetired);
  const auto item = Enqueue("erp-old");
  for (int i = 0; i < 2; ++i) {
    auto report = Cycle();
    EXPECT_EQ(report.counts.skipped, 1);
    EXPECT_EQ(report.counts.dispatched, 0);
    auto decisions = Decisions(report.cycle_id);
    ASSERT_EQ(decisions.size(), 1u);
    EXPECT_EQ(decisions[0].decision, Decision::kSkippedPaused);
    EXPECT_EQ(decisions[0].reason, "agent is retired");
    clock_.Advance(60s);
  }
  EXPECT_TRUE(runner_->dispatches.empty());
  EXPECT_TRUE(test::Await(io_, store_.ListLeases(std::nullopt, false)).empty());
  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kPending);
}

TEST_F(SchedulerTest, AnAgentNamingAnUnconfiguredRunnerGetsAFailedDecision) {
  Build();
  store::NewAgent a;
  a.agent_slug = "orphan";
  a.tool_profile_id = "erp";
  a.runner = "gone";
  a.business_link = "spindle:req-2";
  test::Await(io_, store_.RegisterAgent(a));
  Enqueue("orphan");
  auto report = Cycle();
  EXPECT_EQ(report.counts.failed, 1);
  auto decisions = Decisions(report.cycle_id);
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].decision, Decision::kFailed);
  EXPECT_NE(decisions[0].reason.find("runner 'gone'"), std::string::npos);
}

TEST_F(SchedulerTest, DispatchesPerCycleAreCappedByMaxDispatchAndMaxInflight) {
  settings_.scheduler.max_dispatch_per_cycle = 2;
  settings_.scheduler.max_inflight = 3;
  Build();
  Agent("erp-sales", 10);
  for (int i = 0; i < 6; ++i)
    Enqueue("erp-sales");
  EXPECT_EQ(Cycle().counts.dispatched, 2);
  clock_.Advance(60s);
  EXPECT_EQ(Cycle().counts.dispatched, 1) << "3 in flight at most";
  clock_.Advance(60s);
  EXPECT_EQ(Cycle().counts.due, 0);
  runner_->Finish(0, {DispatchResult::Status::kDone, "", true});
  Settle();
  clock_.Advance(60s);
  EXPECT_EQ(Cycle().counts.dispatched, 1);
}

TEST_F(SchedulerTest, ACycleLargerThanOneClaimChunkDispatchesEveryItemOnce) {
  const int n = static_cast<int>(2 * Scheduler::kClaimChunk + 1);
  BuildWithSpreadWork(n);
  const auto report = Cycle();
  EXPECT_EQ(report.counts.due, n);
  EXPECT_EQ(report.counts.dispatched, n);
  ASSERT_EQ(runner_->dispatches.size(), static_cast<std::size_t>(n));
  std::set<store::WorkItemId> items;
  for (const auto& d : runner_->dispatches)
    items.insert(d.request.work_id);
  EXPECT_EQ(items.size(), static_cast<std::size_t>(n)) << "every item dispatched once";
  EXPECT_EQ(Decisions(report.cycle_id).size(), static_cast<std::size_t>(n));
  // Two lanes claimed at once, split by agent: no call mixes the lanes' agents, and each lane
  // claimed in chunks of 2,500 (5,000 and 5,001 candidates: two calls and three), so that no
  // more agents are locked at once than in one chunk of 5,000.
  EXPECT_EQ(flaky_.max_concurrent_claims(), 2);
  ASSERT_EQ(flaky_.claim_calls().size(), 5u);
  for (const auto& call : flaky_.claim_calls()) {
    std::set<std::size_t> lanes;
    for (auto agent : call)
      lanes.insert(static_cast<std::size_t>(agent) % Scheduler::kClaimLanes);
    EXPECT_EQ(lanes.size(), 1u) << "a claim call spans lanes";
  }
  // Each agent's candidates are claimed together, so that a claim bumps its fencing counter
  // once: an agent is in two calls only where a chunk ends inside its candidates. Five agents
  // per lane over two and three calls: at most 6 + 7 (agent, call) pairs; in due order
  // (round robin over the agents), every call of 2,500 would hold all five of its lane.
  std::size_t pairs = 0;
  for (const auto& call : flaky_.claim_calls())
    pairs += call.size();
  EXPECT_LE(pairs, 13u);
}

TEST_F(SchedulerTest, ACycleOfOneChunkClaimsInOneCall) {
  Build();
  for (int a = 0; a < 4; ++a)
    Agent("erp-" + std::to_string(a), 2);
  for (int i = 0; i < 8; ++i)
    Enqueue("erp-" + std::to_string(i % 4));
  EXPECT_EQ(Cycle().counts.dispatched, 8);
  EXPECT_EQ(flaky_.claim_calls().size(), 1u);
}

TEST_F(SchedulerTest, CompletionsAreRecordedInChunks) {
  const int n = static_cast<int>(Scheduler::kCompletionChunk + 1);
  BuildWithSpreadWork(n);
  ASSERT_EQ(Cycle().counts.dispatched, n);
  for (std::size_t i = 0; i < runner_->dispatches.size(); ++i)
    runner_->Finish(i, {DispatchResult::Status::kDone, "", true});
  test::RunFor(io_, 2s);
  EXPECT_THAT(flaky_.completion_calls(), ::testing::ElementsAre(Scheduler::kCompletionChunk, 1u));
  EXPECT_EQ(flaky_.max_concurrent_completions(), 2) << "a whole chunk waited: a second lane";
  EXPECT_EQ(scheduler_->inflight(), 0u);
  EXPECT_EQ(test::Await(io_, store_.ListWork(WorkState::kDone)).size(),
            static_cast<std::size_t>(n));
}

TEST_F(SchedulerTest, CompletionsThatFinishTogetherAreRecordedInOneCall) {
  Build();
  for (int a = 0; a < 3; ++a) {
    Agent("erp-" + std::to_string(a), 1);
    Enqueue("erp-" + std::to_string(a));
  }
  ASSERT_EQ(Cycle().counts.dispatched, 3);
  for (std::size_t i = 0; i < 3; ++i)
    runner_->Finish(i, {DispatchResult::Status::kDone, "", true});
  Settle();
  EXPECT_THAT(flaky_.completion_calls(), ::testing::ElementsAre(3u));
  EXPECT_EQ(flaky_.max_concurrent_completions(), 1);
  EXPECT_EQ(scheduler_->inflight(), 0u);
}

TEST_F(SchedulerTest, ACompletionTheStoreCouldNotTakeIsRetriedUntilRecorded) {
  Build();
  Agent("erp-sales", 1);
  const auto a = Enqueue("erp-sales");
  Cycle();
  ASSERT_EQ(runner_->dispatches.size(), 1u);
  flaky_.FailCompletionsBefore(2);
  runner_->Finish(0, {DispatchResult::Status::kDone, "", true});
  Settle();
  EXPECT_EQ(Work(a.work_item_id).state, WorkState::kDispatched) << "not recorded yet";
  EXPECT_EQ(scheduler_->inflight(), 1u) << "still ours until recorded";
  // Retries after 200 ms and 400 ms more.
  test::RunFor(io_, 1s);
  EXPECT_EQ(flaky_.completion_calls().size(), 3u);
  EXPECT_EQ(Work(a.work_item_id).state, WorkState::kDone);
  EXPECT_EQ(scheduler_->inflight(), 0u);
  const auto leases = test::Await(io_, store_.ListLeases(std::nullopt, false));
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_TRUE(leases[0].released_at.has_value()) << "released, not left to expire";
}

TEST_F(SchedulerTest, ACompletionWhoseAnswerWasLostIsRecordedOnce) {
  Build();
  Agent("erp-sales", 1);
  const auto a = Enqueue("erp-sales");
  Cycle();
  flaky_.FailCompletionsAfter(1);
  runner_->Finish(0, {DispatchResult::Status::kFailed, "exit 1", true});
  test::RunFor(io_, 500ms);
  // The first call applied the failure; the retry finds the lease released and changes
  // nothing: one failed attempt, not two.
  EXPECT_EQ(flaky_.completion_calls().size(), 2u);
  const auto item = Work(a.work_item_id);
  EXPECT_EQ(item.state, WorkState::kFailed);
  EXPECT_EQ(item.attempts, 1);
  EXPECT_EQ(scheduler_->inflight(), 0u);
}

TEST_F(SchedulerTest, SchedulesAreMaterializedOncePerOccurrence) {
  config::ScheduleSettings s;
  s.name = "sync";
  s.agents = {"erp-sales"};
  s.every = 5min;
  s.kind = "sync";
  settings_.schedules.push_back(s);
  Build();
  Agent("erp-sales", 1);
  EXPECT_EQ(Cycle().counts.materialized, 1);
  ASSERT_EQ(runner_->dispatches.size(), 1u);
  runner_->Finish(0, {DispatchResult::Status::kDone, "", true});
  Settle();
  clock_.Advance(60s);  // same 5 min occurrence, next cycle slot
  EXPECT_EQ(Cycle().counts.materialized, 0);
  EXPECT_EQ(runner_->dispatches.size(), 1u) << "the occurrence's work ran once";
  clock_.Advance(5min);
  EXPECT_EQ(Cycle().counts.materialized, 1) << "the next occurrence is new work";
}

TEST_F(SchedulerTest, DrainStopsWorkStillRunningAfterTheGraceAndLeavesItsLease) {
  Build();
  Agent("erp-sales", 2);
  Enqueue("erp-sales");
  Enqueue("erp-sales");
  Cycle();
  ASSERT_EQ(runner_->dispatches.size(), 2u);
  runner_->Finish(0, {DispatchResult::Status::kDone, "", true});
  test::Await(io_, scheduler_->Drain(50ms));
  EXPECT_TRUE(runner_->dispatches[0].stop_reason.empty());
  EXPECT_EQ(runner_->dispatches[1].stop_reason, "shutdown grace elapsed");
  EXPECT_EQ(scheduler_->inflight(), 0u);
  auto active = test::Await(io_, store_.ListLeases(std::nullopt, true));
  ASSERT_EQ(active.size(), 1u) << "the stopped work's lease is left to expire";
  EXPECT_EQ(active[0].work_item_id, runner_->dispatches[1].request.work_id);
}

TEST_F(SchedulerTest, DrainDoesNotWaitTheGraceForWorkHandedOffToItsAgent) {
  Build();
  Agent("erp-sales", 2);
  Enqueue("erp-sales");
  Enqueue("erp-sales");
  Cycle();
  ASSERT_EQ(runner_->dispatches.size(), 2u);
  runner_->dispatches[0].request.on_handed_off();  // the agent took it over (http 2xx, notify)
  runner_->Finish(1, {DispatchResult::Status::kDone, "", true});
  const auto started = std::chrono::steady_clock::now();
  test::Await(io_, scheduler_->Drain(30s));
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s) << "no wait for the 30 s grace";
  EXPECT_THAT(runner_->dispatches[0].stop_reason, testing::HasSubstr("handed-off"));
  EXPECT_EQ(scheduler_->inflight(), 0u);
  // Nothing recorded for it: the agent's own completion (or the lease's expiry) decides.
  auto active = test::Await(io_, store_.ListLeases(std::nullopt, true));
  ASSERT_EQ(active.size(), 1u);
  EXPECT_EQ(active[0].work_item_id, runner_->dispatches[0].request.work_id);
}

TEST_F(SchedulerTest, ExecWorkWhoseLeaseIsLostIsKilled) {
  settings_.runners["exec"] = config::RunnerSettings{.name = "exec",
                                                     .transport = config::Transport::kExec,
                                                     .command = {"/bin/sleep", "30"},
                                                     .timeout = 60s,
                                                     .kill_grace = 1s};
  keeper_.emplace(io_.get_executor(), store_, settings_.leasing, log_);
  scheduler_.emplace(io_.get_executor(), store_, *keeper_, settings_,
                     MakeRunners(settings_, io_.get_executor(), log_), log_);
  store::NewAgent a;
  a.agent_slug = "sleeper";
  a.tool_profile_id = "erp";
  a.runner = "exec";
  a.business_link = "spindle:req-3";
  test::Await(io_, store_.RegisterAgent(a));
  const auto item = Enqueue("sleeper");
  Cycle();
  EXPECT_EQ(scheduler_->inflight(), 1u);
  clock_.Advance(31s);
  const auto started = std::chrono::steady_clock::now();
  test::Await(io_, keeper_->RenewAll());
  while (scheduler_->inflight() > 0 && std::chrono::steady_clock::now() - started < 10s) {
    test::RunFor(io_, 20ms);
  }
  EXPECT_EQ(scheduler_->inflight(), 0u) << "the child was killed and reaped";
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kDispatched);
}

TEST_F(SchedulerTest, AHandedOffDispatchIsRenewedUntilTheAgentsOwnCompletionEndsItsLease) {
  Build();
  Agent("erp-sales");
  const auto item = Enqueue("erp-sales");
  Cycle();
  ASSERT_EQ(runner_->dispatches.size(), 1u);
  auto& d = runner_->dispatches[0];
  ASSERT_TRUE(d.request.on_handed_off);
  d.request.on_handed_off();  // the agent accepted the work (http 2xx; notify)

  // Still in flight, and its lease renewed.
  test::Await(io_, keeper_->RenewAll());
  EXPECT_EQ(scheduler_->inflight(), 1u);
  EXPECT_EQ(keeper_->held(), 1u);
  EXPECT_TRUE(d.stop_reason.empty());

  // The agent completes through the fencing check itself (warp.complete_work).
  store::Completion completion;
  completion.lease = {d.request.lease_id, d.request.fencing_token};
  completion.outcome = store::Outcome::kDone;
  store::RetryPolicy retry;
  const auto verdict = test::Await(io_, store_.CompleteWork(completion, retry));
  EXPECT_TRUE(verdict.accepted());

  // The next renewal finds the lease released: the execution is stopped and warpd records
  // nothing more for it.
  test::Await(io_, keeper_->RenewAll());
  Settle();
  EXPECT_THAT(d.stop_reason, testing::HasSubstr("lease ended"));
  EXPECT_EQ(scheduler_->inflight(), 0u);
  EXPECT_EQ(keeper_->held(), 0u);
  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kDone);
}

TEST_F(SchedulerTest, AHandedOffDispatchThatTimesOutIsFailedWithRetryThroughTheFencingCheck) {
  Build();
  Agent("erp-sales");
  const auto item = Enqueue("erp-sales");
  Cycle();
  ASSERT_EQ(runner_->dispatches.size(), 1u);
  runner_->dispatches[0].request.on_handed_off();
  DispatchResult timed_out{DispatchResult::Status::kTimedOut, "not completed in time", true, true};
  runner_->Finish(0, timed_out);
  Settle();
  EXPECT_EQ(scheduler_->inflight(), 0u);
  const auto work = Work(item.work_item_id);
  EXPECT_EQ(work.state, WorkState::kFailed);
  EXPECT_EQ(work.last_error, "not completed in time");
}

}  // namespace
}  // namespace warp::scheduler
