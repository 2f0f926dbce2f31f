#include "leasing/lease_keeper.hpp"

#include <gtest/gtest.h>

#include "store/memory/memory_store.hpp"
#include "tests/support/async.hpp"
#include "tests/support/flaky_store.hpp"

namespace warp::leasing {
namespace {

using namespace std::chrono_literals;

class LeaseKeeperTest : public ::testing::Test {
 protected:
  LeaseKeeperTest()
      : clock_(store::TimePoint(std::chrono::sys_days(std::chrono::year{2026} / 11 / 25))),
        store_(clock_.AsFunction()) {
    settings_.ttl = 30s;
    settings_.renew_every = 10s;
    store::NewAgent a;
    a.agent_slug = "erp-sales";
    a.tool_profile_id = "erp";
    a.runner = "r";
    a.business_link = "spindle:req-1";
    a.max_active_leases = 5;
    agent_ = test::Await(io_, store_.RegisterAgent(a)).agent_id;
  }

  store::Lease Acquire() {
    store::NewWork w;
    w.agent_slug = "erp-sales";
    w.kind = "sync";
    auto item = test::Await(io_, store_.EnqueueWork(w, 3)).item;
    auto run =
        test::Await(io_, store_.ClaimCycle({"c" + std::to_string(++cycles_), "g", "i", 30s}));
    store::DispatchBatch batch{run.run.run_id, run.run.cycle_id, "i", settings_.ttl, {}};
    batch.candidates.push_back({item.work_item_id, agent_, 5, std::nullopt, ""});
    return *test::Await(io_, store_.ClaimDispatches(batch)).at(0).lease;
  }

