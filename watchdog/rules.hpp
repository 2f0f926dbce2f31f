// The watchdog's rules (SPEC section 7): pure functions from facts to the observations that
// should be open now. No I/O and no clock: `RuleContext::now` is the store's time the facts are
// true at, so the same facts and settings always give the same observations.
//
// Subjects: `agent:<slug>`, `run:<run_id>`, `group:<group>`, `instance:<name>`,
// `workspace:<id>`, `proposal:<id>`. Evidence is a JSON object: `summary` (one line for people),
// `agent` (slug) where an agent is concerned, then the rule's ids, instants (RFC 3339, UTC),
// ages (`*_ms`) and thresholds. docs/WATCHDOG.md describes each rule.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/settings.hpp"
#include "store/observation.hpp"

namespace warp::watchdog {

inline constexpr std::string_view kLeaseExpiredUnreleased = "lease_expired_unreleased";
inline constexpr std::string_view kCycleAbandoned = "cycle_abandoned";
inline constexpr std::string_view kCycleOverrun = "cycle_overrun";
inline constexpr std::string_view kCycleMissed = "cycle_missed";
inline constexpr std::string_view kWorkBacklogAge = "work_backlog_age";
inline constexpr std::string_view kDispatchFailureStreak = "dispatch_failure_streak";
inline constexpr std::string_view kAgentUnresponsive = "agent_unresponsive";
inline constexpr std::string_view kInstanceStale = "instance_stale";
inline constexpr std::string_view kStoreUnreachable = "store_unreachable";
inline constexpr std::string_view kStoreLatency = "store_latency";
inline constexpr std::string_view kClockSkew = "clock_skew";
inline constexpr std::string_view kLateCompletion = "late_completion";
inline constexpr std::string_view kWorkspaceRetentionOverdue = "workspace_retention_overdue";
inline constexpr std::string_view kLearningProposalReviewStale = "learning_proposal_review_stale";
inline constexpr std::string_view kAgentToolProfileMissing = "agent_tool_profile_missing";

/// Every rule, by the name `watchdog.disabled_rules` uses (and the observations' `kind`).
inline constexpr std::array<std::string_view, 15> kRuleNames{kLeaseExpiredUnreleased,
                                                             kCycleAbandoned,
                                                             kCycleOverrun,
                                                             kCycleMissed,
                                                             kWorkBacklogAge,
                                                             kDispatchFailureStreak,
                                                             kAgentUnresponsive,
                                                             kInstanceStale,
                                                             kStoreUnreachable,
                                                             kStoreLatency,
                                                             kClockSkew,
                                                             kLateCompletion,
                                                             kWorkspaceRetentionOverdue,
                                                             kLearningProposalReviewStale,
                                                             kAgentToolProfileMissing};

bool IsKnownRule(std::string_view name);
/// The rules judged from the store's records (Store::ScanWatchdogFacts); the other three
/// (store_unreachable, store_latency, clock_skew) from what the daemon itself saw.
bool IsStoreRule(std::string_view name);
/// Not named by `watchdog.disabled_rules`.
bool IsEnabled(const config::WatchdogSettings& settings, std::string_view name);

/// What every rule needs besides its facts.
struct RuleContext {
  config::WatchdogSettings settings;
  std::string instance;  ///< daemon.instance: subject of the daemon-side rules
  std::string group;     ///< daemon.group
  store::Duration cycle_interval{std::chrono::seconds(10)};  ///< scheduler.interval
  store::Duration takeover_after{std::chrono::seconds(30)};  ///< scheduler.takeover_after
  store::TimePoint now;                                      ///< store time the facts are true at
};

/// late_completion's look-back: a late completion keeps its observation open this long, two
/// watchdog intervals, so that every pass of a running daemon sees it at least once.
store::Duration LateCompletionWindow(const config::WatchdogSettings& settings);

using Observations = std::vector<store::DesiredObservation>;

// The store-backed rules, one per kind. Each judges only its own facts.
Observations LeaseExpiredUnreleased(const store::WatchdogFacts& facts, const RuleContext& ctx);
Observations CycleAbandoned(const store::WatchdogFacts& facts, const RuleContext& ctx);
Observations CycleOverrun(const store::WatchdogFacts& facts, const RuleContext& ctx);
Observations CycleMissed(const store::WatchdogFacts& facts, const RuleContext& ctx);
Observations WorkBacklogAge(const store::WatchdogFacts& facts, const RuleContext& ctx);
Observations DispatchFailureStreak(const store::WatchdogFacts& facts, const RuleContext& ctx);
Observations AgentUnresponsive(const store::WatchdogFacts& facts, const RuleContext& ctx);
Observations InstanceStale(const store::WatchdogFacts& facts, const RuleContext& ctx);
Observations LateCompletion(const store::WatchdogFacts& facts, const RuleContext& ctx);
Observations WorkspaceRetentionOverdue(const store::WatchdogFacts& facts, const RuleContext& ctx);
Observations LearningProposalReviewStale(const store::WatchdogFacts& facts, const RuleContext& ctx);
Observations AgentToolProfileMissing(const store::WatchdogFacts& facts, const RuleContext& ctx);

/// Every enabled store-backed rule over `facts`.
Observations EvaluateStoreRules(const store::WatchdogFacts& facts, const RuleContext& ctx);

// The daemon-side rules. Their subject is `instance:<ctx.instance>`: each instance reports
// what it saw itself.

/// A store outage as the daemon saw it, on the host clock (the store could not tell the time).
/// Outages that end between two passes are merged: first start, last end, attempts summed.
struct Outage {
  store::TimePoint start;
  store::TimePoint end;
  std::uint64_t failed_attempts = 0;
  std::string last_error;
  int outages = 1;
};
/// The slowest store round trip the daemon measured since the last pass.
struct LatencySample {
  store::Duration max{0};
  int samples = 0;
};
/// Store time minus host time, measured around one round trip: `uncertainty` is half of it.
struct ClockSample {
  store::Duration skew{0};
  store::Duration uncertainty{0};
  store::TimePoint host_time;
  store::TimePoint store_time;
};

std::optional<store::DesiredObservation> StoreUnreachable(const std::optional<Outage>& outage,
                                                          const RuleContext& ctx);
std::optional<store::DesiredObservation> StoreLatency(const LatencySample& latency,
                                                      const RuleContext& ctx);
std::optional<store::DesiredObservation> ClockSkew(const ClockSample& clock,
                                                   const RuleContext& ctx);

/// The interval of a scheduler cycle id (`GROUP/INTERVALms/K`, scheduler/cycle.hpp), read from
/// the right so that a group may contain '/'; nullopt when it is not of that form.
std::optional<store::Duration> IntervalOfCycleId(std::string_view cycle_id);

/// `1h2m3s`, `4.5s`, `250ms`: for summaries.
std::string FormatDuration(store::Duration d);
/// `2024-01-15T09:00:00.000Z`.
std::string FormatTime(store::TimePoint t);

}  // namespace warp::watchdog
