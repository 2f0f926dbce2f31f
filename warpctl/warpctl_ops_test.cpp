// warpctl's operator commands end to end: the built binary against a scratch database migrated
// with the project's migrations, a config file naming it, and (for the dispatcher guardrails)
// a real `warpd --once`.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "migrations/migrator.hpp"
#include "migrations/schema_version.hpp"
#include "migrations/testdb/scratch_database.hpp"
#include "tests/support/process.hpp"
#include "tests/support/sockets.hpp"

namespace {

using namespace warp::test;
using testing::HasSubstr;
using warp::migrations::testdb::ScratchDatabase;
using Json = nlohmann::json;

/// What a warpctl run did.
struct Outcome {
  int code = -1;
  std::string out;
  std::string err;
  std::chrono::steady_clock::duration elapsed{};
  Json json() const { return Json::parse(out); }
};

/// Runs the built warpctl with `args`; kills it after 30 s (a hang is a failure).
Outcome RunWarpctl(const fs::path& dir, const std::vector<std::string>& args) {
  static int counter = 0;
  const int n = ++counter;
  const fs::path out = dir / ("warpctl.out." + std::to_string(n));
  const fs::path err = dir / ("warpctl.err." + std::to_string(n));
  std::vector<std::string> argv{WARPCTL_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargv;
  for (auto& a : argv)
    cargv.push_back(a.data());
  cargv.push_back(nullptr);
  const auto started = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(o, 1);
    ::dup2(e, 2);
    ::execv(cargv[0], cargv.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() - started > 30s)
      ::kill(pid, SIGKILL);
    std::this_thread::sleep_for(5ms);
  }
  Outcome outcome;
  outcome.elapsed = std::chrono::steady_clock::now() - started;
  outcome.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  outcome.out = ReadFile(out);
  outcome.err = ReadFile(err);
  return outcome;
}

/// Runs `sql` and returns the first column of each row; throws on error.
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
    rows.emplace_back(PQgetisnull(r, i, 0) ? "NULL" : PQgetvalue(r, i, 0));
  PQclear(r);
  return rows;
}

/// The SQLSTATE `sql` fails with, or "" when it succeeds.
std::string SqlState(PGconn* conn, const std::string& sql) {
  PGresult* r = PQexec(conn, sql.c_str());
  const auto status = PQresultStatus(r);
  std::string state;
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    state = s ? s : "?";
  }
  PQclear(r);
  return state;
}

std::string One(PGconn* conn, const std::string& sql) {
  const auto rows = Sql(conn, sql);
  return rows.empty() ? "" : rows.front();
}

std::string OsUser() {
  const passwd* pw = ::getpwuid(::geteuid());
  return pw ? pw->pw_name : "";
}

const std::regex kRfc3339Micros(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)");

bool IsTime(const Json& value) {
  return value.is_string() && std::regex_match(value.get<std::string>(), kRfc3339Micros);
}

class WarpctlOps : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(warp::migrations::testdb::TestDsn().empty())
        << warp::migrations::testdb::kNoTestDsn;
    db_.emplace();
    conn_ = std::make_unique<warp::migrations::testdb::Connection>(db_->Connect());
    warp::migrations::Migrator migrator(fs::path(WARP_SOURCE_DIR) / "migrations");
    migrator.Up(conn());
    config_ = dir_.path() / "warpd.toml";
    WriteFile(config_,
              "[daemon]\ninstance = \"ops-a\"\nshutdown_grace = \"10s\"\n\n"
              "[store]\nbackend = \"postgres\"\ndsn = \"" +
                  db_->dsn() +
                  "\"\nconnect_timeout = \"2s\"\n\n[scheduler]\ninterval = \"1h\"\n\n"
                  "[runner.noop]\ntransport = \"null\"\n");
    Sql(conn(),
        "INSERT INTO warp.tool_profiles (tool_profile_id, capabilities, operations) "
        "VALUES ('erp-read', '{erp.read}', '{sync,report}')");
  }

  PGconn* conn() { return conn_->get(); }

  /// warpctl --config <the test's config> ARGS...
  Outcome Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {"--config", config_.string()});
    return RunWarpctl(dir_.path(), args);
  }

  /// Registers `slug` through warpctl (asserting success).
  void Register(const std::string& slug, const std::string& extra = "") {
    std::vector<std::string> args = {"agents",
                                     "register",
                                     slug,
                                     "--domain",
                                     "sales",
                                     "--runner",
                                     "noop",
                                     "--tool-profile",
                                     "erp-read",
                                     "--business-link",
                                     "spindle:req-" + slug};
    if (!extra.empty()) {
      args.push_back("--max-active");
      args.push_back(extra);
    }
    const auto r = Ctl(args);
    ASSERT_EQ(r.code, 0) << r.err;
  }

  int AuditCount(const std::string& event_type) {
    return std::stoi(One(
        conn(), "SELECT count(*) FROM warp.audit_events WHERE event_type = '" + event_type + "'"));
  }

  /// A dispatched item of `slug` with a live lease planted by SQL; returns {lease_id, token}.
  std::pair<std::string, std::string> PlantLease(const std::string& slug, const std::string& key) {
    const auto id =
        One(conn(), "SELECT agent_id FROM warp.agents WHERE agent_slug = '" + slug + "'");
    const auto token = One(conn(),
                           "UPDATE warp.agents SET fencing_counter = fencing_counter + 1 "
                           "WHERE agent_id = " +
                               id + " RETURNING fencing_counter");
    const auto item = One(conn(),
                          "INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, "
                          "max_attempts) VALUES (" +
                              id + ", 'sync', now(), '" + key + "', 3) RETURNING work_item_id");
    const auto lease = One(conn(),
                           "INSERT INTO warp.agent_leases (agent_id, work_item_id, fencing_token, "
                           "holder_instance, acquired_at, renewed_at, expires_at) VALUES (" +
                               id + ", " + item + ", " + token +
                               ", 'test', now(), now(), now() + interval '1 hour') "
                               "RETURNING lease_id");
    Sql(conn(), "UPDATE warp.work_items SET state = 'dispatched', attempts = 1, lease_id = " +
                    lease + " WHERE work_item_id = " + item);
    return {lease, token};
  }

  TempDir dir_;
  std::optional<ScratchDatabase> db_;
  std::unique_ptr<warp::migrations::testdb::Connection> conn_;
  fs::path config_;
};

