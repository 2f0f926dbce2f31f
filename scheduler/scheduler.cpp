#include "scheduler/scheduler.hpp"

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <unordered_map>

#include "scheduler/cycle.hpp"

namespace warp::scheduler {
namespace {

using SteadyClock = std::chrono::steady_clock;
using logging::Event;

store::RetryPolicy RetryPolicyOf(const config::SchedulerSettings& s) {
  return store::RetryPolicy{s.retry_backoff, s.retry_backoff_max};
}

/// The log fields of a dispatch.
logging::Fields FieldsOf(const DispatchRequest& r) {
  return {.cycle_id = r.cycle_id,
          .agent = r.agent_slug,
          .lease_id = r.lease_id,
          .fencing_token = r.fencing_token,
          .work_id = r.work_id};
}

std::vector<Schedule> CompileSchedules(const config::Settings& settings) {
  std::vector<Schedule> out;
  out.reserve(settings.schedules.size());
  for (const auto& s : settings.schedules)
    out.emplace_back(s);
  return out;
}

/// A kind is dispatchable to an agent when its tool profile lists it among its operations.
bool ProfileAllows(const store::ToolProfile& profile, const std::string& kind) {
  return std::find(profile.operations.begin(), profile.operations.end(), kind) !=
         profile.operations.end();
}

/// Puts each agent's candidates next to each other, in due order, agents in the order of their
/// first candidate: a chunk then holds all of an agent's candidates (at most a bound's worth),
/// and its claim bumps that agent's fencing counter once instead of once per candidate.
void GroupByAgent(std::vector<store::DispatchCandidate>& candidates) {
  std::unordered_map<store::AgentId, std::size_t> first;
  first.reserve(candidates.size());
  for (std::size_t i = 0; i < candidates.size(); ++i)
    first.try_emplace(candidates[i].agent_id, i);
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&first](const store::DispatchCandidate& a, const store::DispatchCandidate& b) {
                     return first.at(a.agent_id) < first.at(b.agent_id);
                   });
}

}  // namespace

RunnerSet MakeRunners(const config::Settings& settings, boost::asio::any_io_executor executor,
                      const logging::Logger& log) {
  RunnerSet runners;
  for (const auto& [name, runner] : settings.runners) {
    runners[name] = MakeRunner(runner, executor, log);
  }
  return runners;
}

Scheduler::Scheduler(boost::asio::any_io_executor executor, store::Store& store,
                     leasing::LeaseKeeper& lease_keeper, const config::Settings& settings,
                     RunnerSet runners, logging::Logger log)
    : executor_(executor),
      store_(store),
      lease_keeper_(lease_keeper),
      daemon_(settings.daemon),
      settings_(settings.scheduler),
      leasing_(settings.leasing),
      schedules_(CompileSchedules(settings)),
      runners_(std::move(runners)),
      log_(std::move(log)),
      tick_timer_(executor),
      idle_timer_(executor) {}

void Scheduler::Start() {
  if (ticking_)
    return;
  ticking_ = true;
  boost::asio::co_spawn(executor_, TickLoop(), boost::asio::detached);
}

void Scheduler::Reconfigure(const config::Settings& settings, RunnerSet runners) {
  daemon_.shutdown_grace = settings.daemon.shutdown_grace;  // instance and group stay: identity
  settings_ = settings.scheduler;
  leasing_ = settings.leasing;
  schedules_ = CompileSchedules(settings);
  runners_ = std::move(runners);
  tick_timer_.cancel();  // the loop recomputes the next slot with the new interval
}

