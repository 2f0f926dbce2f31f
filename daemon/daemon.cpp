#include "daemon/daemon.hpp"

#include <signal.h>
#include <sysexits.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "config/config.hpp"
#include "config/credentials.hpp"
#include "config/fixtures.hpp"
#include "daemon/loop_watchdog.hpp"
#include "daemon/store_health.hpp"
#include "leasing/lease_keeper.hpp"
#include "logging/journal_sink.hpp"
#include "logging/log.hpp"
#include "migrations/schema_version.hpp"
#include "scheduler/scheduler.hpp"
#include "store/memory/memory_store.hpp"
#include "store/postgres/postgres_store.hpp"
#include "watchdog/watchdog.hpp"

namespace warp::daemon {
namespace {

namespace asio = boost::asio;
using logging::Event;

logging::Format ChooseFormat(config::LogFormat format) {
  switch (format) {
    case config::LogFormat::kJournal:
      return logging::Format::kJournal;
    case config::LogFormat::kJson:
      return logging::Format::kJson;
    case config::LogFormat::kText:
      return logging::Format::kText;
    case config::LogFormat::kAuto:
      break;
  }
  return logging::StderrIsJournal() ? logging::Format::kJournal : logging::Format::kText;
}

spdlog::level::level_enum LevelOf(const config::LogSettings& log) {
  return logging::ParseLevel(log.level).value_or(spdlog::level::info);
}

void Notify(const std::string& state) {
  (void)sd_notify(0, state.c_str());
}

std::string HostName() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0)
    return "unknown";
  return buf;
}

/// The DSN with `application_name=warpd/<instance>` unless it names one itself.
std::string WithApplicationName(const std::string& dsn, const std::string& instance) {
  if (dsn.find("application_name") != std::string::npos)
    return dsn;
  const std::string value = "warpd/" + instance;
  if (dsn.starts_with("postgres://") || dsn.starts_with("postgresql://")) {
    return dsn + (dsn.find('?') == std::string::npos ? "?" : "&") + "application_name=" + value;
  }
  return dsn + " application_name=" + value;
}

/// The store the config asks for. Throws std::runtime_error naming what is wrong.
std::unique_ptr<store::Store> MakeStore(const config::Settings& settings,
                                        const std::filesystem::path& config_dir,
                                        boost::asio::any_io_executor executor,
                                        const logging::Logger& log) {
  const auto& s = settings.store;
  if (s.backend == config::StoreBackend::kMemory) {
    return std::make_unique<store::MemoryStore>([] { return std::chrono::system_clock::now(); });
  }
  store::postgres::PostgresStoreSettings pg;
  pg.pool.conninfo = WithApplicationName(s.dsn, settings.daemon.instance);
  pg.pool.password = config::DatabasePassword(s, config_dir);
  pg.pool.connect_timeout = s.connect_timeout;
  pg.pool.acquire_timeout = s.connect_timeout;
  // Claim lanes and completion lanes (Scheduler::kClaimLanes, kCompletionLanes), and one for
  // the rest (heartbeats, renewals, the watchdog), so that these do not queue behind them.
  pg.pool.size = scheduler::Scheduler::kClaimLanes + scheduler::Scheduler::kCompletionLanes + 1;
  pg.pool.session_setup = "SET TIME ZONE 'UTC'";
  return std::make_unique<store::postgres::PostgresStore>(executor, std::move(pg), log);
}

/// Thrown when the database schema is not the one this build was made for.
class SchemaMismatch : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Daemon {
 public:
  Daemon(asio::io_context& io, Options options, config::Settings settings, logging::Logger log,
         std::unique_ptr<store::Store> store)
      : io_(io),
        options_(std::move(options)),
        settings_(std::move(settings)),
        log_(std::move(log)),
        store_(std::move(store)),
        signals_(io, SIGINT, SIGTERM, SIGHUP),
        stop_timer_(io),
        heartbeat_timer_(io),
        watchdog_timer_(io),
        lease_keeper_(io.get_executor(), *store_, settings_.leasing, log_),
        store_health_(log_),
        loop_watchdog_(io.get_executor(), LoopWatchdog::IntervalFromEnvironment(log_), Notify,
                       log_) {}

