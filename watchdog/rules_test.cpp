// The pure rules: thresholds, severities and subjects from hand-made facts (the stores' side is
// tests/watchdog_store_test.cpp).
#include "watchdog/rules.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "scheduler/cycle.hpp"

namespace warp::watchdog {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using store::Severity;

const store::TimePoint kNow =
    std::chrono::sys_days{std::chrono::year{2024} / std::chrono::March / 1} + 12h;

RuleContext Context() {
  RuleContext ctx;
  ctx.instance = "warp-a";
  ctx.group = "default";
  ctx.cycle_interval = 10s;
  ctx.takeover_after = 30s;
  ctx.now = kNow;
  return ctx;
}

json Evidence(const store::DesiredObservation& o) {
  return json::parse(o.evidence_json);
}

store::SchedulerRun Running(store::RunId id, std::string cycle_id, store::Duration running_for,
                            store::Duration heartbeat_age) {
  store::SchedulerRun r;
  r.run_id = id;
  r.cycle_id = std::move(cycle_id);
  r.group = r.cycle_id.substr(0, r.cycle_id.find('/'));
  r.instance = "warp-b";
  r.started_at = kNow - running_for;
  r.heartbeat_at = kNow - heartbeat_age;
  return r;
}

TEST(IntervalOfCycleId, ReadsWhatTheSchedulerWrites) {
  EXPECT_EQ(IntervalOfCycleId(scheduler::CycleId("default", 10s, 171234)), 10s);
  EXPECT_EQ(IntervalOfCycleId(scheduler::CycleId("a/b/c", 1h, -3)), 1h) << "a group with '/'";
  EXPECT_EQ(IntervalOfCycleId("nonsense"), std::nullopt);
  EXPECT_EQ(IntervalOfCycleId("g/10s/4"), std::nullopt);
  EXPECT_EQ(IntervalOfCycleId("g/0ms/4"), std::nullopt);
}

TEST(FormatDuration, IsShortAndExact) {
  EXPECT_EQ(FormatDuration(250ms), "250ms");
  EXPECT_EQ(FormatDuration(4500ms), "4.5s");
  EXPECT_EQ(FormatDuration(30s), "30s");
  EXPECT_EQ(FormatDuration(3h + 2min + 1s), "3h2m");
  EXPECT_EQ(FormatDuration(61s), "1m1s");
  EXPECT_EQ(FormatDuration(8 * 24h + 3h), "8d3h");
  EXPECT_EQ(FormatDuration(-2s), "-2s");
}

TEST(Rules, EveryRuleNameIsKnownAndThreeAreTheDaemons) {
  int store_rules = 0;
  for (const auto name : kRuleNames) {
    EXPECT_TRUE(IsKnownRule(name));
    store_rules += IsStoreRule(name) ? 1 : 0;
  }
  EXPECT_EQ(store_rules, 12);
  EXPECT_FALSE(IsStoreRule(kClockSkew));
  EXPECT_FALSE(IsKnownRule("cycle_overran"));
}

TEST(WorkBacklogAge, WarnsFromTheWarningAgeAndIsCriticalFromTheCriticalAge) {
  auto ctx = Context();
  store::WatchdogFacts facts;
  store::BacklogFact b;
  b.agent_id = 7;
  b.agent_slug = "erp";
  b.oldest_work_item_id = 70;
  b.old_items = 4;
  auto at_age = [&](store::Duration age) {
    facts.backlogs = {b};
    facts.backlogs[0].oldest_due_at = kNow - age;
    return WorkBacklogAge(facts, ctx);
  };
  EXPECT_TRUE(at_age(5min - 1ms).empty());
  auto warning = at_age(5min);
  ASSERT_EQ(warning.size(), 1u);
  EXPECT_EQ(warning[0].severity, Severity::kWarning);
  EXPECT_EQ(warning[0].subject, "agent:erp");
  EXPECT_EQ(warning[0].agent_id, 7);
  EXPECT_EQ(Evidence(warning[0])["old_items"], 4);
  EXPECT_EQ(Evidence(warning[0])["agent"], "erp");
  EXPECT_EQ(at_age(30min - 1ms).at(0).severity, Severity::kWarning);
  EXPECT_EQ(at_age(30min).at(0).severity, Severity::kCritical);
}

TEST(CycleRules, AStalledRunIsAbandonedNotOverrunning) {
  auto ctx = Context();
  store::WatchdogFacts facts;
  facts.running_runs = {Running(1, "default/10000ms/1", 25s, 0s),    // overrun
                        Running(2, "default/10000ms/2", 25s, 31s),   // abandoned
                        Running(3, "default/10000ms/3", 20s, 30s)};  // neither, exactly
  auto overrun = CycleOverrun(facts, ctx);
  auto abandoned = CycleAbandoned(facts, ctx);
  ASSERT_EQ(overrun.size(), 1u);
  EXPECT_EQ(overrun[0].subject, "run:1");
  ASSERT_EQ(abandoned.size(), 1u);
  EXPECT_EQ(abandoned[0].subject, "run:2");
}

TEST(CycleRules, AnotherGroupsRunsAreJudgedByTheirOwnInterval) {
  auto ctx = Context();
  store::WatchdogFacts facts;
  facts.running_runs = {Running(1, "batch/60000ms/9", 100s, 0s)};
  EXPECT_TRUE(CycleOverrun(facts, ctx).empty()) << "100s is within 2 x 60s";
  facts.running_runs = {Running(1, "batch/60000ms/9", 121s, 0s)};
  EXPECT_EQ(CycleOverrun(facts, ctx).size(), 1u);
}

TEST(CycleMissed, SkipsAGroupWhoseIntervalIsUnknown) {
  auto ctx = Context();
  store::WatchdogFacts facts;
  store::GroupFact g;
  g.group = "never-ran";
  g.first_instance_started_at = kNow - 24h;
  facts.groups = {g};
  EXPECT_TRUE(CycleMissed(facts, ctx).empty());
  facts.groups[0].group = "default";  // ours: our interval
  auto missed = CycleMissed(facts, ctx);
  ASSERT_EQ(missed.size(), 1u);
  EXPECT_EQ(missed[0].severity, Severity::kCritical);
  EXPECT_EQ(missed[0].subject, "group:default");
}

TEST(DispatchFailureStreak, IsCriticalAtTwiceTheThreshold) {
  auto ctx = Context();
  store::WatchdogFacts facts;
  store::FailureStreakFact f;
  f.agent_id = 3;
  f.agent_slug = "x";
  f.streak = 5;
  f.last_error = std::string(500, 'e');
  facts.failure_streaks = {f};
  auto warning = DispatchFailureStreak(facts, ctx);
  ASSERT_EQ(warning.size(), 1u);
  EXPECT_EQ(warning[0].severity, Severity::kWarning);
  EXPECT_LT(Evidence(warning[0])["last_error"].get<std::string>().size(), 210u) << "clipped";
  facts.failure_streaks[0].streak = 6;
  EXPECT_EQ(DispatchFailureStreak(facts, ctx).at(0).severity, Severity::kCritical);
  facts.failure_streaks[0].streak = 2;
  EXPECT_TRUE(DispatchFailureStreak(facts, ctx).empty());
}

TEST(LeaseExpiredUnreleased, IsOneObservationPerAgent) {
  auto ctx = Context();
  store::WatchdogFacts facts;
  for (store::LeaseId id : {11, 12}) {
    store::ExpiredLeaseFact f;
    f.lease.lease_id = id;
    f.lease.agent_id = 5;
    f.lease.expires_at = kNow - std::chrono::seconds(id);
    f.agent_slug = "multi";
    facts.expired_leases.push_back(f);
  }
  auto found = LeaseExpiredUnreleased(facts, ctx);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(Evidence(found[0])["lease_ids"], json::array({12, 11})) << "oldest expiry first";
  EXPECT_EQ(Evidence(found[0])["leases"], 2);
}

TEST(LateCompletion, CountsOnlyTheWindowOfTwoWatchdogIntervals) {
  auto ctx = Context();
  store::WatchdogFacts facts;
  store::LateCompletionFact f;
  f.agent_id = 1;
  f.agent_slug = "a";
  f.accepted = true;
  f.at = kNow - 60s;  // exactly the window's edge: out
  facts.late_completions = {f};
  EXPECT_TRUE(LateCompletion(facts, ctx).empty());
  facts.late_completions[0].at = kNow - 59s;
  EXPECT_EQ(LateCompletion(facts, ctx).at(0).severity, Severity::kInfo);
}

TEST(DaemonRules, LatencyAndSkewHaveToExceedTheirThresholds) {
  auto ctx = Context();
  EXPECT_FALSE(StoreLatency({499ms, 3}, ctx));
  EXPECT_FALSE(StoreLatency({0ms, 0}, ctx));
  auto slow = StoreLatency({500ms, 1}, ctx);
  ASSERT_TRUE(slow);
  EXPECT_EQ(slow->subject, "instance:warp-a");

  ClockSample clock;
  clock.skew = 2500ms;
  clock.uncertainty = 600ms;  // 2.5s +/- 0.6s may be 1.9s: not beyond 2s
  EXPECT_FALSE(ClockSkew(clock, ctx));
  clock.uncertainty = 400ms;
  EXPECT_TRUE(ClockSkew(clock, ctx));
  clock.skew = -2500ms;
  EXPECT_TRUE(ClockSkew(clock, ctx));

  EXPECT_FALSE(StoreUnreachable(std::nullopt, ctx));
}

TEST(EvaluateStoreRules, HonoursDisabledRules) {
  auto ctx = Context();
  store::WatchdogFacts facts;
  store::InstanceFact i;
  i.instance = "warp-b";
  i.heartbeat_at = kNow - 1h;
  facts.instances = {i};
  store::MissingToolProfileFact m;
  m.agent_slug = "ghost";
  m.tool_profile_id = "nope";
  facts.missing_tool_profiles = {m};
  EXPECT_EQ(EvaluateStoreRules(facts, ctx).size(), 2u);
  ctx.settings.disabled_rules = {std::string(kInstanceStale)};
  auto found = EvaluateStoreRules(facts, ctx);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].kind, kAgentToolProfileMissing);
}

}  // namespace
}  // namespace warp::watchdog
