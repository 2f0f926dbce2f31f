// Runs real children through ExecRunner on an io_context. The test process deliberately leaves
// SIGPIPE at its default: a runner that wrote into a closed pipe would kill the test binary.
#include "scheduler/runners/exec_runner.hpp"

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "scheduler/runners/null_runner.hpp"

namespace warp::scheduler {
namespace {

using namespace std::chrono_literals;
using Status = DispatchResult::Status;
using SteadyClock = std::chrono::steady_clock;

/// True while `pid` is a process that has not yet died (zombies count as dead: whoever reaps
/// them, they run no more).
bool IsRunning(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(stat, text))
    return false;
  const auto paren = text.rfind(')');
  return paren != std::string::npos && paren + 2 < text.size() && text[paren + 2] != 'Z' &&
         text[paren + 2] != 'X';
}

/// Waits up to `limit` for `pid` to die (a SIGKILL is delivered asynchronously).
bool DiesWithin(pid_t pid, std::chrono::milliseconds limit) {
  const auto deadline = SteadyClock::now() + limit;
  while (IsRunning(pid)) {
    if (SteadyClock::now() > deadline)
      return false;
    ::usleep(10'000);
  }
  return true;
}

std::size_t OpenFds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    ++n;
  }
  return n;
}

class ExecRunnerTest : public ::testing::Test {
 protected:
  struct Run {
    std::optional<DispatchResult> result;
    int calls = 0;
    std::chrono::milliseconds elapsed{};
  };

  static config::RunnerSettings Command(std::vector<std::string> command) {
    config::RunnerSettings settings;
    settings.name = "test";
    settings.transport = config::Transport::kExec;
    settings.command = std::move(command);
    settings.timeout = 5s;
    settings.kill_grace = 300ms;
    return settings;
  }
  static config::RunnerSettings Shell(std::string script) {
    return Command({"/bin/sh", "-c", std::move(script)});
  }

  static DispatchRequest Request(std::string payload = R"({"invoice":7})") {
    DispatchRequest request;
    request.agent_slug = "erp-agent";
    request.work_id = 42;
    request.kind = "sync";
    request.payload_json = std::move(payload);
    request.lease_id = 9;
    request.fencing_token = 17;
    request.cycle_id = "cycle-abc";
    request.lease_expires_at =
        std::chrono::sys_days{std::chrono::year{2030} / 1 / 2} + 3h + 4min + 5s + 678ms;
    return request;
  }

  /// Starts one dispatch, runs `act` on its execution once the child has printed a line
  /// containing `act_when_printed` (at once if empty), and runs the io_context until
  /// everything has completed.
  Run Dispatch(config::RunnerSettings settings, DispatchRequest request = Request(),
               std::function<void(Execution&)> act = {}, std::string act_when_printed = "") {
    ExecRunner runner(std::move(settings), io_.get_executor(), log_);
    Run run;
    const auto started = SteadyClock::now();
    auto execution = runner.Start(std::move(request), [&](DispatchResult result) {
      ++run.calls;
      run.result = std::move(result);
      run.elapsed =
          std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - started);
    });
    EXPECT_EQ(run.calls, 0) << "on_done ran inside Start";
    // Waiting for the child's own word instead of a fixed delay keeps a loaded machine from
    // stopping it before it got going.
    boost::asio::steady_timer act_timer(io_);
    std::function<void()> poll = [&] {
      if (run.calls > 0)
        return;
      if (act_when_printed.empty() || !LinesWith(act_when_printed).empty()) {
        act(*execution);
        return;
      }
      act_timer.expires_after(10ms);
      act_timer.async_wait([&](const boost::system::error_code& ec) {
        if (!ec)
          poll();
      });
    };
    if (act)
      boost::asio::post(io_, poll);
    io_.run_for(10s);
    EXPECT_EQ(run.calls, 1);
    return run;
  }

  /// Captured log lines that contain `text`.
  std::vector<std::string> LinesWith(std::string_view text) const {
    std::vector<std::string> found;
    for (const auto& line : *lines_) {
      if (line.find(text) != std::string::npos)
        found.push_back(line);
    }
    return found;
  }

  /// The integer a child printed as "NAME=123" on stdout.
  pid_t PrintedPid(std::string_view name) const {
    const std::string key = std::string(name) + "=";
    for (const auto& line : *lines_) {
      const auto at = line.find("stdout: " + key);
      if (at != std::string::npos)
        return std::stoi(line.substr(at + 8 + key.size()));
    }
    ADD_FAILURE() << "no " << key << " in the output";
    return -1;
  }

  boost::asio::io_context io_;
  std::shared_ptr<std::vector<std::string>> lines_ = std::make_shared<std::vector<std::string>>();
  logging::Logger log_ = logging::MakeCaptureLogger(lines_, logging::Format::kText);
};

