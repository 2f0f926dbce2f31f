// The systemd watchdog protocol against a real unix datagram socket set as NOTIFY_SOCKET, with
// WATCHDOG_USEC / WATCHDOG_PID in this process's environment, as systemd would set them.
// Timing assertions are tolerant ranges: the machine may be busy.
#include "daemon/loop_watchdog.hpp"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <mutex>
#include <thread>

namespace warp::daemon {
namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

/// The receiving end of sd_notify, read by a thread of its own so that arrivals are seen (and
/// time-stamped) while the event loop under test is blocked.
class NotifyReceiver {
 public:
  explicit NotifyReceiver(fs::path path) : path_(std::move(path)) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path_.string().size() >= sizeof(addr.sun_path))
      throw std::runtime_error("notify socket path too long: " + path_.string());
    std::strcpy(addr.sun_path, path_.c_str());
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0 || bind(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0)
      throw std::runtime_error("cannot bind the notify socket " + path_.string());
    thread_ = std::thread([this] { Receive(); });
  }
  ~NotifyReceiver() {
    stop_ = true;
    thread_.join();
    close(fd_);
    std::error_code ignored;
    fs::remove(path_, ignored);
  }
  NotifyReceiver(const NotifyReceiver&) = delete;
  NotifyReceiver& operator=(const NotifyReceiver&) = delete;

  const fs::path& path() const { return path_; }

  /// Arrival times of the WATCHDOG=1 messages in [since, until).
  std::vector<Clock::time_point> Pings(Clock::time_point since = Clock::time_point::min(),
                                       Clock::time_point until = Clock::time_point::max()) const {
    std::lock_guard lock(mutex_);
    std::vector<Clock::time_point> out;
    for (const auto& [at, text] : messages_) {
      if (at >= since && at < until && text == "WATCHDOG=1")
        out.push_back(at);
    }
    return out;
  }
  std::size_t Messages() const {
    std::lock_guard lock(mutex_);
    return messages_.size();
  }
  bool WaitForPings(std::size_t n, std::chrono::milliseconds limit) const {
    const auto deadline = Clock::now() + limit;
    while (Pings().size() < n) {
      if (Clock::now() >= deadline)
        return false;
      std::this_thread::sleep_for(10ms);
    }
    return true;
  }

 private:
  void Receive() {
    std::vector<char> buf(4096);
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 10) <= 0)
        continue;
      const ssize_t n = recv(fd_, buf.data(), buf.size(), MSG_DONTWAIT);
      if (n < 0)
        continue;
      std::lock_guard lock(mutex_);
      messages_.emplace_back(Clock::now(), std::string(buf.data(), static_cast<std::size_t>(n)));
    }
  }

  fs::path path_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  mutable std::mutex mutex_;
  std::vector<std::pair<Clock::time_point, std::string>> messages_;
  std::thread thread_;
};

std::chrono::milliseconds Ms(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d);
}

std::size_t CountEvent(const std::vector<std::string>& lines, std::size_t from,
                       const std::string& event) {
  return static_cast<std::size_t>(std::count_if(
      lines.begin() + static_cast<std::ptrdiff_t>(from), lines.end(), [&](const std::string& l) {
        return l.find(R"("event":")" + event + "\"") != std::string::npos;
      }));
}

class LoopWatchdogTest : public ::testing::Test {
 protected:
  static constexpr const char* kVariables[] = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"};

  void SetUp() override {
    for (const char* name : kVariables) {
      const char* value = std::getenv(name);
      saved_.emplace_back(value ? std::optional<std::string>(value) : std::nullopt);
    }
    std::string tmpl = (fs::temp_directory_path() / "warpd-loopwd-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    receiver_.emplace(dir_ / "notify.sock");
    setenv("NOTIFY_SOCKET", receiver_->path().c_str(), 1);
    setenv("WATCHDOG_USEC", "200000", 1);  // period 100 ms, lag bound 50 ms
    setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1);
  }

