#include "watchdog/watchdog.hpp"

#include <chrono>
#include <nlohmann/json.hpp>

namespace warp::watchdog {
namespace {

using logging::Event;
using store::ObservationChange;
using store::Severity;

std::string EvidenceString(const std::string& evidence_json, const char* key) {
  const auto evidence = nlohmann::json::parse(evidence_json, nullptr, false);
  if (evidence.is_discarded() || !evidence.is_object() || !evidence.contains(key) ||
      !evidence.at(key).is_string()) {
    return {};
  }
  return evidence.at(key).get<std::string>();
}

spdlog::level::level_enum LevelOf(Severity severity) {
  switch (severity) {
    case Severity::kInfo:
      return spdlog::level::info;
    case Severity::kWarning:
      return spdlog::level::warn;
    case Severity::kCritical:
      return spdlog::level::err;
  }
  return spdlog::level::warn;
}

}  // namespace

Watchdog::Watchdog(store::Store& store, const config::Settings& settings, logging::Logger log,
                   HostClock host_clock)
    : store_(store), log_(std::move(log)), host_clock_(std::move(host_clock)) {
  if (!host_clock_)
    host_clock_ = [] { return std::chrono::system_clock::now(); };
  context_.instance = settings.daemon.instance;
  context_.group = settings.daemon.group;
  Reconfigure(settings);
}

void Watchdog::Reconfigure(const config::Settings& settings) {
  context_.settings = settings.watchdog;
  context_.cycle_interval = settings.scheduler.interval;
  context_.takeover_after = settings.scheduler.takeover_after;
}

void Watchdog::RecordOutage(store::TimePoint start, store::TimePoint end,
                            std::uint64_t failed_attempts, std::string last_error) {
  if (!outage_) {
    outage_ = Outage{start, end, failed_attempts, std::move(last_error), 1};
    return;
  }
  // Several outages before one pass could record them: one observation covering them all.
  outage_->start = std::min(outage_->start, start);
  outage_->end = std::max(outage_->end, end);
  outage_->failed_attempts += failed_attempts;
  outage_->last_error = std::move(last_error);
  ++outage_->outages;
}

void Watchdog::ObserveLatency(store::Duration round_trip) {
  latency_.max = std::max(latency_.max, round_trip);
  ++latency_.samples;
}

void Watchdog::ObserveClock(store::TimePoint host_before, store::TimePoint store_now,
                            store::TimePoint host_after) {
  const auto half = std::chrono::duration_cast<store::Duration>(host_after - host_before) / 2;
  const auto host_mid = host_before + half;
  clock_ = ClockSample{std::chrono::duration_cast<store::Duration>(store_now - host_mid), half,
                       host_mid, store_now};
}

store::Task<PassReport> Watchdog::RunPass() {
  const auto& settings = context_.settings;

  // The probe: one small round trip, timed on the monotonic clock. After a failed pass its time
  // includes reconnecting to a store that was away: that is store_unreachable, not latency.
  const bool reachable_before = previous_pass_succeeded_;
  previous_pass_succeeded_ = false;  // until this one gets through
  const auto host_before = host_clock_();
  const auto started = std::chrono::steady_clock::now();
  const auto store_now = co_await store_.Now();
  if (reachable_before) {
    ObserveLatency(
        std::chrono::duration_cast<store::Duration>(std::chrono::steady_clock::now() - started));
  }
  ObserveClock(host_before, store_now, host_clock_());

  store::WatchdogScan scan;
  for (const auto name : kRuleNames) {
    if (IsStoreRule(name) && IsEnabled(settings, name))
      scan.rules.emplace_back(name);
  }
  scan.backlog_age = settings.backlog_age_warning;
  scan.failure_streak = settings.failure_streak;
  scan.agent_unresponsive_after = settings.agent_unresponsive_after;
  scan.proposal_review_stale_after = settings.proposal_review_stale_after;
  scan.recent = LateCompletionWindow(settings);

  store::WatchdogFacts facts;
  facts.now = store_now;
  if (!scan.rules.empty())
    facts = co_await store_.ScanWatchdogFacts(scan);
  context_.now = facts.now;

  store::ObservationBatch batch;
  batch.at = facts.now;
  batch.observations = EvaluateStoreRules(facts, context_);
  for (const auto& rule : scan.rules)
    batch.scopes.push_back({rule, std::nullopt});
  // This instance's own view: scoped to its subject, so that one instance's pass never
  // resolves what another instance saw.
  const std::string own = "instance:" + context_.instance;
  auto daemon_rule = [&](std::string_view name, std::optional<store::DesiredObservation> found) {
    if (!IsEnabled(settings, name))
      return;
    batch.scopes.push_back({std::string(name), own});
    if (found)
      batch.observations.push_back(std::move(*found));
  };
  daemon_rule(kStoreUnreachable, StoreUnreachable(outage_, context_));
  daemon_rule(kStoreLatency, StoreLatency(latency_, context_));
  if (clock_)
    daemon_rule(kClockSkew, ClockSkew(*clock_, context_));

  auto changes = co_await store_.ApplyObservations(std::move(batch));

  // Recorded: the daemon's inputs start over.
  previous_pass_succeeded_ = true;
  outage_.reset();
  latency_ = LatencySample{};
  clock_.reset();

  PassReport report;
  report.at = facts.now;
  for (auto& c : changes) {
    if (c.change != ObservationChange::Kind::kResolved)
      ++report.open;
    if (c.change == ObservationChange::Kind::kPersisted) {
      ++report.persisted;
      continue;
    }
    Log(c);
    report.changes.push_back(std::move(c));
  }
  log_.Debug(Event::kGeneral, {}, "watchdog pass at {}: {} change(s), {} observation(s) open",
             FormatTime(report.at), report.changes.size(), report.open);
  co_return report;
}

store::Task<PassOutcome> Watchdog::Pass() {
  PassOutcome outcome;
  try {
    outcome.report = co_await RunPass();
  } catch (const store::StoreError& e) {
    outcome.error = e.what();
    outcome.store_unavailable = e.kind() == store::StoreError::Kind::kUnavailable;
  } catch (const std::exception& e) {
    outcome.error = e.what();
  }
  if (outcome.report) {
    if (failed_passes_ > 0) {
      log_.Info(Event::kWatchdogPassFailed, {},
                "watchdog pass succeeded again after {} failed pass(es)", failed_passes_);
    }
    failed_passes_ = 0;
    co_return outcome;
  }
  if (failed_passes_++ == 0) {
    log_.Warn(Event::kWatchdogPassFailed, {},
              "watchdog pass failed: {}; retrying every {}ms, silently until a pass succeeds",
              outcome.error, context_.settings.interval.count());
  }
  co_return outcome;
}

void Watchdog::Log(const store::ObservationChange& change) const {
  const auto& o = change.observation;
  const logging::Fields fields{.agent = EvidenceString(o.evidence_json, "agent"),
                               .observation_kind = o.kind,
                               .severity = std::string(store::ToString(o.severity))};
  const auto summary = EvidenceString(o.evidence_json, "summary");
  switch (change.change) {
    case ObservationChange::Kind::kOpened:
      log_.Log(LevelOf(o.severity), Event::kObservationOpened, fields,
               "observation {} opened: {} {} ({}): {}", o.observation_id, o.kind, o.subject,
               store::ToString(o.severity), summary);
      break;
    case ObservationChange::Kind::kEscalated:
      log_.Log(LevelOf(o.severity), Event::kObservationEscalated, fields,
               "observation {} escalated: {} {} ({} -> {}): {}", o.observation_id, o.kind,
               o.subject, store::ToString(change.previous_severity.value_or(o.severity)),
               store::ToString(o.severity), summary);
      break;
    case ObservationChange::Kind::kResolved:
      log_.Info(Event::kObservationResolved, fields,
                "observation {} resolved: {} {} ({}, seen {} time(s) since {}); last seen: {}",
                o.observation_id, o.kind, o.subject, store::ToString(o.severity), o.occurrences,
                FormatTime(o.first_seen), summary);
      break;
    case ObservationChange::Kind::kPersisted:
      break;
  }
}

}  // namespace warp::watchdog
