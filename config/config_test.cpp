#include "config/config.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace warp::config {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;
using testing::HasSubstr;

// Most tests write [store] last so that the positions they assert start at line 1.
constexpr std::string_view kMemoryStore = "\n[store]\nbackend = \"memory\"\n";

Settings LoadMemory(std::string_view toml) {
  return LoadString(std::string(toml) + std::string(kMemoryStore), "test.toml");
}

/// The error loading `toml` (followed by a memory [store]) raises.
ConfigError ErrorOf(std::string_view toml, bool with_memory_store = true) {
  const std::string text = std::string(toml) + (with_memory_store ? std::string(kMemoryStore) : "");
  try {
    LoadString(text, "test.toml");
  } catch (const ConfigError& e) {
    return e;
  }
  ADD_FAILURE() << "no ConfigError for:\n" << text;
  return ConfigError("", -1, -1, "", "");
}

void ExpectError(const ConfigError& e, int line, int column, std::string_view key,
                 std::string_view message_part) {
  EXPECT_EQ(e.file(), "test.toml");
  EXPECT_EQ(e.line(), line) << e.what();
  EXPECT_EQ(e.column(), column) << e.what();
  EXPECT_EQ(e.key(), key) << e.what();
  EXPECT_THAT(e.message(), HasSubstr(std::string(message_part))) << e.what();
  EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
}

/// A file that fails to load, and the error it must raise: one test each, named `name`.
struct ErrorCase {
  std::string_view name;
  std::string toml;  ///< followed by a memory [store] unless `with_memory_store` is false
  int line;
  int column;
  std::string_view key;
  std::string_view message_part;
  bool with_memory_store = true;
};

void PrintTo(const ErrorCase& c, std::ostream* out) {
  *out << c.name;
}

std::string CaseName(const testing::TestParamInfo<ErrorCase>& info) {
  return std::string(info.param.name);
}

class LoadErrorTest : public testing::TestWithParam<ErrorCase> {};

TEST_P(LoadErrorTest, RaisesTheErrorAtLineColumnAndKey) {
  const ErrorCase& c = GetParam();
  ExpectError(ErrorOf(c.toml, c.with_memory_store), c.line, c.column, c.key, c.message_part);
}

// --- durations --------------------------------------------------------------------------------

