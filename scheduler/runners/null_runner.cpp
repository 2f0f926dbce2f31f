#include "scheduler/runners/null_runner.hpp"

#include <utility>

#include <boost/asio/post.hpp>

namespace warp::scheduler {
namespace {

class NullExecution final : public Execution {
 public:
  void Stop(std::string /*reason*/) override {}
};

}  // namespace

NullRunner::NullRunner(boost::asio::any_io_executor executor) : executor_(std::move(executor)) {}

std::shared_ptr<Execution> NullRunner::Start(DispatchRequest /*request*/, OnDone on_done) {
  // Posted, not called: the caller registers the execution after Start returns.
  boost::asio::post(executor_, [on_done = std::move(on_done)]() {
    on_done(DispatchResult{DispatchResult::Status::kDone, "null runner", true});
  });
  return std::make_shared<NullExecution>();
}

}  // namespace warp::scheduler