  boost::asio::io_context io_;
  test::ManualClock clock_;
  store::MemoryStore store_;
  config::LeasingSettings settings_;
  store::AgentId agent_ = 0;
  int cycles_ = 0;
};

TEST_F(LeaseKeeperTest, RenewalExtendsEveryHeldLeaseInOneRound) {
  LeaseKeeper keeper(io_.get_executor(), store_, settings_, logging::Logger());
  const auto a = Acquire();
  const auto b = Acquire();
  int lost = 0;
  keeper.Hold(a, "erp-sales", [&](std::string) { ++lost; });
  keeper.Hold(b, "erp-sales", [&](std::string) { ++lost; });
  clock_.Advance(20s);
  test::Await(io_, keeper.RenewAll());
  EXPECT_EQ(lost, 0);
  for (const auto& l : test::Await(io_, store_.ListLeases(agent_, true))) {
    EXPECT_EQ(l.expires_at, clock_.Now() + 30s);
    EXPECT_EQ(l.renewed_at, clock_.Now());
  }
  EXPECT_EQ(keeper.held(), 2u);
}

TEST_F(LeaseKeeperTest, ARoundRenewsInChunks) {
  const auto n = LeaseKeeper::kRenewChunk + 1;
  store::NewAgent a;
  a.agent_slug = "bulk";
  a.tool_profile_id = "erp";
  a.runner = "r";
  a.business_link = "spindle:req-2";
  a.max_active_leases = static_cast<int>(n);
  const auto bulk = test::Await(io_, store_.RegisterAgent(a)).agent_id;
  auto run = test::Await(io_, store_.ClaimCycle({"bulk", "g", "i", 30s}));
  store::DispatchBatch batch{run.run.run_id, run.run.cycle_id, "i", settings_.ttl, {}};
  for (std::size_t i = 0; i < n; ++i) {
    store::NewWork w;
    w.agent_slug = "bulk";
    w.kind = "sync";
    w.idempotency_key = "bulk-" + std::to_string(i);
    const auto item = test::Await(io_, store_.EnqueueWork(w, 3)).item;
    batch.candidates.push_back({item.work_item_id, bulk, a.max_active_leases, std::nullopt, ""});
  }
  const auto claims = test::Await(io_, store_.ClaimDispatches(batch));
  test::FlakyStore counted(store_);
  LeaseKeeper keeper(io_.get_executor(), counted, settings_, logging::Logger());
  int lost = 0;
  for (const auto& c : claims)
    keeper.Hold(*c.lease, "bulk", [&](std::string) { ++lost; });
  clock_.Advance(20s);
  test::Await(io_, keeper.RenewAll());
  EXPECT_EQ(counted.renew_calls(), (std::vector<std::size_t>{LeaseKeeper::kRenewChunk, 1}));
  EXPECT_EQ(lost, 0);
  const auto leases = test::Await(io_, store_.ListLeases(bulk, true));
  ASSERT_EQ(leases.size(), n);
  for (const auto& l : leases)
    EXPECT_EQ(l.expires_at, clock_.Now() + 30s);
}

TEST_F(LeaseKeeperTest, AnExpiredLeaseIsLostOnceAndNoLongerRenewed) {
  LeaseKeeper keeper(io_.get_executor(), store_, settings_, logging::Logger());
  const auto lease = Acquire();
  std::vector<std::string> reasons;
  keeper.Hold(lease, "erp-sales", [&](std::string reason) { reasons.push_back(reason); });
  clock_.Advance(31s);
  test::Await(io_, keeper.RenewAll());
  test::Await(io_, keeper.RenewAll());
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_NE(reasons[0].find("renewal refused"), std::string::npos);
  EXPECT_EQ(keeper.held(), 0u);
}

TEST_F(LeaseKeeperTest, AReleasedLeaseIsLost) {
  LeaseKeeper keeper(io_.get_executor(), store_, settings_, logging::Logger());
  const auto lease = Acquire();
  bool lost = false;
  keeper.Hold(lease, "erp-sales", [&](std::string) { lost = true; });
  // Someone completed it (e.g. an operator through warpctl complete).
  auto done = test::Await(io_, store_.CompleteWork({{lease.lease_id, lease.fencing_token}}, {}));
  ASSERT_TRUE(done.accepted());
  test::Await(io_, keeper.RenewAll());
  EXPECT_TRUE(lost);
}

TEST_F(LeaseKeeperTest, AForgottenLeaseIsNeitherRenewedNorReportedLost) {
  LeaseKeeper keeper(io_.get_executor(), store_, settings_, logging::Logger());
  const auto lease = Acquire();
  bool lost = false;
  keeper.Hold(lease, "erp-sales", [&](std::string) { lost = true; });
  keeper.Forget(lease.lease_id);
  clock_.Advance(10s);
  test::Await(io_, keeper.RenewAll());
  EXPECT_FALSE(lost);
  auto leases = test::Await(io_, store_.ListLeases(agent_, false));
  EXPECT_EQ(leases.at(0).expires_at, lease.expires_at);
}

TEST_F(LeaseKeeperTest, ThePeriodicLoopRenewsOnItsOwn) {
  settings_.renew_every = 20ms;
  settings_.ttl = 30s;
  LeaseKeeper keeper(io_.get_executor(), store_, settings_, logging::Logger());
  const auto lease = Acquire();
  keeper.Hold(lease, "erp-sales", nullptr);
  keeper.Start();
  clock_.Advance(5s);
  test::RunFor(io_, 100ms);
  keeper.Stop();
  test::RunFor(io_, 10ms);
  auto leases = test::Await(io_, store_.ListLeases(agent_, false));
  EXPECT_EQ(leases.at(0).expires_at, clock_.Now() + 30s);
}

TEST_F(LeaseKeeperTest, ALeaseWithoutAConfirmedRenewalIsGivenUpAtItsLocalDeadline) {
  // The first renewal round (600ms) comes after the local deadline (ttl - renew_every / 2 =
  // 100ms), as when a renewal hangs: the keeper must not wait for a renewal's outcome.
  settings_.renew_every = 600ms;
  settings_.ttl = 400ms;
  LeaseKeeper keeper(io_.get_executor(), store_, settings_, logging::Logger());
  keeper.Start();
  const auto lease = Acquire();
  std::vector<std::string> reasons;
  keeper.Hold(lease, "erp-sales", [&](std::string reason) { reasons.push_back(reason); });
  test::RunFor(io_, 20ms);
  EXPECT_TRUE(reasons.empty()) << "not before its local deadline";
  test::RunFor(io_, 200ms);
  keeper.Stop();
  test::RunFor(io_, 10ms);
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_NE(reasons[0].find("before its local deadline"), std::string::npos) << reasons[0];
  EXPECT_EQ(keeper.held(), 0u);
}

}  // namespace
}  // namespace warp::leasing
