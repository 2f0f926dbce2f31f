// The memory store's watchdog verbs: the same facts and the same observation bookkeeping as the
// PostgreSQL store (store/postgres/postgres_watchdog.cpp), by plain loops over the maps.
#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "store/memory/memory_store.hpp"

namespace warp::store {
namespace {

bool Wants(const WatchdogScan& scan, std::string_view rule) {
  return std::find(scan.rules.begin(), scan.rules.end(), rule) != scan.rules.end();
}

bool IsDue(const WorkItem& w, TimePoint cutoff) {
  return (w.state == WorkState::kPending || w.state == WorkState::kFailed) && w.due_at <= cutoff;
}

}  // namespace

void MemoryStore::RecordRefusedCompletion(const Completion& completion,
                                          CompletionResult::Verdict verdict) {
  refused_completions_.push_back(
      {completion.lease.lease_id, completion.lease.fencing_token, verdict, clock_()});
}

Task<Workspace> MemoryStore::PutWorkspace(NewWorkspace workspace) {
  if (workspace.path.empty())
    throw StoreError(StoreError::Kind::kInvalid, "workspace path must not be empty");
  if (workspace.agent_id && !agents_.contains(*workspace.agent_id))
    throw StoreError(StoreError::Kind::kNotFound, "unknown agent of workspace");
  Workspace* existing = nullptr;
  for (auto& [id, w] : workspaces_) {
    if (w.path == workspace.path) {
      existing = &w;
      continue;
    }
    // As the unique index workspaces_one_per_agent: one active workspace per agent.
    if (workspace.agent_id && w.agent_id == workspace.agent_id &&
        w.lifecycle == WorkspaceLifecycle::kActive &&
        workspace.lifecycle == WorkspaceLifecycle::kActive) {
      throw StoreError(StoreError::Kind::kConflict, "the agent has an active workspace");
    }
  }
  if (existing != nullptr) {
    static_cast<NewWorkspace&>(*existing) = std::move(workspace);
    co_return *existing;
  }
  Workspace w;
  // cppcheck-suppress accessMoved ; the branch above that moved it ends in co_return
  static_cast<NewWorkspace&>(w) = std::move(workspace);
  w.workspace_id = next_workspace_++;
  w.created_at = clock_();
  workspaces_[w.workspace_id] = w;
  co_return w;
}

Task<LearningProposal> MemoryStore::PutLearningProposal(LearningProposal proposal) {
  if (proposal.proposal_id != 0) {
    auto it = proposals_.find(proposal.proposal_id);
    if (it == proposals_.end())
      throw StoreError(StoreError::Kind::kNotFound, "unknown learning proposal");
    it->second.title = std::move(proposal.title);
    it->second.review_status = proposal.review_status;
    co_return it->second;
  }
  if (!agents_.contains(proposal.agent_id))
    throw StoreError(StoreError::Kind::kNotFound, "unknown agent of learning proposal");
  proposal.proposal_id = next_proposal_++;
  if (!proposal.created_at)
    proposal.created_at = clock_();
  proposals_[proposal.proposal_id] = proposal;
  co_return proposal;
}

Task<WatchdogFacts> MemoryStore::ScanWatchdogFacts(WatchdogScan scan) {
  WatchdogFacts facts;
  const TimePoint now = clock_();
  facts.now = now;
  auto slug = [&](AgentId id) {
    auto it = agents_.find(id);
    return it == agents_.end() ? std::string() : it->second.agent_slug;
  };
  auto overtaken = [&](const Lease& l) {
    for (const auto& [id, o] : leases_) {
      if (o.agent_id == l.agent_id && o.acquired_at >= l.expires_at)
        return true;
    }
    return false;
  };

  if (Wants(scan, "lease_expired_unreleased")) {
    for (const auto& [id, l] : leases_) {
      if (!l.released_at && l.expires_at <= now && !overtaken(l))
        facts.expired_leases.push_back({l, slug(l.agent_id)});
    }
  }

  if (Wants(scan, "cycle_abandoned") || Wants(scan, "cycle_overrun")) {
    for (const auto& [id, r] : runs_) {
      if (r.status == RunStatus::kRunning)
        facts.running_runs.push_back(r);
    }
  }

  if (Wants(scan, "cycle_missed")) {
    std::map<std::string, TimePoint> groups;  // group -> earliest instance start
    for (const auto& [name, i] : instances_) {
      auto [it, inserted] = groups.try_emplace(i.info.group, i.started_at);
      if (!inserted)
        it->second = std::min(it->second, i.started_at);
    }
    for (const auto& [group, first_started] : groups) {
      GroupFact g;
      g.group = group;
      g.first_instance_started_at = first_started;
      const SchedulerRun* latest = nullptr;
      const SchedulerRun* completed = nullptr;
      auto later = [](const SchedulerRun* a, const SchedulerRun& b) {
        return a == nullptr ||
               std::tie(b.started_at, b.run_id) > std::tie(a->started_at, a->run_id);
      };
      for (const auto& [id, r] : runs_) {
        if (r.group != group)
          continue;
        if (later(latest, r))
          latest = &r;
        if (r.status == RunStatus::kCompleted && later(completed, r))
          completed = &r;
      }
      if (latest != nullptr)
        g.latest_cycle_id = latest->cycle_id;
      if (completed != nullptr)
        g.last_completed = *completed;
      facts.groups.push_back(std::move(g));
    }
  }

  if (Wants(scan, "work_backlog_age")) {
    std::map<AgentId, BacklogFact> by_agent;
    for (const auto& [id, w] : work_) {
      if (!IsDue(w, now - scan.backlog_age))
        continue;
      auto [it, inserted] = by_agent.try_emplace(w.agent_id);
      BacklogFact& b = it->second;
      if (inserted ||
          std::tie(w.due_at, w.work_item_id) < std::tie(b.oldest_due_at, b.oldest_work_item_id)) {
        b.oldest_due_at = w.due_at;
        b.oldest_work_item_id = w.work_item_id;
        b.oldest_kind = w.kind;
      }
      ++b.old_items;
    }
    for (auto& [agent_id, b] : by_agent) {
      b.agent_id = agent_id;
      b.agent_slug = slug(agent_id);
      b.lifecycle = agents_.at(agent_id).lifecycle;
      facts.backlogs.push_back(std::move(b));
    }
  }

  if (Wants(scan, "dispatch_failure_streak") && scan.failure_streak > 0) {
    // Candidates as in PostgreSQL: agents with failed or dead work, with an expired unreleased
    // lease, or with an open streak observation.
    std::set<AgentId> candidates;
    for (const auto& [id, w] : work_) {
      if (w.state == WorkState::kFailed || w.state == WorkState::kDead)
        candidates.insert(w.agent_id);
    }
    for (const auto& [id, l] : leases_) {
      if (!l.released_at && l.expires_at <= now)
        candidates.insert(l.agent_id);
    }
    for (const auto& [id, o] : observations_) {
      if (o.kind == "dispatch_failure_streak" && !o.resolved_at && o.agent_id)
        candidates.insert(*o.agent_id);
    }
    for (const AgentId agent : candidates) {
      std::vector<const Lease*> finished;
      for (const auto& [id, l] : leases_) {
        if (l.agent_id == agent && (l.released_at || l.expires_at <= now))
          finished.push_back(&l);
      }
      std::sort(finished.begin(), finished.end(), [](const Lease* a, const Lease* b) {
        return std::tie(a->acquired_at, a->lease_id) > std::tie(b->acquired_at, b->lease_id);
      });
      FailureStreakFact f;
      const std::size_t limit = static_cast<std::size_t>(scan.failure_streak) * 2;
      for (std::size_t i = 0; i < finished.size() && i < limit; ++i) {
        const Lease& l = *finished[i];
        auto item = work_.find(l.work_item_id);
        const bool failed =
            !l.released_at || (item != work_.end() && (item->second.lease_id != l.lease_id ||
                                                       item->second.state == WorkState::kFailed ||
                                                       item->second.state == WorkState::kDead));
        if (!failed)
          break;
        if (f.streak == 0) {
          f.last_attempt_at = l.acquired_at;
          f.last_error = item != work_.end() ? item->second.last_error : std::string();
        }
        ++f.streak;
        f.lease_ids.push_back(l.lease_id);
      }
      if (f.streak >= scan.failure_streak) {
        f.agent_id = agent;
        f.agent_slug = slug(agent);
        facts.failure_streaks.push_back(std::move(f));
      }
    }
  }

  if (Wants(scan, "agent_unresponsive")) {
    std::map<AgentId, UnresponsiveFact> by_agent;
    for (const auto& [id, u] : leases_) {
      if (u.released_at || u.acquired_at > now - scan.agent_unresponsive_after)
        continue;
      bool answered = false;
      for (const auto& [rid, r] : leases_) {
        if (r.agent_id == u.agent_id && r.acquired_at > u.acquired_at && r.released_at)
          answered = true;
      }
      if (answered)
        continue;
      auto [it, inserted] = by_agent.try_emplace(u.agent_id);
      UnresponsiveFact& f = it->second;
      if (inserted ||
          std::tie(u.acquired_at, u.lease_id) < std::tie(f.outstanding_since, f.first_lease_id)) {
        f.outstanding_since = u.acquired_at;
        f.first_lease_id = u.lease_id;
      }
    }
    for (auto& [agent, f] : by_agent) {
      f.agent_id = agent;
      f.agent_slug = slug(agent);
      const Lease* before = nullptr;
      for (const auto& [id, l] : leases_) {
        if (l.agent_id != agent)
          continue;
        if (l.acquired_at >= f.outstanding_since)
          ++f.unanswered_leases;
        else if (l.released_at && (before == nullptr || l.acquired_at > before->acquired_at))
          before = &l;
      }
      if (before != nullptr)
        f.last_completion_at = before->released_at;
      facts.unresponsive_agents.push_back(std::move(f));
    }
  }

  if (Wants(scan, "instance_stale")) {
    for (const auto& [name, i] : instances_)
      facts.instances.push_back({i.info.instance, i.info.group, i.info.host, i.info.pid,
                                 i.info.version, i.started_at, i.heartbeat_at});
  }

  if (Wants(scan, "late_completion")) {
    const TimePoint since = now - scan.recent;
    for (const auto& [id, l] : leases_) {
      if (l.release_reason == "completed_late" && l.released_at && *l.released_at > since) {
        facts.late_completions.push_back(
            {l.agent_id, slug(l.agent_id), l.lease_id, l.fencing_token, true, *l.released_at});
      }
    }
    for (const auto& r : refused_completions_) {
      if (r.verdict != CompletionResult::Verdict::kOvertaken || r.at <= since)
        continue;
      auto l = leases_.find(r.lease_id);
      if (l == leases_.end())
        continue;
      facts.late_completions.push_back(
          {l->second.agent_id, slug(l->second.agent_id), r.lease_id, r.fencing_token, false, r.at});
    }
  }

  if (Wants(scan, "workspace_retention_overdue")) {
    for (const auto& [id, w] : workspaces_) {
      if (w.lifecycle != WorkspaceLifecycle::kDeleted && w.retain_until && *w.retain_until <= now)
        facts.overdue_workspaces.push_back({w, w.agent_id ? slug(*w.agent_id) : std::string()});
    }
  }

  if (Wants(scan, "learning_proposal_review_stale")) {
    for (const auto& [id, p] : proposals_) {
      const bool pending =
          p.review_status == ReviewStatus::kProposed || p.review_status == ReviewStatus::kInReview;
      if (pending && p.created_at && *p.created_at <= now - scan.proposal_review_stale_after)
        facts.stale_proposals.push_back({p, slug(p.agent_id)});
    }
  }

  if (Wants(scan, "agent_tool_profile_missing")) {
    for (const auto& [id, a] : agents_) {
      if (a.lifecycle != Lifecycle::kRetired && !tool_profiles_.contains(a.tool_profile_id))
        facts.missing_tool_profiles.push_back(
            {a.agent_id, a.agent_slug, a.tool_profile_id, a.lifecycle});
    }
  }
  co_return facts;
}

Task<std::vector<ObservationChange>> MemoryStore::ApplyObservations(ObservationBatch batch) {
  using Key = std::pair<std::string, std::string>;
  auto in_scope = [&](const std::string& kind, const std::string& subject) {
    for (const auto& s : batch.scopes) {
      if (s.kind == kind && (!s.subject || *s.subject == subject))
        return true;
    }
    return false;
  };
  // Validate everything before changing anything: the batch is atomic.
  std::map<Key, DesiredObservation*> desired;
  for (auto& d : batch.observations) {
    if (d.kind.empty() || d.subject.empty())
      throw StoreError(StoreError::Kind::kInvalid, "observation kind and subject are required");
    if (!in_scope(d.kind, d.subject))
      throw StoreError(StoreError::Kind::kInvalid,
                       "observation " + d.kind + " " + d.subject + " is outside the pass's scopes");
    if (!desired.emplace(Key{d.kind, d.subject}, &d).second)
      throw StoreError(StoreError::Kind::kInvalid,
                       "observation " + d.kind + " " + d.subject + " appears twice");
    if (d.agent_id && !agents_.contains(*d.agent_id))
      throw StoreError(StoreError::Kind::kInvalid, "observation names an unknown agent");
    // As PostgreSQL's jsonb column: an object, handed back compact.
    auto evidence = nlohmann::json::parse(d.evidence_json, nullptr, false);
    if (evidence.is_discarded() || !evidence.is_object())
      throw StoreError(StoreError::Kind::kInvalid, "observation evidence must be a JSON object");
    d.evidence_json = evidence.dump();
  }

  std::map<Key, Observation*> open;
  std::set<Key> resolved_later;  // resolved after `at` by a newer pass: not to be reopened
  for (auto& [id, o] : observations_) {
    if (!o.resolved_at)
      open[{o.kind, o.subject}] = &o;
    else if (*o.resolved_at > batch.at)
      resolved_later.insert({o.kind, o.subject});
  }

  std::vector<ObservationChange> changes;
  for (auto& [key, o] : open) {
    if (desired.contains(key) || !in_scope(o->kind, o->subject) || o->last_seen > batch.at)
      continue;
    o->resolved_at = batch.at;
    changes.push_back({ObservationChange::Kind::kResolved, *o, std::nullopt});
  }
  for (const auto& [key, d] : desired) {
    if (auto it = open.find(key); it != open.end()) {
      Observation& o = *it->second;
      if (o.last_seen > batch.at)
        continue;
      const Severity before = o.severity;
      o.last_seen = batch.at;
      ++o.occurrences;
      o.evidence_json = d->evidence_json;
      if (d->agent_id)
        o.agent_id = d->agent_id;
      o.severity = std::max(o.severity, d->severity);
      if (o.severity != before)
        changes.push_back({ObservationChange::Kind::kEscalated, o, before});
      else
        changes.push_back({ObservationChange::Kind::kPersisted, o, std::nullopt});
      continue;
    }
    if (resolved_later.contains(key))
      continue;
    Observation o;
    o.observation_id = next_observation_++;
    o.kind = d->kind;
    o.subject = d->subject;
    o.agent_id = d->agent_id;
    o.severity = d->severity;
    o.evidence_json = d->evidence_json;
    o.first_seen = o.last_seen = batch.at;
    observations_[o.observation_id] = o;
    changes.push_back({ObservationChange::Kind::kOpened, o, std::nullopt});
  }
  std::stable_sort(changes.begin(), changes.end(), [](const auto& a, const auto& b) {
    return std::tie(a.observation.kind, a.observation.subject) <
           std::tie(b.observation.kind, b.observation.subject);
  });
  co_return changes;
}

Task<std::vector<Observation>> MemoryStore::ListObservations(bool open_only) {
  std::vector<Observation> out;
  for (const auto& [id, o] : observations_) {
    if (!open_only || !o.resolved_at)
      out.push_back(o);
  }
  co_return out;
}

}  // namespace warp::store
