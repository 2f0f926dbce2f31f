#include "scheduler/schedule.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>

namespace warp::scheduler {

Schedule::Schedule(config::ScheduleSettings settings) : settings_(std::move(settings)) {
  if (!settings_.cron.empty())
    cron_ = CronExpression::Parse(settings_.cron);
}

std::optional<store::TimePoint> Schedule::LatestOccurrence(store::TimePoint now) const {
  if (cron_)
    return cron_->Previous(now);
  if (!settings_.every || settings_.every->count() <= 0)
    return std::nullopt;
  const auto every = *settings_.every;
  const auto since = std::chrono::duration_cast<store::Duration>(now.time_since_epoch());
  return store::TimePoint(every * (since.count() / every.count()));
}

std::optional<store::TimePoint> Schedule::DueOccurrence(store::TimePoint now,
                                                        store::Duration cycle_interval) const {
  auto latest = LatestOccurrence(now);
  if (!latest)
    return std::nullopt;
  if (settings_.misfire == config::Misfire::kSkip && now - *latest >= 2 * cycle_interval) {
    return std::nullopt;
  }
  return latest;
}

std::string FormatTime(store::TimePoint t) {
  const auto ms = std::chrono::time_point_cast<std::chrono::milliseconds>(t);
  const auto secs = std::chrono::time_point_cast<std::chrono::seconds>(ms);
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03}Z", secs, (ms - secs).count());
}

std::string OccurrenceKey(const std::string& schedule, const std::string& agent,
                          store::TimePoint occurrence) {
  return fmt::format("schedule:{}:{}:{}", schedule, agent, FormatTime(occurrence));
}

store::Task<int> Materialize(store::Store& store, const std::vector<Schedule>& schedules,
                             const std::vector<store::Agent>& agents, store::TimePoint now,
                             store::Duration cycle_interval, int default_max_attempts,
                             const logging::Logger& log) {
  int created = 0;
  for (const auto& schedule : schedules) {
    auto occurrence = schedule.DueOccurrence(now, cycle_interval);
    if (!occurrence)
      continue;
    const auto& s = schedule.settings();
    for (const auto& agent : agents) {
      if (agent.lifecycle != store::Lifecycle::kActive)
        continue;
      const bool targeted = s.domain.empty() ? std::find(s.agents.begin(), s.agents.end(),
                                                         agent.agent_slug) != s.agents.end()
                                             : agent.domain_id == s.domain;
      if (!targeted)
        continue;
      store::NewWork work;
      work.agent_slug = agent.agent_slug;
      work.kind = s.kind;
      work.payload_json = s.payload_json;
      work.due_at = *occurrence;
      work.idempotency_key = OccurrenceKey(s.name, agent.agent_slug, *occurrence);
      auto result = co_await store.EnqueueWork(std::move(work), default_max_attempts);
      if (result.created) {
        ++created;
        log.Debug(logging::Event::kGeneral,
                  {.agent = agent.agent_slug, .work_id = result.item.work_item_id},
                  "schedule {} materialized occurrence {}", s.name, FormatTime(*occurrence));
      }
    }
  }
  co_return created;
}

}  // namespace warp::scheduler
