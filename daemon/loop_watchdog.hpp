// The systemd watchdog ping (SPEC sections 7 and 8): `WATCHDOG=1` at half of `WATCHDOG_USEC`,
// sent only while the event loop is healthy.
//
// The ping is the completion of a timer on warpd's one io_context, so it doubles as a loop-lag
// probe: each tick measures how late its timer fired. A wedged loop sends nothing (the timer
// cannot fire) and systemd restarts the service after WatchdogSec; a congested loop whose
// timers fire later than the lag bound withholds its pings until timers are on time again.
// A database outage does not stop the pings: store calls never block the loop.
//
// The lag bound is a quarter of the watchdog interval. A tick that pings with lag L comes
// half an interval plus L after the previous tick, so with L < interval/4 consecutive pings
// are at most 3/4 of the interval apart: a quarter of the interval is left for the datagram
// and for systemd, and a loop that is healthy by this measure is never killed by mistake.
//
// No config keys: systemd's WatchdogSec= (exported as WATCHDOG_USEC, WATCHDOG_PID) decides.
// Children never see these variables: exec runners pass an allow-listed environment
// (scheduler::kExecInheritedEnvironment); warpd's own environment is left as it is.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "logging/log.hpp"

namespace warp::daemon {

/// Thread-safety: Start, Stop and the tick run on the executor's thread; last_lag(),
/// pings_sent() and ticks_withheld() may be read from any thread.
class LoopWatchdog {
 public:
  using Clock = std::chrono::steady_clock;
  /// Sends one sd_notify state line ("WATCHDOG=1").
  using Notifier = std::function<void(const std::string&)>;

  /// The watchdog interval systemd asked this process for: WATCHDOG_USEC when WATCHDOG_PID is
  /// absent or is this process (sd_watchdog_enabled; the environment is not unset). nullopt
  /// when there is none; an unparsable value is logged as a warning and means none.
  static std::optional<std::chrono::microseconds> IntervalFromEnvironment(
      const logging::Logger& log);

  /// Sends "WATCHDOG=1" with sd_notify(0, ...) to $NOTIFY_SOCKET.
  static void SdNotify(const std::string& state);

  /// `interval` is WATCHDOG_USEC; nullopt (or a non-positive one) disables the watchdog and
  /// Start does nothing.
  LoopWatchdog(boost::asio::any_io_executor executor,
               std::optional<std::chrono::microseconds> interval, Notifier notify,
               logging::Logger log);

  LoopWatchdog(const LoopWatchdog&) = delete;
  LoopWatchdog& operator=(const LoopWatchdog&) = delete;

  /// Starts the ticks: the first one as soon as the loop runs it, then every period(), on an
  /// absolute schedule. Does nothing when disabled or already started.
  void Start();
  /// Cancels the ticks; no ping is sent after it. The timer holds no work afterwards, so it
  /// does not keep io_context::run() alive.
  void Stop();

  bool enabled() const { return interval_.has_value(); }
  /// Half of the interval (zero when disabled).
  std::chrono::microseconds period() const { return period_; }
  /// A tick later than this withholds its ping: a quarter of the interval.
  std::chrono::microseconds lag_bound() const { return lag_bound_; }

  /// How late the last tick fired; nullopt before the first one.
  std::optional<std::chrono::microseconds> last_lag() const;
  std::uint64_t pings_sent() const { return pings_sent_.load(std::memory_order_relaxed); }
  /// Ticks whose lag was past the bound.
  std::uint64_t ticks_withheld() const { return ticks_withheld_.load(std::memory_order_relaxed); }

 private:
  void Arm();
  void Tick();

  std::optional<std::chrono::microseconds> interval_;
  std::chrono::microseconds period_{0};
  std::chrono::microseconds lag_bound_{0};
  Notifier notify_;
  logging::Logger log_;
  boost::asio::steady_timer timer_;
  Clock::time_point next_;  ///< when the armed tick is due
  bool running_ = false;
  bool lagging_ = false;  ///< the last tick was past the bound (logged once per episode)
  std::uint64_t withheld_in_episode_ = 0;
  Clock::time_point lagging_since_;
  std::chrono::microseconds worst_lag_in_episode_{0};

  static constexpr std::int64_t kNoLag = -1;
  std::atomic<std::int64_t> last_lag_us_{kNoLag};
  std::atomic<std::uint64_t> pings_sent_{0};
  std::atomic<std::uint64_t> ticks_withheld_{0};
};

}  // namespace warp::daemon
