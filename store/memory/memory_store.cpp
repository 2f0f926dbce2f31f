#include "store/memory/memory_store.hpp"

#include <algorithm>
#include <tuple>

namespace warp::store {

MemoryStore::MemoryStore(WallClock clock) : clock_(std::move(clock)) {}

void MemoryStore::SetAgentLockedElsewhere(AgentId id, bool locked) {
  if (locked) {
    locked_elsewhere_.insert(id);
  } else {
    locked_elsewhere_.erase(id);
  }
}

Task<TimePoint> MemoryStore::Now() {
  co_return clock_();
}

Task<void> MemoryStore::PutToolProfile(ToolProfile profile) {
  if (profile.tool_profile_id.empty()) {
    throw StoreError(StoreError::Kind::kInvalid, "tool profile id must not be empty");
  }
  tool_profiles_[profile.tool_profile_id] = std::move(profile);
  co_return;
}

Task<std::vector<ToolProfile>> MemoryStore::ListToolProfiles() {
  std::vector<ToolProfile> out;
  for (const auto& [id, p] : tool_profiles_)
    out.push_back(p);
  co_return out;
}

Task<Agent> MemoryStore::RegisterAgent(NewAgent agent) {
  if (auto problem = NewAgentProblem(agent); !problem.empty()) {
    throw StoreError(StoreError::Kind::kInvalid, problem);
  }
  for (const auto& [id, a] : agents_) {
    if (a.agent_slug == agent.agent_slug) {
      throw StoreError(StoreError::Kind::kConflict, "agent '" + agent.agent_slug + "' exists");
    }
  }
  Agent a;
  static_cast<NewAgent&>(a) = std::move(agent);
  a.agent_id = next_agent_++;
  agents_[a.agent_id] = a;
  co_return a;
}

Task<std::vector<Agent>> MemoryStore::ListAgents() {
  std::vector<Agent> out;
  for (const auto& [id, a] : agents_)
    out.push_back(a);
  co_return out;
}

Task<std::vector<Agent>> MemoryStore::GetAgents(std::vector<AgentId> ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::vector<Agent> out;
  for (const auto id : ids) {
    if (auto it = agents_.find(id); it != agents_.end())
      out.push_back(it->second);
  }
  co_return out;
}

Task<bool> MemoryStore::SetAgentLifecycle(std::string slug, Lifecycle lifecycle) {
  for (auto& [id, a] : agents_) {
    if (a.agent_slug == slug) {
      if (a.lifecycle == Lifecycle::kRetired && lifecycle != Lifecycle::kRetired) {
        throw StoreError(StoreError::Kind::kInvalid, "agent '" + slug + "' is retired for good");
      }
      a.lifecycle = lifecycle;
      co_return true;
    }
  }
  co_return false;
}

Task<EnqueueResult> MemoryStore::EnqueueWork(NewWork work, int default_max_attempts) {
  const Agent* agent = nullptr;
  for (const auto& [id, a] : agents_) {
    if (a.agent_slug == work.agent_slug)
      agent = &a;
  }
  if (agent == nullptr) {
    throw StoreError(StoreError::Kind::kNotFound, "unknown agent '" + work.agent_slug + "'");
  }
  if (auto problem = PayloadProblem(work.payload_json); !problem.empty()) {
    throw StoreError(StoreError::Kind::kInvalid, problem);
  }
  if (work.kind.empty())
    throw StoreError(StoreError::Kind::kInvalid, "work kind is empty");
  if (auto it = work_by_key_.find(work.idempotency_key); it != work_by_key_.end()) {
    co_return EnqueueResult{work_.at(it->second), false};
  }
  const WorkItemId id = next_work_++;
  if (work.idempotency_key.empty()) {
    // Key-less work is always new: the generated key must not land on a producer's key that
    // happens to look the same, or this enqueue would silently return that unrelated item.
    work.idempotency_key = "work:" + std::to_string(id);
    for (int n = 1; work_by_key_.contains(work.idempotency_key); ++n) {
      work.idempotency_key = "work:" + std::to_string(id) + "#" + std::to_string(n);
    }
  }
  WorkItem item;
  item.work_item_id = id;
  item.agent_id = agent->agent_id;
  item.kind = std::move(work.kind);
  item.payload_json = std::move(work.payload_json);
  item.priority = work.priority;
  item.due_at = work.due_at.value_or(clock_());
  item.idempotency_key = std::move(work.idempotency_key);
  item.max_attempts = work.max_attempts > 0 ? work.max_attempts : default_max_attempts;
  work_by_key_[item.idempotency_key] = id;
  work_[id] = item;
  co_return EnqueueResult{item, true};
}

Task<std::optional<WorkItem>> MemoryStore::GetWork(WorkItemId id) {
  auto it = work_.find(id);
  if (it == work_.end())
    co_return std::nullopt;
  co_return it->second;
}

Task<std::vector<WorkItem>> MemoryStore::ListWork(std::optional<WorkState> state) {
  std::vector<WorkItem> out;
  for (const auto& [id, w] : work_) {
    if (!state || w.state == *state)
      out.push_back(w);
  }
  co_return out;
}

Task<std::vector<WorkItem>> MemoryStore::SelectDueWork(int limit, int default_max_active) {
  const TimePoint now = clock_();
  std::vector<WorkItem> due;
  for (const auto& [id, w] : work_) {
    if ((w.state == WorkState::kPending || w.state == WorkState::kFailed) && w.due_at <= now) {
      due.push_back(w);
    }
  }
  std::sort(due.begin(), due.end(), [](const WorkItem& a, const WorkItem& b) {
    if (a.priority != b.priority)
      return a.priority > b.priority;
    if (a.due_at != b.due_at)
      return a.due_at < b.due_at;
    return a.work_item_id < b.work_item_id;
  });
  limit = std::max(limit, 0);
  if (due.size() > static_cast<std::size_t>(limit) * kDueScanFactor)
    due.resize(static_cast<std::size_t>(limit) * kDueScanFactor);
  // Per agent, at most max(1, bound - active leases) items.
  std::map<AgentId, int> active;
  for (const auto& [id, l] : leases_) {
    if (!l.released_at && l.expires_at > now)
      ++active[l.agent_id];
  }
  std::map<AgentId, int> room;
  for (const auto& w : due) {
    if (room.contains(w.agent_id))
      continue;
    const auto agent = agents_.find(w.agent_id);
    const int bound = agent != agents_.end() && agent->second.max_active_leases > 0
                          ? agent->second.max_active_leases
                          : default_max_active;
    room[w.agent_id] = std::max(1, bound - active[w.agent_id]);
  }
  std::vector<WorkItem> out;
  for (auto& w : due) {
    if (static_cast<int>(out.size()) >= limit)
      break;
    if (room[w.agent_id]-- > 0)
      out.push_back(std::move(w));
  }
  co_return out;
}

Task<int> MemoryStore::RequeueExpiredWork() {
  const TimePoint now = clock_();
  int moved = 0;
  for (auto& [id, w] : work_) {
    if (w.state != WorkState::kDispatched || !w.lease_id)
      continue;
    const Lease& lease = leases_.at(*w.lease_id);
    if (lease.released_at || lease.expires_at > now)
      continue;
    w.last_error = "lease " + std::to_string(lease.lease_id) + " expired without completion";
    w.state = w.attempts >= w.max_attempts ? WorkState::kDead : WorkState::kPending;
    ++moved;
  }
  co_return moved;
}

Task<ClaimResult> MemoryStore::ClaimCycle(CycleClaim claim) {
  const TimePoint now = clock_();
  // "Older than takeover_after": strictly.
  const auto live = [&](const SchedulerRun& run) {
    return run.status == RunStatus::kRunning && run.heartbeat_at + claim.takeover_after >= now;
  };
  SchedulerRun* stale = nullptr;
  for (auto& [id, run] : runs_) {
    if (run.cycle_id != claim.cycle_id)
      continue;
    if (run.status == RunStatus::kCompleted)
      co_return ClaimResult{ClaimResult::Outcome::kAlreadyCompleted, run, std::nullopt};
    if (live(run))
      co_return ClaimResult{ClaimResult::Outcome::kRunningElsewhere, run, std::nullopt};
    if (run.status == RunStatus::kRunning)
      stale = &run;
  }
  // Another cycle of the group running under a live owner: the latest started of them.
  const SchedulerRun* busy = nullptr;
  for (const auto& [id, run] : runs_) {
    if (run.group == claim.group && run.cycle_id != claim.cycle_id && live(run) &&
        (!busy || std::tie(run.started_at, run.run_id) > std::tie(busy->started_at, busy->run_id)))
      busy = &run;
  }
  if (busy)
    co_return ClaimResult{ClaimResult::Outcome::kGroupBusy, *busy, std::nullopt};
  ClaimResult result;
  if (stale) {
    stale->status = RunStatus::kAbandoned;
    stale->finished_at = now;
    stale->error = "heartbeat older than takeover_after; taken over by " + claim.instance;
    result.outcome = ClaimResult::Outcome::kTookOver;
    result.abandoned_run = stale->run_id;
  }
  SchedulerRun run;
  run.run_id = next_run_++;
  run.cycle_id = claim.cycle_id;
  run.group = claim.group;
  run.instance = claim.instance;
  run.started_at = run.heartbeat_at = now;
  runs_[run.run_id] = run;
  result.run = run;
  co_return result;
}

Task<bool> MemoryStore::HeartbeatRun(RunId run) {
  auto it = runs_.find(run);
  if (it == runs_.end() || it->second.status != RunStatus::kRunning)
    co_return false;
  it->second.heartbeat_at = clock_();
  co_return true;
}

Task<void> MemoryStore::FinishRun(RunId run, RunStatus status, RunCounts counts,
                                  std::string error) {
  auto it = runs_.find(run);
  if (it == runs_.end())
    throw StoreError(StoreError::Kind::kNotFound, "unknown run");
  // A run that was taken over stays abandoned: its late finish must not resurrect it.
  if (it->second.status != RunStatus::kRunning)
    co_return;
  it->second.status = status;
  it->second.counts = counts;
  it->second.error = std::move(error);
  it->second.finished_at = it->second.heartbeat_at = clock_();
}

Task<std::vector<SchedulerRun>> MemoryStore::ListRuns(std::string cycle_id) {
  std::vector<SchedulerRun> out;
  for (const auto& [id, r] : runs_) {
    if (cycle_id.empty() || r.cycle_id == cycle_id)
      out.push_back(r);
  }
  co_return out;
}

Task<std::vector<DispatchDecision>> MemoryStore::ListDecisions(std::string cycle_id) {
  std::vector<DispatchDecision> out;
  for (const auto& [key, d] : decisions_) {
    if (cycle_id.empty() || d.cycle_id == cycle_id)
      out.push_back(d);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return std::tie(a.at, a.work_item_id) < std::tie(b.at, b.work_item_id);
  });
  co_return out;
}

