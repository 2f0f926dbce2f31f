// Validated, typed settings of warpd (SPEC section 9). Produced by config::Load from TOML;
// every duration is a std::chrono type, every enum a C++ enum. Components take the part they
// need through their constructors.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace warp::config {

using Duration = std::chrono::milliseconds;

struct DaemonSettings {
  std::string instance;  ///< default: host name, lower-cased; [a-z0-9-]{1,63}
  std::string group = "default";
  Duration shutdown_grace = std::chrono::seconds(30);
};

enum class StoreBackend { kPostgres, kMemory };

struct StoreSettings {
  StoreBackend backend = StoreBackend::kPostgres;
  std::string dsn;  ///< required for postgres
  std::filesystem::path password_file;
  Duration connect_timeout = std::chrono::seconds(5);
  std::filesystem::path
      fixtures;  ///< memory backend; relative paths resolve against the config file
};

struct SchedulerSettings {
  Duration interval = std::chrono::seconds(10);        ///< 1s .. 24h
  Duration jitter = Duration::zero();                  ///< < interval
  int max_dispatch_per_cycle = 1000;                   ///< >= 1
  int max_inflight = 64;                               ///< >= 1
  Duration takeover_after = std::chrono::seconds(30);  ///< default 3 x interval
  Duration retry_backoff = std::chrono::seconds(10);
  Duration retry_backoff_max = std::chrono::minutes(10);  ///< >= retry_backoff
  int max_attempts = 5;                                   ///< >= 1
};

struct LeasingSettings {
  Duration ttl = std::chrono::seconds(60);
  Duration renew_every = std::chrono::seconds(20);  ///< < ttl / 2
  int default_max_active = 1;                       ///< >= 1
};

struct WatchdogSettings {
  Duration interval = std::chrono::seconds(30);
  std::vector<std::string> disabled_rules;  ///< each must name a rule of SPEC section 7
  Duration backlog_age_warning = std::chrono::minutes(5);
  Duration backlog_age_critical = std::chrono::minutes(30);  ///< > backlog_age_warning
  double cycle_overrun_factor = 2.0;                         ///< >= 1.0
  int cycle_missed_after = 3;                                ///< >= 1
  int failure_streak = 3;                                    ///< >= 1
  Duration agent_unresponsive_after = std::chrono::minutes(15);
  Duration instance_stale_after = std::chrono::minutes(2);
  Duration store_latency_warning = std::chrono::milliseconds(500);
  Duration clock_skew_warning = std::chrono::seconds(2);
  Duration proposal_review_stale_after = std::chrono::hours(24 * 7);
};

enum class LogFormat { kAuto, kJournal, kText, kJson };

struct LogSettings {
  std::string level = "info";  ///< trace debug info warn error critical
  LogFormat format = LogFormat::kAuto;
};

enum class Transport { kExec, kHttp, kNotify, kNull };

struct RunnerSettings {
  std::string name;
  Transport transport = Transport::kNull;
  std::vector<std::string> command;  ///< exec: argv, non-empty, no shell
  /// exec: the child's run time. http: the exchange, and then the time an agent that
  /// accepted the work has to complete it. notify: the time the agent has to complete it.
  Duration timeout = std::chrono::minutes(10);
  Duration kill_grace = std::chrono::seconds(10);  ///< exec: SIGTERM -> SIGKILL
  std::string url;                                 ///< http: http:// or https://
  std::map<std::string, std::string> headers;      ///< http: extra request headers
  std::filesystem::path bearer_token_file;         ///< http: "Authorization: Bearer <file>"
  std::string channel = "warp_dispatch";           ///< notify: a lower-case SQL identifier
};

enum class Misfire { kRunOnce, kSkip };

struct ScheduleSettings {
  std::string name;                 ///< unique
  std::vector<std::string> agents;  ///< agent slugs; or
  std::string domain;               ///< every active agent of the domain
  std::optional<Duration> every;    ///< exactly one of every / cron
  std::string cron;                 ///< 5-field, UTC
  std::string kind;
  std::string payload_json = "{}";  ///< a JSON object
  Misfire misfire = Misfire::kRunOnce;
};

struct Settings {
  std::filesystem::path source;  ///< the file these settings came from
  DaemonSettings daemon;
  StoreSettings store;
  SchedulerSettings scheduler;
  LeasingSettings leasing;
  WatchdogSettings watchdog;
  LogSettings log;
  std::map<std::string, RunnerSettings> runners;
  std::vector<ScheduleSettings> schedules;
};

}  // namespace warp::config