TEST_F(WarpctlOps, EveryCommandHasHelp) {
  for (const auto& args : std::vector<std::vector<std::string>>{{"--help"},
                                                                {"status", "--help"},
                                                                {"agents", "--help"},
                                                                {"agents", "list", "--help"},
                                                                {"agents", "register", "--help"},
                                                                {"agents", "pause", "--help"},
                                                                {"agents", "resume", "--help"},
                                                                {"agents", "retire", "--help"},
                                                                {"enqueue", "--help"},
                                                                {"work", "list", "--help"},
                                                                {"leases", "--help"},
                                                                {"runs", "--help"},
                                                                {"observations", "--help"},
                                                                {"complete", "--help"},
                                                                {"audit", "leases", "--help"},
                                                                {"workspaces", "list", "--help"},
                                                                {"proposals", "list", "--help"},
                                                                {"migrate", "--help"},
                                                                {"check-config", "--help"}}) {
    const auto r = RunWarpctl(dir_.path(), args);
    EXPECT_EQ(r.code, 0) << args.front();
    EXPECT_THAT(r.out, HasSubstr("Usage")) << args.front();
  }
}

TEST_F(WarpctlOps, UsageErrorsExit64WithUsageOnStderr) {
  for (const auto& args :
       std::vector<std::vector<std::string>>{{},
                                             {"frobnicate"},
                                             {"agents"},
                                             {"agents", "register", "x"},
                                             {"enqueue", "only-agent"},
                                             {"work", "list", "--state", "sleeping"},
                                             {"observations", "--severity", "loud"},
                                             {"complete", "1", "2"},
                                             {"complete", "one", "2", "--outcome", "done"},
                                             {"runs", "--limit", "many"}}) {
    const auto r = Ctl(args);
    EXPECT_EQ(r.code, 64) << (args.empty() ? "" : args.front()) << r.err;
    EXPECT_THAT(r.err, HasSubstr("warpctl: "));
    EXPECT_EQ(r.out, "");
  }
}

TEST_F(WarpctlOps, RegisterListAndLifecycleChangesAreAudited) {
  Register("erp-sales", "2");
  auto list = Ctl({"agents", "list"});
  ASSERT_EQ(list.code, 0) << list.err;
  EXPECT_THAT(list.out,
              testing::ContainsRegex("SLUG +ID +DOMAIN +TOOL_PROFILE +RUNNER +LIFECYCLE"));
  EXPECT_THAT(list.out, testing::ContainsRegex("erp-sales +1 +sales +erp-read +noop +active +2 +0 "
                                               "+spindle:req-erp-sales"));
  auto json = Ctl({"--json", "agents", "list"}).json();
  EXPECT_EQ(json["command"], "agents list");
  EXPECT_EQ(json["ok"], true);
  ASSERT_EQ(json["agents"].size(), 1u);
  EXPECT_EQ(json["agents"][0]["agent_slug"], "erp-sales");
  EXPECT_EQ(json["agents"][0]["max_active_leases"], 2);
  EXPECT_EQ(json["agents"][0]["business_link"], "spindle:req-erp-sales");
  EXPECT_TRUE(IsTime(json["agents"][0]["created_at"]));

  auto pause = Ctl({"agents", "pause", "erp-sales"});
  EXPECT_EQ(pause.code, 0) << pause.err;
  EXPECT_EQ(pause.out, "agent erp-sales: active -> paused\n");
  auto again = Ctl({"agents", "pause", "erp-sales"});
  EXPECT_EQ(again.code, 0);
  EXPECT_THAT(again.out, HasSubstr("already paused"));
  EXPECT_EQ(Ctl({"agents", "resume", "erp-sales"}).code, 0);
  auto retire = Ctl({"--json", "agents", "retire", "erp-sales"});
  EXPECT_EQ(retire.code, 0) << retire.err;
  EXPECT_EQ(retire.json()["to"], "retired");
  auto resume = Ctl({"agents", "resume", "erp-sales"});
  EXPECT_EQ(resume.code, 1);
  EXPECT_THAT(resume.err, HasSubstr("retired for good"));
  EXPECT_EQ(One(conn(), "SELECT lifecycle FROM warp.agents"), "retired");

  // One row per change, in order, by the OS user; the no-op pause and the refusal wrote none.
  EXPECT_EQ(Sql(conn(),
                "SELECT event_type || ' ' || subject || ' ' || actor || ' ' || "
                "coalesce(detail->>'to', detail->>'lifecycle') "
                "FROM warp.audit_events ORDER BY event_id"),
            (std::vector<std::string>{"agent.register agent:erp-sales " + OsUser() + " active",
                                      "agent.pause agent:erp-sales " + OsUser() + " paused",
                                      "agent.resume agent:erp-sales " + OsUser() + " active",
                                      "agent.retire agent:erp-sales " + OsUser() + " retired"}));
  EXPECT_EQ(One(conn(),
                "SELECT detail->>'business_link' FROM warp.audit_events "
                "WHERE event_type = 'agent.register'"),
            "spindle:req-erp-sales");
}

