#include "watchdog/rules.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <map>
#include <nlohmann/json.hpp>
#include <tuple>

namespace warp::watchdog {
namespace {

using nlohmann::json;
using store::Duration;
using store::Severity;
using store::TimePoint;

Duration Ms(std::chrono::nanoseconds d) {
  return std::chrono::duration_cast<Duration>(d);
}

std::string AgentSubject(std::string_view slug) {
  return fmt::format("agent:{}", slug);
}

/// The observation, with `summary` and the evidence's common fields filled in.
store::DesiredObservation Make(std::string_view kind, std::string subject,
                               std::optional<store::AgentId> agent_id, Severity severity,
                               std::string summary, json evidence) {
  evidence["summary"] = std::move(summary);
  store::DesiredObservation d;
  d.kind = std::string(kind);
  d.subject = std::move(subject);
  d.agent_id = agent_id;
  d.severity = severity;
  d.evidence_json = evidence.dump();
  return d;
}

/// Long error texts (a runner's stderr tail) stay out of the evidence beyond this.
std::string Clip(const std::string& s, std::size_t limit = 200) {
  if (s.size() <= limit)
    return s;
  // Through fmt: GCC 12 reports a false -Warray-bounds on the inlined std::string copy.
  return fmt::format("{}...", std::string_view(s).substr(0, limit));
}

}  // namespace

bool IsKnownRule(std::string_view name) {
  return std::find(kRuleNames.begin(), kRuleNames.end(), name) != kRuleNames.end();
}

bool IsStoreRule(std::string_view name) {
  return IsKnownRule(name) && name != kStoreUnreachable && name != kStoreLatency &&
         name != kClockSkew;
}

bool IsEnabled(const config::WatchdogSettings& settings, std::string_view name) {
  return std::find(settings.disabled_rules.begin(), settings.disabled_rules.end(), name) ==
         settings.disabled_rules.end();
}

Duration LateCompletionWindow(const config::WatchdogSettings& settings) {
  return 2 * settings.interval;
}

std::string FormatDuration(Duration d) {
  const bool negative = d < Duration::zero();
  auto ms = negative ? -d.count() : d.count();
  std::string out = negative ? "-" : "";
  if (ms < 1000)
    return out + fmt::format("{}ms", ms);
  if (ms < 60'000) {
    return out + (ms % 1000 == 0 ? fmt::format("{}s", ms / 1000)
                                 : fmt::format("{:.1f}s", static_cast<double>(ms) / 1000.0));
  }
  auto s = ms / 1000;
  const auto days = s / 86400;
  s %= 86400;
  const auto hours = s / 3600;
  s %= 3600;
  const auto minutes = s / 60;
  s %= 60;
  if (days > 0)
    out += fmt::format("{}d", days);
  if (hours > 0)
    out += fmt::format("{}h", hours);
  if (minutes > 0 && days == 0)
    out += fmt::format("{}m", minutes);
  if (s > 0 && days == 0 && hours == 0)
    out += fmt::format("{}s", s);
  return out;
}

std::string FormatTime(TimePoint t) {
  const auto ms = std::chrono::floor<std::chrono::milliseconds>(t);
  const auto secs = std::chrono::floor<std::chrono::seconds>(ms);
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03}Z", secs, (ms - secs).count());
}

std::optional<Duration> IntervalOfCycleId(std::string_view cycle_id) {
  // GROUP/INTERVALms/K: the last two components, whatever the group contains.
  const auto last = cycle_id.rfind('/');
  if (last == std::string_view::npos || last == 0)
    return std::nullopt;
  const auto before = cycle_id.rfind('/', last - 1);
  if (before == std::string_view::npos)
    return std::nullopt;
  const auto field = cycle_id.substr(before + 1, last - before - 1);
  if (field.size() < 3 || !field.ends_with("ms"))
    return std::nullopt;
  std::int64_t ms = 0;
  const auto digits = field.substr(0, field.size() - 2);
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), ms);
  if (ec != std::errc() || end != digits.data() + digits.size() || ms <= 0)
    return std::nullopt;
  return Duration(ms);
}

