// A Store that forwards every call to another one, and can make CompleteWorkBatch fail the way
// a database outage does: before the call reaches the store (nothing applied), or after it
// (applied, but the answer lost, as when a connection breaks between COMMIT and its reply).
// ClaimDispatches and CompleteWorkBatch yield to the event loop first, as a real round trip
// does, so that concurrent calls overlap; they record their calls and how many ran at once.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <cstddef>
#include <set>
#include <vector>

#include "store/store.hpp"

namespace warp::test {

class FlakyStore final : public store::Store {
 public:
  explicit FlakyStore(store::Store& inner) : inner_(inner) {}

  /// The next `n` CompleteWorkBatch calls fail with kUnavailable without reaching the store.
  void FailCompletionsBefore(int n) { fail_before_ = n; }
  /// The next `n` CompleteWorkBatch calls reach the store, then fail with kUnavailable.
  void FailCompletionsAfter(int n) { fail_after_ = n; }
  /// The most CompleteWorkBatch calls that were in flight at once.
  int max_concurrent_completions() const { return max_concurrent_completions_; }
  /// The sizes of the CompleteWorkBatch calls, failed ones included.
  const std::vector<std::size_t>& completion_calls() const { return completion_calls_; }

  store::Task<std::vector<store::CompletionResult>> CompleteWorkBatch(
      std::vector<store::Completion> completions, store::RetryPolicy retry) override {
    completion_calls_.push_back(completions.size());
    ++concurrent_completions_;
    max_concurrent_completions_ = std::max(max_concurrent_completions_, concurrent_completions_);
    co_await boost::asio::post(co_await boost::asio::this_coro::executor,
                               boost::asio::use_awaitable);
    --concurrent_completions_;
    if (fail_before_ > 0) {
      --fail_before_;
      throw store::StoreError(store::StoreError::Kind::kUnavailable,
                              "query timed out (injected, before the store)");
    }
    auto results = co_await inner_.CompleteWorkBatch(std::move(completions), retry);
    if (fail_after_ > 0) {
      --fail_after_;
      throw store::StoreError(store::StoreError::Kind::kUnavailable,
                              "connection lost (injected, after the store applied it)");
    }
    co_return results;
  }

  /// Every ClaimDispatches call waits this long (on the loop's clock) before it reaches the
  /// store: a slow claim, a long cycle.
  void HoldClaims(std::chrono::milliseconds hold) { claim_hold_ = hold; }
  /// The agents of each ClaimDispatches call, in call order.
  const std::vector<std::set<store::AgentId>>& claim_calls() const { return claim_calls_; }
  /// The most ClaimDispatches calls that were in flight at once.
  int max_concurrent_claims() const { return max_concurrent_claims_; }

  store::Task<std::vector<store::DispatchClaim>> ClaimDispatches(store::DispatchBatch b) override {
    std::set<store::AgentId> agents;
    for (const auto& c : b.candidates)
      agents.insert(c.agent_id);
    claim_calls_.push_back(std::move(agents));
    ++concurrent_claims_;
    max_concurrent_claims_ = std::max(max_concurrent_claims_, concurrent_claims_);
    co_await boost::asio::post(co_await boost::asio::this_coro::executor,
                               boost::asio::use_awaitable);
    if (claim_hold_.count() > 0) {
      boost::asio::steady_timer hold(co_await boost::asio::this_coro::executor, claim_hold_);
      co_await hold.async_wait(boost::asio::use_awaitable);
    }
    auto claims = co_await inner_.ClaimDispatches(std::move(b));
    --concurrent_claims_;
    co_return claims;
  }