TEST_F(ExecRunnerTest, ChildGetsWarpVariablesAndOnlyAllowListedEnvironment) {
  ::setenv("NOTIFY_SOCKET", "/run/systemd/notify", 1);
  ::setenv("PGPASSWORD", "hunter2", 1);
  ::setenv("WATCHDOG_USEC", "30000000", 1);
  ::setenv("CREDENTIALS_DIRECTORY", "/run/credentials/warpd.service", 1);
  ::setenv("LANG", "C.UTF-8", 1);
  ::setenv("TZ", "UTC", 1);

  // env itself, no shell in between: it prints exactly what it received.
  const auto run = Dispatch(Command({"/usr/bin/env"}));
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kDone);

  std::set<std::string> names;
  for (const auto& line : LinesWith("stdout: ")) {
    const auto start = line.find("stdout: ") + 8;
    names.insert(line.substr(start, line.find('=', start) - start));
  }
  const std::set<std::string> warp{"WARP_AGENT",           "WARP_WORK_ID",       "WARP_WORK_KIND",
                                   "WARP_LEASE_ID",        "WARP_FENCING_TOKEN", "WARP_CYCLE_ID",
                                   "WARP_LEASE_EXPIRES_AT"};
  for (const auto& name : names) {
    const bool allowed = warp.count(name) > 0 || std::find(kExecInheritedEnvironment.begin(),
                                                           kExecInheritedEnvironment.end(),
                                                           name) != kExecInheritedEnvironment.end();
    EXPECT_TRUE(allowed) << name << " reached the child";
  }
  for (const auto& name : warp)
    EXPECT_EQ(names.count(name), 1u) << name;
  EXPECT_EQ(names.count("LANG"), 1u);
  EXPECT_EQ(names.count("TZ"), 1u);
  EXPECT_TRUE(LinesWith("hunter2").empty());
  EXPECT_TRUE(LinesWith("NOTIFY_SOCKET").empty());

  EXPECT_EQ(LinesWith("stdout: WARP_AGENT=erp-agent").size(), 1u);
  EXPECT_EQ(LinesWith("stdout: WARP_WORK_ID=42  [").size(), 1u);
  EXPECT_EQ(LinesWith("stdout: WARP_WORK_KIND=sync").size(), 1u);
  EXPECT_EQ(LinesWith("stdout: WARP_LEASE_ID=9  [").size(), 1u);
  EXPECT_EQ(LinesWith("stdout: WARP_FENCING_TOKEN=17  [").size(), 1u);
  EXPECT_EQ(LinesWith("stdout: WARP_CYCLE_ID=cycle-abc").size(), 1u);
  EXPECT_EQ(LinesWith("stdout: WARP_LEASE_EXPIRES_AT=2030-01-02T03:04:05Z").size(), 1u);

  for (const char* name :
       {"NOTIFY_SOCKET", "PGPASSWORD", "WATCHDOG_USEC", "CREDENTIALS_DIRECTORY"}) {
    ::unsetenv(name);
  }
}

TEST_F(ExecRunnerTest, PayloadArrivesOnStdinFollowedByEof) {
  // cat only exits at EOF, so completing at all proves stdin was closed after the payload.
  const auto run = Dispatch(Command({"/bin/cat"}), Request(R"({"invoice":7})"));
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kDone);
  EXPECT_EQ(LinesWith(R"(stdout: {"invoice":7})").size(), 1u);
}

TEST_F(ExecRunnerTest, ExitZeroIsDone) {
  const auto run = Dispatch(Shell("exit 0"));
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kDone);
  EXPECT_EQ(run.result->detail, "exit status 0");
}

TEST_F(ExecRunnerTest, NonZeroExitIsFailedWithItsStatus) {
  const auto run = Dispatch(Shell("exit 3"));
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kFailed);
  EXPECT_EQ(run.result->detail, "exit status 3");
  EXPECT_TRUE(run.result->retry);
}

TEST_F(ExecRunnerTest, DeathBySignalIsFailedNamingTheSignal) {
  const auto run = Dispatch(Shell("kill -SEGV $$"));
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kFailed);
  EXPECT_EQ(run.result->detail, "killed by SIGSEGV");
}