store::Task<void> Scheduler::TickLoop() {
  // The slot the last tick was for. Each tick names its slot, so a timer that wakes a little
  // before the boundary (steady vs. store clock) still runs the slot it was armed for, and a
  // late tick runs the current slot instead of replaying missed ones.
  std::optional<std::int64_t> last_target;
  // Failed reads of the store time in a row: an outage is logged when it starts, not per tick
  // (the daemon reports it; the pool logs its connect failures).
  std::uint64_t time_failures = 0;
  while (ticking_) {
    const auto interval = settings_.interval;
    store::Duration delay = interval;
    std::optional<std::int64_t> target;
    try {
      const auto now = co_await store_.Now();
      const auto current = SlotAt(now, interval).index;
      // The first tick runs the current slot at once; later ones the next slot.
      target = last_target ? std::max(*last_target + 1, current) : current;
      delay =
          std::chrono::duration_cast<store::Duration>(store::TimePoint(interval * *target) - now);
      if (settings_.jitter.count() > 0) {
        std::uniform_int_distribution<std::int64_t> pick(0, settings_.jitter.count() - 1);
        delay += store::Duration(pick(jitter_rng_));
      }
      if (time_failures > 0) {
        log_.Debug(Event::kStoreError, {}, "store time readable again after {} failed read(s)",
                   time_failures);
        time_failures = 0;
      }
    } catch (const std::exception& e) {
      log_.Log(++time_failures == 1 ? spdlog::level::warn : spdlog::level::debug,
               Event::kStoreError, {}, "cannot read store time: {}; no cycles until it can be read",
               e.what());
    }
    tick_timer_.expires_after(std::max(delay, store::Duration::zero()));
    boost::system::error_code ec;
    co_await tick_timer_.async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ec));
    if (!ticking_)
      break;
    if (ec == boost::asio::error::operation_aborted || interval != settings_.interval) {
      last_target.reset();  // reconfigured: slots of another interval
      continue;
    }
    if (!target)
      continue;
    last_target = target;
    OnTick(*target);
  }
}

void Scheduler::OnTick(std::optional<std::int64_t> slot) {
  if (cycle_running_) {
    ++overruns_;
    if (slot)
      deferred_tick_ = DeferredTick{*slot, settings_.interval};
    log_.Warn(Event::kCycleOverrun, {.cycle_id = running_cycle_id_},
              "tick skipped: cycle {} is still running ({} overrun(s) so far){}",
              running_cycle_id_.empty() ? std::string("(starting)") : running_cycle_id_, overruns_,
              slot ? "; this slot's cycle starts when it ends" : "");
    return;
  }
  // Marked before the coroutine starts, so a second tick queued behind this one sees it.
  cycle_running_ = true;
  boost::asio::co_spawn(executor_, RunCycle(slot), boost::asio::detached);
}

void Scheduler::RunDeferredTick(const CycleReport& finished) {
  const auto deferred = std::exchange(deferred_tick_, std::nullopt);
  // Not for a slot of an interval a reload replaced, nor for the slot that just ran (its run
  // is completed or in the way). Drain drops the deferred tick.
  if (!deferred || cycle_running_ || deferred->interval != settings_.interval ||
      (finished.slot && deferred->slot <= *finished.slot))
    return;
  log_.Info(Event::kCycleOverrun,
            {.cycle_id = CycleId(daemon_.group, deferred->interval, deferred->slot)},
            "the cycle of slot {} starts late: its tick came while the previous cycle ran",
            deferred->slot);
  cycle_running_ = true;
  boost::asio::co_spawn(executor_, RunCycle(deferred->slot), boost::asio::detached);
}

store::Task<CycleReport> Scheduler::RunCycle(std::optional<std::int64_t> slot) {
  cycle_running_ = true;
  const auto started = SteadyClock::now();
  CycleReport report;
  std::string failure;
  try {
    co_await RunCycleUnguarded(slot, report);
  } catch (const store::StoreError& e) {
    failure = e.what();
    report.store_unavailable = e.kind() == store::StoreError::Kind::kUnavailable;
  } catch (const std::exception& e) {
    failure = e.what();
  }
  if (!failure.empty()) {
    report.outcome = CycleReport::Outcome::kFailed;
    report.error = failure;
    log_.Error(Event::kCycleFailed, {.cycle_id = report.cycle_id, .run_id = report.run_id},
               "cycle {} failed: {}",
               report.cycle_id.empty() ? std::string("(slot unknown)") : report.cycle_id, failure);
    if (report.run_id != 0) {
      try {
        co_await store_.FinishRun(report.run_id, store::RunStatus::kFailed, report.counts, failure);
      } catch (const std::exception& e) {
        // The run stays `running` and is taken over after takeover_after.
        log_.Warn(Event::kStoreError, {.cycle_id = report.cycle_id, .run_id = report.run_id},
                  "cannot mark run {} failed: {}", report.run_id, e.what());
      }
    }
  }
  report.duration =
      std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - started);
  if (report.outcome == CycleReport::Outcome::kRan) {
    const auto& c = report.counts;
    log_.Info(Event::kCycleCompleted, {.cycle_id = report.cycle_id, .run_id = report.run_id},
              "cycle {}: due={} dispatched={} deferred={} skipped={} failed={} materialized={} "
              "requeued={} inflight={} in {}ms{}",
              report.cycle_id, c.due, c.dispatched, c.deferred, c.skipped, c.failed, c.materialized,
              c.requeued, inflight_.size(), report.duration.count(),
              report.took_over ? " (took over an abandoned run)" : "");
  }
  last_report_ = report;
  cycle_running_ = false;
  running_cycle_id_.clear();
  if (on_cycle_)
    on_cycle_(report);
  NotifyIfIdle();
  RunDeferredTick(report);
  co_return report;
}