TEST(ParseDurationTest, AcceptsEveryUnitAndCombinedGroups) {
  const std::vector<std::pair<std::string_view, milliseconds>> cases{
      {"0s", milliseconds(0)}, {"250ms", milliseconds(250)},
      {"10s", seconds(10)},    {"5m", minutes(5)},
      {"1h", hours(1)},        {"7d", hours(24 * 7)},
      {"1h30m", minutes(90)},  {"1m30s500ms", milliseconds(90'500)},
      {"90m", minutes(90)},    {"2d12h", hours(60)},
      {"007s", seconds(7)},    {"9223372036854775807ms", milliseconds::max()},
  };
  for (const auto& [text, expected] : cases) {
    EXPECT_EQ(ParseDuration(text), expected) << text;
  }
}

TEST(ParseDurationTest, RejectsMalformedText) {
  for (const std::string_view text : {"", "10", "s", "ms", "-1s", "+1s", "1.5s", "1 s", " 1s",
                                      "1s ", "1x", "1S", "1sm", "1hh", "h1", "1s5", "1,5s"}) {
    EXPECT_EQ(ParseDuration(text), std::nullopt) << '"' << text << '"';
  }
}

TEST(ParseDurationTest, RejectsOverflow) {
  EXPECT_EQ(ParseDuration("9223372036854775808ms"), std::nullopt);
  EXPECT_EQ(ParseDuration("106751991167301d"), std::nullopt);
  EXPECT_EQ(ParseDuration("9223372036854775807ms1ms"), std::nullopt);
  EXPECT_EQ(ParseDuration("99999999999999999999999s"), std::nullopt);
}

TEST(FormatDurationTest, RendersTheShortestExactText) {
  const std::vector<std::pair<milliseconds, std::string_view>> cases{
      {milliseconds(0), "0s"},
      {milliseconds(90'000), "1m30s"},
      {milliseconds(250), "250ms"},
      {milliseconds(1'500), "1s500ms"},
      {seconds(10), "10s"},
      {hours(1), "1h"},
      {hours(24), "1d"},
      {hours(24 * 7), "7d"},
      {hours(24) + milliseconds(1), "1d1ms"},
      {minutes(-90), "-1h30m"},
  };
  for (const auto& [value, expected] : cases) {
    EXPECT_EQ(FormatDuration(value), expected) << value.count();
  }
}

TEST(FormatDurationTest, RoundTripsThroughParseDuration) {
  for (const milliseconds value :
       {milliseconds(1), milliseconds(59'999), milliseconds(3'723'004), milliseconds::max()}) {
    EXPECT_EQ(ParseDuration(FormatDuration(value)), value) << value.count();
  }
}

// --- error format -----------------------------------------------------------------------------

TEST(ConfigErrorTest, WhatIsFileLineColumnKeyMessage) {
  const ConfigError e("warpd.toml", 3, 15, "leasing.renew_every", "must be less");
  EXPECT_STREQ(e.what(), "warpd.toml:3:15: leasing.renew_every: must be less");
  EXPECT_EQ(e.file(), "warpd.toml");
  EXPECT_EQ(e.line(), 3);
  EXPECT_EQ(e.column(), 15);
  EXPECT_EQ(e.key(), "leasing.renew_every");
  EXPECT_EQ(e.message(), "must be less");
}

TEST(ConfigErrorTest, WhatOmitsAnEmptyKeyAndStaysOnOneLine) {
  const ConfigError e("warpd.toml", 2, 5, "", "first\nsecond");
  EXPECT_STREQ(e.what(), "warpd.toml:2:5: first second");
}

TEST(LoadStringTest, TomlSyntaxErrorNamesPositionWithoutKey) {
  const ConfigError e = ErrorOf("[daemon]\ngroup = = \"g\"\n");
  EXPECT_EQ(e.line(), 2);
  EXPECT_EQ(e.column(), 9);
  EXPECT_EQ(e.key(), "");
  EXPECT_THAT(e.what(), testing::StartsWith("test.toml:2:9: "));
}

TEST(LoadStringTest, DuplicateTomlKeyIsASyntaxError) {
  const ConfigError e = ErrorOf("[daemon]\ngroup = \"a\"\ngroup = \"b\"\n");
  EXPECT_EQ(e.line(), 3);
  EXPECT_EQ(e.key(), "");
}

// --- defaults ---------------------------------------------------------------------------------

TEST(DefaultsTest, EverySectionHasItsDocumentedDefaults) {
  const Settings s = LoadMemory("");
  EXPECT_EQ(s.source, "test.toml");

  EXPECT_EQ(s.daemon.group, "default");
  EXPECT_EQ(s.daemon.shutdown_grace, seconds(30));

  EXPECT_EQ(s.store.backend, StoreBackend::kMemory);
  EXPECT_EQ(s.store.dsn, "");
  EXPECT_EQ(s.store.password_file, "");
  EXPECT_EQ(s.store.connect_timeout, seconds(5));
  EXPECT_EQ(s.store.fixtures, "");

  EXPECT_EQ(s.scheduler.interval, seconds(10));
  EXPECT_EQ(s.scheduler.jitter, seconds(0));
  EXPECT_EQ(s.scheduler.max_dispatch_per_cycle, 1000);
  EXPECT_EQ(s.scheduler.max_inflight, 64);
  EXPECT_EQ(s.scheduler.takeover_after, seconds(30));
  EXPECT_EQ(s.scheduler.retry_backoff, seconds(10));
  EXPECT_EQ(s.scheduler.retry_backoff_max, minutes(10));
  EXPECT_EQ(s.scheduler.max_attempts, 5);

  EXPECT_EQ(s.leasing.ttl, seconds(60));
  EXPECT_EQ(s.leasing.renew_every, seconds(20));
  EXPECT_EQ(s.leasing.default_max_active, 1);

  EXPECT_EQ(s.watchdog.interval, seconds(30));
  EXPECT_TRUE(s.watchdog.disabled_rules.empty());
  EXPECT_EQ(s.watchdog.backlog_age_warning, minutes(5));
  EXPECT_EQ(s.watchdog.backlog_age_critical, minutes(30));
  EXPECT_DOUBLE_EQ(s.watchdog.cycle_overrun_factor, 2.0);
  EXPECT_EQ(s.watchdog.cycle_missed_after, 3);
  EXPECT_EQ(s.watchdog.failure_streak, 3);
  EXPECT_EQ(s.watchdog.agent_unresponsive_after, minutes(15));
  EXPECT_EQ(s.watchdog.instance_stale_after, minutes(2));
  EXPECT_EQ(s.watchdog.store_latency_warning, milliseconds(500));
  EXPECT_EQ(s.watchdog.clock_skew_warning, seconds(2));
  EXPECT_EQ(s.watchdog.proposal_review_stale_after, hours(24 * 7));

  EXPECT_EQ(s.log.level, "info");
  EXPECT_EQ(s.log.format, LogFormat::kAuto);

  EXPECT_TRUE(s.runners.empty());
  EXPECT_TRUE(s.schedules.empty());
}

TEST(DefaultsTest, StoreBackendDefaultsToPostgres) {
  const Settings s = LoadString("[store]\ndsn = \"dbname=warp\"\n", "test.toml");
  EXPECT_EQ(s.store.backend, StoreBackend::kPostgres);
  EXPECT_EQ(s.store.dsn, "dbname=warp");
}

TEST(DefaultsTest, InstanceDefaultsToTheHostName) {
  std::array<char, 256> host{};
  ASSERT_EQ(::gethostname(host.data(), host.size() - 1), 0);
  const Settings s = LoadMemory("");
  EXPECT_EQ(s.daemon.instance, InstanceNameFromHost(host.data()));
  EXPECT_THAT(s.daemon.instance, testing::MatchesRegex("[a-z0-9-]+"));
  EXPECT_LE(s.daemon.instance.size(), 63u);
}

TEST(DefaultsTest, InstanceNameFromHostLowerCasesReplacesAndTruncates) {
  EXPECT_EQ(InstanceNameFromHost("warp-a"), "warp-a");
  EXPECT_EQ(InstanceNameFromHost("Build-Host.Example.COM"), "build-host-example-com");
  EXPECT_EQ(InstanceNameFromHost("db_1"), "db-1");
  EXPECT_EQ(InstanceNameFromHost(std::string(100, 'h')), std::string(63, 'h'));
  EXPECT_EQ(InstanceNameFromHost(""), "warpd");
}

TEST(DefaultsTest, TakeoverAfterDefaultsToThreeIntervals) {
  const Settings s = LoadMemory("[scheduler]\ninterval = \"20s\"\n");
  EXPECT_EQ(s.scheduler.takeover_after, seconds(60));
}

TEST(DefaultsTest, ExplicitTakeoverAfterIsKept) {
  const Settings s = LoadMemory("[scheduler]\ninterval = \"20s\"\ntakeover_after = \"25s\"\n");
  EXPECT_EQ(s.scheduler.takeover_after, seconds(25));
}

TEST(DefaultsTest, RelativeFixturesPathResolvesAgainstTheConfigDirectory) {
  const Settings s = LoadString("[store]\nbackend = \"memory\"\nfixtures = \"fx/demo.toml\"\n",
                                "/etc/warp/warpd.toml");
  EXPECT_EQ(s.store.fixtures, std::filesystem::path("/etc/warp/fx/demo.toml"));
}

TEST(DefaultsTest, AbsoluteFixturesPathIsKept) {
  const Settings s = LoadString("[store]\nbackend = \"memory\"\nfixtures = \"/srv/fx.toml\"\n",
                                "/etc/warp/warpd.toml");
  EXPECT_EQ(s.store.fixtures, std::filesystem::path("/srv/fx.toml"));
}

TEST(DefaultsTest, RelativeExecProgramResolvesAgainstTheConfigDirectoryAndBareNamesUsePath) {
  const Settings s = LoadString(
      "[runner.a]\ntransport = \"exec\"\ncommand = [\"agents/a.sh\", \"x/y\"]\n"
      "[runner.b]\ntransport = \"exec\"\ncommand = [\"python3\", \"-c\", \"pass\"]\n"
      "[runner.c]\ntransport = \"exec\"\ncommand = [\"/usr/bin/true\"]\n"
      "[store]\nbackend = \"memory\"\n",
      "/etc/warp/warpd.toml");
  EXPECT_EQ(s.runners.at("a").command, (std::vector<std::string>{"/etc/warp/agents/a.sh", "x/y"}));
  EXPECT_EQ(s.runners.at("b").command.front(), "python3");
  EXPECT_EQ(s.runners.at("c").command.front(), "/usr/bin/true");
}

// --- Load from a file -------------------------------------------------------------------------

class LoadFileTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(testing::TempDir()) /
           ("warp_config_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::filesystem::path Write(const std::string& name, std::string_view text) {
    const auto path = dir_ / name;
    std::ofstream(path) << text;
    return path;
  }

  std::filesystem::path dir_;
};

TEST_F(LoadFileTest, ReadsTheFileAndResolvesFixturesNextToIt) {
  const auto path =
      Write("warpd.toml", "[store]\nbackend = \"memory\"\nfixtures = \"fixtures.toml\"\n");
  const Settings s = Load(path);
  EXPECT_EQ(s.source, path);
  EXPECT_EQ(s.store.fixtures, dir_ / "fixtures.toml");
}

TEST_F(LoadFileTest, ErrorsNameTheFile) {
  const auto path =
      Write("bad.toml", "[leasing]\nttl = \"1 minute\"\n[store]\nbackend = \"memory\"\n");
  try {
    Load(path);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.file(), path.string());
    EXPECT_EQ(e.line(), 2);
    EXPECT_EQ(e.column(), 7);
    EXPECT_THAT(e.what(), testing::StartsWith(path.string() + ":2:7: leasing.ttl: "));
  }
}

TEST_F(LoadFileTest, MissingFileReportsTheOsErrorAtLineZero) {
  const auto path = dir_ / "absent.toml";
  try {
    Load(path);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.line(), 0);
    EXPECT_EQ(e.column(), 0);
    EXPECT_THAT(e.what(), testing::StartsWith(path.string() + ":0:0: "));
    EXPECT_THAT(e.message(), HasSubstr(std::strerror(ENOENT)));
  }
}

TEST_F(LoadFileTest, DirectoryReportsTheOsError) {
  try {
    Load(dir_);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.line(), 0);
    EXPECT_EQ(e.column(), 0);
    EXPECT_THAT(e.message(), HasSubstr(std::strerror(EISDIR)));
  }
}

// --- a complete file --------------------------------------------------------------------------

constexpr std::string_view kFullConfig = R"([daemon]
instance = "warp-a"
group = "default"
shutdown_grace = "30s"

[store]
backend = "postgres"
dsn = "host=/run/postgresql dbname=warp application_name=warpd"
password_file = ""
connect_timeout = "5s"
fixtures = ""

[scheduler]
interval = "10s"
jitter = "0s"
max_dispatch_per_cycle = 1000
max_inflight = 64
takeover_after = "30s"
retry_backoff = "10s"
retry_backoff_max = "10m"
max_attempts = 5

[leasing]
ttl = "60s"
renew_every = "20s"
default_max_active = 1

[watchdog]
interval = "30s"
disabled_rules = []
backlog_age_warning = "5m"
backlog_age_critical = "30m"
cycle_overrun_factor = 2.0
cycle_missed_after = 3
failure_streak = 3
agent_unresponsive_after = "15m"
instance_stale_after = "2m"
store_latency_warning = "500ms"
clock_skew_warning = "2s"
proposal_review_stale_after = "7d"

[log]
level = "info"
format = "auto"

[runner.erp-agent]
transport = "exec"
command = ["/usr/lib/warp/agents/erp-agent", "--once"]
timeout = "10m"

[runner.hook]
transport = "http"
url = "http://127.0.0.1:8080/dispatch"

[runner.listen]
transport = "notify"

[runner.noop]
transport = "null"

[[schedule]]
name = "erp-sales-sync"
agents = ["erp-sales"]
every = "15m"
kind = "sync"
payload = { full = false }
misfire = "run_once"
)";

TEST(FullConfigTest, SpecExampleLoadsEveryKey) {
  const Settings s = LoadString(kFullConfig, "warpd.toml");
  EXPECT_EQ(s.daemon.instance, "warp-a");
  EXPECT_EQ(s.daemon.group, "default");
  EXPECT_EQ(s.daemon.shutdown_grace, seconds(30));
  EXPECT_EQ(s.store.backend, StoreBackend::kPostgres);
  EXPECT_EQ(s.store.dsn, "host=/run/postgresql dbname=warp application_name=warpd");
  EXPECT_EQ(s.store.password_file, "");
  EXPECT_EQ(s.store.connect_timeout, seconds(5));
  EXPECT_EQ(s.store.fixtures, "");
  EXPECT_EQ(s.scheduler.interval, seconds(10));
  EXPECT_EQ(s.scheduler.takeover_after, seconds(30));
  EXPECT_EQ(s.scheduler.retry_backoff_max, minutes(10));
  EXPECT_EQ(s.scheduler.max_attempts, 5);
  EXPECT_EQ(s.leasing.renew_every, seconds(20));
  EXPECT_EQ(s.watchdog.proposal_review_stale_after, hours(24 * 7));
  EXPECT_EQ(s.watchdog.store_latency_warning, milliseconds(500));
  EXPECT_EQ(s.log.level, "info");
  EXPECT_EQ(s.log.format, LogFormat::kAuto);

  ASSERT_EQ(s.runners.size(), 4u);
  const RunnerSettings& exec = s.runners.at("erp-agent");
  EXPECT_EQ(exec.name, "erp-agent");
  EXPECT_EQ(exec.transport, Transport::kExec);
  EXPECT_EQ(exec.command, (std::vector<std::string>{"/usr/lib/warp/agents/erp-agent", "--once"}));
  EXPECT_EQ(exec.timeout, minutes(10));
  EXPECT_EQ(exec.kill_grace, seconds(10));
  EXPECT_EQ(s.runners.at("hook").transport, Transport::kHttp);
  EXPECT_EQ(s.runners.at("hook").url, "http://127.0.0.1:8080/dispatch");
  EXPECT_EQ(s.runners.at("listen").transport, Transport::kNotify);
  EXPECT_EQ(s.runners.at("listen").channel, "warp_dispatch");
  EXPECT_EQ(s.runners.at("noop").transport, Transport::kNull);

  ASSERT_EQ(s.schedules.size(), 1u);
  const ScheduleSettings& schedule = s.schedules[0];
  EXPECT_EQ(schedule.name, "erp-sales-sync");
  EXPECT_EQ(schedule.agents, std::vector<std::string>{"erp-sales"});
  EXPECT_EQ(schedule.domain, "");
  EXPECT_EQ(schedule.every, minutes(15));
  EXPECT_EQ(schedule.cron, "");
  EXPECT_EQ(schedule.kind, "sync");
  EXPECT_EQ(schedule.payload_json, R"({"full":false})");
  EXPECT_EQ(schedule.misfire, Misfire::kRunOnce);
}

TEST(FullConfigTest, NonDefaultValuesAreCompiled) {
  const Settings s = LoadMemory(R"([daemon]
instance = "warp-b-2"
group = "batch"
shutdown_grace = "0s"

[scheduler]
interval = "1m"
jitter = "5s"
max_dispatch_per_cycle = 10
max_inflight = 2
retry_backoff = "30s"
retry_backoff_max = "1h"
max_attempts = 9

[leasing]
ttl = "2m"
renew_every = "30s"
default_max_active = 3

[watchdog]
interval = "1m"
disabled_rules = ["clock_skew", "cycle_overrun"]
backlog_age_warning = "1h"
backlog_age_critical = "1d"
cycle_overrun_factor = 3
cycle_missed_after = 5
failure_streak = 4

[log]
level = "debug"
format = "json"
)");
  EXPECT_EQ(s.daemon.instance, "warp-b-2");
  EXPECT_EQ(s.daemon.group, "batch");
  EXPECT_EQ(s.daemon.shutdown_grace, seconds(0));
  EXPECT_EQ(s.scheduler.interval, minutes(1));
  EXPECT_EQ(s.scheduler.jitter, seconds(5));
  EXPECT_EQ(s.scheduler.max_dispatch_per_cycle, 10);
  EXPECT_EQ(s.scheduler.max_inflight, 2);
  EXPECT_EQ(s.scheduler.takeover_after, minutes(3));
  EXPECT_EQ(s.scheduler.retry_backoff, seconds(30));
  EXPECT_EQ(s.scheduler.retry_backoff_max, hours(1));
  EXPECT_EQ(s.scheduler.max_attempts, 9);
  EXPECT_EQ(s.leasing.ttl, minutes(2));
  EXPECT_EQ(s.leasing.renew_every, seconds(30));
  EXPECT_EQ(s.leasing.default_max_active, 3);
  EXPECT_EQ(s.watchdog.interval, minutes(1));
  EXPECT_EQ(s.watchdog.disabled_rules, (std::vector<std::string>{"clock_skew", "cycle_overrun"}));
  EXPECT_EQ(s.watchdog.backlog_age_critical, hours(24));
  EXPECT_DOUBLE_EQ(s.watchdog.cycle_overrun_factor, 3.0);
  EXPECT_EQ(s.watchdog.cycle_missed_after, 5);
  EXPECT_EQ(s.watchdog.failure_streak, 4);
  EXPECT_EQ(s.log.level, "debug");
  EXPECT_EQ(s.log.format, LogFormat::kJson);
}

TEST(FullConfigTest, RunnersOfAllFourTransportsKeepTheirOwnKeys) {
  const Settings s = LoadString(R"([runner.erp]
transport = "exec"
command = ["/usr/bin/env", "", "x"]
timeout = "90s"
kill_grace = "0s"

[runner.hook]
transport = "http"
url = "https://agents.example/dispatch"
timeout = "5s"
headers = { X-Tenant = "sales", "X-Trace" = "on" }
bearer_token_file = "secrets/hook-token"

[runner.listen]
transport = "notify"
channel = "warp_erp"
timeout = "2m"

[runner.noop]
transport = "null"

[store]
backend = "postgres"
dsn = "dbname=warp"
)",
                                "/etc/warp/warpd.toml");
  ASSERT_EQ(s.runners.size(), 4u);
  EXPECT_EQ(s.runners.at("erp").command, (std::vector<std::string>{"/usr/bin/env", "", "x"}));
  EXPECT_EQ(s.runners.at("erp").timeout, seconds(90));
  EXPECT_EQ(s.runners.at("erp").kill_grace, seconds(0));
  EXPECT_EQ(s.runners.at("hook").url, "https://agents.example/dispatch");
  EXPECT_EQ(s.runners.at("hook").timeout, seconds(5));
  EXPECT_EQ(s.runners.at("hook").headers,
            (std::map<std::string, std::string>{{"X-Tenant", "sales"}, {"X-Trace", "on"}}));
  EXPECT_EQ(s.runners.at("hook").bearer_token_file, "/etc/warp/secrets/hook-token");
  EXPECT_EQ(s.runners.at("listen").channel, "warp_erp");
  EXPECT_EQ(s.runners.at("listen").timeout, minutes(2));
  EXPECT_EQ(s.runners.at("noop").name, "noop");
  EXPECT_EQ(s.runners.at("noop").transport, Transport::kNull);
}

TEST(FullConfigTest, SchedulesTakeEveryOrCronAndAgentsOrDomain) {
  const Settings s = LoadMemory(R"([[schedule]]
name = "by-interval"
agents = ["erp-sales", "erp-buy"]
every = "1h30m"
kind = "sync"

[[schedule]]
name = "by-cron"
domain = "sales"
cron = "*/15 9-17 * * mon-fri"
kind = "report"
payload = { depth = 2, tags = ["a", "b"], nested = { ok = true, ratio = 0.5 } }
misfire = "skip"
)");
  ASSERT_EQ(s.schedules.size(), 2u);
  EXPECT_EQ(s.schedules[0].name, "by-interval");
  EXPECT_EQ(s.schedules[0].agents, (std::vector<std::string>{"erp-sales", "erp-buy"}));
  EXPECT_EQ(s.schedules[0].every, minutes(90));
  EXPECT_EQ(s.schedules[0].cron, "");
  EXPECT_EQ(s.schedules[0].payload_json, "{}");
  EXPECT_EQ(s.schedules[0].misfire, Misfire::kRunOnce);
  EXPECT_EQ(s.schedules[1].name, "by-cron");
  EXPECT_TRUE(s.schedules[1].agents.empty());
  EXPECT_EQ(s.schedules[1].domain, "sales");
  EXPECT_EQ(s.schedules[1].every, std::nullopt);
  EXPECT_EQ(s.schedules[1].cron, "*/15 9-17 * * mon-fri");
  EXPECT_EQ(s.schedules[1].kind, "report");
  EXPECT_EQ(s.schedules[1].payload_json,
            R"({"depth":2,"nested":{"ok":true,"ratio":0.5},"tags":["a","b"]})");
  EXPECT_EQ(s.schedules[1].misfire, Misfire::kSkip);
}

// --- unknown keys -----------------------------------------------------------------------------

const ErrorCase kUnknownKeyCases[] = {
    {"UnknownTopLevelTableIsRejectedAtItsName", "[deamon]\ninstance = \"a\"\n", 1, 2, "deamon",
     "unknown key"},
    {"UnknownTopLevelKeyIsRejected", "interval = \"10s\"\n", 1, 1, "interval", "unknown key"},
    {"UnknownKeyInASectionIsRejectedAtTheKey", "[leasing]\nttl = \"60s\"\n  renew = \"10s\"\n", 3,
     3, "leasing.renew", "unknown key"},
    {"FirstUnknownKeyInDocumentOrderIsReported", "[log]\nzzz = 1\naaa = 2\n", 2, 1, "log.zzz",
     "unknown key"},
    {"UnknownKeyInARunnerIsRejected", R"([runner.demo]
transport = "exec"
command = ["/bin/true"]
comand = ["/bin/false"]
)",
     4, 1, "runner.demo.comand", "unknown key"},
    {"UnknownKeyInAScheduleIsRejected", R"([[schedule]]
name = "a"
domain = "sales"
evry = "1m"
kind = "sync"
)",
     4, 1, "schedule[0].evry", "unknown key"},
};
INSTANTIATE_TEST_SUITE_P(UnknownKeyTest, LoadErrorTest, testing::ValuesIn(kUnknownKeyCases),
                         CaseName);

