// Test support: run an awaitable to completion on an io_context, and a manual clock.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <chrono>
#include <future>
#include <memory>
#include <stdexcept>

#include "store/model.hpp"

namespace warp::test {

/// Runs `task` on `io` until it completes (other ready handlers run too) and returns its value
/// or rethrows its exception. Fails after `limit` of real time so a hang is an error, not a stall.
template <typename T>
T Await(boost::asio::io_context& io, boost::asio::awaitable<T> task,
        std::chrono::seconds limit = std::chrono::seconds(20)) {
  auto future = boost::asio::co_spawn(io, std::move(task), boost::asio::use_future);
  const auto deadline = std::chrono::steady_clock::now() + limit;
  io.restart();
  while (future.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
    if (std::chrono::steady_clock::now() > deadline)
      throw std::runtime_error("Await: timed out");
    io.run_one_for(std::chrono::milliseconds(50));
    io.restart();
  }
  return future.get();
}

/// Runs ready handlers (and those becoming ready) for `duration` of real time.
inline void RunFor(boost::asio::io_context& io, std::chrono::milliseconds duration) {
  io.restart();
  io.run_for(duration);
}

/// A wall clock that moves only when told to.
class ManualClock {
 public:
  explicit ManualClock(store::TimePoint start) : now_(std::make_shared<store::TimePoint>(start)) {}
  store::TimePoint Now() const { return *now_; }
  void Advance(store::Duration d) { *now_ += d; }
  /// A callable for MemoryStore's constructor; it shares this clock's time.
  std::function<store::TimePoint()> AsFunction() const {
    return [now = now_] { return *now; };
  }

 private:
  std::shared_ptr<store::TimePoint> now_;
};

}  // namespace warp::test