TEST_F(WarpctlOps, RegisterRefusesBadInputNamingTheFieldAndWritesNothing) {
  Register("taken");
  struct Case {
    std::vector<std::string> args;
    int code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"Bad_Slug", "--business-link", "s:1"}, 65, "warpctl: slug: 'Bad_Slug' is not a valid"},
      {{"ok-slug", "--business-link", "  "}, 65, "warpctl: business-link: a persistent agent"},
      {{"ok-slug", "--business-link", "s:1", "--runner", "ghost"},
       65,
       "warpctl: runner: no runner 'ghost'"},
      {{"ok-slug", "--business-link", "s:1", "--tool-profile", "nope"},
       65,
       "warpctl: tool-profile: no tool profile 'nope'"},
      {{"ok-slug", "--business-link", "s:1", "--max-active", "0"}, 65, "warpctl: max-active:"},
      {{"taken", "--business-link", "s:1"}, 1, "warpctl: agent 'taken' already exists"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = {"agents", "register"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    // Defaults for what the case does not set (CLI11 takes the last value of an option).
    std::map<std::string, std::string> defaults = {
        {"--domain", "d"}, {"--runner", "noop"}, {"--tool-profile", "erp-read"}};
    for (const auto& [option, value] : defaults) {
      if (std::find(c.args.begin(), c.args.end(), option) == c.args.end()) {
        args.push_back(option);
        args.push_back(value);
      }
    }
    const auto r = Ctl(args);
    EXPECT_EQ(r.code, c.code) << c.message << ": " << r.err;
    EXPECT_THAT(r.err, testing::StartsWith(c.message));
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  const auto json = Ctl({"--json", "agents", "register", "Bad_Slug", "--domain", "d", "--runner",
                         "noop", "--tool-profile", "erp-read", "--business-link", "s"});
  EXPECT_EQ(json.code, 65);
  EXPECT_EQ(json.json()["ok"], false);
  EXPECT_EQ(json.json()["exit_code"], 65);
  EXPECT_THAT(json.json()["error"].get<std::string>(), HasSubstr("slug:"));
  EXPECT_EQ(One(conn(), "SELECT count(*) FROM warp.agents"), "1");
  EXPECT_EQ(AuditCount("agent.register"), 1);
}

TEST_F(WarpctlOps, TheDatabaseRefusesAnAgentWithoutABusinessLink) {
  const std::string insert =
      "INSERT INTO warp.agents (agent_slug, tool_profile_id, runner, business_link) "
      "VALUES ('raw', 'erp-read', 'noop', ";
  EXPECT_EQ(SqlState(conn(), insert + "NULL)"), "23502");
  EXPECT_EQ(SqlState(conn(), insert + "'')"), "23514");
  EXPECT_EQ(SqlState(conn(), insert + "'   ')"), "23514");
  EXPECT_EQ(SqlState(conn(),
                     "INSERT INTO warp.agents (agent_slug, tool_profile_id, runner) "
                     "VALUES ('raw', 'erp-read', 'noop')"),
            "23502");
  Register("linked");
  EXPECT_EQ(SqlState(conn(),
                     "UPDATE warp.agents SET business_link = '' WHERE agent_slug = "
                     "'linked'"),
            "23514");
}

TEST_F(WarpctlOps, EnqueueValidatesEveryFieldAndIsIdempotentByKey) {
  Register("erp-sales");
  const auto first = Ctl({"enqueue", "erp-sales", "sync", "--payload", R"({"full":true})", "--key",
                          "k-1", "--priority", "3", "--due", "2030-01-02T03:04:05Z"});
  ASSERT_EQ(first.code, 0) << first.err;
  EXPECT_THAT(first.out, testing::MatchesRegex("enqueued work item [0-9]+ for erp-sales \\(kind "
                                               "sync, key k-1, due 2030-01-02T03:04:05Z\\)\n"));
  const auto repeat =
      Ctl({"--json", "enqueue", "erp-sales", "sync", "--payload", "{}", "--key", "k-1"});
  ASSERT_EQ(repeat.code, 0) << repeat.err;
  const auto doc = repeat.json();
  EXPECT_EQ(doc["created"], false);
  EXPECT_EQ(doc["work_item"]["idempotency_key"], "k-1");
  EXPECT_EQ(doc["work_item"]["state"], "pending");
  EXPECT_EQ(doc["work_item"]["due_at"], "2030-01-02T03:04:05.000000Z");
  EXPECT_THAT(Ctl({"enqueue", "erp-sales", "sync", "--key", "k-1"}).out,
              HasSubstr("already exists with key k-1"));
  const auto other_kind = Ctl({"enqueue", "erp-sales", "report", "--key", "k-1"});
  EXPECT_EQ(other_kind.code, 1);
  EXPECT_THAT(other_kind.err, HasSubstr("key: idempotency key 'k-1' already names work item"));

  const std::string big = R"({"x":")" + std::string(70000, 'a') + R"("})";
  struct Case {
    std::vector<std::string> args;
    std::string field;
  };
  for (const auto& c : std::vector<Case>{
           {{"Erp", "sync"}, "agent"},
           {{"ghost", "sync"}, "agent"},
           {{"erp-sales", "two words"}, "kind"},
           {{"erp-sales", "sync", "--payload", "[1,2]"}, "payload"},
           {{"erp-sales", "sync", "--payload", "{not json"}, "payload"},
           {{"erp-sales", "sync", "--payload", big}, "payload"},
           {{"erp-sales", "sync", "--due", "tomorrow"}, "due"},
           {{"erp-sales", "sync", "--due", "2030-13-45T00:00:00Z"}, "due"},
           {{"erp-sales", "sync", "--key", ""}, "key"},
           {{"erp-sales", "sync", "--max-attempts", "0"}, "max-attempts"},
       }) {
    std::vector<std::string> args = {"enqueue"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const auto r = Ctl(args);
    EXPECT_EQ(r.code, 65) << c.field << ": " << r.err;
    EXPECT_THAT(r.err, testing::StartsWith("warpctl: " + c.field + ": ")) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  // A kind outside the tool profile is accepted with a warning (the dispatcher skips it).
  const auto outside = Ctl({"enqueue", "erp-sales", "delete-everything"});
  EXPECT_EQ(outside.code, 0) << outside.err;
  EXPECT_THAT(outside.err, HasSubstr("skipped_capability"));
  EXPECT_EQ(Ctl({"agents", "retire", "erp-sales"}).code, 0);
  const auto retired = Ctl({"enqueue", "erp-sales", "sync"});
  EXPECT_EQ(retired.code, 1);
  EXPECT_THAT(retired.err, HasSubstr("retired"));

  EXPECT_EQ(One(conn(), "SELECT count(*) FROM warp.work_items"), "2");
  EXPECT_EQ(AuditCount("work.enqueue"), 2);
  EXPECT_EQ(One(conn(),
                "SELECT detail->>'idempotency_key' || ' ' || actor || ' ' || subject "
                "= 'k-1 " +
                    OsUser() +
                    " work:' || (SELECT min(work_item_id) FROM "
                    "warp.work_items) FROM warp.audit_events WHERE event_type = "
                    "'work.enqueue' ORDER BY event_id LIMIT 1"),
            "t");
}

TEST_F(WarpctlOps, CompleteGoesThroughCompleteWorkAndRefusesStaleHolders) {
  Register("erp-sales");
  const auto [lease, token] = PlantLease("erp-sales", "w-1");
  const auto stale =
      Ctl({"complete", lease, std::to_string(std::stoll(token) + 1), "--outcome", "done"});
  EXPECT_EQ(stale.code, 1);
  EXPECT_THAT(stale.err, testing::MatchesRegex("warpctl: refused: lease [0-9]+ with fencing "
                                               "token [0-9]+ does not exist.*\n"));
  EXPECT_EQ(Ctl({"complete", lease, token, "--outcome", "done", "--detail", "[1]"}).code, 65);
  const auto done =
      Ctl({"--json", "complete", lease, token, "--outcome", "done", "--detail", R"({"rows":12})"});
  ASSERT_EQ(done.code, 0) << done.err;
  const auto doc = done.json();
  EXPECT_EQ(doc["completion"]["verdict"], "accepted");
  EXPECT_EQ(doc["completion"]["state"], "done");
  EXPECT_EQ(doc["completion"]["lease_id"], std::stoll(lease));
  EXPECT_EQ(One(conn(), "SELECT state FROM warp.work_items"), "done");
  EXPECT_EQ(One(conn(), "SELECT release_reason FROM warp.agent_leases"), "completed");
  const auto again = Ctl({"--json", "complete", lease, token, "--outcome", "failed"});
  EXPECT_EQ(again.code, 1);
  EXPECT_THAT(again.err, HasSubstr("refused: lease " + lease + " was already released"));
  EXPECT_EQ(again.json()["ok"], false);
  EXPECT_EQ(again.json()["completion"]["verdict"], "released");
  EXPECT_EQ(One(conn(), "SELECT state FROM warp.work_items"), "done");
  // Every attempt is audited with the OS user; warp.complete_work records the refusals too.
  EXPECT_EQ(Sql(conn(),
                "SELECT detail->>'verdict' FROM warp.audit_events WHERE event_type = "
                "'work.complete' AND actor = '" +
                    OsUser() + "' ORDER BY event_id"),
            (std::vector<std::string>{"unknown_lease", "accepted", "released"}));
  EXPECT_EQ(AuditCount("completion_refused"), 2);
}

TEST_F(WarpctlOps, ListsFilterPageAndPrintJson) {
  Register("erp-sales");
  Register("erp-hr");
  for (int i = 0; i < 5; ++i)
    ASSERT_EQ(Ctl({"enqueue", "erp-sales", "sync", "--key", "s-" + std::to_string(i)}).code, 0);
  ASSERT_EQ(Ctl({"enqueue", "erp-hr", "report", "--key", "h-0"}).code, 0);
  PlantLease("erp-hr", "h-leased");

  auto page1 = Ctl({"--json", "work", "list", "--agent", "erp-sales", "--limit", "2"}).json();
  ASSERT_EQ(page1["work_items"].size(), 2u);
  EXPECT_EQ(page1["work_items"][0]["idempotency_key"], "s-4");
  EXPECT_EQ(page1["work_items"][0]["payload"], Json::object());
  EXPECT_TRUE(IsTime(page1["work_items"][0]["due_at"]));
  ASSERT_TRUE(page1["next_before"].is_number_integer());
  auto page3 = Ctl({"--json", "work", "list", "--agent", "erp-sales", "--limit", "2", "--before",
                    std::to_string(page1["next_before"].get<int>() - 2)})
                   .json();
  ASSERT_EQ(page3["work_items"].size(), 1u);
  EXPECT_EQ(page3["work_items"][0]["idempotency_key"], "s-0");
  EXPECT_TRUE(page3["next_before"].is_null());
  const auto text = Ctl({"work", "list", "--limit", "2"});
  EXPECT_THAT(text.out, testing::ContainsRegex("ID +AGENT +KIND +STATE +PRIORITY +DUE"));
  EXPECT_THAT(text.out, HasSubstr("(more: warpctl ... --before "));
  EXPECT_EQ(Ctl({"--json", "work", "list", "--state", "dispatched"}).json()["work_items"].size(),
            1u);
  EXPECT_EQ(Ctl({"work", "list", "--agent", "nobody"}).code, 65);
  EXPECT_EQ(Ctl({"work", "list", "--limit", "0"}).code, 65);

  auto leases = Ctl({"--json", "leases", "--active"}).json();
  ASSERT_EQ(leases["leases"].size(), 1u);
  EXPECT_EQ(leases["leases"][0]["agent_slug"], "erp-hr");
  EXPECT_EQ(leases["leases"][0]["state"], "active");
  EXPECT_TRUE(IsTime(leases["leases"][0]["expires_at"]));
  EXPECT_TRUE(leases["leases"][0]["released_at"].is_null());
  EXPECT_EQ(Ctl({"--json", "leases", "--agent", "erp-sales"}).json()["leases"].size(), 0u);
  EXPECT_THAT(Ctl({"leases"}).out, testing::ContainsRegex("LEASE +AGENT +TOKEN +HOLDER"));

  Sql(conn(),
      "INSERT INTO warp.scheduler_runs (cycle_id, \"group\", instance, status, "
      "started_at, heartbeat_at, finished_at, counts) VALUES "
      "('c1', 'default', 'ops-a', 'completed', now(), now(), now(), "
      "'{\"dispatched\": 2, \"deferred\": 0}'), "
      "('c2', 'default', 'ops-a', 'running', now(), now(), NULL, '{}')");
  auto runs = Ctl({"--json", "runs", "--limit", "1"}).json();
  ASSERT_EQ(runs["runs"].size(), 1u);
  EXPECT_EQ(runs["runs"][0]["cycle_id"], "c2");
  EXPECT_TRUE(runs["runs"][0]["finished_at"].is_null());
  EXPECT_FALSE(runs["next_before"].is_null());
  EXPECT_THAT(Ctl({"runs"}).out, testing::ContainsRegex("c1 +default +ops-a +completed .* "
                                                        "dispatched=2"));

  Sql(conn(),
      "INSERT INTO warp.watchdog_observations (kind, subject, agent_id, severity, "
      "evidence, first_seen, last_seen, resolved_at) VALUES "
      "('agent_unresponsive', 'agent:erp-hr', 2, 'warning', '{\"n\": 1}', now(), now(), "
      "NULL), ('cycle_missed', 'group:default', NULL, 'critical', '{}', now(), now(), "
      "now())");
  auto open = Ctl({"--json", "observations", "--open"}).json();
  ASSERT_EQ(open["observations"].size(), 1u);
  EXPECT_EQ(open["observations"][0]["agent_slug"], "erp-hr");
  EXPECT_EQ(open["observations"][0]["evidence"]["n"], 1);
  EXPECT_EQ(Ctl({"--json", "observations", "--severity", "critical"}).json()["observations"].size(),
            1u);
  EXPECT_EQ(Ctl({"--json", "observations", "--agent", "erp-sales"}).json()["observations"].size(),
            0u);

  Sql(conn(),
      "INSERT INTO warp.workspaces (path, agent_id, retention_policy, retain_until) "
      "VALUES ('/srv/ws/sales', 1, 'keep-30d', now() - interval '1 day'), "
      "('/srv/ws/hr', 2, 'keep-1y', now() + interval '1 day')");
  auto ws = Ctl({"--json", "workspaces", "list"}).json();
  ASSERT_EQ(ws["workspaces"].size(), 2u);
  EXPECT_EQ(ws["workspaces"][0]["retention_state"], "retained");
  EXPECT_EQ(ws["workspaces"][1]["retention_state"], "overdue");
  EXPECT_THAT(Ctl({"workspaces", "list", "--agent", "erp-sales"}).out,
              testing::ContainsRegex("/srv/ws/sales +erp-sales +active +keep-30d .* overdue"));

  Sql(conn(),
      "INSERT INTO warp.learning_proposals (agent_id, title, review_status) VALUES "
      "(1, 'prefer batch sync', 'proposed'), (2, 'new report', 'approved')");
  auto pending = Ctl({"--json", "proposals", "list", "--status", "proposed"}).json();
  ASSERT_EQ(pending["proposals"].size(), 1u);
  EXPECT_EQ(pending["proposals"][0]["pending_review"], true);
  EXPECT_EQ(pending["proposals"][0]["agent_slug"], "erp-sales");
  EXPECT_THAT(Ctl({"proposals", "list"}).out,
              testing::ContainsRegex("erp-hr +approved .* new report"));
}

TEST_F(WarpctlOps, StatusReportsEverySection) {
  Register("erp-sales");
  ASSERT_EQ(Ctl({"enqueue", "erp-sales", "sync"}).code, 0);
  Sql(conn(),
      "INSERT INTO warp.scheduler_instances (instance, \"group\", host, pid, version, "
      "started_at, heartbeat_at) VALUES ('ops-a', 'default', 'h1', 42, '0.1.0', now(), "
      "now())");
  Sql(conn(),
      "INSERT INTO warp.scheduler_runs (cycle_id, \"group\", instance, status, "
      "started_at, heartbeat_at, finished_at) VALUES ('c1', 'default', 'ops-a', "
      "'completed', now(), now(), now())");
  Sql(conn(),
      "INSERT INTO warp.watchdog_observations (kind, subject, severity, first_seen, "
      "last_seen) VALUES ('cycle_missed', 'group:default', 'critical', now(), now())");
  const auto text = Ctl({"status"});
  ASSERT_EQ(text.code, 0) << text.err;
  for (const char* section : {"INSTANCES", "RECENT CYCLES", "ACTIVE LEASES  0 on 0 agent(s)",
                              "BACKLOG", "OPEN OBSERVATIONS  critical 1, warning 0, info 0"})
    EXPECT_THAT(text.out, HasSubstr(section));
  EXPECT_THAT(text.out, testing::ContainsRegex("ops-a +default +h1 +42 +0.1.0"));
  EXPECT_THAT(text.out, testing::ContainsRegex("pending +1 +1 "));
  const auto doc = Ctl({"status", "--json"}).json();
  EXPECT_EQ(doc["schema_version"], warp::migrations::kExpectedSchemaVersion);
  EXPECT_TRUE(IsTime(doc["database_time"]));
  EXPECT_EQ(doc["instances"][0]["instance"], "ops-a");
  EXPECT_EQ(doc["recent_cycles"][0]["cycle_id"], "c1");
  EXPECT_EQ(doc["backlog"]["pending"]["items"], 1);
  EXPECT_EQ(doc["active_leases"]["leases"], 0);
  EXPECT_EQ(doc["open_observations"]["critical"], 1);
}

TEST_F(WarpctlOps, StoreDownExits69AfterTheConnectTimeoutNotAHang) {
  const std::string dsn =
      "host=127.0.0.1 port=" + std::to_string(ClosedPort()) + " dbname=warp connect_timeout=2";
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"--dsn", dsn, "status"},
                                             {"--dsn", dsn, "--json", "agents", "list"},
                                             {"--dsn", dsn, "enqueue", "erp-sales", "sync"},
                                             {"--dsn", dsn, "audit", "leases"}}) {
    const auto r = RunWarpctl(dir_.path(), args);
    EXPECT_EQ(r.code, 69) << r.err;
    EXPECT_THAT(r.err, testing::StartsWith("warpctl: database unreachable"));
    EXPECT_LT(r.elapsed, 10s);
  }
  const auto json = RunWarpctl(dir_.path(), {"--dsn", dsn, "--json", "status"});
  EXPECT_EQ(json.json()["exit_code"], 69);
}

