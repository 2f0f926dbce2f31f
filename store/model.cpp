#include "store/model.hpp"

#include <nlohmann/json.hpp>

#include "store/store.hpp"

namespace warp::store {

std::string_view ToString(Lifecycle v) {
  switch (v) {
    case Lifecycle::kActive:
      return "active";
    case Lifecycle::kPaused:
      return "paused";
    case Lifecycle::kRetired:
      return "retired";
  }
  return "?";
}

std::string_view ToString(WorkState v) {
  switch (v) {
    case WorkState::kPending:
      return "pending";
    case WorkState::kDispatched:
      return "dispatched";
    case WorkState::kDone:
      return "done";
    case WorkState::kFailed:
      return "failed";
    case WorkState::kDead:
      return "dead";
  }
  return "?";
}

std::string_view ToString(RunStatus v) {
  switch (v) {
    case RunStatus::kRunning:
      return "running";
    case RunStatus::kCompleted:
      return "completed";
    case RunStatus::kAbandoned:
      return "abandoned";
    case RunStatus::kFailed:
      return "failed";
  }
  return "?";
}

std::string_view ToString(Decision v) {
  switch (v) {
    case Decision::kDispatched:
      return "dispatched";
    case Decision::kDeferredLeaseHeld:
      return "deferred_lease_held";
    case Decision::kDeferredContended:
      return "deferred_contended";
    case Decision::kSkippedPaused:
      return "skipped_paused";
    case Decision::kSkippedCapability:
      return "skipped_capability";
    case Decision::kFailed:
      return "failed";
  }
  return "?";
}

std::string_view ToString(CompletionResult::Verdict v) {
  switch (v) {
    case CompletionResult::Verdict::kAccepted:
      return "accepted";
    case CompletionResult::Verdict::kAcceptedLate:
      return "accepted_late";
    case CompletionResult::Verdict::kUnknownLease:
      return "unknown_lease";
    case CompletionResult::Verdict::kReleased:
      return "released";
    case CompletionResult::Verdict::kOvertaken:
      return "overtaken";
  }
  return "?";
}

std::string_view ToString(ClaimResult::Outcome v) {
  switch (v) {
    case ClaimResult::Outcome::kClaimed:
      return "claimed";
    case ClaimResult::Outcome::kTookOver:
      return "took_over";
    case ClaimResult::Outcome::kAlreadyCompleted:
      return "already_completed";
    case ClaimResult::Outcome::kRunningElsewhere:
      return "running_elsewhere";
    case ClaimResult::Outcome::kGroupBusy:
      return "group_busy";
  }
  return "?";
}

std::optional<Lifecycle> ParseLifecycle(std::string_view s) {
  for (auto v : {Lifecycle::kActive, Lifecycle::kPaused, Lifecycle::kRetired}) {
    if (ToString(v) == s)
      return v;
  }
  return std::nullopt;
}

std::optional<WorkState> ParseWorkState(std::string_view s) {
  for (auto v : {WorkState::kPending, WorkState::kDispatched, WorkState::kDone, WorkState::kFailed,
                 WorkState::kDead}) {
    if (ToString(v) == s)
      return v;
  }
  return std::nullopt;
}

std::optional<RunStatus> ParseRunStatus(std::string_view s) {
  for (auto v :
       {RunStatus::kRunning, RunStatus::kCompleted, RunStatus::kAbandoned, RunStatus::kFailed}) {
    if (ToString(v) == s)
      return v;
  }
  return std::nullopt;
}

std::optional<Decision> ParseDecision(std::string_view s) {
  for (auto v : {Decision::kDispatched, Decision::kDeferredLeaseHeld, Decision::kDeferredContended,
                 Decision::kSkippedPaused, Decision::kSkippedCapability, Decision::kFailed}) {
    if (ToString(v) == s)
      return v;
  }
  return std::nullopt;
}

std::string NewAgentProblem(const NewAgent& agent) {
  if (!IsValidSlug(agent.agent_slug)) {
    return "agent_slug '" + agent.agent_slug + "' does not match ^[a-z0-9][a-z0-9-]{0,62}$";
  }
  if (agent.business_link.empty()) {
    return "agent '" + agent.agent_slug + "': business_link is required";
  }
  if (agent.max_active_leases < 0)
    return "max_active_leases must not be negative";
  return {};
}

bool IsValidSlug(std::string_view slug) {
  if (slug.empty() || slug.size() > 63)
    return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!alnum(slug.front()))
    return false;
  for (char c : slug) {
    if (!alnum(c) && c != '-')
      return false;
  }
  return true;
}

std::string PayloadProblem(std::string_view text) {
  if (text.size() > kMaxPayloadBytes) {
    return "payload is " + std::to_string(text.size()) + " bytes, more than the limit of " +
           std::to_string(kMaxPayloadBytes);
  }
  auto json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded())
    return "payload is not valid JSON";
  if (!json.is_object())
    return "payload must be a JSON object";
  return {};
}

Duration RetryPolicy::DelayAfter(int attempts) const {
  Duration delay = backoff;
  for (int i = 1; i < attempts && delay < backoff_max; ++i)
    delay *= 2;
  return std::min(delay, backoff_max);
}

}  // namespace warp::store