// --- store-backed rules ---------------------------------------------------------------------

Observations LeaseExpiredUnreleased(const store::WatchdogFacts& facts, const RuleContext& ctx) {
  // One observation per agent: a bound above 1 may leave several leases of one agent behind.
  std::map<store::AgentId, std::vector<const store::ExpiredLeaseFact*>> by_agent;
  for (const auto& f : facts.expired_leases) {
    if (!f.lease.released_at && f.lease.expires_at <= ctx.now)
      by_agent[f.lease.agent_id].push_back(&f);
  }
  Observations out;
  for (auto& [agent, leases] : by_agent) {
    std::sort(leases.begin(), leases.end(), [](const auto* a, const auto* b) {
      return std::tie(a->lease.expires_at, a->lease.lease_id) <
             std::tie(b->lease.expires_at, b->lease.lease_id);
    });
    const auto& oldest = *leases.front();
    json ids = json::array();
    json items = json::array();
    for (const auto* l : leases) {
      ids.push_back(l->lease.lease_id);
      if (l->lease.work_item_id != 0)
        items.push_back(l->lease.work_item_id);
    }
    const auto expired_for = ctx.now - oldest.lease.expires_at;
    json evidence{{"agent", oldest.agent_slug},
                  {"lease_ids", ids},
                  {"work_item_ids", items},
                  {"leases", leases.size()},
                  {"oldest_lease_id", oldest.lease.lease_id},
                  {"fencing_token", oldest.lease.fencing_token},
                  {"holder_instance", oldest.lease.holder_instance},
                  {"holder_run_id", oldest.lease.holder_run_id},
                  {"acquired_at", FormatTime(oldest.lease.acquired_at)},
                  {"expired_at", FormatTime(oldest.lease.expires_at)},
                  {"expired_for_ms", Ms(expired_for).count()}};
    out.push_back(Make(kLeaseExpiredUnreleased, AgentSubject(oldest.agent_slug), agent,
                       Severity::kWarning,
                       fmt::format("{} lease(s) of agent {} expired without being released; "
                                   "lease {} (holder {}) expired {} ago and nobody leased the "
                                   "agent since",
                                   leases.size(), oldest.agent_slug, oldest.lease.lease_id,
                                   oldest.lease.holder_instance, FormatDuration(Ms(expired_for))),
                       std::move(evidence)));
  }
  return out;
}

namespace {

json RunEvidence(const store::SchedulerRun& r, const RuleContext& ctx) {
  return json{{"run_id", r.run_id},
              {"cycle_id", r.cycle_id},
              {"group", r.group},
              {"instance", r.instance},
              {"started_at", FormatTime(r.started_at)},
              {"heartbeat_at", FormatTime(r.heartbeat_at)},
              {"running_for_ms", Ms(ctx.now - r.started_at).count()},
              {"heartbeat_age_ms", Ms(ctx.now - r.heartbeat_at).count()}};
}

/// "Older than": strictly, as the cycle claim's takeover test.
bool HeartbeatStopped(const store::SchedulerRun& r, const RuleContext& ctx) {
  return ctx.now - r.heartbeat_at > ctx.takeover_after;
}

Duration IntervalOfGroup(const std::string& group, std::string_view cycle_id,
                         const RuleContext& ctx) {
  if (group == ctx.group)
    return ctx.cycle_interval;
  return IntervalOfCycleId(cycle_id).value_or(ctx.cycle_interval);
}

}  // namespace

