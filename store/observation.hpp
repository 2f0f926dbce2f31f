// Records of the watchdog (SPEC section 7) and the facts its rules read, shared by every store
// backend: workspaces and learning proposals (what two rules look at), the facts one scan
// returns, the observations a pass wants open, and what applying them changed.
//
// The watchdog (watchdog/) owns the judgment: a store only gathers candidate facts with the
// thresholds it is given, and records the observations it is handed. Times are the store's
// (database time); the evidence is a JSON object the watchdog writes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "store/model.hpp"

namespace warp::store {

using ObservationId = std::int64_t;
using WorkspaceId = std::int64_t;
using ProposalId = std::int64_t;

enum class Severity { kInfo, kWarning, kCritical };
enum class WorkspaceLifecycle { kActive, kArchived, kDeleted };
enum class ReviewStatus { kProposed, kInReview, kApproved, kRejected };

std::string_view ToString(Severity v);
std::string_view ToString(WorkspaceLifecycle v);
std::string_view ToString(ReviewStatus v);
std::optional<Severity> ParseSeverity(std::string_view s);
std::optional<WorkspaceLifecycle> ParseWorkspaceLifecycle(std::string_view s);
std::optional<ReviewStatus> ParseReviewStatus(std::string_view s);

// --- workspaces and learning proposals ------------------------------------------------------

struct NewWorkspace {
  std::string path;  ///< unique, non-empty
  std::optional<AgentId> agent_id;
  WorkspaceLifecycle lifecycle = WorkspaceLifecycle::kActive;
  std::string retention_policy;
  std::optional<TimePoint> retain_until;
};

struct Workspace : NewWorkspace {
  WorkspaceId workspace_id = 0;
  TimePoint created_at;
};

struct NewLearningProposal {
  AgentId agent_id = 0;
  std::string title;
  ReviewStatus review_status = ReviewStatus::kProposed;
  std::optional<TimePoint> created_at;  ///< default: now
};

struct LearningProposal : NewLearningProposal {
  ProposalId proposal_id = 0;
};

// --- the facts of one scan ----------------------------------------------------------------

/// What ScanWatchdogFacts gathers. Each rule's facts are gathered only when `rules` names it.
struct WatchdogScan {
  std::vector<std::string> rules;                 ///< store-backed rule names (watchdog/rules.hpp)
  Duration backlog_age{std::chrono::minutes(5)};  ///< work_backlog_age: due at least this long
  int failure_streak = 3;  ///< dispatch_failure_streak: streaks of at least this many
  Duration agent_unresponsive_after{std::chrono::minutes(15)};
  Duration proposal_review_stale_after{std::chrono::hours(24 * 7)};
  Duration recent{std::chrono::minutes(1)};  ///< late_completion: look-back window
};

/// lease_expired_unreleased: an expired lease nobody released and nobody overtook (no lease of
/// its agent acquired at or after its expiry): its holder vanished.
struct ExpiredLeaseFact {
  Lease lease;
  std::string agent_slug;
};

/// cycle_missed: one group that has instances.
struct GroupFact {
  std::string group;
  std::optional<SchedulerRun> last_completed;  ///< the group's latest completed run
  std::string latest_cycle_id;                 ///< of its latest run (any status); may be empty
  TimePoint first_instance_started_at;         ///< earliest started_at of its instances
};

/// work_backlog_age: an agent with due work (pending, or failed awaiting retry) older than the
/// scan's backlog_age.
struct BacklogFact {
  AgentId agent_id = 0;
  std::string agent_slug;
  Lifecycle lifecycle = Lifecycle::kActive;
  WorkItemId oldest_work_item_id = 0;
  std::string oldest_kind;
  TimePoint oldest_due_at;
  std::int64_t old_items = 0;  ///< items of the agent due at least backlog_age
};

/// dispatch_failure_streak: an agent whose latest finished dispatch attempts (leases that were
/// released or expired, most recent first) all failed, at least `failure_streak` of them.
struct FailureStreakFact {
  AgentId agent_id = 0;
  std::string agent_slug;
  int streak = 0;                  ///< leading failures counted, at most 2 * failure_streak
  std::vector<LeaseId> lease_ids;  ///< the failed attempts' leases, most recent first
  TimePoint last_attempt_at;       ///< acquired_at of the most recent failed attempt
  std::string last_error;          ///< last_error of that attempt's work item
};

/// agent_unresponsive: an agent with a lease acquired at least agent_unresponsive_after ago
/// that is still unreleased, and no lease of it acquired since then released either.
struct UnresponsiveFact {
  AgentId agent_id = 0;
  std::string agent_slug;
  LeaseId first_lease_id = 0;
  TimePoint outstanding_since;                  ///< acquired_at of that lease
  std::int64_t unanswered_leases = 0;           ///< unreleased leases of the agent acquired since
  std::optional<TimePoint> last_completion_at;  ///< release of the latest lease acquired before
};

/// instance_stale: every registered instance (the rule judges the heartbeat's age).
struct InstanceFact {
  std::string instance;
  std::string group;
  std::string host;
  int pid = 0;
  std::string version;
  TimePoint started_at;
  TimePoint heartbeat_at;
};

/// late_completion: a completion after its lease expired within the scan's `recent` window:
/// accepted late (nobody had overtaken the lease), or refused because it was overtaken.
struct LateCompletionFact {
  AgentId agent_id = 0;
  std::string agent_slug;
  LeaseId lease_id = 0;
  FencingToken fencing_token = 0;
  bool accepted = false;
  TimePoint at;
};

/// workspace_retention_overdue: retain_until passed and the workspace is not deleted.
struct WorkspaceFact {
  Workspace workspace;
  std::string agent_slug;  ///< empty when it has no owner
};

/// learning_proposal_review_stale: proposed or in review since at least
/// proposal_review_stale_after.
struct ProposalFact {
  LearningProposal proposal;
  std::string agent_slug;
};

/// agent_tool_profile_missing: an agent that is not retired names a tool profile that does not
/// exist.
struct MissingToolProfileFact {
  AgentId agent_id = 0;
  std::string agent_slug;
  std::string tool_profile_id;
  Lifecycle lifecycle = Lifecycle::kActive;
};

struct WatchdogFacts {
  TimePoint now;  ///< the store's time the facts are true at
  std::vector<ExpiredLeaseFact> expired_leases;
  std::vector<SchedulerRun> running_runs;  ///< cycle_abandoned, cycle_overrun: all `running`
  std::vector<GroupFact> groups;
  std::vector<BacklogFact> backlogs;
  std::vector<FailureStreakFact> failure_streaks;
  std::vector<UnresponsiveFact> unresponsive_agents;
  std::vector<InstanceFact> instances;
  std::vector<LateCompletionFact> late_completions;
  std::vector<WorkspaceFact> overdue_workspaces;
  std::vector<ProposalFact> stale_proposals;
  std::vector<MissingToolProfileFact> missing_tool_profiles;
};

// --- observations -------------------------------------------------------------------------

struct Observation {
  ObservationId observation_id = 0;
  std::string kind;
  std::string subject;
  std::optional<AgentId> agent_id;
  Severity severity = Severity::kWarning;
  std::string evidence_json = "{}";  ///< a JSON object
  TimePoint first_seen;
  TimePoint last_seen;
  int occurrences = 1;
  std::optional<TimePoint> resolved_at;
};

/// An observation a pass wants open now.
struct DesiredObservation {
  std::string kind;
  std::string subject;
  std::optional<AgentId> agent_id;
  Severity severity = Severity::kWarning;
  std::string evidence_json = "{}";  ///< a JSON object
};

/// Which open observations a pass judged: those of `kind` (and of `subject`, when set). Only
/// these may be resolved by the pass.
struct ObservationScope {
  std::string kind;
  std::optional<std::string> subject;
};

struct ObservationBatch {
  TimePoint at;  ///< the store time the pass's judgment is about (its facts' `now`)
  std::vector<ObservationScope> scopes;
  std::vector<DesiredObservation> observations;  ///< unique (kind, subject), each in a scope
};

struct ObservationChange {
  enum class Kind {
    kOpened,     ///< a new observation (also when the condition returns after a resolution)
    kPersisted,  ///< still there: last_seen and occurrences moved, evidence replaced
    kEscalated,  ///< still there, at a higher severity than before
    kResolved,   ///< gone: resolved_at set
  };
  Kind change = Kind::kOpened;
  Observation observation;                    ///< as recorded after the change
  std::optional<Severity> previous_severity;  ///< for kEscalated
};

std::string_view ToString(ObservationChange::Kind v);

}  // namespace warp::store