// --- wrong types ------------------------------------------------------------------------------

const ErrorCase kWrongTypeCases[] = {
    {"StringForAnIntegerIsRejectedAtTheValue", "[scheduler]\nmax_inflight = \"64\"\n", 2, 16,
     "scheduler.max_inflight", "expected an integer, found a string"},
    {"IntegerForADurationIsRejected", "[scheduler]\ninterval = 10\n", 2, 12, "scheduler.interval",
     "expected a duration string"},
    {"SectionThatIsNotATableIsRejected", "daemon = 1\n", 1, 10, "daemon",
     "expected a table, found an integer"},
    {"NonStringInAStringArrayIsRejectedAtTheElement",
     "[watchdog]\ndisabled_rules = [\"clock_skew\", 7]\n", 2, 33, "watchdog.disabled_rules[1]",
     "expected a string, found an integer"},
    {"RunnerThatIsNotATableIsRejected", "[runner]\ndemo = \"exec\"\n", 2, 8, "runner.demo",
     "expected a table, found a string"},
    {"ScheduleThatIsNotAnArrayOfTablesIsRejected", "[schedule]\nname = \"a\"\n", 1, 1, "schedule",
     "expected an array of tables ([[schedule]])"},
    {"FloatForACountIsRejected", "[leasing]\ndefault_max_active = 1.5\n", 2, 22,
     "leasing.default_max_active", "expected an integer, found a float"},
};
INSTANTIATE_TEST_SUITE_P(WrongTypeTest, LoadErrorTest, testing::ValuesIn(kWrongTypeCases),
                         CaseName);