TEST_F(WarpctlOps, AHungServerExits69AfterTheConfiguredConnectTimeout) {
  SilentServer server;
  const auto config = dir_.path() / "hung.toml";
  WriteFile(config, "[store]\nbackend = \"postgres\"\ndsn = \"host=127.0.0.1 port=" +
                        std::to_string(server.port()) +
                        " dbname=warp\"\nconnect_timeout = \"2s\"\n");
  const auto r = RunWarpctl(dir_.path(), {"--config", config.string(), "--json", "status"});
  EXPECT_EQ(r.code, 69) << r.err;
  EXPECT_THAT(r.err, testing::StartsWith("warpctl: database unreachable"));
  EXPECT_EQ(r.json()["exit_code"], 69);
  EXPECT_GE(r.elapsed, 1500ms);
  EXPECT_LT(r.elapsed, 10s);
}

TEST_F(WarpctlOps, OperatorCommandsNeedThePostgresStoreButCheckConfigTakesTheMemoryOne) {
  const auto config = dir_.path() / "memory.toml";
  WriteFile(config, "[store]\nbackend = \"memory\"\n\n[runner.noop]\ntransport = \"null\"\n");
  const auto status = RunWarpctl(dir_.path(), {"--config", config.string(), "status"});
  EXPECT_EQ(status.code, 78);
  EXPECT_THAT(status.err, HasSubstr("store.backend is \"memory\""));
  const auto check = RunWarpctl(dir_.path(), {"--config", config.string(), "check-config"});
  EXPECT_EQ(check.code, 0) << check.err;
  EXPECT_THAT(check.out, HasSubstr("configuration ok"));
  const auto broken = dir_.path() / "broken.toml";
  WriteFile(broken, "[store]\nbackend = \"memory\"\nbogus = 1\n");
  EXPECT_EQ(RunWarpctl(dir_.path(), {"--config", broken.string(), "agents", "list"}).code, 78);
}

