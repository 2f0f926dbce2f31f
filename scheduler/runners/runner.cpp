#include "scheduler/runners/runner.hpp"

#include <utility>

#include <fmt/format.h>

#include <stdexcept>

#include "scheduler/runners/exec_runner.hpp"
#include "scheduler/runners/http_runner.hpp"
#include "scheduler/runners/notify_runner.hpp"
#include "scheduler/runners/null_runner.hpp"

namespace warp::scheduler {

std::string_view ToString(DispatchResult::Status s) {
  using Status = DispatchResult::Status;
  switch (s) {
    case Status::kDone:
      return "done";
    case Status::kFailed:
      return "failed";
    case Status::kTransportError:
      return "transport_error";
    case Status::kTimedOut:
      return "timed_out";
    case Status::kStopped:
      return "stopped";
  }
  return "unknown";
}

std::unique_ptr<Runner> MakeRunner(const config::RunnerSettings& settings,
                                   boost::asio::any_io_executor executor, logging::Logger log) {
  switch (settings.transport) {
    case config::Transport::kExec:
      return std::make_unique<ExecRunner>(settings, std::move(executor), std::move(log));
    case config::Transport::kNull:
      return std::make_unique<NullRunner>(std::move(executor));
    case config::Transport::kHttp:
      try {
        return std::make_unique<HttpRunner>(settings, std::move(executor), std::move(log));
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(fmt::format("runner '{}': {}", settings.name, e.what()));
      } catch (const std::runtime_error& e) {
        throw std::runtime_error(fmt::format("runner '{}': {}", settings.name, e.what()));
      }
    case config::Transport::kNotify:
      return std::make_unique<NotifyRunner>(settings, std::move(executor), std::move(log));
  }
  throw std::invalid_argument(fmt::format("runner '{}': unknown transport", settings.name));
}

}  // namespace warp::scheduler