// --- malformed and out-of-range values --------------------------------------------------------

const ErrorCase kValueCases[] = {
    {"MalformedDurationIsRejected", "[leasing]\nttl = \"60 s\"\n", 2, 7, "leasing.ttl",
     "malformed duration"},
    {"NegativeDurationIsRejected", "[daemon]\nshutdown_grace = \"-5s\"\n", 2, 18,
     "daemon.shutdown_grace", "malformed duration"},
    {"SchedulerIntervalBelowOneSecondIsRejected", "[scheduler]\ninterval = \"500ms\"\n", 2, 12,
     "scheduler.interval", "must be at least 1s"},
    {"SchedulerIntervalAboveOneDayIsRejected", "[scheduler]\ninterval = \"25h\"\n", 2, 12,
     "scheduler.interval", "must be at most 1d"},
    {"ZeroPeriodIsRejected", "[watchdog]\ninterval = \"0s\"\n", 2, 12, "watchdog.interval",
     "must be more than 0s"},
    {"ZeroCountIsRejected", "[scheduler]\nmax_attempts = 0\n", 2, 16, "scheduler.max_attempts",
     "must be at least 1"},
    {"NegativeCountIsRejected", "[leasing]\ndefault_max_active = -1\n", 2, 22,
     "leasing.default_max_active", "must be at least 1"},
    {"CountBeyondIntIsRejected", "[watchdog]\nfailure_streak = 4294967296\n", 2, 18,
     "watchdog.failure_streak", "must be at most 2147483647"},
    {"InstanceOutsideTheAllowedCharactersIsRejected", "[daemon]\ninstance = \"Warp_A\"\n", 2, 12,
     "daemon.instance", "must match [a-z0-9-]{1,63}"},
    {"InstanceLongerThan63IsRejected", "[daemon]\ninstance = \"" + std::string(64, 'a') + "\"\n", 2,
     12, "daemon.instance", "must match"},
    {"EmptyGroupIsRejected", "[daemon]\ngroup = \"\"\n", 2, 9, "daemon.group", "must not be empty"},
    {"UnknownLogLevelIsRejected", "[log]\nlevel = \"verbose\"\n", 2, 9, "log.level",
     "must be one of trace, debug, info, warn, error, critical"},
    {"UnknownLogFormatIsRejected", "[log]\nlevel = \"warn\"\nformat = \"xml\"\n", 3, 10,
     "log.format", "must be one of auto, journal, text, json"},
    {"UnknownStoreBackendIsRejected", "[store]\nbackend = \"sqlite\"\n", 2, 11, "store.backend",
     "must be one of postgres, memory", /*with_memory_store=*/false},
    {"UnknownWatchdogRuleIsRejectedAtTheElement",
     "[watchdog]\ndisabled_rules = [\"cycle_missed\", \"nap_time\"]\n", 2, 35,
     "watchdog.disabled_rules[1]", "unknown watchdog rule \"nap_time\""},
    {"CycleOverrunFactorBelowOneIsRejected", "[watchdog]\ncycle_overrun_factor = 0.5\n", 2, 24,
     "watchdog.cycle_overrun_factor", "at least 1.0"},
};
INSTANTIATE_TEST_SUITE_P(ValueTest, LoadErrorTest, testing::ValuesIn(kValueCases), CaseName);

