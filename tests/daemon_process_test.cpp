// Real warpd processes: command line, exit codes, --once, drain on SIGTERM, reload on SIGHUP.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "tests/support/process.hpp"

namespace {

using namespace warp::test;

std::string Config(const std::string& interval, const std::string& command,
                   const std::string& grace = "5s") {
  return R"([daemon]
instance = "proc-test"
shutdown_grace = ")" +
         grace + R"("

[store]
backend = "memory"
fixtures = "fixtures.toml"

[scheduler]
interval = ")" +
         interval + R"("

[leasing]
ttl = "10s"
renew_every = "2s"

[runner.work]
transport = "exec"
command = )" +
         command + R"(
timeout = "30s"
kill_grace = "1s"
)";
}

constexpr const char* kFixtures = R"([[tool_profile]]
id = "p"
operations = ["sync"]

[[agent]]
slug = "erp-sales"
display_name = "ERP sales"
domain = "sales"
tool_profile = "p"
runner = "work"
business_link = "spindle:req-1"
max_active = 2

[[work]]
agent = "erp-sales"
kind = "sync"
payload = { n = 1 }

[[work]]
agent = "erp-sales"
kind = "sync"
payload = { n = 2 }
)";

class DaemonProcess : public ::testing::Test {
 protected:
  void SetUp() override { WriteFile(dir_.path() / "fixtures.toml", kFixtures); }
  fs::path WriteConfig(const std::string& text) {
    auto path = dir_.path() / "warpd.toml";
    WriteFile(path, text);
    return path;
  }
  TempDir dir_;
};

TEST_F(DaemonProcess, VersionPrintsTheVersionAndExitsZero) {
  Warpd warpd(dir_.path(), {"--version"});
  EXPECT_EQ(warpd.Wait(), 0);
  EXPECT_NE(warpd.Out().find("warpd " WARP_VERSION), std::string::npos) << warpd.Out();
}

TEST_F(DaemonProcess, AnUnknownOptionIsAUsageError) {
  Warpd warpd(dir_.path(), {"--no-such-flag"});
  EXPECT_EQ(warpd.Wait(), 64);
  EXPECT_NE(warpd.Err().find("--no-such-flag"), std::string::npos) << warpd.Err();
}

TEST_F(DaemonProcess, CheckConfigAcceptsAGoodFileAndExitsZero) {
  auto path = WriteConfig(Config("1s", R"(["/bin/true"])"));
  Warpd warpd(dir_.path(), {"--check-config", "--config", path.string()});
  EXPECT_EQ(warpd.Wait(), 0) << warpd.Err();
  EXPECT_NE(warpd.Out().find("configuration ok"), std::string::npos);
}

