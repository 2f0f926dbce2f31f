// Schedules ([[schedule]] in the config) materialized into work items, idempotently.
//
// Stateless by design: each cycle computes the latest occurrence at or before the cycle's
// database time and enqueues it under the key `schedule:<name>:<agent>:<occurrence>`; the
// store's unique idempotency key makes a repeated or concurrent materialization a no-op.
// Missed occurrences are never replayed one by one: `run_once` enqueues only the latest one
// (one catch-up), `skip` enqueues it only if it falls in the current or the previous cycle slot.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "config/settings.hpp"
#include "logging/log.hpp"
#include "scheduler/cron.hpp"
#include "store/store.hpp"

namespace warp::scheduler {

/// One schedule with its cron expression compiled.
class Schedule {
 public:
  /// Throws std::invalid_argument for a bad cron expression (config validation catches it first).
  explicit Schedule(config::ScheduleSettings settings);

  /// The latest occurrence at or before `now`, if any.
  std::optional<store::TimePoint> LatestOccurrence(store::TimePoint now) const;
  /// The occurrence to materialize at `now` under the misfire policy, if any. `cycle_interval`
  /// is the scheduler interval: `skip` tolerates an occurrence up to two slots old.
  std::optional<store::TimePoint> DueOccurrence(store::TimePoint now,
                                                store::Duration cycle_interval) const;

  const config::ScheduleSettings& settings() const { return settings_; }

 private:
  config::ScheduleSettings settings_;
  std::optional<CronExpression> cron_;
};

/// `schedule:<name>:<agent>:<occurrence as RFC 3339 UTC>`
std::string OccurrenceKey(const std::string& schedule, const std::string& agent,
                          store::TimePoint occurrence);
std::string FormatTime(store::TimePoint t);  ///< RFC 3339 UTC with milliseconds

/// Enqueues the due occurrences of `schedules` for their agents (listed slugs that are active,
/// or every active agent of the domain). Returns how many new work items were created.
store::Task<int> Materialize(store::Store& store, const std::vector<Schedule>& schedules,
                             const std::vector<store::Agent>& agents, store::TimePoint now,
                             store::Duration cycle_interval, int default_max_attempts,
                             const logging::Logger& log);

}  // namespace warp::scheduler