TEST(ValueTest, SchedulerIntervalBoundsAreAccepted) {
  EXPECT_EQ(LoadMemory("[scheduler]\ninterval = \"1s\"\n").scheduler.interval, seconds(1));
  EXPECT_EQ(LoadMemory("[scheduler]\ninterval = \"24h\"\n").scheduler.interval, hours(24));
}

// --- inconsistent pairs -----------------------------------------------------------------------

const ErrorCase kPairCases[] = {
    {"RenewEveryOfHalfTheTtlIsRejectedAtRenewEvery",
     "[leasing]\nttl = \"60s\"\nrenew_every = \"30s\"\n", 3, 15, "leasing.renew_every",
     "must be less than leasing.ttl / 2"},
    {"TtlTooShortForTheDefaultRenewEveryIsRejectedAtTtl", "[leasing]\nttl = \"40s\"\n", 2, 7,
     "leasing.ttl", "must be more than twice leasing.renew_every (20s)"},
    {"JitterNotBelowIntervalIsRejected", "[scheduler]\ninterval = \"10s\"\njitter = \"10s\"\n", 3,
     10, "scheduler.jitter", "must be less than scheduler.interval (10s)"},
    {"RetryBackoffMaxBelowRetryBackoffIsRejected",
     "[scheduler]\nretry_backoff = \"5m\"\nretry_backoff_max = \"1m\"\n", 3, 21,
     "scheduler.retry_backoff_max", "must be at least scheduler.retry_backoff (5m)"},
    {"RetryBackoffAboveTheDefaultMaxIsRejectedAtRetryBackoff",
     "[scheduler]\nretry_backoff = \"1h\"\n", 2, 17, "scheduler.retry_backoff",
     "must be at most scheduler.retry_backoff_max (10m)"},
    {"BacklogCriticalNotAboveWarningIsRejected",
     "[watchdog]\nbacklog_age_warning = \"10m\"\nbacklog_age_critical = \"10m\"\n", 3, 24,
     "watchdog.backlog_age_critical", "must be more than watchdog.backlog_age_warning (10m)"},
    // No dsn for postgres, but the malformed duration is what the operator fixes first.
    {"ErrorsOfSingleKeysComeBeforeInconsistentPairs", "[leasing]\nttl = \"1 minute\"\n", 2, 7,
     "leasing.ttl", "malformed duration", /*with_memory_store=*/false},
    {"PostgresWithoutDsnPointsAtTheStoreTable",
     "[daemon]\ngroup = \"g\"\n\n[store]\nconnect_timeout = \"5s\"\n", 4, 1, "store.dsn",
     "required when store.backend is \"postgres\"", /*with_memory_store=*/false},
    {"PostgresWithoutStoreTablePointsAtTheStartOfTheFile", "[daemon]\ngroup = \"g\"\n", 1, 1,
     "store.dsn", "required when store.backend is \"postgres\"", /*with_memory_store=*/false},
    {"PostgresWithEmptyDsnPointsAtTheDsn", "[store]\ndsn = \"\"\n", 2, 7, "store.dsn",
     "must not be empty", /*with_memory_store=*/false},
};
INSTANTIATE_TEST_SUITE_P(PairTest, LoadErrorTest, testing::ValuesIn(kPairCases), CaseName);

