#include "daemon/store_health.hpp"

namespace warp::daemon {

bool StoreHealth::Unreachable(const std::string& error, Clock::time_point now) {
  ++failed_calls_;
  if (since_) {
    // The same outage: no new record; the STATUS line follows a changed reason.
    if (error == error_)
      return false;
    error_ = error;
    return true;
  }
  since_ = now;
  failed_calls_ = 1;
  error_ = error;
  log_.Error(logging::Event::kStoreUnreachable, {},
             "store unreachable: {}; warpd keeps running and retries with backoff", error);
  return true;
}

bool StoreHealth::Reachable(Clock::time_point now) {
  if (!since_)
    return false;
  const auto lasted = std::chrono::duration_cast<std::chrono::milliseconds>(now - *since_);
  log_.Info(logging::Event::kStoreReachable, {},
            "store reachable again after {:.1f}s, {} failed attempt(s)",
            static_cast<double>(lasted.count()) / 1000.0, failed_calls_);
  if (on_outage_ended_) {
    // Wall-clock instants from the monotonic duration: a clock step during the outage must not
    // make it look longer or shorter than it was.
    const auto end = std::chrono::system_clock::now();
    on_outage_ended_(Outage{end - lasted, end, failed_calls_, error_});
  }
  since_.reset();
  failed_calls_ = 0;
  error_.clear();
  return true;
}

std::string StoreHealth::status() const {
  return since_ ? "degraded: store unreachable: " + error_ : std::string();
}

}  // namespace warp::daemon
