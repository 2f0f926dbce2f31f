// The dispatch functions of migrations/0003 and 0007 where PostgreSQL's own behaviour is the
// point and the store contract suite cannot reach: claims skip rows another transaction holds
// instead of waiting for them, the dispatch history cannot be deleted now that its foreign keys
// are gone, expired work is requeued once, the side tables work_queue and open_leases follow
// every way work and leases change, and dispatch updates its rows in place.
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

/// Rows and index entries of `table` (and its indexes) read so far in the current transaction
/// of `conn`, as the server counts them (pg_stat_get_xact_tuples_returned + _fetched).
int RowsRead(PGconn* conn, const std::string& table) {
  return std::stoi(Sql(conn,
                       "SELECT sum(pg_stat_get_xact_tuples_returned(c) + "
                       "pg_stat_get_xact_tuples_fetched(c)) FROM (SELECT '" +
                           table +
                           "'::regclass::oid AS c UNION ALL SELECT indexrelid "
                           "FROM pg_index WHERE indrelid = '" +
                           table + "'::regclass) t")
                       .at(0));
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

/// Rows in which warp.work_queue and warp.open_leases differ from what work_items and
/// agent_leases say they should hold (0: they mirror them exactly).
std::string SideTableMismatches(PGconn* conn) {
  return Sql(conn,
             "WITH want_q AS (SELECT work_item_id, agent_id, priority, due_at, state "
             "                  FROM warp.work_items "
             "                 WHERE state IN ('pending', 'failed', 'dead')), "
             "have_q AS (SELECT work_item_id, agent_id, priority, due_at, state "
             "             FROM warp.work_queue), "
             "want_l AS (SELECT agent_id, lease_id, work_item_id, expires_at "
             "             FROM warp.agent_leases WHERE released_at IS NULL), "
             "have_l AS (SELECT agent_id, lease_id, work_item_id, expires_at "
             "             FROM warp.open_leases) "
             "SELECT (SELECT count(*) FROM ((TABLE want_q EXCEPT TABLE have_q) "
             "                              UNION ALL (TABLE have_q EXCEPT TABLE want_q)) q) "
             "     + (SELECT count(*) FROM ((TABLE want_l EXCEPT TABLE have_l) "
             "                              UNION ALL (TABLE have_l EXCEPT TABLE want_l)) l)")
      .at(0);
}

TEST_F(DispatchSql, TheSideTablesFollowEveryWayWorkAndLeasesChange) {
  EXPECT_EQ(SideTableMismatches(a()), "0") << "after the producers' insert";
  EXPECT_EQ(Sql(a(), "SELECT count(*) FROM warp.work_queue"), std::vector<std::string>{"3"});
  Claim(a(), "c1", "1 second");
  EXPECT_EQ(SideTableMismatches(a()), "0") << "after a claim";
  EXPECT_EQ(Sql(a(),
                "SELECT count(*) || '/' || (SELECT count(*) FROM warp.open_leases) "
                "FROM warp.work_queue"),
            std::vector<std::string>{"0/3"});

  // Lease 1 renewed, 2 completed done, 3 completed failed (retried: back in the queue).
  Sql(a(), "SELECT count(*) FROM warp.renew_leases('{1}', '{1}', '1 hour')");
  EXPECT_EQ(SideTableMismatches(a()), "0") << "after a renewal";
  EXPECT_EQ(Sql(a(),
                "SELECT string_agg(verdict, ',' ORDER BY idx) FROM "
                "warp.finish_work_batch('{2,3}', '{2,3}', '{done,failed}', '{\"\",boom}', "
                "'{false,false}', '{true,true}')"),
            std::vector<std::string>{"accepted,accepted"});
  EXPECT_EQ(SideTableMismatches(a()), "0") << "after completions";
  EXPECT_EQ(Sql(a(), "SELECT work_item_id || ':' || state FROM warp.work_queue"),
            std::vector<std::string>{"3:failed"});

  // Expiry: lease 1 renewed for an hour expires two hours on; its item is requeued, and the
  // lease stays open (unreleased) until a late completion or forever.
  Sql(a(), "SET warp.test_now = '" + Sql(a(), "SELECT now() + interval '2 hours'").at(0) + "'");
  EXPECT_EQ(Sql(a(), "SELECT warp.requeue_expired_work()"), std::vector<std::string>{"1"});
  EXPECT_EQ(SideTableMismatches(a()), "0") << "after requeueing";
  Sql(a(), "RESET warp.test_now");

  // What an operator may do by hand: reprioritize, park as dead, add, delete, unrelease.
  Sql(a(), "UPDATE warp.work_items SET priority = 7 WHERE work_item_id = 1");
  Sql(a(), "UPDATE warp.work_items SET state = 'dead' WHERE work_item_id = 3");
  Sql(a(),
      "INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts, "
      "state) VALUES (2, 'sync', now(), 'x1', 3, 'pending'), (2, 'sync', now(), 'x2', 3, 'done')");
  EXPECT_EQ(SideTableMismatches(a()), "0") << "after updates and inserts by hand";
  Sql(a(), "DELETE FROM warp.work_items WHERE idempotency_key = 'x1'");
  Sql(a(),
      "UPDATE warp.agent_leases SET released_at = NULL, release_reason = '' "
      "WHERE lease_id = 2");
  EXPECT_EQ(SideTableMismatches(a()), "0") << "after a delete and an unrelease by hand";

  Sql(a(), "TRUNCATE warp.dispatch_decisions, warp.agent_leases, warp.work_items");
  EXPECT_EQ(Sql(a(),
                "SELECT count(*) || '/' || (SELECT count(*) FROM warp.open_leases) "
                "FROM warp.work_queue"),
            std::vector<std::string>{"0/0"});
}

// Why 0007 exists: a claim and a completion change their item and lease rows in place (heap-only
// updates), adding no index entry. An index on a column they change would make every one of
// these updates a new row version with an entry in each of the table's indexes.
TEST_F(DispatchSql, DispatchAndCompletionUpdateItemsAndLeasesInPlace) {
  // Rows updated / of those, in place; counted by the server for the current transaction.
  // A session's counts reach the shared statistics only now and then, so each transaction
  // below runs on a connection of its own.
  const auto counts = [&](PGconn* conn, const std::string& table) {
    return Sql(conn, "SELECT pg_stat_get_xact_tuples_updated('" + table +
                         "'::regclass) || '/' || pg_stat_get_xact_tuples_hot_updated('" + table +
                         "'::regclass)")
        .at(0);
  };
  Sql(a(), "BEGIN");
  Claim(a(), "c1");
  EXPECT_EQ(counts(a(), "warp.work_items"), "3/3") << "dispatched";
  EXPECT_EQ(counts(a(), "warp.agents"), "1/1") << "the fencing bump";
  Sql(a(), "COMMIT");
  Sql(b(), "BEGIN");
  Sql(b(),
      "SELECT count(*) FROM warp.finish_work_batch('{1,2,3}', '{1,2,3}', "
      "'{done,done,done}', '{\"\",\"\",\"\"}', '{false,false,false}', "
      "'{true,true,true}')");
  EXPECT_EQ(counts(b(), "warp.work_items"), "3/3") << "done";
  EXPECT_EQ(counts(b(), "warp.agent_leases"), "3/3") << "released";
  Sql(b(), "COMMIT");
}

}  // namespace

