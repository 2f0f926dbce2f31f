#include "daemon/loop_watchdog.hpp"

#include <systemd/sd-daemon.h>

#include <cstring>

namespace warp::daemon {
namespace {

using std::chrono::microseconds;

double Millis(microseconds d) {
  return static_cast<double>(d.count()) / 1000.0;
}

}  // namespace

std::optional<microseconds> LoopWatchdog::IntervalFromEnvironment(const logging::Logger& log) {
  std::uint64_t usec = 0;
  // unset_environment = 0: warpd's environment stays as systemd gave it; children get an
  // allow-listed one anyway.
  const int r = sd_watchdog_enabled(0, &usec);
  if (r < 0) {
    log.Warn(logging::Event::kGeneral, {},
             "ignoring the systemd watchdog: WATCHDOG_USEC or WATCHDOG_PID is invalid ({})",
             std::strerror(-r));
    return std::nullopt;
  }
  if (r == 0 || usec == 0)
    return std::nullopt;
  return microseconds(static_cast<microseconds::rep>(usec));
}

void LoopWatchdog::SdNotify(const std::string& state) {
  (void)sd_notify(0, state.c_str());
}

LoopWatchdog::LoopWatchdog(boost::asio::any_io_executor executor,
                           std::optional<microseconds> interval, Notifier notify,
                           logging::Logger log)
    : notify_(std::move(notify)), log_(std::move(log)), timer_(std::move(executor)) {
  if (interval && interval->count() > 0) {
    interval_ = interval;
    period_ = *interval / 2;
    lag_bound_ = *interval / 4;
  }
}

void LoopWatchdog::Start() {
  if (!enabled() || running_)
    return;
  running_ = true;
  log_.Info(logging::Event::kGeneral, {},
            "systemd watchdog: WATCHDOG=1 every {:.1f}ms while event-loop timers fire less than "
            "{:.1f}ms late",
            Millis(period_), Millis(lag_bound_));
  // The first tick goes through the loop like every other: it is due now.
  next_ = Clock::now();
  Arm();
}

void LoopWatchdog::Stop() {
  running_ = false;
  timer_.cancel();
}

std::optional<microseconds> LoopWatchdog::last_lag() const {
  const auto lag = last_lag_us_.load(std::memory_order_relaxed);
  if (lag == kNoLag)
    return std::nullopt;
  return microseconds(lag);
}

void LoopWatchdog::Arm() {
  timer_.expires_at(next_);
  timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec || !running_)
      return;
    Tick();
  });
}

void LoopWatchdog::Tick() {
  const auto now = Clock::now();
  const auto lag = std::max(microseconds(0), std::chrono::duration_cast<microseconds>(now - next_));
  last_lag_us_.store(lag.count(), std::memory_order_relaxed);

  if (lag < lag_bound_) {
    if (lagging_) {
      lagging_ = false;
      log_.Info(logging::Event::kLoopOnTime, {},
                "event-loop timers are on time again after {:.1f}s: {} watchdog ping(s) were "
                "withheld, worst lag {:.1f}ms",
                Millis(std::chrono::duration_cast<microseconds>(now - lagging_since_)) / 1000.0,
                withheld_in_episode_, Millis(worst_lag_in_episode_));
    }
    try {
      notify_("WATCHDOG=1");
      pings_sent_.fetch_add(1, std::memory_order_relaxed);
    } catch (const std::exception& e) {  // one failed ping must not end the ticks
      log_.Warn(logging::Event::kGeneral, {}, "systemd watchdog ping failed: {}", e.what());
    }
  } else {
    ticks_withheld_.fetch_add(1, std::memory_order_relaxed);
    if (!lagging_) {
      lagging_ = true;
      lagging_since_ = now;
      withheld_in_episode_ = 0;
      worst_lag_in_episode_ = microseconds(0);
      log_.Warn(logging::Event::kLoopLagging, {},
                "event loop lagging: a timer fired {:.1f}ms late (bound {:.1f}ms); systemd "
                "watchdog pings are withheld until timers are on time again",
                Millis(lag), Millis(lag_bound_));
    }
    ++withheld_in_episode_;
    worst_lag_in_episode_ = std::max(worst_lag_in_episode_, lag);
  }

  // The next tick on the absolute schedule; ticks missed while the loop was late are not made
  // up (a burst of pings would prove nothing).
  next_ += period_;
  if (next_ <= now)
    next_ = now + period_;
  Arm();
}

}  // namespace warp::daemon