Observations CycleAbandoned(const store::WatchdogFacts& facts, const RuleContext& ctx) {
  Observations out;
  for (const auto& r : facts.running_runs) {
    if (r.status != store::RunStatus::kRunning || !HeartbeatStopped(r, ctx))
      continue;
    auto evidence = RunEvidence(r, ctx);
    evidence["takeover_after_ms"] = ctx.takeover_after.count();
    out.push_back(Make(
        kCycleAbandoned, fmt::format("run:{}", r.run_id), std::nullopt, Severity::kWarning,
        fmt::format("run {} of cycle {} on instance {} is still running but its "
                    "heartbeat stopped {} ago (takeover after {})",
                    r.run_id, r.cycle_id, r.instance, FormatDuration(Ms(ctx.now - r.heartbeat_at)),
                    FormatDuration(ctx.takeover_after)),
        std::move(evidence)));
  }
  return out;
}

Observations CycleOverrun(const store::WatchdogFacts& facts, const RuleContext& ctx) {
  Observations out;
  for (const auto& r : facts.running_runs) {
    // A run whose heartbeat stopped is cycle_abandoned: one observation says what is wrong.
    if (r.status != store::RunStatus::kRunning || HeartbeatStopped(r, ctx))
      continue;
    const auto interval = IntervalOfGroup(r.group, r.cycle_id, ctx);
    const auto limit = Duration(static_cast<Duration::rep>(static_cast<double>(interval.count()) *
                                                           ctx.settings.cycle_overrun_factor));
    const auto running_for = ctx.now - r.started_at;
    if (running_for <= limit)
      continue;
    auto evidence = RunEvidence(r, ctx);
    evidence["interval_ms"] = interval.count();
    evidence["cycle_overrun_factor"] = ctx.settings.cycle_overrun_factor;
    evidence["limit_ms"] = limit.count();
    out.push_back(
        Make(kCycleOverrun, fmt::format("run:{}", r.run_id), std::nullopt, Severity::kWarning,
             fmt::format("run {} of cycle {} on instance {} has been running for {}, "
                         "more than {} x the {} interval",
                         r.run_id, r.cycle_id, r.instance, FormatDuration(Ms(running_for)),
                         ctx.settings.cycle_overrun_factor, FormatDuration(interval)),
             std::move(evidence)));
  }
  return out;
}

Observations CycleMissed(const store::WatchdogFacts& facts, const RuleContext& ctx) {
  Observations out;
  for (const auto& g : facts.groups) {
    // Another group's interval is read from its latest cycle id; a group that never ran and is
    // not ours cannot be judged.
    std::optional<Duration> interval;
    if (g.group == ctx.group)
      interval = ctx.cycle_interval;
    else
      interval = IntervalOfCycleId(g.latest_cycle_id);
    if (!interval)
      continue;
    TimePoint since = g.first_instance_started_at;
    if (g.last_completed)
      since = g.last_completed->finished_at.value_or(g.last_completed->heartbeat_at);
    const auto quiet = ctx.now - since;
    const auto threshold = *interval * ctx.settings.cycle_missed_after;
    if (quiet <= threshold)
      continue;
    const auto missed = Ms(quiet).count() / interval->count();
    const Severity severity = quiet > 2 * threshold ? Severity::kCritical : Severity::kWarning;
    json evidence{{"group", g.group},
                  {"interval_ms", interval->count()},
                  {"cycle_missed_after", ctx.settings.cycle_missed_after},
                  {"missed_intervals", missed},
                  {"quiet_for_ms", Ms(quiet).count()},
                  {"since", FormatTime(since)}};
    std::string last = "no completed cycle on record";
    if (g.last_completed) {
      evidence["last_run_id"] = g.last_completed->run_id;
      evidence["last_cycle_id"] = g.last_completed->cycle_id;
      evidence["last_instance"] = g.last_completed->instance;
      last = fmt::format("last completed cycle {} by {}", g.last_completed->cycle_id,
                         g.last_completed->instance);
    } else {
      evidence["last_run_id"] = nullptr;
    }
    out.push_back(
        Make(kCycleMissed, fmt::format("group:{}", g.group), std::nullopt, severity,
             fmt::format("group {} completed no cycle for {} ({} intervals of {}; {})", g.group,
                         FormatDuration(Ms(quiet)), missed, FormatDuration(*interval), last),
             std::move(evidence)));
  }
  return out;
}