// Why 0008 exists: the side tables empty and fill with every cycle, so autovacuum may analyze
// one while it holds only dead rows. The planner then takes it for an empty table, and a trigger
// statement that joined the changed rows to it chose to walk the whole side table and scan the
// changed rows once per side-table row: a 5,000-lease completion ran past its 10 s deadline.
// The trigger statements now probe the side table once per changed row, whatever the
// statistics say; the rows they read follow the rows changed, not the table's size.
TEST_F(DispatchSql, TheDueScanReadsOnlyItsLimitOfQueuedItemsWhenTheirAgentsHaveRoom) {
  constexpr int kLimit = 100;
  // 2,000 due items over 200 agents without a bound of their own (the default bound, 4, leaves
  // room for every item among the first 100: each agent has at most one there).
  Sql(a(),
      "INSERT INTO warp.agents (agent_slug, tool_profile_id, runner, business_link) "
      "SELECT 'x' || g, 'p', 'r', 'spindle:x' FROM generate_series(1, 200) g");
  Sql(a(),
      "INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts) "
      "SELECT a.agent_id, 'sync', now() - interval '1 minute', 'q' || g, 3 "
      "FROM generate_series(0, 1999) g JOIN warp.agents a ON a.agent_slug = 'x' || (g % 200 + 1) "
      "ORDER BY g");
  Sql(b(), "BEGIN");
  // The factor is PostgresStore's, store::kDueScanFactor.
  EXPECT_EQ(
      Sql(b(), "SELECT count(*) FROM warp.select_due_work(" + std::to_string(kLimit) + ", 4, 4)"),
      std::vector<std::string>{std::to_string(kLimit)});
  // Queue rows and index entries read, counted by the server for this transaction: an index
  // entry and a row per item taken. A scan of kDueScanFactor times the limit reads 4 times that,
  // a bitmap scan (chosen on a queue never analyzed, as here) all 2,000.
  const auto read = RowsRead(b(), "warp.work_queue");
  EXPECT_LE(read, 2 * kLimit + 10);
  Sql(b(), "COMMIT");
}