TEST_F(DaemonProcess, CheckConfigNamesFileLineColumnAndKeyOfABadValueAndExits78) {
  auto path = WriteConfig(Config("1s", R"(["/bin/true"])") + "\n[leasing2]\nx = 1\n");
  Warpd warpd(dir_.path(), {"--check-config", "--config", path.string()});
  EXPECT_EQ(warpd.Wait(), 78);
  const auto err = warpd.Err();
  EXPECT_NE(err.find(path.string() + ":"), std::string::npos) << err;
  EXPECT_NE(err.find("leasing2"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "one line: " << err;
}

TEST_F(DaemonProcess, StartingWithABadConfigExits78WithoutRunning) {
  auto path = WriteConfig("[scheduler]\ninterval = \"ten seconds\"\n");
  Warpd warpd(dir_.path(), {"--config", path.string()});
  EXPECT_EQ(warpd.Wait(), 78);
  EXPECT_NE(warpd.Err().find(path.string() + ":2:"), std::string::npos) << warpd.Err();
  EXPECT_NE(warpd.Err().find("scheduler.interval"), std::string::npos) << warpd.Err();
}

TEST_F(DaemonProcess, InstanceOptionOverridesTheConfiguredInstanceName) {
  auto path = WriteConfig(Config("1s", R"(["/bin/true"])"));
  Warpd warpd(dir_.path(), {"--once", "--instance", "unit-b", "--config", path.string()});
  EXPECT_EQ(warpd.Wait(), 0) << warpd.Err();
  EXPECT_NE(warpd.Err().find("instance unit-b group"), std::string::npos) << warpd.Err();
}

TEST_F(DaemonProcess, AnInvalidInstanceNameIsAUsageError) {
  auto path = WriteConfig(Config("1s", R"(["/bin/true"])"));
  Warpd warpd(dir_.path(), {"--instance", "Bad_Name", "--config", path.string()});
  EXPECT_EQ(warpd.Wait(), 64);
  EXPECT_NE(warpd.Err().find("--instance"), std::string::npos) << warpd.Err();
}

TEST_F(DaemonProcess, OnceRunsOneCycleWaitsForItsWorkAndExitsZero) {
  auto path = WriteConfig(Config("1s", R"(["/bin/sh", "-c", "cat; echo; echo worked"])"));
  Warpd warpd(dir_.path(), {"--once", "--config", path.string(), "--log-format", "json"});
  EXPECT_EQ(warpd.Wait(), 0) << warpd.Err();
  const auto err = warpd.Err();
  EXPECT_NE(err.find(R"("event":"cycle_completed")"), std::string::npos) << err;
  EXPECT_NE(err.find("dispatched=2"), std::string::npos) << err;
  EXPECT_NE(err.find(R"({\"n\":1})"), std::string::npos) << "the payload reached stdin: " << err;
  size_t worked = 0;
  for (size_t p = err.find("worked"); p != std::string::npos; p = err.find("worked", p + 1)) {
    ++worked;
  }
  EXPECT_EQ(worked, 2u);
  EXPECT_NE(err.find(R"("event":"daemon_stopped")"), std::string::npos) << err;
}

TEST_F(DaemonProcess, SigtermDrainsInFlightWorkThenExitsZero) {
  auto path = WriteConfig(Config("1s", R"(["/bin/sh", "-c", "sleep 1; echo finished-work"])"));
  Warpd warpd(dir_.path(), {"--config", path.string(), "--log-format", "text"});
  ASSERT_TRUE(warpd.WaitForLog("dispatching work")) << warpd.Err();
  warpd.Signal(SIGTERM);
  EXPECT_EQ(warpd.Wait(), 0) << warpd.Err();
  const auto err = warpd.Err();
  EXPECT_NE(err.find("stopping: no new cycles"), std::string::npos) << err;
  EXPECT_NE(err.find("finished-work"), std::string::npos) << "in-flight work finished: " << err;
  EXPECT_NE(err.find("done"), std::string::npos) << err;
  EXPECT_NE(err.find("warpd stopped"), std::string::npos) << err;
}

TEST_F(DaemonProcess, SigtermStopsWorkThatOutlivesTheShutdownGrace) {
  auto path = WriteConfig(Config("1s", R"(["/bin/sleep", "60"])", "300ms"));
  Warpd warpd(dir_.path(), {"--config", path.string(), "--log-format", "text"});
  ASSERT_TRUE(warpd.WaitForLog("dispatching work")) << warpd.Err();
  const auto start = std::chrono::steady_clock::now();
  warpd.Signal(SIGINT);
  EXPECT_EQ(warpd.Wait(), 0) << warpd.Err();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  const auto err = warpd.Err();
  EXPECT_NE(err.find("shutdown grace elapsed"), std::string::npos) << err;
  EXPECT_NE(err.find("left to expire"), std::string::npos) << err;
}

TEST_F(DaemonProcess, SighupAppliesAChangedIntervalAndKeepsTheOldConfigWhenTheNewOneIsBroken) {
  auto path = WriteConfig(Config("1s", R"(["/bin/true"])"));
  Warpd warpd(dir_.path(), {"--config", path.string(), "--log-format", "text"});
  ASSERT_TRUE(warpd.WaitForLog("started")) << warpd.Err();

  WriteConfig(Config("3s", R"(["/bin/true"])"));
  warpd.Signal(SIGHUP);
  ASSERT_TRUE(warpd.WaitForLog("configuration reloaded")) << warpd.Err();
  EXPECT_NE(warpd.Err().find("interval 3000ms"), std::string::npos) << warpd.Err();
  ASSERT_TRUE(warpd.WaitForLog("/3000ms/")) << "cycles use the new interval: " << warpd.Err();

  WriteConfig("[scheduler]\ninterval = 5\n");
  warpd.Signal(SIGHUP);
  ASSERT_TRUE(warpd.WaitForLog("reload rejected")) << warpd.Err();
  EXPECT_NE(warpd.Err().find(path.string() + ":2:"), std::string::npos) << warpd.Err();

  warpd.Signal(SIGTERM);
  EXPECT_EQ(warpd.Wait(), 0) << warpd.Err();
}

}  // namespace
