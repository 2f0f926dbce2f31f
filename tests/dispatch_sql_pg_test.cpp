// The dispatch functions of migrations/0003 where PostgreSQL's own behaviour is the point and
// the store contract suite cannot reach: claims skip rows another transaction holds instead of
// waiting for them, the dispatch history cannot be deleted now that its foreign keys are gone,
// and expired work is requeued once.
#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "migrations/migrator.hpp"
#include "migrations/testdb/scratch_database.hpp"

namespace {

namespace fs = std::filesystem;
using warp::migrations::testdb::Connection;
using warp::migrations::testdb::ScratchDatabase;

/// Runs fixed test statements; returns the first column of each row; throws with the
/// server's message and SQLSTATE on error.
std::vector<std::string> Sql(PGconn* conn, const std::string& sql) {
  PGresult* r = PQexec(conn, sql.c_str());
  const auto status = PQresultStatus(r);
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    std::string message = std::string(state ? state : "") + " " + PQresultErrorMessage(r);
    PQclear(r);
    throw std::runtime_error(message);
  }
  std::vector<std::string> rows;
  for (int i = 0; i < PQntuples(r); ++i)
    rows.emplace_back(PQgetvalue(r, i, 0));
  PQclear(r);
  return rows;
}

/// The SQLSTATE `sql` fails with, or "" when it succeeds.
std::string FailureOf(PGconn* conn, const std::string& sql) {
  try {
    Sql(conn, sql);
    return "";
  } catch (const std::runtime_error& e) {
    return std::string(e.what()).substr(0, 5);
  }
}

class DispatchSql : public ::testing::Test {
 protected:
  void SetUp() override {
    if (warp::migrations::testdb::TestDsn().empty())
      GTEST_FAIL() << warp::migrations::testdb::kNoTestDsn;
    db_ = std::make_unique<ScratchDatabase>();
    a_ = std::make_unique<Connection>(db_->Connect());
    b_ = std::make_unique<Connection>(db_->Connect());
    warp::migrations::Migrator migrator(fs::path(WARP_SOURCE_DIR) / "migrations");
    migrator.Up(a());
    Sql(a(), "INSERT INTO warp.tool_profiles (tool_profile_id, operations) VALUES ('p', '{sync}')");
    Sql(a(),
        "INSERT INTO warp.agents (agent_slug, tool_profile_id, runner, business_link, "
        "max_active_leases) VALUES ('one', 'p', 'r', 'spindle:1', 5), "
        "('unused', 'p', 'r', 'spindle:2', 1)");
    Sql(a(),
        "INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts) "
        "SELECT 1, 'sync', now() - interval '1 minute', 'k' || g, 3 "
        "FROM generate_series(1, 3) g");
    run_ = Sql(a(),
               "INSERT INTO warp.scheduler_runs (cycle_id, \"group\", instance, started_at, "
               "heartbeat_at) VALUES ('c1', 'g', 'i', now(), now()) RETURNING run_id")
               .at(0);
  }

  PGconn* a() { return a_->get(); }
  PGconn* b() { return b_->get(); }

  /// claim_dispatches of items 1..3 (agent 1, bound 5) in run_ with a lease of `ttl`; one
  /// `recorded:decision` per item.
  std::vector<std::string> Claim(PGconn* conn, const std::string& cycle,
                                 const std::string& ttl = "60 seconds") {
    return Sql(conn,
               "SELECT recorded || ':' || coalesce(decision, '') FROM "
               "warp.claim_dispatches(" +
                   run_ + ", '" + cycle + "', 'i', '" + ttl +
                   "', '{1,2,3}', '{1,1,1}', '{5,5,5}', '{NULL,NULL,NULL}', "
                   "'{NULL,NULL,NULL}', '10 seconds', '10 minutes') ORDER BY idx");
  }

  std::unique_ptr<ScratchDatabase> db_;
  std::unique_ptr<Connection> a_;
  std::unique_ptr<Connection> b_;
  std::string run_;
};

TEST_F(DispatchSql, AClaimSkipsItemsAnotherTransactionHoldsInsteadOfWaiting) {
  Sql(b(), "BEGIN");
  Sql(b(), "SELECT 1 FROM warp.work_items WHERE work_item_id = 2 FOR UPDATE");
  // Waiting for the row would hit this; skipping it does not.
  Sql(a(), "SET statement_timeout = '3s'");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(Claim(a(), "c1"),
            (std::vector<std::string>{"true:dispatched", "false:", "true:dispatched"}));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  Sql(b(), "ROLLBACK");
  EXPECT_EQ(Sql(a(), "SELECT state FROM warp.work_items ORDER BY work_item_id"),
            (std::vector<std::string>{"dispatched", "pending", "dispatched"}));
  EXPECT_EQ(Sql(a(), "SELECT count(*) FROM warp.dispatch_decisions WHERE work_item_id = 2"),
            std::vector<std::string>{"0"})
      << "a skipped item gets no decision: the next cycle decides on it";
  EXPECT_EQ(Claim(a(), "c2"), (std::vector<std::string>{"false:", "true:dispatched", "false:"}));
}