TEST_F(DispatchSql, ADueScanShortByAFewItemsLooksAQuarterFurtherNotFourTimes) {
  constexpr int kLimit = 100;
  // 10 items of one agent first in due order, then 2,000 over 200 agents: the first 100 hold
  // all 10 of that agent, whose room (the default bound, 4) lets 4 through: 6 short.
  Sql(a(),
      "INSERT INTO warp.agents (agent_slug, tool_profile_id, runner, business_link) "
      "SELECT 'x' || g, 'p', 'r', 'spindle:x' FROM generate_series(0, 200) g");
  Sql(a(),
      "INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts) "
      "SELECT a.agent_id, 'sync', now() - interval '2 minutes', 'busy' || g, 3 "
      "FROM generate_series(1, 10) g JOIN warp.agents a ON a.agent_slug = 'x0'");
  Sql(a(),
      "INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts) "
      "SELECT a.agent_id, 'sync', now() - interval '1 minute', 'q' || g, 3 "
      "FROM generate_series(0, 1999) g JOIN warp.agents a ON a.agent_slug = 'x' || (g % 200 + 1) "
      "ORDER BY g");
  Sql(b(), "SELECT pg_stat_force_next_flush()");
  Sql(b(), "BEGIN");
  EXPECT_EQ(
      Sql(b(),
          "SELECT count(*) || '/' || count(*) FILTER (WHERE a.agent_slug = 'x0') "
          "FROM warp.select_due_work(" +
              std::to_string(kLimit) + ", 4, 4) w JOIN warp.agents a ON a.agent_id = w.agent_id"),
      std::vector<std::string>{std::to_string(kLimit) + "/4"});
  // A first pass of 100 and a second of 125 (a quarter more): an index entry and a row each.
  // The wide pass of 0010, 400, made 1,000 in all.
  const auto read = RowsRead(b(), "warp.work_queue");
  EXPECT_LE(read, 2 * (kLimit + kLimit * 5 / 4) + 20);
  Sql(b(), "COMMIT");
}

TEST_F(DispatchSql, ACompletionBatchReadsTheLeasesItNamesNotTheWholeHistory) {
  constexpr int kHistory = 40000;  // released leases of earlier work
  constexpr int kBatch = 1000;     // open leases completed in one call
  const auto history = std::to_string(kHistory);
  const auto batch = std::to_string(kBatch);
  Sql(a(),
      "INSERT INTO warp.agent_leases (agent_id, fencing_token, holder_instance, holder_run_id, "
      "acquired_at, renewed_at, expires_at, released_at, release_reason) "
      "SELECT 1, g, 'i', " +
          run_ +
          ", now() - interval '1 hour', now() - interval '1 hour', now() - interval '59 minutes', "
          "now() - interval '59 minutes', 'completed' FROM generate_series(1, " +
          history + ") g");
  Sql(a(),
      "INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts, state, "
      "attempts) SELECT 1, 'sync', now(), 'batch' || g, 3, 'dispatched', 1 "
      "FROM generate_series(1, " +
          batch + ") g");
  Sql(a(),
      "INSERT INTO warp.agent_leases (agent_id, work_item_id, fencing_token, holder_instance, "
      "holder_run_id, acquired_at, renewed_at, expires_at) "
      "SELECT 1, w.work_item_id, " +
          history + " + row_number() OVER (ORDER BY w.work_item_id), 'i', " + run_ +
          ", now(), now(), now() + interval '1 hour' FROM warp.work_items w "
          "WHERE w.idempotency_key LIKE 'batch%'");
  Sql(a(),
      "UPDATE warp.work_items w SET lease_id = l.lease_id FROM warp.agent_leases l "
      "WHERE l.work_item_id = w.work_item_id");
  Sql(a(), "ANALYZE warp.agent_leases");

  const auto arrays = Sql(b(),
                          "SELECT array_agg(lease_id)::text || ' ' || "
                          "array_agg(fencing_token)::text FROM warp.agent_leases "
                          "WHERE released_at IS NULL")
                          .at(0);
  const auto space = arrays.find(' ');
  // The counters read below hold what this session has not yet reported, which includes the
  // statements of the last second: report them now.
  Sql(b(), "SELECT pg_stat_force_next_flush()");
  Sql(b(), "BEGIN");
  EXPECT_EQ(Sql(b(),
                "SELECT count(*) FILTER (WHERE verdict = 'accepted') FROM "
                "warp.finish_work_batch('" +
                    arrays.substr(0, space) + "', '" + arrays.substr(space + 1) +
                    "', array_fill('done'::text, ARRAY[" + batch +
                    "]), array_fill(''::text, ARRAY[" + batch + "]), array_fill(false, ARRAY[" +
                    batch + "]), array_fill(true, ARRAY[" + batch + "]))"),
            std::vector<std::string>{batch});
  // Lease rows and index entries read in this transaction, as the server counts them: 8 per
  // lease of the batch (row locks, lock keys, judgement, release), whatever the history.
  // Joined by hashing, as before 0011, two joins read every lease: 168,000 in all here.
  const auto read = RowsRead(b(), "warp.agent_leases");
  EXPECT_LE(read, 10 * kBatch) << "lease rows and index entries read";
  Sql(b(), "COMMIT");
  EXPECT_EQ(Sql(a(), "SELECT count(*) FROM warp.work_items WHERE state = 'done'"),
            std::vector<std::string>{batch});
}

