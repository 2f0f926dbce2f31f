// The watchdog (SPEC section 7): a pass looks, records and reports; it never repairs, revokes,
// kills or deletes anything.
//
// A pass is three store round trips whatever the size of the store:
//   Now() ............... a probe: a latency sample (store_latency) and host vs store time
//                         (clock_skew)
//   ScanWatchdogFacts ... one read of every enabled store-backed rule's candidate facts
//   ApplyObservations ... one atomic write of the observations that should be open now
// In between, the pure rules of watchdog/rules.hpp turn facts into observations. A disabled
// rule is neither scanned nor judged, so its open observations are neither refreshed nor
// resolved. Every opened, escalated and resolved observation is one log record
// (Event::kObservationOpened / kObservationEscalated / kObservationResolved) carrying the
// observation's kind, severity, agent and evidence summary.
//
// The daemon feeds what only it can see: outages (RecordOutage), round-trip times
// (ObserveLatency) and clock samples (ObserveClock); they become store_unreachable,
// store_latency and clock_skew observations of this instance at the next pass.
//
// Config keys: watchdog.* (thresholds, disabled_rules), daemon.instance, daemon.group,
// scheduler.interval, scheduler.takeover_after. Tables: reads all of schema warp (through the
// store), writes watchdog_observations only.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "config/settings.hpp"
#include "logging/log.hpp"
#include "store/store.hpp"
#include "watchdog/rules.hpp"

namespace warp::watchdog {

/// What one pass did.
struct PassReport {
  store::TimePoint at;  ///< store time the pass judged
  /// Opened, escalated and resolved observations (the ones that were logged), by kind, subject.
  std::vector<store::ObservationChange> changes;
  int persisted = 0;  ///< observations still open, neither new nor escalated
  int open = 0;       ///< observations this pass confirmed open (opened + escalated + persisted)
};

/// The outcome of Pass(): a report, or why there is none.
struct PassOutcome {
  std::optional<PassReport> report;
  std::string error;               ///< when the pass failed
  bool store_unavailable = false;  ///< it failed because the store could not be reached
};

/// Thread-safety: none; use from the event loop's thread. The store must outlive it.
class Watchdog {
 public:
  /// The host's wall clock, for clock_skew only (every other judgment uses store time).
  using HostClock = std::function<store::TimePoint()>;

  /// `host_clock` defaults to std::chrono::system_clock::now.
  Watchdog(store::Store& store, const config::Settings& settings, logging::Logger log,
           HostClock host_clock = {});

  /// Takes reloaded thresholds, disabled rules, interval and takeover (instance and group stay).
  void Reconfigure(const config::Settings& settings);

  /// An outage of the store ended (host clock instants). Reported by the next pass.
  void RecordOutage(store::TimePoint start, store::TimePoint end, std::uint64_t failed_attempts,
                    std::string last_error);
  /// A store round trip took `round_trip`. The slowest since the last pass is judged. Callers
  /// leave out calls that waited for a store that was unreachable.
  void ObserveLatency(store::Duration round_trip);
  /// The store said `store_now` during a round trip that started at `host_before` and ended at
  /// `host_after` on the host clock. The latest sample is judged.
  void ObserveClock(store::TimePoint host_before, store::TimePoint store_now,
                    store::TimePoint host_after);

  /// One pass. Throws StoreError when the store fails; the daemon's inputs are then kept for
  /// the next pass.
  store::Task<PassReport> RunPass();

  /// RunPass for a periodic caller: never throws. The first failure of a run of failures is
  /// logged (Event::kWatchdogPassFailed), the following ones are not; the first success after
  /// them says how many passes failed.
  store::Task<PassOutcome> Pass();

  const config::WatchdogSettings& settings() const { return context_.settings; }

 private:
  void Log(const store::ObservationChange& change) const;

  store::Store& store_;
  logging::Logger log_;
  HostClock host_clock_;
  RuleContext context_;  ///< `now` is set by each pass
  std::optional<Outage> outage_;
  LatencySample latency_;
  std::optional<ClockSample> clock_;
  std::uint64_t failed_passes_ = 0;
  bool previous_pass_succeeded_ = true;
};

}  // namespace warp::watchdog
