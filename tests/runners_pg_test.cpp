// The http and notify runners where PostgreSQL is part of the point:
// - notify: pg_notify happens in the claim's transaction, so a real LISTEN session receives one
//   notification per recorded dispatch and none for a claim that rolls back; a notice over
//   NOTIFY's limit carries only ids; the agent completes through warp.complete_work; the
//   PostgreSQL store's ClaimDispatches notifies for candidates with a channel.
// - http: an agent that accepted its work, outlives its lease while the work is re-leased, and
//   then completes with the fencing token of the document it was POSTed is refused.
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <poll.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "migrations/migrator.hpp"
#include "migrations/testdb/scratch_database.hpp"
#include "scheduler/runners/http_runner.hpp"
#include "store/postgres/postgres_store.hpp"
#include "tests/support/async.hpp"
#include "tests/support/http_test_server.hpp"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using warp::migrations::testdb::Connection;
using warp::migrations::testdb::ScratchDatabase;

/// Runs fixed test statements; returns the first column of each row; throws on error.
std::vector<std::string> Sql(PGconn* conn, const std::string& sql) {
  PGresult* r = PQexec(conn, sql.c_str());
  const auto status = PQresultStatus(r);
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    std::string message = PQresultErrorMessage(r);
    PQclear(r);
    throw std::runtime_error(message);
  }
  std::vector<std::string> rows;
  for (int i = 0; i < PQntuples(r); ++i)
    rows.emplace_back(PQgetisnull(r, i, 0) ? "NULL" : PQgetvalue(r, i, 0));
  PQclear(r);
  return rows;
}

struct Notice {
  std::string channel;
  nlohmann::json payload;
  std::size_t bytes = 0;
};

/// Every notification `conn` receives within `wait` (it must have run LISTEN).
std::vector<Notice> Notifications(PGconn* conn, std::chrono::milliseconds wait = 500ms) {
  std::vector<Notice> out;
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    PQconsumeInput(conn);
    while (PGnotify* n = PQnotifies(conn)) {
      const std::string text = n->extra;
      out.push_back({n->relname, nlohmann::json::parse(text), text.size()});
      PQfreemem(n);
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left <= 0ms)
      return out;
    pollfd p{PQsocket(conn), POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(left.count()));
  }
}

class RunnersPg : public ::testing::Test {
 protected:
  void SetUp() override {
    if (warp::migrations::testdb::TestDsn().empty())
      GTEST_FAIL() << warp::migrations::testdb::kNoTestDsn;
    db_ = std::make_unique<ScratchDatabase>();
    warpd_ = std::make_unique<Connection>(db_->Connect());
    agent_ = std::make_unique<Connection>(db_->Connect());
    warp::migrations::Migrator migrator(fs::path(WARP_SOURCE_DIR) / "migrations");
    migrator.Up(warpd());
    Sql(warpd(),
        "INSERT INTO warp.tool_profiles (tool_profile_id, operations) VALUES ('p', '{sync}')");
    Sql(warpd(),
        "INSERT INTO warp.agents (agent_slug, tool_profile_id, runner, business_link, "
        "max_active_leases) VALUES ('one', 'p', 'listen', 'spindle:1', 5)");
    Sql(warpd(),
        "INSERT INTO warp.work_items (agent_id, kind, payload, due_at, idempotency_key, "
        "max_attempts) SELECT 1, 'sync', jsonb_build_object('n', g), now() - interval '1 minute', "
        "'k' || g, 3 FROM generate_series(1, 3) g");
    run_ = NewRun("c1");
    Sql(agent(), "LISTEN warp_dispatch");
  }

  std::string NewRun(const std::string& cycle) {
    return Sql(warpd(),
               "INSERT INTO warp.scheduler_runs (cycle_id, \"group\", instance, started_at, "
               "heartbeat_at) VALUES ('" +
                   cycle + "', 'g', 'i', now(), now()) RETURNING run_id")
        .at(0);
  }