Observations WorkBacklogAge(const store::WatchdogFacts& facts, const RuleContext& ctx) {
  const auto& s = ctx.settings;
  Observations out;
  for (const auto& b : facts.backlogs) {
    const auto age = ctx.now - b.oldest_due_at;
    if (age < s.backlog_age_warning)
      continue;
    const Severity severity =
        age >= s.backlog_age_critical ? Severity::kCritical : Severity::kWarning;
    json evidence{{"agent", b.agent_slug},
                  {"lifecycle", store::ToString(b.lifecycle)},
                  {"oldest_work_item_id", b.oldest_work_item_id},
                  {"oldest_kind", b.oldest_kind},
                  {"oldest_due_at", FormatTime(b.oldest_due_at)},
                  {"oldest_age_ms", Ms(age).count()},
                  {"old_items", b.old_items},
                  {"warning_ms", s.backlog_age_warning.count()},
                  {"critical_ms", s.backlog_age_critical.count()}};
    out.push_back(Make(
        kWorkBacklogAge, AgentSubject(b.agent_slug), b.agent_id, severity,
        fmt::format("agent {} ({}): {} due item(s) waiting at least {}; the oldest, item {} ({}), "
                    "has been due for {} (warning {}, critical {})",
                    b.agent_slug, store::ToString(b.lifecycle), b.old_items,
                    FormatDuration(s.backlog_age_warning), b.oldest_work_item_id, b.oldest_kind,
                    FormatDuration(Ms(age)), FormatDuration(s.backlog_age_warning),
                    FormatDuration(s.backlog_age_critical)),
        std::move(evidence)));
  }
  return out;
}

Observations DispatchFailureStreak(const store::WatchdogFacts& facts, const RuleContext& ctx) {
  const int n = ctx.settings.failure_streak;
  Observations out;
  for (const auto& f : facts.failure_streaks) {
    if (f.streak < n)
      continue;
    const Severity severity = f.streak >= 2 * n ? Severity::kCritical : Severity::kWarning;
    json evidence{{"agent", f.agent_slug},
                  {"streak", f.streak},
                  {"streak_at_least", f.streak >= 2 * n},
                  {"lease_ids", f.lease_ids},
                  {"last_attempt_at", FormatTime(f.last_attempt_at)},
                  {"last_error", Clip(f.last_error)},
                  {"failure_streak", n}};
    out.push_back(Make(kDispatchFailureStreak, AgentSubject(f.agent_slug), f.agent_id, severity,
                       fmt::format("agent {}: {}{} consecutive dispatch attempt(s) failed, "
                                   "the latest ones (threshold {}); last error: {}",
                                   f.agent_slug, f.streak >= 2 * n ? "at least " : "", f.streak, n,
                                   f.last_error.empty() ? "(lease expired)" : Clip(f.last_error)),
                       std::move(evidence)));
  }
  return out;
}

Observations AgentUnresponsive(const store::WatchdogFacts& facts, const RuleContext& ctx) {
  const auto threshold = ctx.settings.agent_unresponsive_after;
  Observations out;
  for (const auto& f : facts.unresponsive_agents) {
    const auto outstanding = ctx.now - f.outstanding_since;
    if (outstanding < threshold)
      continue;
    json evidence{{"agent", f.agent_slug},
                  {"first_lease_id", f.first_lease_id},
                  {"outstanding_since", FormatTime(f.outstanding_since)},
                  {"outstanding_for_ms", Ms(outstanding).count()},
                  {"unanswered_leases", f.unanswered_leases},
                  {"threshold_ms", threshold.count()}};
    evidence["last_completion_at"] =
        f.last_completion_at ? json(FormatTime(*f.last_completion_at)) : json(nullptr);
    out.push_back(
        Make(kAgentUnresponsive, AgentSubject(f.agent_slug), f.agent_id, Severity::kWarning,
             fmt::format("agent {} has had work outstanding for {} without completing "
                         "any of it: {} lease(s) since lease {}, none released "
                         "(threshold {})",
                         f.agent_slug, FormatDuration(Ms(outstanding)), f.unanswered_leases,
                         f.first_lease_id, FormatDuration(threshold)),
             std::move(evidence)));
  }
  return out;
}