TEST_F(WarpctlOps, ChangesPrintOneJsonDocument) {
  const auto reg = Ctl({"--json", "agents", "register", "erp-sales", "--domain", "sales",
                        "--runner", "noop", "--tool-profile", "erp-read", "--business-link",
                        "spindle:req-1", "--display-name", "ERP sales"});
  ASSERT_EQ(reg.code, 0) << reg.err;
  const auto agent = reg.json();
  EXPECT_EQ(agent["command"], "agents register");
  EXPECT_EQ(agent["ok"], true);
  EXPECT_EQ(agent["agent"]["agent_slug"], "erp-sales");
  EXPECT_EQ(agent["agent"]["display_name"], "ERP sales");
  EXPECT_TRUE(agent["agent"]["max_active_leases"].is_null());
  const auto enq = Ctl({"enqueue", "erp-sales", "sync", "--json", "--payload", R"({"a":[1,2]})"});
  ASSERT_EQ(enq.code, 0) << enq.err;
  const auto work = enq.json();
  EXPECT_EQ(work["created"], true);
  EXPECT_EQ(work["work_item"]["state"], "pending");
  EXPECT_EQ(work["work_item"]["max_attempts"], 5);
  EXPECT_THAT(work["work_item"]["idempotency_key"].get<std::string>(),
              testing::StartsWith("warpctl:"));
  EXPECT_TRUE(IsTime(work["work_item"]["due_at"]));
  EXPECT_TRUE(work["warnings"].empty());
  const auto pause = Ctl({"--json", "agents", "pause", "erp-sales"}).json();
  EXPECT_EQ(pause["from"], "active");
  EXPECT_EQ(pause["to"], "paused");
  EXPECT_EQ(pause["changed"], true);
  EXPECT_EQ(Ctl({"agents", "pause", "nobody"}).code, 65);
}