TEST(PairTest, RenewEveryJustBelowHalfTheTtlIsAccepted) {
  const Settings s = LoadMemory("[leasing]\nttl = \"60s\"\nrenew_every = \"29999ms\"\n");
  EXPECT_EQ(s.leasing.renew_every, milliseconds(29'999));
}

TEST(PairTest, TakeoverAfterShorterThanTheIntervalIsAllowed) {
  // A 1 h cycle whose owner died is taken over after 30 s, within its own slot.
  const Settings s = LoadMemory("[scheduler]\ninterval = \"1h\"\ntakeover_after = \"30s\"\n");
  EXPECT_EQ(s.scheduler.takeover_after, seconds(30));
}

// --- runners ----------------------------------------------------------------------------------

const ErrorCase kRunnerCases[] = {
    {"MissingTransportIsRejectedAtTheRunnerTable", "[runner.demo]\ncommand = [\"/bin/true\"]\n", 1,
     1, "runner.demo.transport", "required"},
    {"UnknownTransportIsRejected", "[runner.demo]\ntransport = \"ssh\"\n", 2, 13,
     "runner.demo.transport", "must be one of exec, http, notify, null"},
    {"ExecWithoutCommandIsRejectedAtTheRunnerTable", "[runner.demo]\ntransport = \"exec\"\n", 1, 1,
     "runner.demo.command", "required for an exec runner"},
    {"ExecWithEmptyCommandIsRejected", "[runner.demo]\ntransport = \"exec\"\ncommand = []\n", 3, 11,
     "runner.demo.command", "must not be empty"},
    {"ExecWithEmptyProgramIsRejected",
     "[runner.demo]\ntransport = \"exec\"\ncommand = [\"\", \"x\"]\n", 3, 12,
     "runner.demo.command[0]", "the program must not be empty"},
    {"ExecCommandWithANonStringIsRejectedAtTheElement",
     "[runner.demo]\ntransport = \"exec\"\ncommand = [\"/bin/echo\", 42]\n", 3, 25,
     "runner.demo.command[1]", "expected a string, found an integer"},
    {"ExecCommandThatIsAStringIsRejected",
     "[runner.demo]\ntransport = \"exec\"\ncommand = \"/bin/true --once\"\n", 3, 11,
     "runner.demo.command", "expected an array of strings, found a string"},
    {"HttpWithoutUrlIsRejectedAtTheRunnerTable", "[runner.hook]\ntransport = \"http\"\n", 1, 1,
     "runner.hook.url", "required for an http runner"},
    {"HttpWithANonHttpUrlIsRejected",
     "[runner.hook]\ntransport = \"http\"\nurl = \"ftp://host/x\"\n", 3, 7, "runner.hook.url",
     "http:// or https://"},
    {"UrlOnAnExecRunnerIsRejectedAtTheKey", R"([runner.demo]
transport = "exec"
command = ["/bin/true"]
url = "http://127.0.0.1/"
)",
     4, 1, "runner.demo.url", "not a key of a runner with transport \"exec\""},
    {"CommandOnAnHttpRunnerIsRejectedAtTheKey", R"([runner.hook]
transport = "http"
url = "http://127.0.0.1/"
command = ["/bin/true"]
)",
     4, 1, "runner.hook.command", "not a key of a runner with transport \"http\""},
    {"KillGraceOnANotifyRunnerIsRejected",
     "[runner.listen]\ntransport = \"notify\"\n  kill_grace = \"1m\"\n", 3, 3,
     "runner.listen.kill_grace", "not a key of a runner with transport \"notify\""},
    {"NotifyWithTheMemoryStoreIsRejectedAtTheTransport",
     "[runner.listen]\ntransport = \"notify\"\n", 2, 13, "runner.listen.transport",
     "needs store.backend = \"postgres\""},
    {"NotifyChannelThatIsNoIdentifierIsRejected",
     "[runner.listen]\ntransport = \"notify\"\nchannel = \"Warp-Dispatch\"\n", 3, 11,
     "runner.listen.channel", "must match [a-z_][a-z0-9_]{0,62}"},
    {"NotifyChannelStartingWithADigitIsRejected",
     "[runner.listen]\ntransport = \"notify\"\nchannel = \"1x\"\n", 3, 11, "runner.listen.channel",
     "must match"},
    {"HeadersOnANullRunnerIsRejected",
     "[runner.noop]\ntransport = \"null\"\nheaders = { a = \"b\" }\n", 3, 1, "runner.noop.headers",
     "not a key of a runner with transport \"null\""},
    {"HttpHeaderThatWarpdSetsItselfIsRejected",
     "[runner.hook]\ntransport = \"http\"\nurl = \"http://h/\"\nheaders = { Warp-Fencing-Token = "
     "\"1\" }\n",
     4, 1, "runner.hook.headers.Warp-Fencing-Token", "not a header warpd lets a runner set"},
    {"HttpHeaderWithANonStringValueIsRejected",
     "[runner.hook]\ntransport = \"http\"\nurl = \"http://h/\"\nheaders = { X-A = 1 }\n", 4, 19,
     "runner.hook.headers.X-A", "expected a string"},
    {"HttpUrlWithoutAHostIsRejected", "[runner.hook]\ntransport = \"http\"\nurl = \"http:///x\"\n",
     3, 7, "runner.hook.url", "names no host"},
    {"ChannelOnANullRunnerIsRejected", "[runner.noop]\ntransport = \"null\"\nchannel = \"x\"\n", 3,
     1, "runner.noop.channel", "not a key of a runner with transport \"null\""},
    {"EmptyNotifyChannelIsRejected", "[runner.listen]\ntransport = \"notify\"\nchannel = \"\"\n", 3,
     11, "runner.listen.channel", "must not be empty"},
};
INSTANTIATE_TEST_SUITE_P(RunnerTest, LoadErrorTest, testing::ValuesIn(kRunnerCases), CaseName);

