// warpctl end to end: the built binary against scratch databases of $WARP_TEST_DSN.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "migrations/testdb/scratch_database.hpp"
#include "tests/support/sockets.hpp"

namespace warp::warpctl {
namespace {

using testing::HasSubstr;
using warp::migrations::testdb::kNoTestDsn;
using warp::migrations::testdb::ScratchDatabase;
using warp::migrations::testdb::TestDsn;
using warp::test::ClosedPort;
using warp::test::SilentServer;

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

/// A fresh temporary directory, removed by the destructor.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "warpctl-test.XXXXXX").string();
    if (!::mkdtemp(pattern.data()))
      throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const fs::path& path() const { return path_; }
  fs::path Write(const std::string& name, const std::string& text) const {
    fs::create_directories((path_ / name).parent_path());
    std::ofstream(path_ / name, std::ios::binary | std::ios::trunc) << text;
    return path_ / name;
  }

 private:
  fs::path path_;
};

std::string ReadFile(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

/// What a warpctl run did.
struct Outcome {
  int exit_code = -1;  ///< -1 when killed by a signal (or by the 30 s guard)
  std::string out;
  std::string err;
  Clock::duration elapsed{};
};

/// A warpctl process started with `args`, its output going to files of `scratch`.
class WarpctlProcess {
 public:
  WarpctlProcess(const std::vector<std::string>& args, const fs::path& scratch) {
    static int counter = 0;
    const int n = ++counter;
    out_path_ = scratch / ("out." + std::to_string(n));
    err_path_ = scratch / ("err." + std::to_string(n));
    std::vector<std::string> argv_storage = {WARPCTL_PATH};
    argv_storage.insert(argv_storage.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_storage)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    started_ = Clock::now();
    pid_ = ::fork();
    if (pid_ == 0) {
      const int out = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      const int err = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      ::dup2(out, 1);
      ::dup2(err, 2);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }

  /// Waits for the exit (killing the process after 30 s: a hang is a failure).
  Outcome Wait() {
    Outcome outcome;
    int status = 0;
    for (;;) {
      const pid_t done = ::waitpid(pid_, &status, WNOHANG);
      if (done == pid_)
        break;
      if (Clock::now() - started_ > std::chrono::seconds(30))
        ::kill(pid_, SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    outcome.elapsed = Clock::now() - started_;
    outcome.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    outcome.out = ReadFile(out_path_);
    outcome.err = ReadFile(err_path_);
    return outcome;
  }

 private:
  pid_t pid_ = -1;
  Clock::time_point started_;
  fs::path out_path_;
  fs::path err_path_;
};

/// `text` as a TOML basic string.
std::string TomlString(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\')
      out += '\\';
    out += c;
  }
  return out + "\"";
}

class WarpctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(TestDsn().empty()) << kNoTestDsn;
    database_.emplace();
    migrations_ = dir_.path() / "migrations";
    dir_.Write("migrations/0001_one.sql", "CREATE TABLE t_log (v integer);\n");
    dir_.Write("migrations/0002_two.sql", "INSERT INTO t_log VALUES (2);\n");
    dir_.Write("migrations/README.md", "not a migration\n");
  }

  /// Runs warpctl with `args` (and nothing else).
  Outcome Run(const std::vector<std::string>& args) {
    return WarpctlProcess(args, dir_.path()).Wait();
  }
  /// Runs warpctl --dsn <scratch> --migrations <dir> `args`.
  Outcome RunOnDatabase(std::vector<std::string> args) {
    args.insert(args.begin(), {"--dsn", database_->dsn(), "--migrations", migrations_.string()});
    return Run(args);
  }

  std::optional<ScratchDatabase> database_;
  TempDir dir_;
  fs::path migrations_;
};

TEST_F(WarpctlTest, MigrateStatusUpVerifyOnAFreshDatabase) {
  Outcome status = RunOnDatabase({"migrate", "status"});
  ASSERT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr("VERSION  NAME  APPLIED_AT  CHECKSUM      STATE"));
  EXPECT_THAT(status.out,
              testing::ContainsRegex("0001     one   -           [0-9a-f]{12}  pending"));
  EXPECT_THAT(status.out, HasSubstr("database at version 0; migration files up to 2 (2 pending)"));

  const Outcome up = RunOnDatabase({"migrate", "up"});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  EXPECT_EQ(up.out, "applied 0001_one.sql\napplied 0002_two.sql\ndatabase at version 2\n");

  status = RunOnDatabase({"migrate"});  // status is the default
  ASSERT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out,
              testing::ContainsRegex(
                  "0002     two   [0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z  [0-9a-f]{12}  applied"));