TEST_F(WarpctlOps, AuditLeasesPassesAcleanHistoryAndCatchesPlantedViolations) {
  Register("erp-sales");
  Register("erp-hr", "2");
  PlantLease("erp-sales", "a");
  PlantLease("erp-hr", "b");
  PlantLease("erp-hr", "c");
  const auto clean = Ctl({"audit", "leases"});
  EXPECT_EQ(clean.code, 0) << clean.out << clean.err;
  EXPECT_EQ(clean.out, "checked 3 lease(s) of 2 agent(s): 0 violation(s) of the lease invariant\n");

  // A second live lease on erp-sales (bound 1), planted behind the dispatcher's back, and a
  // token that goes backwards on erp-hr (5, then 3).
  Sql(conn(),
      "INSERT INTO warp.agent_leases (agent_id, fencing_token, holder_instance, "
      "acquired_at, renewed_at, expires_at) SELECT 1, 9, 'rogue', now() + interval '1s', "
      "now() + interval '1s', now() + interval '1 hour'");
  Sql(conn(), "UPDATE warp.agents SET fencing_counter = 9 WHERE agent_id = 1");
  for (const auto& [token, hours] : std::vector<std::pair<int, int>>{{5, 2}, {3, 3}})
    Sql(conn(),
        "INSERT INTO warp.agent_leases (agent_id, fencing_token, holder_instance, "
        "acquired_at, renewed_at, expires_at, released_at) SELECT 2, " +
            std::to_string(token) + ", 'old', now() + interval '" + std::to_string(hours) +
            " hours', now() + interval '" + std::to_string(hours) + " hours', now() + interval '" +
            std::to_string(hours) + " hours 1 minute', now() + interval '" + std::to_string(hours) +
            " hours 1 second'");
  Sql(conn(), "UPDATE warp.agents SET fencing_counter = 5 WHERE agent_id = 2");
  const auto found = Ctl({"audit", "leases"});
  EXPECT_EQ(found.code, 1);
  EXPECT_THAT(found.out, HasSubstr("VIOLATION bound_exceeded agent erp-sales (id 1)"));
  EXPECT_THAT(found.out, HasSubstr("\"holder\":\"rogue\""));
  EXPECT_THAT(found.out, HasSubstr("VIOLATION fencing_not_increasing agent erp-hr (id 2)"));
  EXPECT_THAT(found.err, HasSubstr("2 violation(s)"));
  const auto doc = Ctl({"--json", "audit", "leases"}).json();
  EXPECT_EQ(doc["ok"], false);
  EXPECT_EQ(doc["exit_code"], 1);
  ASSERT_EQ(doc["violations"].size(), 2u);
  const auto& bound = doc["violations"][0];
  EXPECT_EQ(bound["violation"], "bound_exceeded");
  EXPECT_EQ(bound["evidence"]["bound"], 1);
  EXPECT_EQ(bound["evidence"]["live"], 2);
  EXPECT_TRUE(IsTime(bound["evidence"]["leases"][1]["acquired_at"]));
  // With a default bound of 2 (erp-sales has none of its own), two live leases are fine.
  EXPECT_EQ(
      Ctl({"--json", "audit", "leases", "--default-max-active", "2"}).json()["violations"].size(),
      1u);
}