struct Scheduler::RunBeat {
  explicit RunBeat(const boost::asio::any_io_executor& executor)
      : timer(executor), stopped(executor) {
    stopped.expires_at(boost::asio::steady_timer::time_point::max());
  }
  bool done = false;                  // the cycle is over
  bool running = true;                // HeartbeatRun has not returned yet
  boost::asio::steady_timer timer;    // the next heartbeat; cancelled when done
  boost::asio::steady_timer stopped;  // cancelled when HeartbeatRun returns
};

store::Task<CycleReport> Scheduler::RunCycleUnguarded(std::optional<std::int64_t> slot,
                                                      CycleReport& report) {
  const auto now = co_await store_.Now();
  const auto index = slot.value_or(SlotAt(now, settings_.interval).index);
  report.slot = index;
  report.cycle_id = CycleId(daemon_.group, settings_.interval, index);
  running_cycle_id_ = report.cycle_id;

  // Arguments of co_await'ed calls are named locals: GCC 12 destroys a braced temporary
  // twice when it is passed by value into a coroutine inside a co_await expression.
  store::CycleClaim request{report.cycle_id, daemon_.group, daemon_.instance,
                            settings_.takeover_after};
  auto claim = co_await store_.ClaimCycle(std::move(request));
  switch (claim.outcome) {
    case store::ClaimResult::Outcome::kAlreadyCompleted:
    case store::ClaimResult::Outcome::kRunningElsewhere: {
      const bool completed = claim.outcome == store::ClaimResult::Outcome::kAlreadyCompleted;
      report.outcome = completed ? CycleReport::Outcome::kAlreadyCompleted
                                 : CycleReport::Outcome::kRunningElsewhere;
      report.blocked_by = claim.run;
      log_.Info(Event::kCycleSkipped, {.cycle_id = report.cycle_id, .run_id = claim.run.run_id},
                "cycle {} {} {} (run {}); skipped", report.cycle_id,
                completed ? "already completed by" : "is running under", claim.run.instance,
                claim.run.run_id);
      co_return report;
    }
    case store::ClaimResult::Outcome::kGroupBusy:
      report.outcome = CycleReport::Outcome::kGroupBusy;
      report.blocked_by = claim.run;
      log_.Info(Event::kCycleSkipped, {.cycle_id = report.cycle_id, .run_id = claim.run.run_id},
                "cycle {} skipped: cycle {} of group {} is still running under {} (run {})",
                report.cycle_id, claim.run.cycle_id, daemon_.group, claim.run.instance,
                claim.run.run_id);
      co_return report;
    case store::ClaimResult::Outcome::kTookOver:
      report.took_over = true;
      log_.Warn(Event::kCycleSkipped, {.cycle_id = report.cycle_id, .run_id = claim.run.run_id},
                "cycle {}: run {} stopped heartbeating; marked abandoned and taken over",
                report.cycle_id, claim.abandoned_run.value_or(0));
      break;
    case store::ClaimResult::Outcome::kClaimed:
      break;
  }
  report.run_id = claim.run.run_id;

  // Joined by hand, like the claim lanes: the heartbeat ends before the cycle returns, whether
  // it finished or threw.
  auto beat = std::make_shared<RunBeat>(executor_);
  boost::asio::co_spawn(executor_, HeartbeatRun(report, beat), [beat](const std::exception_ptr&) {
    beat->running = false;
    beat->stopped.cancel();
  });
  std::exception_ptr failure;
  try {
    co_await RunClaimedCycle(now, report);
  } catch (...) {
    failure = std::current_exception();
  }
  beat->done = true;
  beat->timer.cancel();
  while (beat->running) {
    boost::system::error_code ec;
    co_await beat->stopped.async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ec));
  }
  if (failure)
    std::rethrow_exception(failure);
  co_return report;
}