  void TearDown() override {
    for (std::size_t i = 0; i < saved_.size(); ++i) {
      if (saved_[i])
        setenv(kVariables[i], saved_[i]->c_str(), 1);
      else
        unsetenv(kVariables[i]);
    }
    receiver_.reset();
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  /// A watchdog configured from the environment, as warpd makes it.
  LoopWatchdog& MakeWatchdog() {
    watchdog_.emplace(io_.get_executor(), LoopWatchdog::IntervalFromEnvironment(log_),
                      &LoopWatchdog::SdNotify, log_);
    return *watchdog_;
  }

  /// Runs the loop on a thread of its own until StopLoop.
  void StartLoop() {
    loop_ = std::thread([this] { io_.run(); });
  }
  void StopLoop() {
    asio::post(io_, [this] { watchdog_->Stop(); });
    guard_.reset();
    loop_.join();
  }

  /// Waits until whatever was sent has been received.
  void Settle() { std::this_thread::sleep_for(100ms); }

  /// Runs the loop with the watchdog started for `d`, then stops it.
  void RunFor(LoopWatchdog& watchdog, Clock::duration d) {
    watchdog.Start();
    io_.run_for(d);
    watchdog.Stop();
    guard_.reset();
    io_.restart();
    io_.run();  // returns once the cancelled tick has run: the watchdog holds no work
    Settle();
  }

  std::shared_ptr<std::vector<std::string>> lines_ = std::make_shared<std::vector<std::string>>();
  logging::Logger log_ = logging::MakeCaptureLogger(lines_, logging::Format::kJson);
  std::vector<std::optional<std::string>> saved_;
  fs::path dir_;
  std::optional<NotifyReceiver> receiver_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_ = asio::make_work_guard(io_);
  std::optional<LoopWatchdog> watchdog_;
  std::thread loop_;
};

TEST_F(LoopWatchdogTest, ReadsTheIntervalSystemdSetForThisProcess) {
  auto& watchdog = MakeWatchdog();
  ASSERT_TRUE(watchdog.enabled());
  EXPECT_EQ(watchdog.period(), 100ms);
  EXPECT_EQ(watchdog.lag_bound(), 50ms);
  EXPECT_FALSE(watchdog.last_lag().has_value());
}

TEST_F(LoopWatchdogTest, PingsArriveAtHalfTheIntervalWhileTheLoopRuns) {
  auto& watchdog = MakeWatchdog();
  RunFor(watchdog, 1500ms);

  // At 0, 100, ..., 1500 ms: 15 or 16. A ping per interval would give 8, per quarter 30.
  const auto pings = receiver_->Pings();
  EXPECT_GE(pings.size(), 11u) << watchdog.ticks_withheld() << " tick(s) withheld";
  EXPECT_LE(pings.size(), 20u);
  EXPECT_EQ(pings.size(), watchdog.pings_sent()) << "every ping arrives at NOTIFY_SOCKET";
  EXPECT_EQ(receiver_->Messages(), pings.size()) << "nothing but WATCHDOG=1";
  ASSERT_GE(pings.size(), 3u);
  std::vector<Clock::duration> gaps;
  for (std::size_t i = 1; i < pings.size(); ++i)
    gaps.push_back(pings[i] - pings[i - 1]);
  std::nth_element(gaps.begin(), gaps.begin() + gaps.size() / 2, gaps.end());
  const auto median = gaps[gaps.size() / 2];
  EXPECT_GE(median, 70ms) << Ms(median).count() << " ms";
  EXPECT_LE(median, 140ms) << Ms(median).count() << " ms";
  ASSERT_TRUE(watchdog.last_lag().has_value());
  EXPECT_LT(*watchdog.last_lag(), watchdog.lag_bound());
}

TEST_F(LoopWatchdogTest, ABlockedLoopSendsNoPingsAndTheyResumeAfterIt) {
  auto& watchdog = MakeWatchdog();
  watchdog.Start();
  StartLoop();
  ASSERT_TRUE(receiver_->WaitForPings(3, 5s)) << "pings before the block";

  std::promise<Clock::time_point> block_started;
  std::promise<Clock::time_point> block_ended;
  std::size_t lines_before = 0;
  asio::post(io_, [&] {
    lines_before = lines_->size();
    block_started.set_value(Clock::now());
    std::this_thread::sleep_for(1s);  // a wedged handler: nothing else runs on the loop
    block_ended.set_value(Clock::now());
  });
  const auto started = block_started.get_future().get();
  const auto ended = block_ended.get_future().get();
  std::this_thread::sleep_for(700ms);
  StopLoop();
  Settle();

  // A ping sent just before the block may be stamped a little after it started.
  const auto during = receiver_->Pings(started + 50ms, ended);
  EXPECT_TRUE(during.empty()) << during.size() << " ping(s) while the loop was blocked";
  const auto after = receiver_->Pings(ended);
  EXPECT_GE(after.size(), 3u) << "pings resume after the block (expected about 6)";
  ASSERT_FALSE(after.empty());
  EXPECT_GE(after.front() - ended, 50ms)
      << "the tick that fired late, right after the block, withholds its ping";
  EXPECT_GE(watchdog.ticks_withheld(), 1u);
  EXPECT_EQ(CountEvent(*lines_, lines_before, "loop_lagging"), 1u);
  EXPECT_EQ(CountEvent(*lines_, lines_before, "loop_on_time"), 1u);
}

TEST_F(LoopWatchdogTest, ACongestedLoopWithholdsPingsAndSaysSoOnceEachWay) {
  auto& watchdog = MakeWatchdog();
  watchdog.Start();
  StartLoop();
  ASSERT_TRUE(receiver_->WaitForPings(3, 5s)) << "pings before the congestion";

  // A chain of 80 ms handlers, each posting the next: the loop never stops, but a timer that
  // expires during one handler runs after the next one, at least 80 ms late (bound: 50 ms).
  std::promise<Clock::time_point> congestion_started;
  std::promise<Clock::time_point> congestion_ended;
  std::size_t lines_before = 0;
  int left = 12;
  std::function<void()> busy = [&] {
    if (left == 12) {
      lines_before = lines_->size();
      congestion_started.set_value(Clock::now());
    }
    std::this_thread::sleep_for(80ms);
    if (--left > 0)
      asio::post(io_, busy);
    else
      congestion_ended.set_value(Clock::now());
  };
  asio::post(io_, busy);
  const auto started = congestion_started.get_future().get();
  const auto ended = congestion_ended.get_future().get();
  std::this_thread::sleep_for(700ms);
  StopLoop();
  Settle();

  const auto during = receiver_->Pings(started + 50ms, ended);
  EXPECT_TRUE(during.empty()) << during.size() << " ping(s) while timers were late";
  // A withheld tick fires 80 to 160 ms late and the next is due 100 ms after the late one was:
  // a tick every 260 ms at worst over 960 ms.
  EXPECT_GE(watchdog.ticks_withheld(), 3u);
  EXPECT_GE(receiver_->Pings(ended).size(), 3u) << "pings resume once timers are on time";
  EXPECT_EQ(CountEvent(*lines_, lines_before, "loop_lagging"), 1u)
      << "one warning when the pings stop, not one per withheld tick";
  EXPECT_EQ(CountEvent(*lines_, lines_before, "loop_on_time"), 1u);
}

TEST_F(LoopWatchdogTest, StopEndsThePingsAndLetsRunReturn) {
  auto& watchdog = MakeWatchdog();
  watchdog.Start();
  guard_.reset();
  io_.run_for(350ms);
  watchdog.Stop();
  io_.restart();
  auto run = std::async(std::launch::async, [this] { io_.run(); });
  const bool returned = run.wait_for(2s) == std::future_status::ready;
  if (!returned)
    io_.stop();
  EXPECT_TRUE(returned) << "a stopped watchdog keeps io_context::run() alive";
  run.wait();
  Settle();
  const auto count = receiver_->Pings().size();
  EXPECT_GE(count, 2u);
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(receiver_->Pings().size(), count);
}

TEST_F(LoopWatchdogTest, NoWatchdogUsecMeansNoPings) {
  unsetenv("WATCHDOG_USEC");
  auto& watchdog = MakeWatchdog();
  EXPECT_FALSE(watchdog.enabled());
  RunFor(watchdog, 500ms);
  EXPECT_EQ(receiver_->Messages(), 0u);
  EXPECT_EQ(watchdog.pings_sent(), 0u);
}

TEST_F(LoopWatchdogTest, AWatchdogPidOfAnotherProcessMeansNoPings) {
  setenv("WATCHDOG_PID", std::to_string(getppid()).c_str(), 1);
  auto& watchdog = MakeWatchdog();
  EXPECT_FALSE(watchdog.enabled());
  RunFor(watchdog, 500ms);
  EXPECT_EQ(receiver_->Messages(), 0u);
}

TEST_F(LoopWatchdogTest, AnAbsentWatchdogPidMeansThisProcess) {
  // What a test that spawns warpd can do: it cannot know the child's pid before the exec.
  unsetenv("WATCHDOG_PID");
  auto& watchdog = MakeWatchdog();
  EXPECT_TRUE(watchdog.enabled());
  RunFor(watchdog, 500ms);
  EXPECT_GE(receiver_->Pings().size(), 3u);
}

TEST_F(LoopWatchdogTest, AnInvalidWatchdogUsecIsIgnoredWithAWarning) {
  setenv("WATCHDOG_USEC", "soon", 1);
  EXPECT_FALSE(LoopWatchdog::IntervalFromEnvironment(log_).has_value());
  ASSERT_EQ(lines_->size(), 1u);
  EXPECT_NE(lines_->at(0).find("WATCHDOG_USEC"), std::string::npos) << lines_->at(0);
}

}  // namespace
}  // namespace warp::daemon
