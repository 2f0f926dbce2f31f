#include "scheduler/runners/notify_runner.hpp"

#include <utility>

#include <fmt/format.h>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

namespace warp::scheduler {
namespace {

using Status = DispatchResult::Status;

/// Waits for the agent's own completion: open until Stop() or the timeout.
class HandedOffExecution final : public Execution,
                                 public std::enable_shared_from_this<HandedOffExecution> {
 public:
  HandedOffExecution(boost::asio::any_io_executor executor, DispatchRequest request,
                     Runner::OnDone on_done, config::Duration timeout)
      : request_(std::move(request)),
        on_done_(std::move(on_done)),
        timer_(executor),
        timeout_(timeout) {}

  void Begin(boost::asio::any_io_executor executor) {
    // Posted: Start returns (and the caller registers the execution) before anything happens.
    boost::asio::post(executor, [self = shared_from_this()] {
      if (self->finished_)
        return;
      if (self->request_.on_handed_off)
        self->request_.on_handed_off();
      if (self->finished_)
        return;
      self->timer_.expires_after(self->timeout_);
      self->timer_.async_wait([self](const boost::system::error_code& ec) {
        if (ec)
          return;
        self->Finish({Status::kTimedOut,
                      fmt::format("notified, but the agent did not complete within {}ms",
                                  self->timeout_.count()),
                      true, true});
      });
    });
  }

  void Stop(std::string reason) override {
    if (finished_)
      return;
    timer_.cancel();
    // Posted: on_done never runs from inside Stop's caller.
    boost::asio::post(timer_.get_executor(),
                      [self = shared_from_this(), reason = std::move(reason)] {
                        self->Finish({Status::kStopped, "after hand-off: " + reason, true, true});
                      });
  }

 private:
  void Finish(DispatchResult result) {
    if (finished_)
      return;
    finished_ = true;
    timer_.cancel();
    auto on_done = std::move(on_done_);
    on_done(std::move(result));
  }

  DispatchRequest request_;
  Runner::OnDone on_done_;
  boost::asio::steady_timer timer_;
  config::Duration timeout_;
  bool finished_ = false;
};

}  // namespace

NotifyRunner::NotifyRunner(config::RunnerSettings settings, boost::asio::any_io_executor executor,
                           logging::Logger log)
    : settings_(std::move(settings)), executor_(std::move(executor)), log_(std::move(log)) {}

std::shared_ptr<Execution> NotifyRunner::Start(DispatchRequest request, OnDone on_done) {
  auto execution = std::make_shared<HandedOffExecution>(executor_, std::move(request),
                                                        std::move(on_done), settings_.timeout);
  execution->Begin(executor_);
  return execution;
}

}  // namespace warp::scheduler