  const Outcome verify = RunOnDatabase({"migrate", "verify"});
  EXPECT_EQ(verify.exit_code, 0) << verify.err;
  EXPECT_EQ(verify.err, "");

  const Outcome again = RunOnDatabase({"migrate", "up"});
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(again.out, "already up to date; database at version 2\n");
}

TEST_F(WarpctlTest, JsonIsOneDocumentWithTheStatusFields) {
  // --json after the subcommand works too.
  const Outcome up = RunOnDatabase({"migrate", "up", "--json"});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  const auto doc = nlohmann::json::parse(up.out);
  EXPECT_EQ(doc["command"], "migrate up");
  EXPECT_EQ(doc["ok"], true);
  EXPECT_EQ(doc["exit_code"], 0);
  EXPECT_EQ(doc["migrations_dir"], migrations_.string());
  EXPECT_TRUE(doc["build_schema_version"].is_number_integer());
  EXPECT_EQ(doc["database_version"], 2);
  EXPECT_EQ(doc["latest_version"], 2);
  EXPECT_EQ(doc["pending"], 0);
  ASSERT_EQ(doc["applied"].size(), 2u);
  EXPECT_EQ(doc["applied"][0]["version"], 1);
  EXPECT_EQ(doc["applied"][0]["name"], "one");
  EXPECT_EQ(doc["applied"][0]["checksum"].get<std::string>().size(), 64u);
  ASSERT_EQ(doc["migrations"].size(), 2u);
  const auto& m = doc["migrations"][1];
  EXPECT_EQ(m["version"], 2);
  EXPECT_EQ(m["name"], "two");
  EXPECT_EQ(m["state"], "applied");
  EXPECT_TRUE(std::regex_match(m["applied_at"].get<std::string>(),
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")));
  EXPECT_EQ(m["file"], (migrations_ / "0002_two.sql").string());
  EXPECT_TRUE(std::regex_match(m["file_checksum"].get<std::string>(), std::regex("[0-9a-f]{64}")));
  EXPECT_EQ(m["applied_checksum"], m["file_checksum"]);
  EXPECT_TRUE(doc["problems"].empty());

  const Outcome status = RunOnDatabase({"--json", "migrate", "status"});
  ASSERT_EQ(status.exit_code, 0) << status.err;
  const auto status_doc = nlohmann::json::parse(status.out);
  EXPECT_EQ(status_doc["command"], "migrate status");
  EXPECT_FALSE(status_doc.contains("applied"));
  EXPECT_EQ(status_doc["migrations"][0]["state"], "applied");
}

TEST_F(WarpctlTest, VerifyExitsOneNamingAnEditedFile) {
  ASSERT_EQ(RunOnDatabase({"migrate", "up"}).exit_code, 0);
  dir_.Write("migrations/0002_two.sql", "INSERT INTO t_log VALUES (22);\n");

  const Outcome verify = RunOnDatabase({"migrate", "verify"});
  EXPECT_EQ(verify.exit_code, 1);
  EXPECT_THAT(verify.err, HasSubstr("0002_two.sql: checksum changed"));
  EXPECT_THAT(verify.out, HasSubstr("modified"));

  const Outcome json = RunOnDatabase({"--json", "migrate", "verify"});
  EXPECT_EQ(json.exit_code, 1);
  const auto doc = nlohmann::json::parse(json.out);
  EXPECT_EQ(doc["ok"], false);
  ASSERT_EQ(doc["problems"].size(), 1u);
  EXPECT_EQ(doc["problems"][0]["kind"], "checksum_changed");
  EXPECT_EQ(doc["problems"][0]["version"], 2);

  // status shows the problem but is not a check: it exits 0.
  const Outcome status = RunOnDatabase({"migrate", "status"});
  EXPECT_EQ(status.exit_code, 0);
  EXPECT_THAT(status.out, HasSubstr("modified"));

  const Outcome up = RunOnDatabase({"migrate", "up"});
  EXPECT_EQ(up.exit_code, 1);
  EXPECT_THAT(up.err, HasSubstr("0002_two.sql"));
}

TEST_F(WarpctlTest, UpExitsOneWhenTheDatabaseIsNewerThanTheFiles) {
  ASSERT_EQ(RunOnDatabase({"migrate", "up"}).exit_code, 0);
  fs::remove(migrations_ / "0002_two.sql");

  const Outcome up = RunOnDatabase({"--json", "migrate", "up"});
  EXPECT_EQ(up.exit_code, 1);
  EXPECT_THAT(up.err, HasSubstr("0002_two.sql"));
  EXPECT_EQ(std::count(up.err.begin(), up.err.end(), '\n'), 1) << up.err;
  const auto doc = nlohmann::json::parse(up.out);
  EXPECT_EQ(doc["ok"], false);
  EXPECT_EQ(doc["exit_code"], 1);
  EXPECT_THAT(doc["error"].get<std::string>(), HasSubstr("newer than the newest migration file"));
  EXPECT_EQ(doc["migrations"][1]["state"], "newer");
}

TEST_F(WarpctlTest, FailingMigrationExitsOneNamingFileAndLine) {
  dir_.Write("migrations/0003_bad.sql", "SELECT 1;\nSELEC 2;\n");
  const Outcome up = RunOnDatabase({"migrate", "up"});
  EXPECT_EQ(up.exit_code, 1);
  EXPECT_THAT(up.err, HasSubstr("0003_bad.sql:2: syntax error"));
  const Outcome status = RunOnDatabase({"migrate", "status"});
  EXPECT_THAT(status.out, HasSubstr("database at version 2"));
}

TEST_F(WarpctlTest, ConfigSuppliesTheDsn) {
  const fs::path config = dir_.Write(
      "warpd.toml", "[store]\ndsn = " + TomlString(database_->dsn()) +
                        "\npassword_file = \"secrets/db-password\"\nconnect_timeout = \"3s\"\n");
  dir_.Write("secrets/db-password", "not-checked-by-trust-auth\n");
  const Outcome up =
      Run({"--config", config.string(), "--migrations", migrations_.string(), "migrate", "up"});
  EXPECT_EQ(up.exit_code, 0) << up.err;
  EXPECT_THAT(up.out, HasSubstr("database at version 2"));
  EXPECT_THAT(up.err + up.out, testing::Not(HasSubstr("not-checked-by-trust-auth")));
}

TEST_F(WarpctlTest, UnreachableDatabaseExits69) {
  const fs::path config = dir_.Write(
      "warpd.toml", "[store]\ndsn = \"host=127.0.0.1 port=" + std::to_string(ClosedPort()) +
                        " dbname=warp\"\nconnect_timeout = \"1s\"\n");
  const Outcome status =
      Run({"--config", config.string(), "--migrations", migrations_.string(), "migrate", "status"});
  EXPECT_EQ(status.exit_code, 69) << status.err;
  EXPECT_THAT(status.err, HasSubstr("database unreachable"));
  EXPECT_EQ(std::count(status.err.begin(), status.err.end(), '\n'), 1) << status.err;
  EXPECT_LT(status.elapsed, std::chrono::seconds(10));

  const Outcome json = Run({"--config", config.string(), "--migrations", migrations_.string(),
                            "--json", "migrate", "up"});
  EXPECT_EQ(json.exit_code, 69);
  const auto doc = nlohmann::json::parse(json.out);
  EXPECT_EQ(doc["ok"], false);
  EXPECT_EQ(doc["exit_code"], 69);
  EXPECT_THAT(doc["error"].get<std::string>(), HasSubstr("database unreachable"));
}

TEST_F(WarpctlTest, HungServerExits69AfterTheConnectTimeout) {
  SilentServer server;
  const fs::path config = dir_.Write(
      "warpd.toml", "[store]\ndsn = \"host=127.0.0.1 port=" + std::to_string(server.port()) +
                        " dbname=warp\"\nconnect_timeout = \"1s\"\n");
  const Outcome status =
      Run({"--config", config.string(), "--migrations", migrations_.string(), "migrate", "status"});
  EXPECT_EQ(status.exit_code, 69) << status.err;
  EXPECT_THAT(status.err, HasSubstr("database unreachable"));
  // libpq waits at least 2 s (it raises a 1 s connect_timeout to 2 s).
  EXPECT_LT(status.elapsed, std::chrono::seconds(10));
}

TEST_F(WarpctlTest, BadUsageExits64) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {},
           {"migrate", "sideways"},
           {"--bogus", "migrate"},
           {"frobnicate"},
           {"migrate", "up", "extra"},
           {"--config"},
       }) {
    const Outcome outcome = Run(args);
    EXPECT_EQ(outcome.exit_code, 64) << testing::PrintToString(args) << outcome.err;
    EXPECT_THAT(outcome.err, HasSubstr("warpctl: ")) << testing::PrintToString(args);
  }
  const Outcome help = Run({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("migrate"));
}

