// Runners deliver one dispatch to an agent (SPEC section 6). They are declared only in the TOML
// config, so write access to the database never turns into command execution.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio/any_io_executor.hpp>
#include <functional>
#include <memory>
#include <string>

#include "config/settings.hpp"
#include "logging/log.hpp"
#include "store/model.hpp"

namespace warp::scheduler {

/// Everything a runner hands to the agent: the work and the lease it runs under.
struct DispatchRequest {
  std::string agent_slug;
  store::WorkItemId work_id = 0;
  std::string kind;
  std::string payload_json;
  store::LeaseId lease_id = 0;
  store::FencingToken fencing_token = 0;
  std::string cycle_id;
  store::TimePoint lease_expires_at;  ///< store (database) time
  /// Optional. Called at most once, on the runner's executor, when the agent has acknowledged
  /// the work and will complete it itself through warp.complete_work (http: a 2xx without an
  /// outcome; notify: at once). The execution then stays open, and its lease renewed, until
  /// Stop() (the lease ended: the agent's completion released it, or it expired) or the
  /// runner's timeout (kTimedOut, a retryable failure, completed through the fencing check).
  std::function<void()> on_handed_off;
};

struct DispatchResult {
  enum class Status {
    kDone,            ///< the agent finished the work (exec: exit 0)
    kFailed,          ///< the agent ran and reported failure (exec: non-zero exit)
    kTransportError,  ///< the work never reached the agent (exec: spawn failed)
    kTimedOut,        ///< the runner's timeout elapsed; the agent was stopped
    kStopped,         ///< Stop() was called (lost lease, shutdown); the agent was stopped
  };
  Status status = Status::kDone;
  std::string detail;  ///< one line for logs and last_error ("exit status 3", "killed by SIGKILL")
  bool retry = true;   ///< false: the failure is final (e.g. HTTP 4xx)
  /// The agent had acknowledged the work (see DispatchRequest::on_handed_off) before this
  /// result ended the execution; with kStopped the runner's part was over long before.
  bool handed_off = false;
};

std::string_view ToString(DispatchResult::Status s);

/// One running dispatch. Thread-safety: use from the executor's thread only.
class Execution {
 public:
  virtual ~Execution() = default;
  /// Asks the agent to stop (exec: SIGTERM to its process group, SIGKILL after kill_grace).
  /// The completion handler still runs exactly once, with kStopped unless the work finished
  /// first. Calling Stop more than once, or after completion, is harmless.
  virtual void Stop(std::string reason) = 0;
};

class Runner {
 public:
  using OnDone = std::function<void(DispatchResult)>;
  virtual ~Runner() = default;
  /// Starts the dispatch. `on_done` runs exactly once on the runner's executor, never from
  /// inside Start itself.
  virtual std::shared_ptr<Execution> Start(DispatchRequest request, OnDone on_done) = 0;
  /// Non-empty for the notify transport: the channel the store notifies on, inside the
  /// transaction that records a dispatch of this runner (DispatchCandidate::notify_channel).
  virtual std::string notify_channel() const { return {}; }
};

/// Builds the runner that `settings` describes. Throws std::invalid_argument for a transport
/// this build cannot serve or a URL it cannot use, std::runtime_error when a file the runner
/// reads (http: bearer_token_file) cannot be read.
std::unique_ptr<Runner> MakeRunner(const config::RunnerSettings& settings,
                                   boost::asio::any_io_executor executor, logging::Logger log);

}  // namespace warp::scheduler
