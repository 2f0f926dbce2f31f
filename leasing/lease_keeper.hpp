// Keeps the leases this instance holds alive while their work runs (SPEC section 5).
//
// Every `leasing.renew_every` all held leases are renewed in one store call. A lease the store
// refuses to renew (expired, released, unknown) is lost: its holder is told at once and must
// stop the work. When the store cannot be reached, a lease is given up locally once its last
// confirmed expiry, measured on the monotonic clock from before the renewal was sent, is less
// than half a renewal period away (userver's Locker does the same). A renewal that neither
// succeeds nor fails in time (a hung connection, a connect backoff) does not hold that up: a
// timer gives a lease up when its local deadline passes. So work stops before its lease expires
// in the database even during an outage.
//
// Config keys: leasing.ttl, leasing.renew_every. Tables: writes agent_leases (renewals).
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <map>
#include <string>

#include "config/settings.hpp"
#include "logging/log.hpp"
#include "store/store.hpp"

namespace warp::leasing {

/// Thread-safety: use from the executor's thread only. Must outlive Stop()'s completion.
class LeaseKeeper {
 public:
  using OnLost = std::function<void(std::string reason)>;

  LeaseKeeper(boost::asio::any_io_executor executor, store::Store& store,
              config::LeasingSettings settings, logging::Logger log);

  /// Starts renewing every renew_every.
  void Start();
  /// Stops renewing; held leases are left as they are (they expire by time).
  void Stop();
  void UpdateSettings(config::LeasingSettings settings);

  /// Renews `lease` until Forget(); calls `on_lost` once if the lease is lost.
  void Hold(const store::Lease& lease, std::string agent_slug, OnLost on_lost);
  /// The work finished: stop renewing (the completion releases the lease).
  void Forget(store::LeaseId lease);
  /// The agent took the work over and completes it itself (warp.complete_work): keep renewing,
  /// and expect the lease to end by the agent's completion, so a refused renewal of it is
  /// logged at info, not as a lost lease. on_lost is still called.
  void MarkHandedOff(store::LeaseId lease);

  /// A renewal round renews at most this many leases per store call (see Scheduler's
  /// kCompletionChunk: one statement for a whole cycle's leases ran into its deadline).
  static constexpr std::size_t kRenewChunk = 5000;

  /// One renewal round now (the periodic loop calls this; tests call it directly).
  store::Task<void> RenewAll();

  std::size_t held() const { return held_.size(); }

 private:
  struct Held {
    store::LeaseRef ref;
    std::string agent_slug;
    OnLost on_lost;
    std::chrono::steady_clock::time_point local_deadline;  ///< last confirmed expiry, locally
    bool handed_off = false;  ///< MarkHandedOff: the lease's end is expected
  };

  boost::asio::awaitable<void> Loop();
  /// Renews `refs` in one store call; on failure gives up those that expire before the next
  /// round can land.
  store::Task<void> RenewChunk(std::vector<store::LeaseRef> refs);
  void Lose(store::LeaseId id, const std::string& reason);
  /// Sets the deadline timer to the earliest local deadline of the held leases.
  /// Points the deadline timer at the earliest local deadline of the held leases.
  void ArmDeadline();
  void ArmAt(std::chrono::steady_clock::time_point at);
  /// The deadline timer fired: gives up every lease whose local deadline has passed.
  void LoseOverdue();

  boost::asio::any_io_executor executor_;
  store::Store& store_;
  config::LeasingSettings settings_;
  logging::Logger log_;
  boost::asio::steady_timer timer_;
  boost::asio::steady_timer deadline_timer_;
  /// Where deadline_timer_ waits; max() when it does not.
  std::chrono::steady_clock::time_point armed_for_ = std::chrono::steady_clock::time_point::max();
  std::map<store::LeaseId, Held> held_;
  bool running_ = false;
};

}  // namespace warp::leasing