  /// claim_dispatches with channels of items 1..3 (agent 1, bound 5); one
  /// `recorded:decision` per item.
  std::vector<std::string> Claim(const std::string& channels, const std::string& cycle = "c1",
                                 const std::string& ttl = "60 seconds") {
    return Sql(warpd(),
               "SELECT recorded || ':' || coalesce(decision, '') FROM warp.claim_dispatches(" +
                   run_ + ", '" + cycle + "', 'i', '" + ttl +
                   "', '{1,2,3}', '{1,1,1}', '{5,5,5}', '{NULL,NULL,NULL}', '{NULL,NULL,NULL}', "
                   "'10 seconds', '10 minutes', '" +
                   channels + "') ORDER BY idx");
  }

  PGconn* warpd() { return warpd_->get(); }
  PGconn* agent() { return agent_->get(); }

  std::unique_ptr<ScratchDatabase> db_;
  std::unique_ptr<Connection> warpd_;
  std::unique_ptr<Connection> agent_;
  std::string run_;
};

TEST_F(RunnersPg, OneNotificationPerRecordedDispatchWithAChannel) {
  EXPECT_EQ(Claim("{warp_dispatch,warp_dispatch,NULL}"),
            (std::vector<std::string>{"true:dispatched", "true:dispatched", "true:dispatched"}));
  const auto notices = Notifications(agent());
  ASSERT_EQ(notices.size(), 2u) << "item 3 has no channel";
  const auto leases = Sql(warpd(),
                          "SELECT lease_id || ':' || fencing_token || ':' || work_item_id FROM "
                          "warp.agent_leases ORDER BY work_item_id");
  for (std::size_t i = 0; i < notices.size(); ++i) {
    const auto& n = notices[i].payload;
    EXPECT_EQ(notices[i].channel, "warp_dispatch");
    EXPECT_EQ(fmt::format("{}:{}:{}", n["lease_id"].get<std::int64_t>(),
                          n["fencing_token"].get<std::int64_t>(), n["work_id"].get<std::int64_t>()),
              leases.at(i));
    EXPECT_EQ(n["agent"], "one");
    EXPECT_EQ(n["kind"], "sync");
    EXPECT_EQ(n["payload"]["n"], static_cast<int>(i + 1));
    EXPECT_EQ(n["cycle_id"], "c1");
    EXPECT_TRUE(n["lease_expires_at"].get<std::string>().ends_with("Z"));
    EXPECT_FALSE(n.contains("truncated"));
  }
  // A second claim in the same cycle records nothing, so it notifies nothing.
  EXPECT_EQ(Claim("{warp_dispatch,warp_dispatch,warp_dispatch}"),
            (std::vector<std::string>{"false:", "false:", "false:"}));
  EXPECT_TRUE(Notifications(agent(), 200ms).empty());
}

TEST_F(RunnersPg, ADeferredCandidateIsNotNotified) {
  Sql(warpd(), "UPDATE warp.agents SET max_active_leases = 1");
  Sql(warpd(),
      "SELECT count(*) FROM warp.claim_dispatches(" + run_ +
          ", 'c1', 'i', '60 seconds', '{1,2}', '{1,1}', '{1,1}', '{NULL,NULL}', '{NULL,NULL}', "
          "'10 seconds', '10 minutes', '{warp_dispatch,warp_dispatch}')");
  const auto notices = Notifications(agent());
  ASSERT_EQ(notices.size(), 1u);
  EXPECT_EQ(notices[0].payload["work_id"], 1);
}

TEST_F(RunnersPg, ARolledBackClaimSendsNoNotification) {
  Sql(warpd(), "BEGIN");
  // The claim dispatches (and queues its notices) inside the transaction...
  EXPECT_EQ(Claim("{warp_dispatch,warp_dispatch,warp_dispatch}"),
            (std::vector<std::string>{"true:dispatched", "true:dispatched", "true:dispatched"}));
  EXPECT_EQ(Sql(warpd(), "SELECT count(*) FROM warp.agent_leases"), std::vector<std::string>{"3"});
  // ...which then rolls back: no lease and no notice survive it.
  Sql(warpd(), "ROLLBACK");
  EXPECT_TRUE(Notifications(agent()).empty());
  EXPECT_EQ(Sql(warpd(), "SELECT count(*) FROM warp.agent_leases"), std::vector<std::string>{"0"});
}