TEST_F(ExecRunnerTest, OutputLinesAreLoggedWithTheWorkFields) {
  const auto run = Dispatch(Shell("echo hello agent; echo something odd >&2; printf 'no newline'"));
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kDone);

  const auto out = LinesWith("stdout: hello agent");
  ASSERT_EQ(out.size(), 1u);
  EXPECT_NE(out[0].find("info"), std::string::npos);
  for (const char* field :
       {"agent=erp-agent", "work_id=42", "lease_id=9", "fencing_token=17", "cycle_id=cycle-abc"}) {
    EXPECT_NE(out[0].find(field), std::string::npos) << field << " in " << out[0];
  }
  const auto err = LinesWith("stderr: something odd");
  ASSERT_EQ(err.size(), 1u);
  EXPECT_NE(err[0].find("warn"), std::string::npos);
  EXPECT_NE(err[0].find("work_id=42"), std::string::npos);
  // The last, unterminated line is flushed before on_done.
  EXPECT_EQ(LinesWith("stdout: no newline").size(), 1u);
}

TEST_F(ExecRunnerTest, OverlongLinesAreCutAt4KiB) {
  const auto run = Dispatch(Shell("head -c 10000 /dev/zero | tr '\\0' x; echo; echo next"));
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kDone);
  const auto cut = LinesWith("stdout: xxx");
  ASSERT_EQ(cut.size(), 1u);
  EXPECT_NE(cut[0].find("stdout: " + std::string(4096, 'x') + " [line cut"), std::string::npos);
  EXPECT_EQ(cut[0].find(std::string(4097, 'x')), std::string::npos);
  EXPECT_EQ(LinesWith("stdout: next").size(), 1u);
}

TEST_F(ExecRunnerTest, TimeoutKillsAChildThatIgnoresSigterm) {
  auto settings = Shell("trap '' TERM; echo pid=$$; sleep 30 & echo sleeper=$!; wait");
  settings.timeout = 500ms;  // room for sh to set its trap first
  settings.kill_grace = 200ms;
  const auto run = Dispatch(settings);
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kTimedOut);
  EXPECT_NE(run.result->detail.find("killed by SIGKILL"), std::string::npos) << run.result->detail;
  EXPECT_GE(run.elapsed, 700ms);  // SIGTERM was ignored, so only SIGKILL after the grace ended it
  EXPECT_LT(run.elapsed, 3s);
  EXPECT_TRUE(DiesWithin(PrintedPid("pid"), 1s));
  EXPECT_TRUE(DiesWithin(PrintedPid("sleeper"), 1s));
}

TEST_F(ExecRunnerTest, StopTerminatesTheWholeProcessGroup) {
  auto settings = Shell("sleep 30 & echo grandchild=$!; wait");
  settings.kill_grace = 2s;  // SIGTERM suffices; no waiting for the grace
  const auto run = Dispatch(
      settings, Request(), [](Execution& e) { e.Stop("lease lost: renewal refused"); },
      "grandchild=");
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kStopped);
  EXPECT_EQ(run.result->detail, "lease lost: renewal refused (killed by SIGTERM)");
  EXPECT_LT(run.elapsed, 1500ms);  // well inside kill_grace: SIGTERM did it
  EXPECT_TRUE(DiesWithin(PrintedPid("grandchild"), 1s));
}

TEST_F(ExecRunnerTest, StoppingTwiceOrAfterCompletionIsHarmless) {
  auto run = Dispatch(Shell("sleep 30"), Request(), [](Execution& e) {
    e.Stop("first");
    e.Stop("second");
  });
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kStopped);
  EXPECT_EQ(run.result->detail.rfind("first", 0), 0u);

  ExecRunner runner(Shell("exit 0"), io_.get_executor(), log_);
  int calls = 0;
  auto execution = runner.Start(Request(), [&](DispatchResult) { ++calls; });
  io_.restart();
  io_.run_for(5s);
  execution->Stop("too late");
  io_.restart();
  io_.run_for(100ms);
  EXPECT_EQ(calls, 1);
}

TEST_F(ExecRunnerTest, NoProcessOfTheGroupOutlivesANormalExit) {
  const auto run = Dispatch(Shell("sleep 30 >/dev/null 2>&1 & echo straggler=$!; exit 0"));
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kDone);
  EXPECT_TRUE(DiesWithin(PrintedPid("straggler"), 1s));
}

TEST_F(ExecRunnerTest, ChildInheritsNoOtherDescriptorAndNoneLeak) {
  Dispatch(Shell("exit 0"));  // Asio opens its epoll, eventfd and timerfd on first use
  io_.restart();
  const auto open_before = OpenFds();
  const int inheritable = ::dup(STDOUT_FILENO);  // not close-on-exec: only closefrom stops it
  ASSERT_GE(inheritable, 0);
  // ls itself opens the directory it lists, as the lowest free number: 3.
  const auto run = Dispatch(Command({"/bin/ls", "/proc/self/fd"}));
  ::close(inheritable);
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kDone);
  std::set<std::string> listed;
  for (const auto& line : LinesWith("stdout: ")) {
    const auto start = line.find("stdout: ") + 8;
    listed.insert(line.substr(start, line.find(' ', start) - start));
  }
  EXPECT_EQ(listed, (std::set<std::string>{"0", "1", "2", "3"}));
  EXPECT_EQ(OpenFds(), open_before);
}