TEST_F(DispatchSql, TriggerStatementsReadWhatChangedNotTheWholeSideTableWhateverItsStatistics) {
  constexpr int kRows = 4000;    // open leases and queued items
  constexpr int kChanged = 400;  // of them released and done in one statement each
  const auto rows = std::to_string(kRows);
  Sql(a(),
      "INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts) "
      "SELECT 1, 'sync', now(), 'bulk' || g, 3 FROM generate_series(1, " +
          rows + ") g");
  const auto lease = [&](const std::string& from, const std::string& to) {
    Sql(a(),
        "INSERT INTO warp.agent_leases (agent_id, work_item_id, fencing_token, "
        "holder_instance, holder_run_id, acquired_at, renewed_at, expires_at) "
        "SELECT 1, g, g, 'i', " +
            run_ +
            ", now(), now(), now() + interval '1 hour' "
            "FROM generate_series(" +
            from + ", " + to + ") g");
  };
  // Side tables analyzed while every row in them is dead: the planner now believes them empty.
  lease("1", rows);
  Sql(a(), "UPDATE warp.agent_leases SET released_at = now(), release_reason = 'completed'");
  Sql(a(), "UPDATE warp.work_items SET state = 'done' WHERE idempotency_key LIKE 'bulk%'");
  Sql(a(), "ANALYZE warp.open_leases, warp.work_queue");
  ASSERT_EQ(
      Sql(a(), "SELECT reltuples::bigint FROM pg_class WHERE oid = 'warp.open_leases'::regclass"),
      std::vector<std::string>{"0"});
  // And then full again.
  lease(std::to_string(kRows + 1), std::to_string(2 * kRows));
  Sql(a(), "UPDATE warp.work_items SET state = 'pending' WHERE idempotency_key LIKE 'bulk%'");
  ASSERT_EQ(Sql(a(),
                "SELECT count(*) || '/' || (SELECT count(*) FROM warp.work_queue) "
                "FROM warp.open_leases"),
            std::vector<std::string>{rows + "/" + std::to_string(kRows + 3)});

  // Side-table rows read are counted in b()'s transaction: its first use of the triggers, so
  // they plan now, with these statistics.
  Sql(b(), "BEGIN");
  Sql(b(),
      "UPDATE warp.agent_leases SET released_at = now(), release_reason = 'completed' "
      "WHERE lease_id BETWEEN " +
          std::to_string(kRows + 1) + " AND " + std::to_string(kRows + kChanged));
  Sql(b(), "UPDATE warp.work_items SET state = 'done' WHERE work_item_id BETWEEN 4 AND " +
               std::to_string(3 + kChanged));
  // Each changed row's side-table row is found (an index entry and a row) and deleted (the
  // row again); walking the table would read all kRows index entries and rows.
  EXPECT_LE(RowsRead(b(), "warp.open_leases"), 3 * kChanged) << "of " << kRows;
  EXPECT_LE(RowsRead(b(), "warp.work_queue"), 3 * kChanged) << "of " << kRows;
  Sql(b(), "COMMIT");
  EXPECT_EQ(Sql(a(),
                "SELECT count(*) || '/' || (SELECT count(*) FROM warp.work_queue) "
                "FROM warp.open_leases"),
            std::vector<std::string>{std::to_string(kRows - kChanged) + "/" +
                                     std::to_string(kRows + 3 - kChanged)});
}
