// The exec transport (SPEC section 6): one child process per dispatch, argv without a shell.
//
// Config keys ([runner.NAME], transport = "exec"): `command` (argv), `timeout`, `kill_grace`.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <array>
#include <boost/asio/any_io_executor.hpp>
#include <memory>
#include <string_view>

#include "scheduler/runners/runner.hpp"

namespace warp::scheduler {

/// The only variables of warpd's own environment a child inherits. Everything else
/// (NOTIFY_SOCKET, WATCHDOG_*, CREDENTIALS_DIRECTORY, PG*, ...) stays behind: no secret of the
/// daemon reaches an agent.
inline constexpr std::array<std::string_view, 5> kExecInheritedEnvironment{"PATH", "LANG", "LC_ALL",
                                                                           "TZ", "HOME"};

/// Runs `settings.command` for each dispatch.
///
/// The child runs in a process group of its own with default signal dispositions, an empty
/// signal mask, stdin/stdout/stderr on pipes and no other descriptor of warpd. It gets the
/// allow-listed environment plus WARP_AGENT, WARP_WORK_ID, WARP_WORK_KIND, WARP_LEASE_ID,
/// WARP_FENCING_TOKEN, WARP_CYCLE_ID and WARP_LEASE_EXPIRES_AT (RFC 3339, UTC, whole seconds),
/// and the payload JSON on stdin followed by EOF. Each stdout line is logged at info, each
/// stderr line at warn (event runner_output, the work's fields); lines are cut at 4 KiB.
///
/// Outcome: exit 0 -> kDone; other exit or a signal -> kFailed ("exit status 3",
/// "killed by SIGSEGV"); `timeout` elapsed -> kTimedOut; Execution::Stop -> kStopped; spawn
/// failure -> kTransportError. Timeout and Stop send SIGTERM (and SIGCONT) to the group, then
/// SIGKILL after `kill_grace`. When the child exits, whatever is left of its process group is
/// killed with SIGKILL before the child is reaped: no process of a dispatch outlives it.
/// A non-positive `timeout` means no timeout.
///
/// Nothing blocks the executor: exit is observed through a pidfd, pipes are asynchronous.
/// Writing the payload never raises SIGPIPE, whether or not warpd ignores it. Requires that
/// nothing else in the process reaps children (no SIGCHLD = SIG_IGN, no waitpid(-1)).
/// Thread-safety: Start and Execution::Stop from the executor's thread only.
class ExecRunner final : public Runner {
 public:
  ExecRunner(config::RunnerSettings settings, boost::asio::any_io_executor executor,
             logging::Logger log);

  /// Spawns the child. Never throws for a failure of the child or of spawning it; those arrive
  /// through `on_done`. May throw std::bad_alloc.
  std::shared_ptr<Execution> Start(DispatchRequest request, OnDone on_done) override;

 private:
  std::shared_ptr<const config::RunnerSettings> settings_;
  boost::asio::any_io_executor executor_;
  logging::Logger log_;
};

}  // namespace warp::scheduler