store::Task<void> Scheduler::HeartbeatRun(CycleReport& report, std::shared_ptr<RunBeat> beat) {
  const auto every =
      std::max<store::Duration>(std::chrono::milliseconds(100), settings_.takeover_after / 3);
  while (!beat->done) {
    beat->timer.expires_after(every);
    boost::system::error_code ec;
    co_await beat->timer.async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ec));
    // cppcheck-suppress oppositeInnerCondition ; the cycle may have ended while we waited
    if (beat->done)
      break;
    try {
      if (!co_await store_.HeartbeatRun(report.run_id)) {
        log_.Warn(Event::kCycleSkipped, {.cycle_id = report.cycle_id, .run_id = report.run_id},
                  "cycle {}: run {} is no longer running (taken over after a missed "
                  "heartbeat); its claims go on, each decision is recorded once per cycle",
                  report.cycle_id, report.run_id);
        co_return;
      }
    } catch (const std::exception& e) {
      log_.Warn(Event::kStoreError, {.cycle_id = report.cycle_id, .run_id = report.run_id},
                "cannot heartbeat run {}: {}", report.run_id, e.what());
    }
  }
}

store::Task<void> Scheduler::RunClaimedCycle(store::TimePoint now, CycleReport& report) {
  auto& counts = report.counts;

  counts.requeued = co_await store_.RequeueExpiredWork();

  // Agents are read only when a schedule or due work needs them: an idle cycle stays cheap.
  std::vector<store::Agent> agents;
  bool agents_loaded = false;
  if (!schedules_.empty()) {
    agents = co_await store_.ListAgents();
    agents_loaded = true;
    counts.materialized = co_await Materialize(store_, schedules_, agents, now, settings_.interval,
                                               settings_.max_attempts, log_);
  }

  const int free_slots = std::max(0, settings_.max_inflight - static_cast<int>(inflight_.size()));
  const int capacity = std::min(settings_.max_dispatch_per_cycle, free_slots);
  std::vector<store::WorkItem> due;
  if (capacity > 0)
    due = co_await store_.SelectDueWork(capacity, leasing_.default_max_active);
  counts.due = static_cast<int>(due.size());

  std::unordered_map<store::AgentId, const store::Agent*> by_id;
  if (!due.empty()) {
    if (!agents_loaded) {
      std::vector<store::AgentId> ids;
      ids.reserve(due.size());
      for (const auto& item : due)
        ids.push_back(item.agent_id);
      agents = co_await store_.GetAgents(std::move(ids));
    }
    for (const auto& a : agents)
      by_id[a.agent_id] = &a;
    std::map<std::string, store::ToolProfile> profiles;
    for (auto& p : co_await store_.ListToolProfiles())
      profiles[p.tool_profile_id] = std::move(p);

    // The runners of this cycle, kept for its whole claim (Reconfigure swaps runners_).
    const RunnerSet runners = runners_;
    store::DispatchBatch batch{
        report.run_id,           report.cycle_id, daemon_.instance, leasing_.ttl, {},
        RetryPolicyOf(settings_)};
    batch.candidates.reserve(due.size());
    for (const auto& item : due) {
      const store::Agent& agent = *by_id.at(item.agent_id);
      store::DispatchCandidate c;
      c.work_item_id = item.work_item_id;
      c.agent_id = agent.agent_id;
      c.max_active =
          agent.max_active_leases > 0 ? agent.max_active_leases : leasing_.default_max_active;
      auto profile = profiles.find(agent.tool_profile_id);
      if (agent.lifecycle != store::Lifecycle::kActive) {
        c.verdict = store::Decision::kSkippedPaused;
        c.reason = fmt::format("agent is {}", store::ToString(agent.lifecycle));
      } else if (profile == profiles.end()) {
        c.verdict = store::Decision::kSkippedCapability;
        c.reason = fmt::format("tool profile '{}' does not exist", agent.tool_profile_id);
      } else if (!ProfileAllows(profile->second, item.kind)) {
        c.verdict = store::Decision::kSkippedCapability;
        c.reason = fmt::format("kind '{}' is not an operation of tool profile '{}'", item.kind,
                               agent.tool_profile_id);
      } else if (auto runner = runners.find(agent.runner); runner == runners.end()) {
        c.verdict = store::Decision::kFailed;
        c.reason = fmt::format("runner '{}' is not configured", agent.runner);
      } else {
        // The notify transport's notification is part of the claim's transaction.
        c.notify_channel = runner->second->notify_channel();
      }
      batch.candidates.push_back(std::move(c));
    }
    // In chunks, each dispatched as soon as it is claimed: a chunk's claim holds its row and
    // advisory locks for a fraction of a second instead of the whole batch's seconds, and the
    // work of one chunk runs (and its completions are recorded on another connection) while
    // the next is claimed. More than one chunk: kClaimLanes lanes at once, split by agent, an
    // agent's candidates next to each other (GroupByAgent).
    auto candidates = std::move(batch.candidates);
    if (candidates.size() <= kClaimChunk) {
      co_await ClaimLane(batch, std::move(candidates), kClaimChunk, report, by_id, runners);
    } else {
      std::vector<std::vector<store::DispatchCandidate>> lanes(kClaimLanes);
      for (auto& c : candidates)
        lanes[static_cast<std::size_t>(c.agent_id) % kClaimLanes].push_back(std::move(c));
      for (auto& lane : lanes)
        GroupByAgent(lane);
      // Joined by hand (Boost 1.74 has no awaitable operators): each lane counts itself out
      // and the last one wakes the cycle; the first failure is the cycle's.
      struct Join {
        std::size_t running = 0;
        std::exception_ptr failure;
        boost::asio::steady_timer done;
      };
      auto join = std::make_shared<Join>(Join{0, nullptr, boost::asio::steady_timer(executor_)});
      join->done.expires_at(boost::asio::steady_timer::time_point::max());
      for (auto& lane : lanes) {
        if (lane.empty())
          continue;
        ++join->running;
        boost::asio::co_spawn(
            executor_,
            ClaimLane(batch, std::move(lane), kClaimChunk / kClaimLanes, report, by_id, runners),
            [join](std::exception_ptr e) {
              if (e && !join->failure)
                join->failure = e;
              if (--join->running == 0)
                join->done.cancel();
            });
      }
      while (join->running > 0) {
        boost::system::error_code ec;
        co_await join->done.async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ec));
      }
      if (join->failure)
        std::rethrow_exception(join->failure);
    }
  }

  co_await store_.FinishRun(report.run_id, store::RunStatus::kCompleted, counts, "");
}