TEST_F(ExecRunnerTest, MissingBinaryIsTransportError) {
  const auto run = Dispatch(Command({"/nonexistent/erp-agent", "--once"}));
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kTransportError);
  EXPECT_NE(run.result->detail.find("/nonexistent/erp-agent"), std::string::npos);
  EXPECT_NE(run.result->detail.find("No such file or directory"), std::string::npos)
      << run.result->detail;
}

TEST_F(ExecRunnerTest, MissingBinaryOnPathIsTransportError) {
  const auto run = Dispatch(Command({"warp-no-such-agent-anywhere"}));
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kTransportError);
  EXPECT_NE(run.result->detail.find("warp-no-such-agent-anywhere"), std::string::npos);
}

TEST_F(ExecRunnerTest, BareCommandNameIsSearchedOnPath) {
  const auto run = Dispatch(Command({"sh", "-c", "exit 0"}));
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kDone);
}

TEST_F(ExecRunnerTest, ChildThatNeverReadsALargePayloadStillCompletes) {
  const std::string payload = R"({"blob":")" + std::string(1024 * 1024, 'a') + R"("})";
  // The sleep makes sure the write is still pending (the pipe is full) when the child exits.
  const auto run = Dispatch(Shell("sleep 0.2; exit 0"), Request(payload));
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kDone);
  EXPECT_LT(run.elapsed, 3s);
}

TEST_F(ExecRunnerTest, ChildThatClosesStdinEarlyStillCompletes) {
  const std::string payload = R"({"blob":")" + std::string(1024 * 1024, 'a') + R"("})";
  const auto run = Dispatch(Shell("exec 0<&-; sleep 0.2; exit 0"), Request(payload));
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kDone);
}

TEST_F(ExecRunnerTest, LargePayloadArrivesWhole) {
  const std::string payload = R"({"blob":")" + std::string(1024 * 1024, 'a') + R"("})";
  const auto run = Dispatch(Shell("wc -c"), Request(payload));
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kDone);
  EXPECT_EQ(LinesWith("stdout: " + std::to_string(payload.size())).size(), 1u);
}

TEST(NullRunnerTest, CompletesDoneOnTheExecutorNotInsideStart) {
  boost::asio::io_context io;
  NullRunner runner(io.get_executor());
  std::optional<DispatchResult> result;
  auto execution = runner.Start(DispatchRequest{}, [&](DispatchResult r) { result = r; });
  ASSERT_NE(execution, nullptr);
  EXPECT_FALSE(result);
  io.run();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, Status::kDone);
  execution->Stop("harmless");
}

TEST(MakeRunnerTest, BuildsEveryTransportAndNamesTheRunnerInItsErrors) {
  boost::asio::io_context io;
  config::RunnerSettings settings;
  settings.name = "hook";
  settings.transport = config::Transport::kNull;
  EXPECT_NE(MakeRunner(settings, io.get_executor(), {}), nullptr);
  settings.transport = config::Transport::kExec;
  settings.command = {"/bin/true"};
  EXPECT_NE(MakeRunner(settings, io.get_executor(), {}), nullptr);
  settings.transport = config::Transport::kNotify;
  const auto notify = MakeRunner(settings, io.get_executor(), {});
  EXPECT_EQ(notify->notify_channel(), "warp_dispatch");

  settings.transport = config::Transport::kHttp;
  settings.url = "http://127.0.0.1:8080/dispatch";
  const auto http = MakeRunner(settings, io.get_executor(), {});
  EXPECT_EQ(http->notify_channel(), "");
  settings.url = "http://127.0.0.1:99999/";
  try {
    MakeRunner(settings, io.get_executor(), {});
    ADD_FAILURE() << "a bad port was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "runner 'hook': bad port in URL: http://127.0.0.1:99999/");
  }
}

TEST(DispatchStatusTest, HasStableNames) {
  EXPECT_EQ(ToString(Status::kDone), "done");
  EXPECT_EQ(ToString(Status::kFailed), "failed");
  EXPECT_EQ(ToString(Status::kTransportError), "transport_error");
  EXPECT_EQ(ToString(Status::kTimedOut), "timed_out");
  EXPECT_EQ(ToString(Status::kStopped), "stopped");
}

}  // namespace
}  // namespace warp::scheduler