TEST_F(RunnersPg, ANoticeOverTheNotifyLimitCarriesOnlyIdsAndTheAgentReadsTheRest) {
  Sql(warpd(),
      "UPDATE warp.work_items SET payload = jsonb_build_object('blob', repeat('x', 9000)) "
      "WHERE work_item_id = 1");
  Claim("{warp_dispatch,warp_dispatch,NULL}");
  const auto notices = Notifications(agent());
  ASSERT_EQ(notices.size(), 2u);
  const auto& big = notices[0].payload;
  EXPECT_EQ(big["work_id"], 1);
  EXPECT_EQ(big["truncated"], true);
  EXPECT_FALSE(big.contains("payload"));
  EXPECT_FALSE(big.contains("kind"));
  EXPECT_TRUE(big.contains("lease_id"));
  EXPECT_TRUE(big.contains("fencing_token"));
  EXPECT_LT(notices[0].bytes, 8000u);
  EXPECT_EQ(Sql(agent(),
                "SELECT length(payload->>'blob') FROM warp.work_items WHERE work_item_id "
                "= " +
                    std::to_string(big["work_id"].get<std::int64_t>())),
            std::vector<std::string>{"9000"});
  EXPECT_FALSE(notices[1].payload.contains("truncated"));
}

TEST_F(RunnersPg, TheNotifiedAgentCompletesThroughTheFencingCheck) {
  Claim("{warp_dispatch,NULL,NULL}");
  const auto notices = Notifications(agent());
  ASSERT_EQ(notices.size(), 1u);
  const auto& n = notices[0].payload;
  const auto lease = std::to_string(n["lease_id"].get<std::int64_t>());
  const auto token = std::to_string(n["fencing_token"].get<std::int64_t>());
  // A wrong token is a stale holder.
  EXPECT_EQ(
      Sql(agent(), "SELECT warp.complete_work(" + lease + ", " + token + " + 1000, 'done', '{}')"),
      std::vector<std::string>{"unknown_lease"});
  EXPECT_EQ(Sql(agent(), "SELECT warp.complete_work(" + lease + ", " + token + ", 'done', '{}')"),
            std::vector<std::string>{"accepted"});
  EXPECT_EQ(Sql(agent(), "SELECT state FROM warp.work_items WHERE work_item_id = 1"),
            std::vector<std::string>{"done"});
  EXPECT_EQ(Sql(agent(), "SELECT warp.complete_work(" + lease + ", " + token + ", 'done', '{}')"),
            std::vector<std::string>{"released"});
}

TEST_F(RunnersPg, ThePostgresStoreNotifiesInTheClaimForCandidatesWithAChannel) {
  boost::asio::io_context io;
  warp::store::postgres::PostgresStoreSettings settings;
  settings.pool.conninfo = db_->dsn();
  settings.pool.size = 1;
  warp::store::postgres::PostgresStore store(io.get_executor(), settings, warp::logging::Logger());
  warp::store::DispatchBatch batch;
  batch.run_id = std::stoll(run_);
  batch.cycle_id = "c1";
  batch.instance = "i";
  for (warp::store::WorkItemId item : {1, 2, 3}) {
    warp::store::DispatchCandidate c;
    c.work_item_id = item;
    c.agent_id = 1;
    c.max_active = 5;
    c.notify_channel = item == 2 ? "" : "warp_dispatch";
    batch.candidates.push_back(c);
  }
  const auto claims = warp::test::Await(io, store.ClaimDispatches(std::move(batch)));
  ASSERT_EQ(claims.size(), 3u);
  const auto notices = Notifications(agent());
  ASSERT_EQ(notices.size(), 2u);
  EXPECT_EQ(notices[0].payload["lease_id"], claims[0].lease->lease_id);
  EXPECT_EQ(notices[0].payload["fencing_token"], claims[0].lease->fencing_token);
  EXPECT_EQ(notices[1].payload["lease_id"], claims[2].lease->lease_id);
}