TEST_F(WarpctlOps, DispatcherSkipsPausedRetiredAndOutOfProfileWorkAndNeverLeasesRetired) {
  Register("ok-agent");
  Register("wiper");
  Register("paused-agent");
  Register("retired-agent");
  for (const auto& [agent, kind] : std::vector<std::pair<std::string, std::string>>{
           {"ok-agent", "sync"},
           {"wiper", "wipe"},  // not an operation of erp-read
           {"paused-agent", "sync"},
           {"retired-agent", "sync"}})
    ASSERT_EQ(Ctl({"enqueue", agent, kind, "--key", agent + "-" + kind}).code, 0);
  ASSERT_EQ(Ctl({"agents", "pause", "paused-agent"}).code, 0);
  ASSERT_EQ(Ctl({"agents", "retire", "retired-agent"}).code, 0);

  Warpd warpd(dir_.path(), {"--once", "--config", config_.string()});
  ASSERT_EQ(warpd.Wait(), 0) << warpd.Err();
  EXPECT_EQ(Sql(conn(),
                "SELECT w.idempotency_key || '=' || d.decision FROM "
                "warp.dispatch_decisions d JOIN warp.work_items w USING (work_item_id) "
                "ORDER BY 1"),
            (std::vector<std::string>{
                "ok-agent-sync=dispatched", "paused-agent-sync=skipped_paused",
                "retired-agent-sync=skipped_paused", "wiper-wipe=skipped_capability"}));
  EXPECT_EQ(Sql(conn(),
                "SELECT a.agent_slug FROM warp.agent_leases l JOIN warp.agents a "
                "USING (agent_id)"),
            std::vector<std::string>{"ok-agent"});
  // The database refuses a lease of a retired agent, whoever writes it.
  EXPECT_EQ(SqlState(conn(),
                     "INSERT INTO warp.agent_leases (agent_id, fencing_token, "
                     "holder_instance, acquired_at, renewed_at, expires_at) SELECT "
                     "agent_id, 1, 'x', now(), now(), now() + interval '1 minute' FROM "
                     "warp.agents WHERE agent_slug = 'retired-agent'"),
            "P0001");
  const auto audit = Ctl({"audit", "leases"});
  EXPECT_EQ(audit.code, 0) << audit.out;
}

}  // namespace