  asio::awaitable<int> Main() {
    if (auto* pg = dynamic_cast<store::postgres::PostgresStore*>(store_.get())) {
      Notify(fmt::format(
          "EXTEND_TIMEOUT_USEC={}\nSTATUS=connecting to the store",
          std::chrono::duration_cast<std::chrono::microseconds>(settings_.store.connect_timeout * 2)
              .count()));
      const int version = co_await pg->SchemaVersion();
      if (version != migrations::kExpectedSchemaVersion) {
        throw SchemaMismatch(
            fmt::format("the database schema is at version {}, this warpd needs version {}: {}",
                        version, migrations::kExpectedSchemaVersion,
                        version < migrations::kExpectedSchemaVersion
                            ? "run `warpctl migrate up`"
                            : "this warpd is older than the database; install the newer warpd"));
      }
    }
    if (!settings_.store.fixtures.empty()) {
      auto fixtures = config::LoadFixtures(settings_.store.fixtures);
      co_await config::ApplyFixtures(*store_, fixtures, settings_.scheduler.max_attempts);
      log_.Info(Event::kGeneral, {},
                "loaded fixtures {}: {} tool profile(s), {} agent(s), {} work item(s)",
                settings_.store.fixtures.string(), fixtures.tool_profiles.size(),
                fixtures.agents.size(), fixtures.work.size());
    }
    scheduler_.emplace(io_.get_executor(), *store_, lease_keeper_, settings_,
                       scheduler::MakeRunners(settings_, io_.get_executor(), log_), log_);
    scheduler_->OnCycle([this](const scheduler::CycleReport& r) { ReportCycle(r); });
    watchdog_.emplace(*store_, settings_, log_);
    store_health_.OnOutageEnded([this](const StoreHealth::Outage& o) {
      watchdog_->RecordOutage(o.start, o.end, o.failed_attempts, o.last_error);
    });
    lease_keeper_.Start();
    co_await Heartbeat();

    log_.Info(Event::kDaemonStarted, {},
              "warpd {} started: instance {} group {} store {} interval {}ms{}", WARP_VERSION,
              settings_.daemon.instance, settings_.daemon.group,
              settings_.store.backend == config::StoreBackend::kMemory ? "memory" : "postgres",
              settings_.scheduler.interval.count(), options_.once ? " (once)" : "");
    Notify("READY=1\nSTATUS=" + (store_health_.degraded()
                                     ? store_health_.status()
                                     : "started; waiting for the first cycle"));
    // Pings until the drain is over: drain is loop work too, and systemd still watches it.
    loop_watchdog_.Start();

    if (options_.once) {
      auto report = co_await scheduler_->RunCycle();
      if (report.outcome == scheduler::CycleReport::Outcome::kAlreadyCompleted) {
        log_.Info(Event::kCycleSkipped, {.cycle_id = report.cycle_id},
                  "--once: cycle {} was already completed; nothing to do", report.cycle_id);
      }
      co_await scheduler_->Drain(settings_.daemon.shutdown_grace);
      co_await WatchdogPass();
      loop_watchdog_.Stop();
      log_.Info(Event::kDaemonStopped, {}, "warpd stopped");
      co_return report.outcome == scheduler::CycleReport::Outcome::kFailed ? EX_UNAVAILABLE : EX_OK;
    }

    scheduler_->Start();
    asio::co_spawn(io_, SignalLoop(), asio::detached);
    asio::co_spawn(io_, HeartbeatLoop(), asio::detached);
    asio::co_spawn(io_, WatchdogLoop(), asio::detached);

    // Wait until a stop signal cancels the timer.
    stop_timer_.expires_at(asio::steady_timer::time_point::max());
    boost::system::error_code ec;
    co_await stop_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));

    Notify("STOPPING=1\nSTATUS=draining");
    log_.Info(Event::kDaemonStopping, {},
              "stopping: no new cycles; {} dispatch(es) in flight get up to {}ms",
              scheduler_->inflight(), settings_.daemon.shutdown_grace.count());
    co_await scheduler_->Drain(settings_.daemon.shutdown_grace);
    stopping_ = true;
    heartbeat_timer_.cancel();
    watchdog_timer_.cancel();
    loop_watchdog_.Stop();
    signals_.cancel();
    log_.Info(Event::kDaemonStopped, {}, "warpd stopped");
    co_return EX_OK;
  }

 private:
  asio::awaitable<void> SignalLoop() {
    while (!stopping_) {
      boost::system::error_code ec;
      int signo = co_await signals_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (ec)
        co_return;
      if (signo == SIGHUP) {
        Reload();
        continue;
      }
      if (!stop_requested_) {
        stop_requested_ = true;
        stop_timer_.cancel();
      } else {
        log_.Warn(Event::kDaemonStopping, {}, "already draining; signal {} ignored", signo);
      }
    }
  }

  void Reload() {
    const auto now = std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now().time_since_epoch());
    Notify(fmt::format("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading", now.count()));
    try {
      auto next = config::Load(options_.config_path);
      if (options_.instance)
        next.daemon.instance = *options_.instance;
      if (next.store.backend != settings_.store.backend || next.store.dsn != settings_.store.dsn ||
          next.daemon.instance != settings_.daemon.instance ||
          next.daemon.group != settings_.daemon.group) {
        log_.Warn(Event::kConfigReloaded, {},
                  "store, daemon.instance and daemon.group changes take effect at the next "
                  "restart; keeping the current ones");
        next.store = settings_.store;
        next.daemon.instance = settings_.daemon.instance;
        next.daemon.group = settings_.daemon.group;
      }
      auto runners = scheduler::MakeRunners(next, io_.get_executor(), log_);
      scheduler_->Reconfigure(next, std::move(runners));
      lease_keeper_.UpdateSettings(next.leasing);
      watchdog_->Reconfigure(next);
      log_.raw()->set_level(LevelOf(next.log));
      settings_ = std::move(next);
      log_.Info(Event::kConfigReloaded, {}, "configuration reloaded from {}: interval {}ms",
                options_.config_path.string(), settings_.scheduler.interval.count());
      reload_rejected_.clear();
      Notify("READY=1\nSTATUS=configuration reloaded");
    } catch (const std::exception& e) {
      log_.Error(Event::kConfigRejected, {},
                 "reload rejected, keeping the previous configuration: {}", e.what());
      reload_rejected_ = e.what();
      Notify(fmt::format("READY=1\nSTATUS=reload rejected: {}", e.what()));
    }
  }

  /// Records this instance in the store. Every interval, so it is also what notices an outage
  /// (and its end) while no cycle can run.
  asio::awaitable<void> Heartbeat() {
    std::string unreachable;
    try {
      // A named argument: see the note on GCC 12 in Scheduler::RunCycleUnguarded.
      store::InstanceInfo info{settings_.daemon.instance, settings_.daemon.group, HostName(),
                               static_cast<int>(getpid()), WARP_VERSION};
      const bool was_reachable = !store_health_.degraded();
      const auto started = std::chrono::steady_clock::now();
      co_await store_->HeartbeatInstance(std::move(info));
      if (watchdog_ && was_reachable) {  // a store_latency sample (not a reconnect's wait)
        watchdog_->ObserveLatency(std::chrono::duration_cast<store::Duration>(
            std::chrono::steady_clock::now() - started));
      }
    } catch (const store::StoreError& e) {
      if (e.kind() != store::StoreError::Kind::kUnavailable) {
        log_.Warn(Event::kStoreError, {}, "instance heartbeat failed: {}", e.what());
        co_return;
      }
      unreachable = e.what();
    } catch (const std::exception& e) {
      log_.Warn(Event::kStoreError, {}, "instance heartbeat failed: {}", e.what());
      co_return;
    }
    if (!unreachable.empty()) {
      if (store_health_.Unreachable(unreachable))
        Notify("STATUS=" + store_health_.status());
    } else if (store_health_.Reachable()) {
      Notify("STATUS=store reachable again; waiting for the next cycle");
    }
  }

  asio::awaitable<void> HeartbeatLoop() {
    while (!stopping_) {
      heartbeat_timer_.expires_after(settings_.scheduler.interval);
      boost::system::error_code ec;
      co_await heartbeat_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (stopping_)
        co_return;
      co_await Heartbeat();
    }
  }

  /// A watchdog pass every watchdog.interval, on ticks at absolute times (no drift); a tick
  /// missed while a pass ran long is skipped, not queued.
  asio::awaitable<void> WatchdogLoop() {
    auto next = asio::steady_timer::clock_type::now();
    while (!stopping_) {
      next += settings_.watchdog.interval;
      const auto now = asio::steady_timer::clock_type::now();
      if (next < now)
        next = now + settings_.watchdog.interval;
      watchdog_timer_.expires_at(next);
      boost::system::error_code ec;
      co_await watchdog_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (stopping_)
        co_return;
      co_await WatchdogPass();
    }
  }

  /// One pass. The watchdog logs its own failures (once per run of them); an unreachable store
  /// is also the daemon's degraded state, like a failed heartbeat.
  asio::awaitable<void> WatchdogPass() {
    auto outcome = co_await watchdog_->Pass();
    if (outcome.report) {
      open_observations_ = outcome.report->open;
      if (store_health_.Reachable())
        Notify("STATUS=store reachable again; waiting for the next cycle");
    } else if (outcome.store_unavailable && store_health_.Unreachable(outcome.error)) {
      Notify("STATUS=" + store_health_.status());
    }
  }

  void ReportCycle(const scheduler::CycleReport& r) {
    using O = scheduler::CycleReport::Outcome;
    if (r.outcome == O::kFailed && r.store_unavailable) {
      store_health_.Unreachable(r.error);
      Notify("STATUS=" + store_health_.status());
      return;
    }
    if (r.outcome != O::kFailed)
      store_health_.Reachable();  // the cycle reached the store
    std::string status;
    switch (r.outcome) {
      case O::kRan:
        status = fmt::format(
            "cycle {}: dispatched {}, deferred {}, failed {}; {} in flight; {} open observation(s)",
            r.cycle_id, r.counts.dispatched, r.counts.deferred, r.counts.failed,
            scheduler_->inflight(), open_observations_);
        break;
      case O::kAlreadyCompleted:
      case O::kRunningElsewhere:
        status = fmt::format("cycle {}: handled by another instance; {} in flight", r.cycle_id,
                             scheduler_->inflight());
        break;
      case O::kGroupBusy:
        status =
            fmt::format("cycle {}: skipped while cycle {} runs on {}; {} in flight", r.cycle_id,
                        r.blocked_by.cycle_id, r.blocked_by.instance, scheduler_->inflight());
        break;
      case O::kFailed:
        status = fmt::format("degraded: cycle {} failed: {}",
                             r.cycle_id.empty() ? "(slot unknown)" : r.cycle_id, r.error);
        break;
    }
    if (!reload_rejected_.empty())  // until a reload succeeds: the file on disk is not in force
      status += "; last reload rejected: " + reload_rejected_;
    Notify("STATUS=" + status);
  }

  asio::io_context& io_;
  Options options_;
  config::Settings settings_;
  logging::Logger log_;
  std::unique_ptr<store::Store> store_;
  asio::signal_set signals_;
  asio::steady_timer stop_timer_;
  asio::steady_timer heartbeat_timer_;
  asio::steady_timer watchdog_timer_;
  leasing::LeaseKeeper lease_keeper_;
  std::optional<scheduler::Scheduler> scheduler_;
  std::optional<watchdog::Watchdog> watchdog_;
  int open_observations_ = 0;    ///< as of the last watchdog pass, for STATUS=
  std::string reload_rejected_;  ///< why the last reload was rejected; empty once one succeeds
  StoreHealth store_health_;
  LoopWatchdog loop_watchdog_;
  bool stop_requested_ = false;
  bool stopping_ = false;
};

}  // namespace