// --- schedules --------------------------------------------------------------------------------

const ErrorCase kScheduleCases[] = {
    {"NeitherEveryNorCronIsRejectedAtTheScheduleTable", R"([[schedule]]
name = "a"
agents = ["erp-sales"]
kind = "sync"
)",
     1, 1, "schedule[0].every", "give exactly one of every and cron"},
    {"BothEveryAndCronAreRejectedAtCron", R"([[schedule]]
name = "a"
agents = ["erp-sales"]
every = "15m"
cron = "*/15 * * * *"
kind = "sync"
)",
     5, 1, "schedule[0].cron", "not both"},
    {"NeitherAgentsNorDomainIsRejectedNamingTheScheduleIndex", R"([[schedule]]
name = "a"
domain = "sales"
every = "1m"
kind = "sync"

[[schedule]]
name = "b"
every = "1m"
kind = "sync"
)",
     7, 1, "schedule[1].agents", "give exactly one of agents and domain"},
    {"BothAgentsAndDomainAreRejectedAtDomain", R"([[schedule]]
name = "a"
agents = ["erp-sales"]
domain = "sales"
every = "1m"
kind = "sync"
)",
     4, 1, "schedule[0].domain", "not both"},
    {"DuplicateNameIsRejectedAtTheSecondName", R"([[schedule]]
name = "a"
domain = "sales"
every = "1m"
kind = "sync"

[[schedule]]
name = "a"
domain = "buy"
every = "1m"
kind = "sync"
)",
     8, 8, "schedule[1].name", "duplicate schedule name \"a\" (first used on line 2)"},
    {"MissingNameIsRejected", "[[schedule]]\ndomain = \"sales\"\nevery = \"1m\"\nkind = \"sync\"\n",
     1, 1, "schedule[0].name", "required"},
    {"MissingKindIsRejected", "[[schedule]]\nname = \"a\"\ndomain = \"sales\"\nevery = \"1m\"\n", 1,
     1, "schedule[0].kind", "required"},
    {"InvalidCronIsRejectedAtTheExpression", R"([[schedule]]
name = "a"
domain = "sales"
cron = "61 * * * *"
kind = "sync"
)",
     4, 8, "schedule[0].cron", "invalid cron expression \"61 * * * *\""},
    {"MalformedEveryIsRejected", R"([[schedule]]
name = "a"
domain = "sales"
every = "15 minutes"
kind = "sync"
)",
     4, 9, "schedule[0].every", "malformed duration"},
    {"AgentThatIsNotASlugIsRejectedAtTheElement", R"([[schedule]]
name = "a"
agents = ["erp-sales", "ERP"]
every = "1m"
kind = "sync"
)",
     3, 24, "schedule[0].agents[1]", "not an agent slug"},
    {"PayloadThatIsNotATableIsRejected", R"([[schedule]]
name = "a"
domain = "sales"
every = "1m"
kind = "sync"
payload = "{}"
)",
     6, 11, "schedule[0].payload", "expected a table, found a string"},
    {"UnknownMisfireIsRejected", R"([[schedule]]
name = "a"
domain = "sales"
every = "1m"
kind = "sync"
misfire = "later"
)",
     6, 11, "schedule[0].misfire", "must be one of run_once, skip"},
};
INSTANTIATE_TEST_SUITE_P(ScheduleTest, LoadErrorTest, testing::ValuesIn(kScheduleCases), CaseName);

}  // namespace
}  // namespace warp::config