store::Task<void> Scheduler::ClaimLane(
    const store::DispatchBatch& batch, std::vector<store::DispatchCandidate> candidates,
    std::size_t chunk_size, CycleReport& report,
    const std::unordered_map<store::AgentId, const store::Agent*>& by_id,
    const RunnerSet& runners) {
  for (std::size_t from = 0; from < candidates.size(); from += chunk_size) {
    const std::size_t to = std::min(candidates.size(), from + chunk_size);
    store::DispatchBatch chunk{batch.run_id, batch.cycle_id, batch.instance, batch.lease_ttl,
                               {},           batch.retry};
    chunk.candidates.assign(
        std::make_move_iterator(candidates.begin() + static_cast<std::ptrdiff_t>(from)),
        std::make_move_iterator(candidates.begin() + static_cast<std::ptrdiff_t>(to)));
    auto claims = co_await store_.ClaimDispatches(std::move(chunk));
    Account(claims, report, by_id, runners);
  }
}

void Scheduler::Account(const std::vector<store::DispatchClaim>& claims, CycleReport& report,
                        const std::unordered_map<store::AgentId, const store::Agent*>& by_id,
                        const RunnerSet& runners) {
  auto& counts = report.counts;
  for (const auto& claim : claims) {
    if (!claim.recorded)
      continue;
    switch (claim.decision.decision) {
      case store::Decision::kDispatched:
        ++counts.dispatched;
        StartDispatch(claim, *by_id.at(claim.decision.agent_id), runners);
        break;
      case store::Decision::kDeferredLeaseHeld:
      case store::Decision::kDeferredContended:
        ++counts.deferred;
        break;
      case store::Decision::kSkippedPaused:
      case store::Decision::kSkippedCapability:
        ++counts.skipped;
        break;
      case store::Decision::kFailed:
        ++counts.failed;
        log_.Warn(Event::kDispatchFailed,
                  {.cycle_id = report.cycle_id,
                   .run_id = report.run_id,
                   .agent = by_id.at(claim.decision.agent_id)->agent_slug,
                   .work_id = claim.decision.work_item_id},
                  "work {} not dispatched: {}", claim.decision.work_item_id, claim.decision.reason);
        break;
    }
  }
}