int MemoryStore::ActiveLeases(AgentId agent, TimePoint now) const {
  int n = 0;
  for (const auto& [id, l] : leases_) {
    if (l.agent_id == agent && !l.released_at && l.expires_at > now)
      ++n;
  }
  return n;
}

Task<std::vector<DispatchClaim>> MemoryStore::ClaimDispatches(DispatchBatch batch) {
  const TimePoint now = clock_();
  // Check every candidate before changing anything: the batch is one transaction, so an
  // unknown item late in it must not leave the leases of earlier candidates behind.
  for (const auto& c : batch.candidates) {
    if (!c.notify_channel.empty()) {
      throw StoreError(StoreError::Kind::kInvalid,
                       "the memory store cannot notify (channel " + c.notify_channel +
                           "): the notify transport needs the PostgreSQL store");
    }
    auto wit = work_.find(c.work_item_id);
    if (wit == work_.end() || !agents_.contains(c.agent_id) || wit->second.agent_id != c.agent_id) {
      throw StoreError(StoreError::Kind::kNotFound, "work item " + std::to_string(c.work_item_id) +
                                                        " of agent " + std::to_string(c.agent_id) +
                                                        " does not exist");
    }
  }
  std::vector<DispatchClaim> out;
  out.reserve(batch.candidates.size());
  for (const auto& c : batch.candidates) {
    DispatchClaim claim;
    auto wit = work_.find(c.work_item_id);
    auto ait = agents_.find(c.agent_id);
    WorkItem& item = wit->second;
    const bool dispatchable =
        (item.state == WorkState::kPending || item.state == WorkState::kFailed) &&
        item.due_at <= now;
    DecisionKey key{batch.cycle_id, item.work_item_id, item.attempts + 1};
    if (!dispatchable || decisions_.contains(key)) {
      out.push_back(std::move(claim));
      continue;
    }
    DispatchDecision& d = claim.decision;
    d.run_id = batch.run_id;
    d.cycle_id = batch.cycle_id;
    d.work_item_id = item.work_item_id;
    d.agent_id = c.agent_id;
    d.attempt = key.attempt;
    d.reason = c.reason;
    d.at = now;
    if (c.verdict) {
      d.decision = *c.verdict;
    } else if (locked_elsewhere_.contains(c.agent_id)) {
      d.decision = Decision::kDeferredContended;
      d.reason = "agent lock held by another instance";
    } else if (ActiveLeases(c.agent_id, now) >= c.max_active) {
      d.decision = Decision::kDeferredLeaseHeld;
      d.reason = "bound of " + std::to_string(c.max_active) + " active lease(s) reached";
    } else {
      Agent& agent = ait->second;
      Lease lease;
      lease.lease_id = next_lease_++;
      lease.agent_id = agent.agent_id;
      lease.work_item_id = item.work_item_id;
      lease.fencing_token = ++agent.fencing_counter;
      lease.holder_instance = batch.instance;
      lease.holder_run_id = batch.run_id;
      lease.acquired_at = lease.renewed_at = now;
      lease.expires_at = now + batch.lease_ttl;
      leases_[lease.lease_id] = lease;
      item.state = WorkState::kDispatched;
      item.attempts = key.attempt;
      item.lease_id = lease.lease_id;
      d.decision = Decision::kDispatched;
      d.lease_id = lease.lease_id;
      claim.lease = lease;
    }
    claim.recorded = true;
    claim.item = item;
    decisions_[key] = d;
    out.push_back(std::move(claim));
  }
  co_return out;
}

