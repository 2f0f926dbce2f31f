#include "daemon/store_health.hpp"

#include <gtest/gtest.h>

namespace warp::daemon {
namespace {

using namespace std::chrono_literals;

class StoreHealthTest : public ::testing::Test {
 protected:
  std::shared_ptr<std::vector<std::string>> lines_ = std::make_shared<std::vector<std::string>>();
  StoreHealth health_{logging::MakeCaptureLogger(lines_, logging::Format::kJson)};
  StoreHealth::Clock::time_point t0_ = StoreHealth::Clock::now();
};

TEST_F(StoreHealthTest, ReachableWithoutAnOutageSaysNothing) {
  EXPECT_FALSE(health_.Reachable(t0_));
  EXPECT_FALSE(health_.degraded());
  EXPECT_EQ(health_.status(), "");
  EXPECT_TRUE(lines_->empty());
}

TEST_F(StoreHealthTest, AnOutageIsLoggedOnceAtItsStartAndOnceAtItsEnd) {
  EXPECT_TRUE(health_.Unreachable("postgres: connect failed: refused", t0_));
  EXPECT_TRUE(health_.degraded());
  EXPECT_EQ(health_.status(), "degraded: store unreachable: postgres: connect failed: refused");
  EXPECT_FALSE(health_.Unreachable("postgres: connect failed: refused", t0_ + 1s))
      << "the same reason: the STATUS line stays";
  EXPECT_TRUE(health_.Unreachable("postgres: 57P03 the database system is starting up", t0_ + 2s))
      << "a new reason: the STATUS line changes";
  EXPECT_EQ(health_.status(),
            "degraded: store unreachable: postgres: 57P03 the database system is starting up");
  ASSERT_EQ(lines_->size(), 1u);
  EXPECT_NE(lines_->at(0).find(R"("event":"store_unreachable")"), std::string::npos)
      << lines_->at(0);
  EXPECT_NE(lines_->at(0).find("store unreachable: postgres: connect failed: refused"),
            std::string::npos)
      << lines_->at(0);

  EXPECT_TRUE(health_.Reachable(t0_ + 6500ms));
  EXPECT_FALSE(health_.Reachable(t0_ + 7s));
  EXPECT_FALSE(health_.degraded());
  EXPECT_EQ(health_.status(), "");
  ASSERT_EQ(lines_->size(), 2u);
  EXPECT_NE(lines_->at(1).find(R"("event":"store_reachable")"), std::string::npos) << lines_->at(1);
  EXPECT_NE(lines_->at(1).find("store reachable again after 6.5s, 3 failed attempt(s)"),
            std::string::npos)
      << lines_->at(1);
}

TEST_F(StoreHealthTest, ASecondOutageCountsFromItsOwnStart) {
  health_.Unreachable("down", t0_);
  health_.Unreachable("down", t0_ + 1s);
  health_.Reachable(t0_ + 2s);
  health_.Unreachable("down again", t0_ + 10s);
  health_.Reachable(t0_ + 10500ms);
  ASSERT_EQ(lines_->size(), 4u);
  EXPECT_NE(lines_->at(3).find("after 0.5s, 1 failed attempt(s)"), std::string::npos)
      << lines_->at(3);
}

TEST_F(StoreHealthTest, TheEndOfAnOutageIsHandedOnWithItsDurationAndAttempts) {
  std::vector<StoreHealth::Outage> ended;
  health_.OnOutageEnded([&](const StoreHealth::Outage& o) { ended.push_back(o); });
  health_.Reachable(t0_);
  EXPECT_TRUE(ended.empty()) << "no outage, nothing ended";
  health_.Unreachable("refused", t0_);
  health_.Unreachable("timeout", t0_ + 1s);
  health_.Reachable(t0_ + 4s);
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0].end - ended[0].start, 4s);
  EXPECT_EQ(ended[0].failed_attempts, 2u);
  EXPECT_EQ(ended[0].last_error, "timeout");
}

}  // namespace
}  // namespace warp::daemon