TEST_F(WarpctlTest, CheckConfigAcceptsAValidFile) {
  const fs::path config = dir_.Write("warpd.toml", "[store]\ndsn = \"dbname=warp\"\n");
  const Outcome check = Run({"check-config", config.string()});
  EXPECT_EQ(check.exit_code, 0) << check.err;
  EXPECT_EQ(check.out, config.string() + ": configuration ok\n");

  const Outcome json = Run({"--json", "--config", config.string(), "check-config"});
  EXPECT_EQ(json.exit_code, 0) << json.err;
  const auto doc = nlohmann::json::parse(json.out);
  EXPECT_EQ(doc["command"], "check-config");
  EXPECT_EQ(doc["ok"], true);
  EXPECT_EQ(doc["config"], config.string());
}

TEST_F(WarpctlTest, BadConfigurationExits78) {
  const fs::path bad = dir_.Write("bad.toml", "[store]\ndsn = \"dbname=warp\"\nbogus = 1\n");
  const Outcome check = Run({"check-config", bad.string()});
  EXPECT_EQ(check.exit_code, 78);
  EXPECT_THAT(check.err, HasSubstr(bad.string() + ":3:"));
  EXPECT_EQ(std::count(check.err.begin(), check.err.end(), '\n'), 1) << check.err;

  const Outcome json = Run({"--json", "check-config", bad.string()});
  EXPECT_EQ(json.exit_code, 78);
  EXPECT_EQ(nlohmann::json::parse(json.out)["exit_code"], 78);

  EXPECT_EQ(Run({"check-config", (dir_.path() / "missing.toml").string()}).exit_code, 78);
  EXPECT_EQ(Run({"--config", bad.string(), "migrate", "status"}).exit_code, 78);

  const fs::path memory = dir_.Write("memory.toml", "[store]\nbackend = \"memory\"\n");
  const Outcome no_database = Run({"--config", memory.string(), "migrate", "status"});
  EXPECT_EQ(no_database.exit_code, 78);
  EXPECT_THAT(no_database.err, HasSubstr("memory"));

  const fs::path no_password =
      dir_.Write("nopw.toml", "[store]\ndsn = " + TomlString(database_->dsn()) +
                                  "\npassword_file = \"/nonexistent/db-password\"\n");
  const Outcome password = Run({"--config", no_password.string(), "--migrations",
                                migrations_.string(), "migrate", "status"});
  EXPECT_EQ(password.exit_code, 78);
  EXPECT_THAT(password.err, HasSubstr("store.password_file"));

  const Outcome directory =
      Run({"--dsn", database_->dsn(), "--migrations", "/nonexistent/migrations", "migrate"});
  EXPECT_EQ(directory.exit_code, 78);
  EXPECT_THAT(directory.err, HasSubstr("/nonexistent/migrations"));
}

