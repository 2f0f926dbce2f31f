// The null transport (SPEC section 6): completes every dispatch at once. Benchmarks, dry runs.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio/any_io_executor.hpp>
#include <memory>

#include "scheduler/runners/runner.hpp"

namespace warp::scheduler {

/// Completes each dispatch with kDone, posted to `executor` (never from inside Start). Stop is
/// a no-op: the work is already finished when Start returns.
class NullRunner final : public Runner {
 public:
  explicit NullRunner(boost::asio::any_io_executor executor);
  std::shared_ptr<Execution> Start(DispatchRequest request, OnDone on_done) override;

 private:
  boost::asio::any_io_executor executor_;
};

}  // namespace warp::scheduler
