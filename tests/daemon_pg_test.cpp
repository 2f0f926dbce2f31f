// Real warpd processes on a throwaway PostgreSQL database: the schema version check at start,
// a cycle that leases, dispatches and completes, and two instances sharing one slot.
#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <set>
#include <string>

#include "migrations/migrator.hpp"
#include "migrations/testdb/scratch_database.hpp"
#include "tests/support/process.hpp"

namespace {

using namespace warp::test;
using warp::migrations::testdb::ScratchDatabase;

/// Runs `sql` (no parameters: fixed test statements) and returns the first column of each row.
std::vector<std::string> Sql(PGconn* conn, const std::string& sql) {
  PGresult* r = PQexec(conn, sql.c_str());
  const auto status = PQresultStatus(r);
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    std::string message = PQresultErrorMessage(r);
    PQclear(r);
    throw std::runtime_error(sql + ": " + message);
  }
  std::vector<std::string> rows;
  for (int i = 0; i < PQntuples(r); ++i)
    rows.emplace_back(PQgetvalue(r, i, 0));
  PQclear(r);
  return rows;
}

class DaemonOnPostgres : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(warp::migrations::testdb::TestDsn().empty())
        << warp::migrations::testdb::kNoTestDsn;
    db_.emplace();
    conn_ = std::make_unique<warp::migrations::testdb::Connection>(db_->Connect());
  }

  PGconn* conn() { return conn_->get(); }

  void Migrate() {
    warp::migrations::Migrator migrator(std::filesystem::path(WARP_SOURCE_DIR) / "migrations");
    migrator.Up(conn());
  }

  /// Three agents with bounds 1, 2 and 3, and `per_agent` due items each.
  void Seed(int per_agent) {
    Sql(conn(),
        "INSERT INTO warp.tool_profiles (tool_profile_id, operations) "
        "VALUES ('p', '{sync}')");
    Sql(conn(),
        "INSERT INTO warp.agents (agent_slug, tool_profile_id, runner, business_link, "
        "max_active_leases) VALUES ('a1', 'p', 'noop', 'spindle:1', 1), "
        "('a2', 'p', 'noop', 'spindle:2', 2), ('a3', 'p', 'work', 'spindle:3', 3)");
    Sql(conn(),
        "INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, "
        "max_attempts) SELECT a.agent_id, 'sync', now() - interval '1 minute', "
        "a.agent_slug || '-' || g, 3 FROM warp.agents a, generate_series(1, " +
            std::to_string(per_agent) + ") g");
  }

  std::filesystem::path Config(const std::string& instance) {
    auto path = dir_.path() / (instance + ".toml");
    WriteFile(path, "[daemon]\ninstance = \"" + instance +
                        "\"\nshutdown_grace = \"10s\"\n\n[store]\nbackend = \"postgres\"\n"
                        "dsn = \"" +
                        db_->dsn() +
                        "\"\n\n[scheduler]\ninterval = \"1h\"\n\n"
                        "[runner.noop]\ntransport = \"null\"\n\n"
                        "[runner.work]\ntransport = \"exec\"\n"
                        "command = [\"/bin/sh\", \"-c\", \"cat > /dev/null; sleep 0.2\"]\n");
    return path;
  }

  TempDir dir_;
  std::optional<ScratchDatabase> db_;
  std::unique_ptr<warp::migrations::testdb::Connection> conn_;
};

TEST_F(DaemonOnPostgres, RefusesAnUnmigratedDatabaseNamingBothVersionsWithExit78) {
  Warpd warpd(dir_.path(), {"--once", "--config", Config("pg-a").string()});
  EXPECT_EQ(warpd.Wait(), 78) << warpd.Err();
  EXPECT_NE(warpd.Err().find("schema is at version 0, this warpd needs version " +
                             std::to_string(warp::migrations::kExpectedSchemaVersion)),
            std::string::npos)
      << warpd.Err();
  EXPECT_NE(warpd.Err().find("warpctl migrate up"), std::string::npos) << warpd.Err();
}