TEST_F(RunnersPg, ASlowHttpAgentWhoseWorkWasReLeasedIsRefusedItsLateCompletion) {
  warp::test::TestServer server(
      [](const warp::test::Received&) { return warp::test::Respond(202, "Accepted", ""); });
  // Item 1 under a lease of one second, which nobody renews: the agent is slow.
  const auto first = Sql(warpd(),
                         "SELECT lease_id || ':' || fencing_token || ':' || "
                         "(extract(epoch FROM expires_at) * 1000)::bigint FROM "
                         "warp.claim_dispatches(" +
                             run_ +
                             ", 'c1', 'i', '1 second', '{1}', '{1}', '{1}', '{NULL}', '{NULL}', "
                             "'10 milliseconds', '10 milliseconds')");
  ASSERT_EQ(first.size(), 1u);
  long long lease = 0, token = 0, expires_ms = 0;
  ASSERT_EQ(std::sscanf(first[0].c_str(), "%lld:%lld:%lld", &lease, &token, &expires_ms), 3);

  boost::asio::io_context io;
  warp::config::RunnerSettings settings;
  settings.name = "hook";
  settings.transport = warp::config::Transport::kHttp;
  settings.url = server.url();
  settings.timeout = 10s;
  warp::scheduler::HttpRunner runner(settings, io.get_executor(), warp::logging::Logger());
  warp::scheduler::DispatchRequest request;
  request.agent_slug = "one";
  request.work_id = 1;
  request.kind = "sync";
  request.payload_json = "{}";
  request.lease_id = lease;
  request.fencing_token = token;
  request.cycle_id = "c1";
  request.lease_expires_at = warp::store::TimePoint(std::chrono::milliseconds(expires_ms));
  bool handed_off = false;
  request.on_handed_off = [&] { handed_off = true; };
  auto execution = runner.Start(std::move(request), [](warp::scheduler::DispatchResult) {});
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!handed_off && std::chrono::steady_clock::now() < deadline) {
    io.run_one_for(20ms);
    io.restart();
  }
  ASSERT_TRUE(handed_off);
  ASSERT_EQ(server.requests().size(), 1u);
  const auto document = nlohmann::json::parse(server.requests()[0].body);
  EXPECT_EQ(server.requests()[0].headers.at("warp-fencing-token"), std::to_string(token));

  // The lease expires; the next cycle requeues the work and leases it again.
  std::this_thread::sleep_for(1200ms);
  EXPECT_EQ(Sql(warpd(), "SELECT warp.requeue_expired_work()"), std::vector<std::string>{"1"});
  Sql(warpd(), "UPDATE warp.work_items SET due_at = now() WHERE work_item_id = 1");
  run_ = NewRun("c2");
  EXPECT_EQ(Sql(warpd(), "SELECT decision FROM warp.claim_dispatches(" + run_ +
                             ", 'c2', 'i', '60 seconds', '{1}', '{1}', '{1}', '{NULL}', "
                             "'{NULL}', '10 seconds', '10 minutes')"),
            std::vector<std::string>{"dispatched"});

  // Now the slow agent completes, with what its document said.
  const auto late = Sql(agent(), fmt::format("SELECT warp.complete_work({}, {}, 'done', '{{}}')",
                                             document["lease_id"].get<std::int64_t>(),
                                             document["fencing_token"].get<std::int64_t>()));
  EXPECT_EQ(late, std::vector<std::string>{"overtaken"});
  EXPECT_EQ(Sql(warpd(), "SELECT state FROM warp.work_items WHERE work_item_id = 1"),
            std::vector<std::string>{"dispatched"})
      << "the new holder's work is untouched";
  execution->Stop("test over");
  warp::test::RunFor(io, 100ms);
}

}  // namespace