int CheckConfig(const std::filesystem::path& config_path) {
  try {
    auto settings = config::Load(config_path);
    if (!settings.store.fixtures.empty())
      (void)config::LoadFixtures(settings.store.fixtures);
    asio::io_context io;
    (void)scheduler::MakeRunners(settings, io.get_executor(), logging::Logger());
    std::printf("%s: configuration ok\n", config_path.c_str());
    return EX_OK;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "warpd: %s\n", e.what());
    return EX_CONFIG;
  }
}

int Run(const Options& options) {
  config::Settings settings;
  try {
    settings = config::Load(options.config_path);
    if (options.instance)
      settings.daemon.instance = *options.instance;
  } catch (const config::ConfigError& e) {
    std::fprintf(stderr, "warpd: %s\n", e.what());
    Notify("ERRNO=22\nSTATUS=configuration error");
    return EX_CONFIG;
  }
  auto log = logging::MakeStderrLogger(
      ChooseFormat(options.log_format.value_or(settings.log.format)), LevelOf(settings.log));
  // A child that closes its stdin early must not kill the daemon.
  ::signal(SIGPIPE, SIG_IGN);

  asio::io_context io;
  std::unique_ptr<store::Store> store;
  try {
    store = MakeStore(settings, options.config_path.parent_path(), io.get_executor(), log);
  } catch (const std::exception& e) {
    log.Error(Event::kDaemonStopped, {}, "{}", e.what());
    log.Flush();
    Notify("ERRNO=22\nSTATUS=configuration error");
    return EX_CONFIG;
  }

  Daemon daemon(io, options, std::move(settings), log, std::move(store));
  int exit_code = EX_SOFTWARE;
  asio::co_spawn(io, daemon.Main(), [&](std::exception_ptr error, int code) {
    if (!error) {
      exit_code = code;
      return;
    }
    try {
      std::rethrow_exception(error);
    } catch (const config::ConfigError& e) {
      log.Error(Event::kDaemonStopped, {}, "{}", e.what());
      exit_code = EX_CONFIG;
    } catch (const SchemaMismatch& e) {
      log.Error(Event::kDaemonStopped, {}, "{}", e.what());
      exit_code = EX_CONFIG;
    } catch (const std::invalid_argument& e) {  // a runner this build cannot serve
      log.Error(Event::kDaemonStopped, {}, "{}", e.what());
      exit_code = EX_CONFIG;
    } catch (const store::StoreError& e) {
      log.Error(Event::kDaemonStopped, {}, "store unavailable: {}", e.what());
      exit_code = EX_UNAVAILABLE;
    } catch (const std::exception& e) {
      log.Error(Event::kDaemonStopped, {}, "internal error: {}", e.what());
      exit_code = EX_SOFTWARE;
    }
    Notify(fmt::format("ERRNO={}\nSTATUS=failed", exit_code));
    io.stop();  // background loops would otherwise keep run() alive
  });
  io.run();
  log.Flush();
  return exit_code;
}

}  // namespace warp::daemon