Observations InstanceStale(const store::WatchdogFacts& facts, const RuleContext& ctx) {
  const auto threshold = ctx.settings.instance_stale_after;
  Observations out;
  for (const auto& i : facts.instances) {
    const auto age = ctx.now - i.heartbeat_at;
    if (age <= threshold)
      continue;
    json evidence{{"instance", i.instance},
                  {"group", i.group},
                  {"host", i.host},
                  {"pid", i.pid},
                  {"version", i.version},
                  {"started_at", FormatTime(i.started_at)},
                  {"heartbeat_at", FormatTime(i.heartbeat_at)},
                  {"heartbeat_age_ms", Ms(age).count()},
                  {"threshold_ms", threshold.count()}};
    out.push_back(Make(kInstanceStale, fmt::format("instance:{}", i.instance), std::nullopt,
                       Severity::kWarning,
                       fmt::format("instance {} (group {}, host {}, pid {}) last heartbeat {} ago "
                                   "(threshold {})",
                                   i.instance, i.group, i.host.empty() ? "?" : i.host, i.pid,
                                   FormatDuration(Ms(age)), FormatDuration(threshold)),
                       std::move(evidence)));
  }
  return out;
}

Observations LateCompletion(const store::WatchdogFacts& facts, const RuleContext& ctx) {
  const auto window = LateCompletionWindow(ctx.settings);
  struct Tally {
    std::string slug;
    int accepted = 0;
    int refused = 0;
    std::vector<std::pair<TimePoint, store::LeaseId>> leases;
  };
  std::map<store::AgentId, Tally> by_agent;
  for (const auto& f : facts.late_completions) {
    if (f.at <= ctx.now - window)
      continue;
    auto& t = by_agent[f.agent_id];
    t.slug = f.agent_slug;
    (f.accepted ? t.accepted : t.refused) += 1;
    t.leases.emplace_back(f.at, f.lease_id);
  }
  Observations out;
  for (auto& [agent, t] : by_agent) {
    std::sort(t.leases.begin(), t.leases.end());
    json ids = json::array();
    for (const auto& [at, id] : t.leases)
      ids.push_back(id);
    json evidence{{"agent", t.slug},
                  {"accepted_late", t.accepted},
                  {"refused_overtaken", t.refused},
                  {"lease_ids", ids},
                  {"last_at", FormatTime(t.leases.back().first)},
                  {"window_ms", window.count()}};
    // Accepted late: nobody was harmed, but a holder is slower than its lease. Refused: the
    // work was given to someone else meanwhile and may have run twice.
    const Severity severity = t.refused > 0 ? Severity::kWarning : Severity::kInfo;
    out.push_back(Make(
        kLateCompletion, AgentSubject(t.slug), agent, severity,
        fmt::format("agent {}: {} completion(s) after lease expiry in the last {}: "
                    "{} accepted late, {} refused (lease overtaken)",
                    t.slug, t.accepted + t.refused, FormatDuration(window), t.accepted, t.refused),
        std::move(evidence)));
  }
  return out;
}