Task<std::vector<std::optional<TimePoint>>> MemoryStore::RenewLeases(std::vector<LeaseRef> refs,
                                                                     Duration ttl) {
  const TimePoint now = clock_();
  std::vector<std::optional<TimePoint>> out;
  out.reserve(refs.size());
  for (const auto& ref : refs) {
    auto it = leases_.find(ref.lease_id);
    if (it == leases_.end() || it->second.fencing_token != ref.fencing_token ||
        it->second.released_at || it->second.expires_at <= now) {
      out.emplace_back(std::nullopt);
      continue;
    }
    it->second.renewed_at = now;
    it->second.expires_at = now + ttl;
    out.emplace_back(it->second.expires_at);
  }
  co_return out;
}

void MemoryStore::FailWork(WorkItem& item, const std::string& error, bool retry,
                           const RetryPolicy& policy, TimePoint now) {
  item.last_error = error;
  if (!retry || item.attempts >= item.max_attempts) {
    item.state = WorkState::kDead;
    return;
  }
  item.state = WorkState::kFailed;
  item.due_at = now + policy.DelayAfter(item.attempts);
}

CompletionResult MemoryStore::CompleteOne(const Completion& completion, const RetryPolicy& retry) {
  using V = CompletionResult::Verdict;
  const TimePoint now = clock_();
  CompletionResult result;
  auto it = leases_.find(completion.lease.lease_id);
  if (it == leases_.end() || it->second.fencing_token != completion.lease.fencing_token) {
    result.verdict = V::kUnknownLease;
    return result;
  }
  Lease& lease = it->second;
  if (lease.released_at) {
    result.verdict = V::kReleased;
    return result;
  }
  result.verdict = V::kAccepted;
  if (lease.expires_at <= now) {
    for (const auto& [id, other] : leases_) {
      if (other.agent_id == lease.agent_id && other.lease_id != lease.lease_id &&
          other.acquired_at >= lease.expires_at) {
        result.verdict = V::kOvertaken;
        return result;
      }
    }
    result.verdict = V::kAcceptedLate;
  }
  lease.released_at = now;
  lease.release_reason = result.verdict == V::kAcceptedLate ? "completed_late" : "completed";
  WorkItem& item = work_.at(lease.work_item_id);
  if (completion.outcome == Outcome::kDone) {
    item.state = WorkState::kDone;
    item.last_error.clear();
  } else {
    FailWork(item, completion.detail, completion.retry, retry, now);
  }
  if (completion.transport_error) {
    for (auto& [key, d] : decisions_) {
      if (d.lease_id == lease.lease_id) {
        d.decision = Decision::kFailed;
        d.reason = completion.detail;
      }
    }
  }
  result.item = item;
  return result;
}

Task<std::vector<CompletionResult>> MemoryStore::CompleteWorkBatch(
    std::vector<Completion> completions, RetryPolicy retry) {
  std::vector<CompletionResult> out;
  out.reserve(completions.size());
  for (const auto& c : completions) {
    out.push_back(CompleteOne(c, retry));
    if (!out.back().accepted())
      RecordRefusedCompletion(c, out.back().verdict);
  }
  co_return out;
}

Task<std::vector<Lease>> MemoryStore::ListLeases(std::optional<AgentId> agent, bool active_only) {
  const TimePoint now = clock_();
  std::vector<Lease> out;
  for (const auto& [id, l] : leases_) {
    if (agent && l.agent_id != *agent)
      continue;
    if (active_only && (l.released_at || l.expires_at <= now))
      continue;
    out.push_back(l);
  }
  co_return out;
}

Task<void> MemoryStore::HeartbeatInstance(InstanceInfo info) {
  const TimePoint now = clock_();
  auto [it, inserted] = instances_.try_emplace(info.instance, Instance{info, now, now});
  if (!inserted) {
    it->second.info = std::move(info);
    it->second.heartbeat_at = now;
  }
  co_return;
}

}  // namespace warp::store