TEST_F(WarpctlTest, ConcurrentMigrateUpProcessesApplyEachFileOnce) {
  dir_.Write("migrations/0001_one.sql", "CREATE TABLE t_log (v integer);\nSELECT pg_sleep(0.3);\n");
  for (int v = 3; v <= 5; ++v)
    dir_.Write(fmt::format("migrations/{:04}_step.sql", v),
               fmt::format("INSERT INTO t_log VALUES ({});", v));
  const std::vector<std::string> args = {
      "--dsn", database_->dsn(), "--migrations", migrations_.string(), "migrate", "up"};
  std::vector<WarpctlProcess> processes;
  processes.reserve(3);
  for (int i = 0; i < 3; ++i)
    processes.emplace_back(args, dir_.path());
  std::string all;
  for (auto& p : processes) {
    const Outcome outcome = p.Wait();
    EXPECT_EQ(outcome.exit_code, 0) << outcome.err;
    all += outcome.out;
  }
  for (const std::string file : {"0001_one", "0002_two", "0003_step", "0004_step", "0005_step"}) {
    const std::string line = "applied " + file + ".sql\n";
    std::size_t count = 0;
    for (auto at = all.find(line); at != std::string::npos; at = all.find(line, at + 1))
      ++count;
    EXPECT_EQ(count, 1u) << file << " in:\n" << all;
  }
  const Outcome status = RunOnDatabase({"--json", "migrate", "verify"});
  EXPECT_EQ(status.exit_code, 0);
  EXPECT_EQ(nlohmann::json::parse(status.out)["database_version"], 5);
}

}  // namespace
}  // namespace warp::warpctl