Observations WorkspaceRetentionOverdue(const store::WatchdogFacts& facts, const RuleContext& ctx) {
  Observations out;
  for (const auto& f : facts.overdue_workspaces) {
    const auto& w = f.workspace;
    if (w.lifecycle == store::WorkspaceLifecycle::kDeleted || !w.retain_until ||
        *w.retain_until > ctx.now) {
      continue;
    }
    const auto overdue = ctx.now - *w.retain_until;
    json evidence{{"workspace_id", w.workspace_id},
                  {"path", w.path},
                  {"lifecycle", store::ToString(w.lifecycle)},
                  {"retention_policy", w.retention_policy},
                  {"retain_until", FormatTime(*w.retain_until)},
                  {"overdue_ms", Ms(overdue).count()}};
    if (!f.agent_slug.empty())
      evidence["agent"] = f.agent_slug;
    out.push_back(Make(
        kWorkspaceRetentionOverdue, fmt::format("workspace:{}", w.workspace_id), w.agent_id,
        Severity::kInfo,
        fmt::format("workspace {} ({}, {}) is retained {} past its retain_until{}", w.workspace_id,
                    w.path, store::ToString(w.lifecycle), FormatDuration(Ms(overdue)),
                    w.retention_policy.empty() ? std::string()
                                               : fmt::format(" (policy {})", w.retention_policy)),
        std::move(evidence)));
  }
  return out;
}

Observations LearningProposalReviewStale(const store::WatchdogFacts& facts,
                                         const RuleContext& ctx) {
  const auto threshold = ctx.settings.proposal_review_stale_after;
  Observations out;
  for (const auto& f : facts.stale_proposals) {
    const auto& p = f.proposal;
    if (!p.created_at || ctx.now - *p.created_at < threshold)
      continue;
    const auto pending = ctx.now - *p.created_at;
    json evidence{{"agent", f.agent_slug},
                  {"proposal_id", p.proposal_id},
                  {"title", Clip(p.title)},
                  {"review_status", store::ToString(p.review_status)},
                  {"created_at", FormatTime(*p.created_at)},
                  {"pending_for_ms", Ms(pending).count()},
                  {"threshold_ms", threshold.count()}};
    out.push_back(Make(kLearningProposalReviewStale, fmt::format("proposal:{}", p.proposal_id),
                       p.agent_id, Severity::kInfo,
                       fmt::format("learning proposal {} for agent {} has awaited review ({}) "
                                   "for {} (threshold {})",
                                   p.proposal_id, f.agent_slug, store::ToString(p.review_status),
                                   FormatDuration(Ms(pending)), FormatDuration(threshold)),
                       std::move(evidence)));
  }
  return out;
}

Observations AgentToolProfileMissing(const store::WatchdogFacts& facts, const RuleContext&) {
  Observations out;
  for (const auto& f : facts.missing_tool_profiles) {
    if (f.lifecycle == store::Lifecycle::kRetired)
      continue;
    json evidence{{"agent", f.agent_slug},
                  {"tool_profile_id", f.tool_profile_id},
                  {"lifecycle", store::ToString(f.lifecycle)}};
    out.push_back(Make(kAgentToolProfileMissing, AgentSubject(f.agent_slug), f.agent_id,
                       Severity::kWarning,
                       fmt::format("agent {} ({}) names tool profile '{}', which does not exist: "
                                   "its work is skipped (skipped_capability)",
                                   f.agent_slug, store::ToString(f.lifecycle), f.tool_profile_id),
                       std::move(evidence)));
  }
  return out;
}

Observations EvaluateStoreRules(const store::WatchdogFacts& facts, const RuleContext& ctx) {
  using Rule = Observations (*)(const store::WatchdogFacts&, const RuleContext&);
  static constexpr std::array<std::pair<std::string_view, Rule>, 12> kRules{{
      {kLeaseExpiredUnreleased, &LeaseExpiredUnreleased},
      {kCycleAbandoned, &CycleAbandoned},
      {kCycleOverrun, &CycleOverrun},
      {kCycleMissed, &CycleMissed},
      {kWorkBacklogAge, &WorkBacklogAge},
      {kDispatchFailureStreak, &DispatchFailureStreak},
      {kAgentUnresponsive, &AgentUnresponsive},
      {kInstanceStale, &InstanceStale},
      {kLateCompletion, &LateCompletion},
      {kWorkspaceRetentionOverdue, &WorkspaceRetentionOverdue},
      {kLearningProposalReviewStale, &LearningProposalReviewStale},
      {kAgentToolProfileMissing, &AgentToolProfileMissing},
  }};
  Observations out;
  for (const auto& [name, rule] : kRules) {
    if (!IsEnabled(ctx.settings, name))
      continue;
    auto found = rule(facts, ctx);
    std::move(found.begin(), found.end(), std::back_inserter(out));
  }
  return out;
}