  store::Task<store::TimePoint> Now() override { return inner_.Now(); }
  store::Task<void> PutToolProfile(store::ToolProfile p) override {
    return inner_.PutToolProfile(std::move(p));
  }
  store::Task<std::vector<store::ToolProfile>> ListToolProfiles() override {
    return inner_.ListToolProfiles();
  }
  store::Task<store::Agent> RegisterAgent(store::NewAgent a) override {
    return inner_.RegisterAgent(std::move(a));
  }
  store::Task<std::vector<store::Agent>> ListAgents() override { return inner_.ListAgents(); }
  store::Task<std::vector<store::Agent>> GetAgents(std::vector<store::AgentId> ids) override {
    return inner_.GetAgents(std::move(ids));
  }
  store::Task<bool> SetAgentLifecycle(std::string slug, store::Lifecycle l) override {
    return inner_.SetAgentLifecycle(std::move(slug), l);
  }
  store::Task<store::EnqueueResult> EnqueueWork(store::NewWork w, int max_attempts) override {
    return inner_.EnqueueWork(std::move(w), max_attempts);
  }
  store::Task<std::optional<store::WorkItem>> GetWork(store::WorkItemId id) override {
    return inner_.GetWork(id);
  }
  store::Task<std::vector<store::WorkItem>> ListWork(std::optional<store::WorkState> s) override {
    return inner_.ListWork(s);
  }
  store::Task<std::vector<store::WorkItem>> SelectDueWork(int limit, int max_active) override {
    return inner_.SelectDueWork(limit, max_active);
  }
  store::Task<int> RequeueExpiredWork() override { return inner_.RequeueExpiredWork(); }
  store::Task<store::ClaimResult> ClaimCycle(store::CycleClaim c) override {
    return inner_.ClaimCycle(std::move(c));
  }
  /// The runs of the HeartbeatRun calls, in call order.
  const std::vector<store::RunId>& run_heartbeats() const { return run_heartbeats_; }
  store::Task<bool> HeartbeatRun(store::RunId run) override {
    run_heartbeats_.push_back(run);
    return inner_.HeartbeatRun(run);
  }
  store::Task<void> FinishRun(store::RunId run, store::RunStatus status, store::RunCounts counts,
                              std::string error) override {
    return inner_.FinishRun(run, status, counts, std::move(error));
  }
  store::Task<std::vector<store::SchedulerRun>> ListRuns(std::string cycle_id) override {
    return inner_.ListRuns(std::move(cycle_id));
  }
  store::Task<std::vector<store::DispatchDecision>> ListDecisions(std::string cycle_id) override {
    return inner_.ListDecisions(std::move(cycle_id));
  }
  /// The sizes of the RenewLeases calls.
  const std::vector<std::size_t>& renew_calls() const { return renew_calls_; }
  store::Task<std::vector<std::optional<store::TimePoint>>> RenewLeases(
      std::vector<store::LeaseRef> leases, store::Duration ttl) override {
    renew_calls_.push_back(leases.size());
    return inner_.RenewLeases(std::move(leases), ttl);
  }
  store::Task<std::vector<store::Lease>> ListLeases(std::optional<store::AgentId> agent,
                                                    bool active_only) override {
    return inner_.ListLeases(agent, active_only);
  }
  store::Task<void> HeartbeatInstance(store::InstanceInfo info) override {
    return inner_.HeartbeatInstance(std::move(info));
  }
  store::Task<store::Workspace> PutWorkspace(store::NewWorkspace w) override {
    return inner_.PutWorkspace(std::move(w));
  }
  store::Task<store::LearningProposal> PutLearningProposal(store::LearningProposal p) override {
    return inner_.PutLearningProposal(std::move(p));
  }
  store::Task<store::WatchdogFacts> ScanWatchdogFacts(store::WatchdogScan scan) override {
    return inner_.ScanWatchdogFacts(std::move(scan));
  }
  store::Task<std::vector<store::ObservationChange>> ApplyObservations(
      store::ObservationBatch batch) override {
    return inner_.ApplyObservations(std::move(batch));
  }
  store::Task<std::vector<store::Observation>> ListObservations(bool open_only) override {
    return inner_.ListObservations(open_only);
  }

 private:
  store::Store& inner_;
  int fail_before_ = 0;
  int fail_after_ = 0;
  std::vector<std::size_t> completion_calls_;
  std::vector<std::size_t> renew_calls_;
  std::vector<std::set<store::AgentId>> claim_calls_;
  std::vector<store::RunId> run_heartbeats_;
  std::chrono::milliseconds claim_hold_{0};
  int concurrent_claims_ = 0;
  int concurrent_completions_ = 0;
  int max_concurrent_completions_ = 0;
  int max_concurrent_claims_ = 0;
};

}  // namespace warp::test