TEST_F(DispatchSql, TheDispatchHistoryCannotBeDeletedButUnreferencedRowsCan) {
  Claim(a(), "c1");
  EXPECT_EQ(FailureOf(a(), "DELETE FROM warp.agent_leases WHERE lease_id = 1"), "23503");
  EXPECT_EQ(FailureOf(a(), "DELETE FROM warp.work_items WHERE work_item_id = 1"), "23503");
  EXPECT_EQ(FailureOf(a(), "DELETE FROM warp.scheduler_runs WHERE run_id = " + run_), "23503");
  EXPECT_EQ(FailureOf(a(), "DELETE FROM warp.agents WHERE agent_slug = 'one'"), "23503");
  EXPECT_EQ(Sql(a(), "SELECT count(*) FROM warp.agent_leases"), std::vector<std::string>{"3"});

  EXPECT_EQ(FailureOf(a(), "DELETE FROM warp.agents WHERE agent_slug = 'unused'"), "");
  Sql(a(),
      "INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts) "
      "VALUES (1, 'sync', now(), 'never-dispatched', 3)");
  EXPECT_EQ(FailureOf(a(),
                      "DELETE FROM warp.work_items WHERE idempotency_key = "
                      "'never-dispatched'"),
            "");
}

TEST_F(DispatchSql, AFencingBumpLeavesUpdatedAtAloneAndTheGuardStillRefusesGoingBack) {
  const auto before = Sql(a(), "SELECT updated_at FROM warp.agents WHERE agent_id = 1");
  Claim(a(), "c1");
  EXPECT_EQ(Sql(a(), "SELECT fencing_counter FROM warp.agents WHERE agent_id = 1"),
            std::vector<std::string>{"3"});
  EXPECT_EQ(Sql(a(), "SELECT updated_at FROM warp.agents WHERE agent_id = 1"), before);
  EXPECT_EQ(FailureOf(a(), "UPDATE warp.agents SET fencing_counter = 1 WHERE agent_id = 1"),
            "P0001");
  Sql(a(), "UPDATE warp.agents SET lifecycle = 'retired' WHERE agent_id = 1");
  EXPECT_EQ(FailureOf(a(),
                      "UPDATE warp.agents SET lifecycle = 'active', fencing_counter = 9 "
                      "WHERE agent_id = 1"),
            "P0001")
      << "a forward bump does not smuggle an un-retirement past the guard";
}

TEST_F(DispatchSql, AClaimThatWouldLeaseARetiredAgentIsRefusedWhole) {
  // The scheduler read the agent as active; it was retired before the claim (governance
  // migration: agent_leases_not_retired). The claim writes nothing, not even its decisions.
  Sql(a(), "UPDATE warp.agents SET lifecycle = 'retired' WHERE agent_id = 1");
  EXPECT_EQ(FailureOf(a(), "SELECT count(*) FROM warp.claim_dispatches(" + run_ +
                               ", 'c1', 'i', '1 hour', '{1}', '{1}', '{5}', '{NULL}', '{NULL}', "
                               "'10 seconds', '10 minutes')"),
            "P0001");
  EXPECT_EQ(Sql(a(), "SELECT count(*) FROM warp.agent_leases"), std::vector<std::string>{"0"});
  EXPECT_EQ(Sql(a(), "SELECT count(*) FROM warp.dispatch_decisions"),
            std::vector<std::string>{"0"});
  EXPECT_EQ(Sql(a(), "SELECT fencing_counter FROM warp.agents WHERE agent_id = 1"),
            std::vector<std::string>{"0"});
  // A skip verdict for the retired agent is still recorded: it takes no lease.
  EXPECT_EQ(Sql(a(), "SELECT decision FROM warp.claim_dispatches(" + run_ +
                         ", 'c1', 'i', '1 hour', '{1}', '{1}', '{5}', '{skipped_paused}', "
                         "'{retired}', '10 seconds', '10 minutes')"),
            std::vector<std::string>{"skipped_paused"});
}

TEST_F(DispatchSql, ExpiredWorkIsRequeuedOnceAndLiveWorkStays) {
  Sql(a(), "SELECT count(*) FROM warp.claim_dispatches(" + run_ +
               ", 'c1', 'i', '1 second', '{1}', '{1}', '{5}', '{NULL}', '{NULL}', '10 seconds', "
               "'10 minutes')");
  Sql(a(), "SELECT count(*) FROM warp.claim_dispatches(" + run_ +
               ", 'c1', 'i', '1 hour', '{2}', '{1}', '{5}', '{NULL}', '{NULL}', '10 seconds', "
               "'10 minutes')");
  Sql(a(), "SET warp.test_now = '" + Sql(a(), "SELECT now() + interval '1 minute'").at(0) + "'");
  EXPECT_EQ(Sql(a(), "SELECT warp.requeue_expired_work()"), std::vector<std::string>{"1"});
  EXPECT_EQ(Sql(a(), "SELECT state FROM warp.work_items ORDER BY work_item_id"),
            (std::vector<std::string>{"pending", "dispatched", "pending"}));
  EXPECT_EQ(Sql(a(), "SELECT warp.requeue_expired_work()"), std::vector<std::string>{"0"})
      << "the expired lease stays unreleased (a late completion may still count), but its item "
         "moves once";
}

}  // namespace