// --- daemon-side rules ----------------------------------------------------------------------

std::optional<store::DesiredObservation> StoreUnreachable(const std::optional<Outage>& outage,
                                                          const RuleContext& ctx) {
  if (!outage)
    return std::nullopt;
  const auto lasted = Ms(outage->end - outage->start);
  json evidence{{"instance", ctx.instance},       {"start", FormatTime(outage->start)},
                {"end", FormatTime(outage->end)}, {"clock", "host"},
                {"duration_ms", lasted.count()},  {"failed_attempts", outage->failed_attempts},
                {"outages", outage->outages},     {"last_error", Clip(outage->last_error)}};
  return Make(kStoreUnreachable, fmt::format("instance:{}", ctx.instance), std::nullopt,
              Severity::kWarning,
              fmt::format("instance {} could not reach the store for {} ({} to {}, host clock; "
                          "{} failed attempt(s){}): {}",
                          ctx.instance, FormatDuration(lasted), FormatTime(outage->start),
                          FormatTime(outage->end), outage->failed_attempts,
                          outage->outages > 1 ? fmt::format(", {} outages", outage->outages)
                                              : std::string(),
                          Clip(outage->last_error)),
              std::move(evidence));
}

std::optional<store::DesiredObservation> StoreLatency(const LatencySample& latency,
                                                      const RuleContext& ctx) {
  const auto threshold = ctx.settings.store_latency_warning;
  if (latency.samples == 0 || latency.max < threshold)
    return std::nullopt;
  json evidence{{"instance", ctx.instance},
                {"max_ms", latency.max.count()},
                {"samples", latency.samples},
                {"threshold_ms", threshold.count()}};
  return Make(kStoreLatency, fmt::format("instance:{}", ctx.instance), std::nullopt,
              Severity::kWarning,
              fmt::format("instance {}: store round trips took up to {} since the last pass "
                          "({} sample(s); warning at {})",
                          ctx.instance, FormatDuration(latency.max), latency.samples,
                          FormatDuration(threshold)),
              std::move(evidence));
}

std::optional<store::DesiredObservation> ClockSkew(const ClockSample& clock,
                                                   const RuleContext& ctx) {
  const auto threshold = ctx.settings.clock_skew_warning;
  const auto magnitude = clock.skew < Duration::zero() ? -clock.skew : clock.skew;
  // Only a skew beyond the measurement's own uncertainty counts.
  if (magnitude - clock.uncertainty <= threshold)
    return std::nullopt;
  json evidence{{"instance", ctx.instance},
                {"skew_ms", clock.skew.count()},
                {"uncertainty_ms", clock.uncertainty.count()},
                {"host_time", FormatTime(clock.host_time)},
                {"store_time", FormatTime(clock.store_time)},
                {"threshold_ms", threshold.count()}};
  return Make(kClockSkew, fmt::format("instance:{}", ctx.instance), std::nullopt,
              Severity::kWarning,
              fmt::format("instance {}: the host clock is {} {} database time (+/- {}; warning "
                          "at {}); leases and cycles use database time, logs the host's",
                          ctx.instance, FormatDuration(magnitude),
                          clock.skew > Duration::zero() ? "behind" : "ahead of",
                          FormatDuration(clock.uncertainty), FormatDuration(threshold)),
              std::move(evidence));
}

}  // namespace warp::watchdog
