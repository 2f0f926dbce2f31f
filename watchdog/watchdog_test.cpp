// The Watchdog's own behaviour on the memory store: one log record per change with the
// observation's fields, failures logged once per run of failures, and the daemon's inputs kept
// across a failed pass. The rules on both stores: tests/watchdog_store_test.cpp.
#include "watchdog/watchdog.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "store/memory/memory_store.hpp"
#include "tests/support/async.hpp"

namespace warp::watchdog {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

class WatchdogTest : public ::testing::Test {
 protected:
  WatchdogTest() {
    settings_.daemon.instance = "warp-a";
    settings_.daemon.group = "default";
    for (const auto name : kRuleNames) {
      if (name != kWorkBacklogAge && name != kStoreLatency && name != kStoreUnreachable)
        settings_.watchdog.disabled_rules.emplace_back(name);
    }
    watchdog_.Reconfigure(settings_);
  }

  store::TimePoint Clock() {
    if (store_down_)
      throw store::StoreError(store::StoreError::Kind::kUnavailable,
                              "postgres: connection refused");
    return clock_.Now();
  }

  template <class T>
  T Run(store::Task<T> task) {
    return warp::test::Await(io_, std::move(task));
  }

  /// The records of `event` (JSON lines).
  std::vector<json> Records(std::string_view event) {
    std::vector<json> out;
    for (const auto& line : *lines_) {
      auto j = json::parse(line);
      if (j["event"] == event)
        out.push_back(std::move(j));
    }
    return out;
  }

  boost::asio::io_context io_;
  warp::test::ManualClock clock_{std::chrono::sys_days{std::chrono::year{2024} / 5 / 1}};
  bool store_down_ = false;
  store::MemoryStore store_{[this] { return Clock(); }};
  config::Settings settings_;
  std::shared_ptr<std::vector<std::string>> lines_ = std::make_shared<std::vector<std::string>>();
  Watchdog watchdog_{store_, settings_, logging::MakeCaptureLogger(lines_, logging::Format::kJson),
                     [this] { return clock_.Now(); }};
};

TEST_F(WatchdogTest, LogsOneRecordPerOpenedEscalatedAndResolvedObservation) {
  store::ToolProfile p;
  p.tool_profile_id = "tp";
  Run(store_.PutToolProfile(std::move(p)));
  store::NewAgent a;
  a.agent_slug = "erp-sales";
  a.tool_profile_id = "tp";
  a.runner = "noop";
  a.business_link = "spindle:1";
  Run(store_.RegisterAgent(std::move(a)));
  store::NewWork w;
  w.agent_slug = "erp-sales";
  w.kind = "sync";
  Run(store_.EnqueueWork(std::move(w), 3));

  clock_.Advance(6min);
  Run(watchdog_.RunPass());
  auto opened = Records("observation_opened");
  ASSERT_EQ(opened.size(), 1u) << lines_->size();
  EXPECT_EQ(opened[0]["observation_kind"], "work_backlog_age");
  EXPECT_EQ(opened[0]["severity"], "warning");
  EXPECT_EQ(opened[0]["agent"], "erp-sales");
  EXPECT_EQ(opened[0]["level"], "warning");
  EXPECT_THAT(opened[0]["message"].get<std::string>(),
              ::testing::HasSubstr("work_backlog_age agent:erp-sales (warning): agent erp-sales"));

  clock_.Advance(1min);
  Run(watchdog_.RunPass());
  EXPECT_EQ(Records("observation_opened").size() + Records("observation_escalated").size() +
                Records("observation_resolved").size(),
            1u)
      << "a persisting observation is not logged again";

  clock_.Advance(30min);
  watchdog_.ObserveLatency(900ms);
  Run(watchdog_.RunPass());
  auto escalated = Records("observation_escalated");
  ASSERT_EQ(escalated.size(), 1u);
  EXPECT_EQ(escalated[0]["severity"], "critical");
  EXPECT_EQ(escalated[0]["level"], "error");
  EXPECT_THAT(escalated[0]["message"].get<std::string>(),
              ::testing::HasSubstr("(warning -> critical)"));
  ASSERT_EQ(Records("observation_opened").size(), 2u);
  EXPECT_EQ(Records("observation_opened")[1]["observation_kind"], "store_latency");

  clock_.Advance(30s);
  Run(watchdog_.RunPass());
  auto resolved = Records("observation_resolved");
  ASSERT_EQ(resolved.size(), 1u);
  EXPECT_EQ(resolved[0]["observation_kind"], "store_latency");
  EXPECT_EQ(resolved[0]["level"], "info");
}

TEST_F(WatchdogTest, AFailingPassIsLoggedOnceAndItsRecoveryOnce) {
  store_down_ = true;
  for (int i = 0; i < 3; ++i) {
    auto outcome = Run(watchdog_.Pass());
    EXPECT_FALSE(outcome.report);
    EXPECT_TRUE(outcome.store_unavailable);
    EXPECT_THAT(outcome.error, ::testing::HasSubstr("connection refused"));
  }
  auto failed = Records("watchdog_pass_failed");
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0]["level"], "warning");

  store_down_ = false;
  EXPECT_TRUE(Run(watchdog_.Pass()).report);
  EXPECT_TRUE(Run(watchdog_.Pass()).report);
  failed = Records("watchdog_pass_failed");
  ASSERT_EQ(failed.size(), 2u);
  EXPECT_THAT(failed[1]["message"].get<std::string>(), ::testing::HasSubstr("after 3 failed"));
}

TEST_F(WatchdogTest, AnOutageSurvivesTheFailedPassesDuringIt) {
  const auto start = clock_.Now();
  store_down_ = true;
  Run(watchdog_.Pass());
  clock_.Advance(20s);
  store_down_ = false;
  watchdog_.RecordOutage(start, clock_.Now(), 4, "postgres: connection refused");
  store_down_ = true;  // down again before the next pass could record it
  Run(watchdog_.Pass());
  store_down_ = false;
  ASSERT_TRUE(Run(watchdog_.Pass()).report);
  auto open = Run(store_.ListObservations(true));
  ASSERT_EQ(open.size(), 1u);
  EXPECT_EQ(open[0].kind, "store_unreachable");
  EXPECT_EQ(json::parse(open[0].evidence_json)["duration_ms"], 20000);
}

}  // namespace
}  // namespace warp::watchdog