TEST_F(DaemonOnPostgres, RefusesADatabaseNewerThanItsBuildWithExit78) {
  Migrate();
  const auto newer = std::to_string(warp::migrations::kExpectedSchemaVersion + 1);
  Sql(conn(), "INSERT INTO warp.schema_migrations (version, name, checksum) VALUES (" + newer +
                  ", 'future', repeat('0', 64))");
  Warpd warpd(dir_.path(), {"--once", "--config", Config("pg-a").string()});
  EXPECT_EQ(warpd.Wait(), 78) << warpd.Err();
  EXPECT_NE(warpd.Err().find("schema is at version " + newer), std::string::npos) << warpd.Err();
}

TEST_F(DaemonOnPostgres, OnceLeasesWithinBoundsDispatchesAndCompletes) {
  Migrate();
  Seed(4);
  Warpd warpd(dir_.path(), {"--once", "--config", Config("pg-a").string()});
  ASSERT_EQ(warpd.Wait(), 0) << warpd.Err();
  // Bounds 1 + 2 + 3: six dispatches in the one cycle, all completed and released; each agent
  // yields only the items its bound has room for, so nothing is deferred.
  EXPECT_EQ(Sql(conn(), "SELECT count(*) FROM warp.work_items WHERE state = 'done'"),
            std::vector<std::string>{"6"});
  EXPECT_EQ(Sql(conn(), "SELECT count(*) FROM warp.agent_leases WHERE released_at IS NULL"),
            std::vector<std::string>{"0"});
  EXPECT_EQ(Sql(conn(),
                "SELECT string_agg(decision || '=' || n, ',' ORDER BY decision) FROM "
                "(SELECT decision, count(*) n FROM warp.dispatch_decisions GROUP BY 1) d"),
            std::vector<std::string>{"dispatched=6"});
  EXPECT_EQ(Sql(conn(), "SELECT status FROM warp.scheduler_runs"),
            std::vector<std::string>{"completed"});
  // Fencing tokens 1..n per agent, in acquisition order.
  EXPECT_EQ(Sql(conn(),
                "SELECT count(*) FROM warp.agent_leases l WHERE fencing_token <> "
                "(SELECT count(*) FROM warp.agent_leases o WHERE o.agent_id = l.agent_id "
                "AND o.lease_id <= l.lease_id)"),
            std::vector<std::string>{"0"});
  EXPECT_EQ(Sql(conn(), "SELECT instance FROM warp.scheduler_instances"),
            std::vector<std::string>{"pg-a"});
}

TEST_F(DaemonOnPostgres, TwoInstancesInOneSlotRunTheCycleOnceAndDispatchNothingTwice) {
  Migrate();
  Seed(6);
  Warpd a(dir_.path(), {"--once", "--config", Config("pg-a").string()}, "a");
  Warpd b(dir_.path(), {"--once", "--config", Config("pg-b").string()}, "b");
  ASSERT_EQ(a.Wait(), 0) << a.Err();
  ASSERT_EQ(b.Wait(), 0) << b.Err();
  // One interval of an hour: both ticks fall in one slot, so one run owns the cycle.
  EXPECT_EQ(Sql(conn(), "SELECT count(*) FROM warp.scheduler_runs"), std::vector<std::string>{"1"});
  const bool a_ran = a.Err().find(" due=") != std::string::npos;
  const bool b_ran = b.Err().find(" due=") != std::string::npos;
  EXPECT_NE(a_ran, b_ran) << "exactly one instance ran the cycle:\n" << a.Err() << b.Err();
  EXPECT_EQ(Sql(conn(),
                "SELECT count(*) FROM (SELECT work_item_id FROM warp.agent_leases "
                "GROUP BY 1 HAVING count(*) > 1) twice"),
            std::vector<std::string>{"0"});
  EXPECT_EQ(Sql(conn(), "SELECT count(*) FROM warp.work_items WHERE state = 'done'"),
            std::vector<std::string>{"6"});
}

}  // namespace