void Scheduler::StartDispatch(const store::DispatchClaim& claim, const store::Agent& agent,
                              const RunnerSet& runners) {
  const store::Lease& lease = *claim.lease;
  const store::WorkItem& item = *claim.item;
  DispatchRequest request{agent.agent_slug,        item.work_item_id, item.kind,
                          item.payload_json,       lease.lease_id,    lease.fencing_token,
                          claim.decision.cycle_id, lease.expires_at};
  const logging::Fields fields{.cycle_id = request.cycle_id,
                               .run_id = claim.decision.run_id,
                               .agent = request.agent_slug,
                               .lease_id = lease.lease_id,
                               .fencing_token = lease.fencing_token,
                               .work_id = item.work_item_id};
  // Lease records are debug: dispatch_started (info) carries the same lease and fencing token.
  log_.Debug(Event::kLeaseAcquired, fields, "lease {} on {} acquired: fencing token {}",
             lease.lease_id, agent.agent_slug, lease.fencing_token);
  log_.Info(Event::kDispatchStarted, fields,
            "dispatching work {} ({}) to {} under lease {} token {} (attempt {}/{})",
            item.work_item_id, item.kind, agent.agent_slug, lease.lease_id, lease.fencing_token,
            item.attempts, item.max_attempts);

  auto runner = runners.at(agent.runner);
  const auto lease_id = lease.lease_id;
  lease_keeper_.Hold(lease, agent.agent_slug, [this, lease_id](const std::string& reason) {
    auto it = inflight_.find(lease_id);
    if (it == inflight_.end())
      return;
    it->second.stop_reason = (it->second.handed_off ? "lease ended: " : "lease lost: ") + reason;
    it->second.execution->Stop(it->second.stop_reason);
  });
  // An agent that takes the work over (http: 2xx without an outcome; notify: always) completes
  // it itself: the execution stays open and the lease renewed until the lease ends (released
  // by the agent's completion, or lost) or the runner's timeout.
  request.on_handed_off = [this, lease_id] {
    auto it = inflight_.find(lease_id);
    if (it == inflight_.end())
      return;
    it->second.handed_off = true;
    lease_keeper_.MarkHandedOff(lease_id);
  };
  auto& entry = inflight_[lease_id];
  entry.request = request;
  entry.runner = runner;
  entry.execution = runner->Start(std::move(request), [this, lease_id](DispatchResult result) {
    FinishDispatch(lease_id, std::move(result));
  });
}

void Scheduler::FinishDispatch(store::LeaseId lease_id, DispatchResult result) {
  finished_.emplace_back(lease_id, std::move(result));
  // One recorder batches whatever finished meanwhile; a second joins only when a whole chunk
  // waits behind the first (the database, not the batching, is then what holds them back).
  if (recorders_ == 0 || (recorders_ < kCompletionLanes && finished_.size() >= kCompletionChunk)) {
    // Counted before the coroutine starts (it starts on a later turn of the loop, by then
    // holding everything that finished meanwhile).
    ++recorders_;
    boost::asio::co_spawn(executor_, RecordCompletions(), boost::asio::detached);
  }
}

