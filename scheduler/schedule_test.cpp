#include "scheduler/schedule.hpp"

#include <gtest/gtest.h>

#include "store/memory/memory_store.hpp"
#include "tests/support/async.hpp"

namespace warp::scheduler {
namespace {

using namespace std::chrono_literals;
using std::chrono::sys_days;

store::TimePoint Utc(std::chrono::year_month_day day, std::chrono::milliseconds m) {
  return sys_days(day) + m;
}

config::ScheduleSettings Every(std::string name, store::Duration every,
                               config::Misfire misfire = config::Misfire::kRunOnce) {
  config::ScheduleSettings s;
  s.name = std::move(name);
  s.agents = {"erp-sales"};
  s.every = every;
  s.kind = "sync";
  s.misfire = misfire;
  return s;
}

config::ScheduleSettings Cron(std::string name, std::string cron,
                              config::Misfire misfire = config::Misfire::kRunOnce) {
  config::ScheduleSettings s;
  s.name = std::move(name);
  s.agents = {"erp-sales"};
  s.cron = std::move(cron);
  s.kind = "sync";
  s.misfire = misfire;
  return s;
}

constexpr auto kDay = std::chrono::year{2026} / 11 / 25;

TEST(Schedule, EveryAlignsOccurrencesToTheEpoch) {
  Schedule s(Every("s", 15min));
  EXPECT_EQ(s.LatestOccurrence(Utc(kDay, 10h + 31min)), Utc(kDay, 10h + 30min));
  EXPECT_EQ(s.LatestOccurrence(Utc(kDay, 10h + 30min)), Utc(kDay, 10h + 30min));
}

TEST(Schedule, CronUsesTheLatestMatchingMinute) {
  Schedule s(Cron("s", "30 3 * * *"));
  EXPECT_EQ(s.LatestOccurrence(Utc(kDay, 2h)), Utc(kDay, 3h + 30min) - std::chrono::days(1));
  EXPECT_EQ(s.LatestOccurrence(Utc(kDay, 4h)), Utc(kDay, 3h + 30min));
}

TEST(Schedule, RunOnceCatchesUpWithOnlyTheLatestOccurrenceAfterAnOutage) {
  Schedule s(Every("s", 15min, config::Misfire::kRunOnce));
  // Down for five hours: twenty occurrences were missed, one is due.
  EXPECT_EQ(s.DueOccurrence(Utc(kDay, 15h + 7min), 10s), Utc(kDay, 15h));
}

TEST(Schedule, SkipDropsAnOccurrenceOlderThanTwoCycleSlots) {
  Schedule s(Cron("s", "0 * * * *", config::Misfire::kSkip));
  EXPECT_EQ(s.DueOccurrence(Utc(kDay, 15h + 19s), 10s), Utc(kDay, 15h));
  EXPECT_EQ(s.DueOccurrence(Utc(kDay, 15h + 20s), 10s), std::nullopt);
  EXPECT_EQ(s.DueOccurrence(Utc(kDay, 15h + 7min), 10s), std::nullopt);
}

TEST(Schedule, OccurrenceKeyNamesScheduleAgentAndInstant) {
  EXPECT_EQ(OccurrenceKey("erp-sync", "erp-sales", Utc(kDay, 10h + 30min)),
            "schedule:erp-sync:erp-sales:2026-11-25T10:30:00.000Z");
}

class MaterializeTest : public ::testing::Test {
 protected:
  MaterializeTest() : clock_(Utc(kDay, 10h + 31min)), store_(clock_.AsFunction()) {
    Register("erp-sales", "sales", store::Lifecycle::kActive);
    Register("erp-finance", "finance", store::Lifecycle::kActive);
    Register("erp-ledger", "finance", store::Lifecycle::kActive);
    Register("finance-old", "finance", store::Lifecycle::kPaused);
  }

  void Register(std::string slug, std::string domain, store::Lifecycle lifecycle) {
    store::NewAgent a;
    a.agent_slug = std::move(slug);
    a.domain_id = std::move(domain);
    a.tool_profile_id = "p";
    a.runner = "r";
    a.business_link = "spindle:1";
    a.lifecycle = lifecycle;
    test::Await(io_, store_.RegisterAgent(a));
  }

  int Run(const std::vector<Schedule>& schedules) {
    auto agents = test::Await(io_, store_.ListAgents());
    return test::Await(io_, Materialize(store_, schedules, agents, clock_.Now(), 10s, 5, log_));
  }

  boost::asio::io_context io_;
  test::ManualClock clock_;
  store::MemoryStore store_;
  logging::Logger log_;
};

TEST_F(MaterializeTest, CreatesOneWorkItemPerOccurrenceAndAgentOnlyOnce) {
  std::vector<Schedule> schedules{Schedule(Every("erp-sync", 15min))};
  EXPECT_EQ(Run(schedules), 1);
  EXPECT_EQ(Run(schedules), 0) << "a repeated cycle must not enqueue the occurrence again";
  auto work = test::Await(io_, store_.ListWork(std::nullopt));
  ASSERT_EQ(work.size(), 1u);
  EXPECT_EQ(work[0].idempotency_key, "schedule:erp-sync:erp-sales:2026-11-25T10:30:00.000Z");
  EXPECT_EQ(work[0].due_at, Utc(kDay, 10h + 30min));
  EXPECT_EQ(work[0].max_attempts, 5);
  clock_.Advance(15min);
  EXPECT_EQ(Run(schedules), 1) << "the next occurrence is new work";
}

TEST_F(MaterializeTest, DomainSchedulesTargetEveryActiveAgentOfTheDomain) {
  auto s = Every("finance-report", 1h);
  s.agents.clear();
  s.domain = "finance";
  s.kind = "report";
  s.payload_json = R"({"period":"daily"})";
  EXPECT_EQ(Run({Schedule(s)}), 2);
  auto work = test::Await(io_, store_.ListWork(std::nullopt));
  ASSERT_EQ(work.size(), 2u);
  for (const auto& w : work) {
    EXPECT_EQ(w.kind, "report");
    EXPECT_EQ(w.payload_json, R"({"period":"daily"})");
  }
}

TEST_F(MaterializeTest, SkipPolicyCreatesNothingForAnOldOccurrence) {
  EXPECT_EQ(Run({Schedule(Every("erp-sync", 15min, config::Misfire::kSkip))}), 0);
}

}  // namespace
}  // namespace warp::scheduler
