// The http transport (SPEC section 6): one POST of a JSON document per dispatch, on the daemon's
// event loop (Boost.Beast; no thread per request).
//
// Config keys ([runner.NAME], transport = "http"): `url` (http:// or https://), `timeout`,
// `headers` (a table of extra request headers), `bearer_token_file` (its content, trimmed, is
// sent as "Authorization: Bearer ..."; read when the runner is built, i.e. at start and on
// every reload; never logged).
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio/any_io_executor.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "scheduler/runners/runner.hpp"

namespace warp::scheduler {

/// The largest response body read; a longer one fails the dispatch (kFailed, no retry).
inline constexpr std::size_t kHttpBodyLimit = 64 * 1024;
/// Idle keep-alive connections kept per scheme/host/port, and for how long.
inline constexpr std::size_t kHttpIdlePerHost = 8;
/// Connections open at once per scheme/host/port (per runner); further dispatches wait for
/// one (within their timeout), so a large scheduler.max_inflight cannot exhaust descriptors.
inline constexpr std::size_t kHttpConnectionsPerHost = 64;
inline constexpr std::chrono::seconds kHttpIdleFor{30};

/// The JSON document POSTed for `request`: work_id, kind, payload (the work's JSON object),
/// agent, lease_id, fencing_token, cycle_id, lease_expires_at (RFC 3339, UTC, milliseconds
/// rounded down; database time) and `complete`, how to report the outcome.
std::string HttpDispatchDocument(const DispatchRequest& request);

/// POSTs each dispatch to `settings.url`, with the fencing token also in the header
/// `Warp-Fencing-Token`, and `Content-Type: application/json`.
///
/// Outcome of the response:
///   2xx with a JSON body {"outcome": "done"} / {"outcome": "failed"}: kDone / kFailed (retry),
///       the body's "detail" (if any) as the detail;
///   any other 2xx: accepted. The agent completes the work itself through warp.complete_work
///       (or `warpctl complete`) under the lease in the document. The execution calls
///       DispatchRequest::on_handed_off and stays open, so the lease keeper keeps renewing the
///       lease, until Stop() (the lease ended: the agent's completion released it or it was
///       lost; the result is kStopped with handed_off) or until `timeout` since Start
///       (kTimedOut, retry: the work is failed through the fencing check and retried);
///   3xx: kFailed without retry (redirects are not followed: a moved receiver is a
///       configuration error that retrying cannot fix);
///   4xx: kFailed without retry ("HTTP 404 Not Found");
///   5xx (and other statuses): kFailed with retry;
///   no connection (resolve, connect, TLS handshake or certificate failure, or the request
///       could not be written): kTransportError (retry);
///   the connection broke after the request was written (a server that closes mid-response):
///       kFailed with retry (the agent may have seen the work; the fencing token guards it);
///   a body over kHttpBodyLimit: kFailed without retry;
///   `timeout` elapsed before the response was read: kTimedOut (retry).
///
/// Keep-alive connections are reused: idle ones are pooled per scheme/host/port (at most
/// kHttpIdlePerHost, each for at most kHttpIdleFor), and at most kHttpConnectionsPerHost are
/// open at once; a dispatch beyond that waits for one. A request on a reused connection that the
/// server had closed meanwhile (no byte of a response) is sent once more on a new connection.
/// https:// verifies the server's certificate chain against the system's trust store and its
/// name against the URL's host (SNI is sent).
///
/// Thread-safety: Start and Execution::Stop from the executor's thread only. The runner may be
/// destroyed while executions run: they keep what they need alive.
class HttpRunner final : public Runner {
 public:
  /// Throws std::invalid_argument for a URL it cannot use and std::runtime_error when
  /// bearer_token_file cannot be read or is empty (the message names the file, never its
  /// content).
  HttpRunner(config::RunnerSettings settings, boost::asio::any_io_executor executor,
             logging::Logger log);
  ~HttpRunner() override;

  /// Never throws for a failure of the exchange; those arrive through `on_done`.
  std::shared_ptr<Execution> Start(DispatchRequest request, OnDone on_done) override;

  /// Connections this runner has opened so far (for tests of connection reuse).
  std::uint64_t connections_opened() const;
  /// Connections open or being opened now, idle ones included (at most
  /// kHttpConnectionsPerHost).
  std::size_t connections_open() const;

  struct Shared;  // settings, TLS context and the idle-connection pool; shared with executions

 private:
  std::shared_ptr<Shared> shared_;
};

}  // namespace warp::scheduler