store::Task<void> Scheduler::RecordCompletions() {
  while (!finished_.empty()) {
    const auto n = static_cast<std::ptrdiff_t>(std::min(finished_.size(), kCompletionChunk));
    std::vector<std::pair<store::LeaseId, DispatchResult>> batch(
        std::make_move_iterator(finished_.begin()), std::make_move_iterator(finished_.begin() + n));
    finished_.erase(finished_.begin(), finished_.begin() + n);
    std::vector<store::Completion> completions;
    std::vector<const std::pair<store::LeaseId, DispatchResult>*> completed;
    for (const auto& done : batch) {
      auto it = inflight_.find(done.first);
      if (it == inflight_.end())
        continue;
      lease_keeper_.Forget(done.first);
      const auto& r = it->second.request;
      // A Stop that came after the work had finished (e.g. the lease was lost while the
      // daemon was frozen, after its child exited) stopped nothing: the runner reports the
      // real outcome, and the store's fencing accepts or refuses it.
      if (!it->second.stop_reason.empty() &&
          done.second.status == DispatchResult::Status::kStopped && it->second.handed_off) {
        // The agent had taken the work over; its own warp.complete_work (or the lease's
        // expiry and the requeue) decides the work's fate. The lease keeper logged the end.
        log_.Debug(Event::kDispatchFinished, FieldsOf(r),
                   "work {}: the dispatch handed off to {} ended ({})", r.work_id, r.agent_slug,
                   it->second.stop_reason);
        continue;
      }
      if (!it->second.stop_reason.empty() &&
          done.second.status == DispatchResult::Status::kStopped) {
        // We stopped it (lost lease, shutdown): its lease is left to expire and the work
        // returns to pending; completing it here could race a newer holder.
        log_.Warn(Event::kDispatchFailed, FieldsOf(r),
                  "work {} stopped: {}; its lease is left to expire", r.work_id,
                  done.second.detail.empty() ? it->second.stop_reason : done.second.detail);
        continue;
      }
      const DispatchResult& result = done.second;
      store::Completion completion;
      completion.lease = {r.lease_id, r.fencing_token};
      completion.outcome = result.status == DispatchResult::Status::kDone ? store::Outcome::kDone
                                                                          : store::Outcome::kFailed;
      completion.detail = result.detail;
      completion.transport_error = result.status == DispatchResult::Status::kTransportError;
      completion.retry = result.retry;
      completions.push_back(std::move(completion));
      completed.push_back(&done);
    }
    std::vector<store::CompletionResult> verdicts;
    std::string failure;
    int attempts = 0;
    if (!completions.empty()) {
      try {
        verdicts = co_await CompleteWithRetry(completions, attempts);
      } catch (const std::exception& e) {
        failure = e.what();
      }
    }
    for (std::size_t i = 0; i < completed.size(); ++i) {
      const auto& [lease_id, result] = *completed[i];
      const auto& r = inflight_.at(lease_id).request;
      const auto fields = FieldsOf(r);
      if (!failure.empty()) {
        log_.Error(Event::kStoreError, fields,
                   "cannot record the completion of work {}: {}; its lease will expire", r.work_id,
                   failure);
        continue;
      }
      const auto& done = verdicts.at(i);
      if (done.accepted()) {
        log_.Debug(Event::kLeaseReleased, fields, "lease {} on {} released", r.lease_id,
                   r.agent_slug);
      }
      if (done.verdict == store::CompletionResult::Verdict::kReleased && attempts > 1) {
        // Most likely our own earlier attempt committed and only its answer was lost.
        log_.Info(Event::kCompletionRejected, fields,
                  "completion of work {} found its lease {} already released after {} attempts "
                  "(an earlier attempt committed, or the agent completed it)",
                  r.work_id, r.lease_id, attempts);
      } else if (!done.accepted()) {
        log_.Warn(Event::kCompletionRejected, fields,
                  "completion of work {} refused ({}): the lease is no longer ours", r.work_id,
                  store::ToString(done.verdict));
      } else if (done.item && done.item->state == store::WorkState::kDead) {
        log_.Error(Event::kWorkDead, fields, "work {} is dead after {} attempt(s): {}", r.work_id,
                   done.item->attempts, result.detail);
      } else {
        const auto level = result.status == DispatchResult::Status::kDone ? spdlog::level::info
                                                                          : spdlog::level::warn;
        log_.Log(level, Event::kDispatchFinished, fields, "work {} {}{}{}{}", r.work_id,
                 ToString(result.status), result.detail.empty() ? "" : ": ", result.detail,
                 done.verdict == store::CompletionResult::Verdict::kAcceptedLate
                     ? " (late, accepted)"
                     : "");
      }
    }
    for (const auto& done : batch)
      inflight_.erase(done.first);
  }
  --recorders_;
  NotifyIfIdle();
}

