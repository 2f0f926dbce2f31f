// The notify transport (SPEC section 6): the PostgreSQL store sends pg_notify(channel, JSON) in
// the transaction that records the dispatch, so a notification goes out if and only if the
// dispatch is recorded; the agent completes the work through warp.complete_work.
//
// Config keys ([runner.NAME], transport = "notify"): `channel` (default "warp_dispatch", a
// lower-case SQL identifier), `timeout` (how long the agent has to complete; default 10m).
// Only with store.backend = "postgres" (the config validation says so otherwise).
//
// The notification's payload (JSON text) carries work_id, kind, payload, agent, lease_id,
// fencing_token, cycle_id, lease_expires_at and `complete`, like the http runner's document.
// When that text would reach PostgreSQL's NOTIFY limit (8000 bytes) it carries only the ids
// (work_id, agent, lease_id, fencing_token, cycle_id, lease_expires_at) and "truncated": true;
// the agent reads kind and payload from warp.work_items by work_id. See the migration that
// defines warp.dispatch_notice.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio/any_io_executor.hpp>
#include <memory>
#include <string>

#include "scheduler/runners/runner.hpp"

namespace warp::scheduler {

/// By the time Start runs, the store has sent the notification (DispatchCandidate::
/// notify_channel = notify_channel()). Start hands the work off at once (on_handed_off, posted)
/// and keeps the execution open, so the lease keeper renews the lease, until Stop() (the lease
/// ended: the agent's completion released it, or it was lost; kStopped with handed_off) or
/// `timeout` (kTimedOut with retry: the work is failed through the fencing check and retried).
/// Thread-safety: Start and Execution::Stop from the executor's thread only.
class NotifyRunner final : public Runner {
 public:
  NotifyRunner(config::RunnerSettings settings, boost::asio::any_io_executor executor,
               logging::Logger log);
  std::shared_ptr<Execution> Start(DispatchRequest request, OnDone on_done) override;
  std::string notify_channel() const override { return settings_.channel; }

 private:
  config::RunnerSettings settings_;
  boost::asio::any_io_executor executor_;
  logging::Logger log_;
};

}  // namespace warp::scheduler
