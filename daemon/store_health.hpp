// Whether the store answers, as warpd's own periodic calls see it (the instance heartbeat every
// interval, and each cycle): the daemon's view of a database outage (SPEC sections 7 and 8).
//
// The first failed call of an outage is logged once (Event::kStoreUnreachable), the first
// successful call after it once (Event::kStoreReachable, with how long it lasted and how many
// calls failed); the calls in between are not logged again here. Meanwhile status() is the
// STATUS= line systemd shows: `degraded: store unreachable: <reason>`.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "logging/log.hpp"

namespace warp::daemon {

/// Thread-safety: none; use from the event loop's thread.
class StoreHealth {
 public:
  using Clock = std::chrono::steady_clock;

  /// An outage that ended, on the host's wall clock (for the watchdog's store_unreachable).
  struct Outage {
    std::chrono::system_clock::time_point start;
    std::chrono::system_clock::time_point end;
    std::uint64_t failed_attempts = 0;
    std::string last_error;
  };

  explicit StoreHealth(logging::Logger log) : log_(std::move(log)) {}

  /// A call failed because the store could not be reached (StoreError::Kind::kUnavailable).
  /// Returns true when the STATUS line changed (the outage started, or its reason changed).
  bool Unreachable(const std::string& error, Clock::time_point now = Clock::now());
  /// A call succeeded. Returns true when this ends an outage.
  bool Reachable(Clock::time_point now = Clock::now());

  /// Called by the Reachable() that ends an outage.
  void OnOutageEnded(std::function<void(const Outage&)> callback) {
    on_outage_ended_ = std::move(callback);
  }

  bool degraded() const { return since_.has_value(); }
  /// `degraded: store unreachable: <reason>` during an outage; empty otherwise.
  std::string status() const;

 private:
  logging::Logger log_;
  std::optional<Clock::time_point> since_;  ///< first failed call of the current outage
  std::uint64_t failed_calls_ = 0;
  std::string error_;
  std::function<void(const Outage&)> on_outage_ended_;
};

}  // namespace warp::daemon