store::Task<std::vector<store::CompletionResult>> Scheduler::CompleteWithRetry(
    const std::vector<store::Completion>& completions, int& attempts) {
  const auto give_up = SteadyClock::now() + leasing_.ttl;
  auto backoff = kCompletionRetry;
  for (;;) {
    ++attempts;
    std::string error;
    try {
      auto copy = completions;
      const auto retry = RetryPolicyOf(settings_);
      co_return co_await store_.CompleteWorkBatch(std::move(copy), retry);
    } catch (const store::StoreError& e) {
      if (e.kind() != store::StoreError::Kind::kUnavailable ||
          SteadyClock::now() + backoff >= give_up)
        throw;
      error = e.what();
    }
    log_.Warn(Event::kStoreError, {},
              "cannot record {} completion(s) yet (attempt {}): {}; retrying in {}ms",
              completions.size(), attempts, error, backoff.count());
    boost::asio::steady_timer timer(executor_, backoff);
    boost::system::error_code ec;
    co_await timer.async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ec));
    backoff = std::min(backoff * 2, kCompletionRetryMax);
  }
}

void Scheduler::NotifyIfIdle() {
  if (inflight_.empty() && !cycle_running_ && recorders_ == 0)
    idle_timer_.cancel();
}

store::Task<bool> Scheduler::WaitIdle(std::chrono::steady_clock::time_point deadline) {
  while ((cycle_running_ || recorders_ > 0 || !inflight_.empty()) &&
         SteadyClock::now() < deadline) {
    idle_timer_.expires_at(deadline);
    boost::system::error_code ec;
    co_await idle_timer_.async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ec));
  }
  co_return !cycle_running_ && recorders_ == 0 && inflight_.empty();
}

store::Task<void> Scheduler::Drain(store::Duration grace) {
  ticking_ = false;
  deferred_tick_.reset();  // no new cycle once draining
  tick_timer_.cancel();
  // Work handed off to its agent (an accepted http dispatch, a notify dispatch) needs nothing
  // more from warpd: the agent completes it through warp.complete_work within its lease, or
  // the lease expires and the work returns to pending. Waiting the grace for it would only
  // delay the stop.
  for (auto& [id, entry] : inflight_) {
    if (entry.handed_off && entry.stop_reason.empty()) {
      entry.stop_reason = "shutdown: the agent completes handed-off work itself";
      entry.execution->Stop(entry.stop_reason);
    }
  }
  if (!co_await WaitIdle(SteadyClock::now() + grace)) {
    log_.Warn(Event::kDaemonStopping, {},
              "shutdown grace of {}ms elapsed with {} dispatch(es) running; stopping them",
              grace.count(), inflight_.size());
    for (auto& [id, entry] : inflight_) {
      if (entry.stop_reason.empty())
        entry.stop_reason = "shutdown grace elapsed";
      entry.execution->Stop(entry.stop_reason);
    }
    // Runners escalate to SIGKILL after kill_grace; this bound only guards against a bug.
    co_await WaitIdle(SteadyClock::now() + std::chrono::minutes(2));
  }
  lease_keeper_.Stop();
}

}  // namespace warp::scheduler
