#include "config/config.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <map>
#include <utility>
#include <vector>

#include <toml++/toml.h>

#include "config/impl/toml_reader.hpp"
#include "scheduler/cron.hpp"
#include "store/model.hpp"
#include "watchdog/rules.hpp"

namespace warp::config {

namespace {

std::string FormatErrorLine(const std::string& file, int line, int column, const std::string& key,
                            const std::string& message) {
  std::string out = file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": ";
  if (!key.empty()) {
    out += key + ": ";
  }
  out += message;
  // what() is one line whatever the message carries (toml++ and cron texts are not ours).
  std::replace_if(
      out.begin(), out.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
  return out;
}

// --- durations -----------------------------------------------------------------------------

struct DurationUnit {
  std::string_view name;
  Duration::rep milliseconds;
};

// Largest first: FormatDuration renders greedily in this order.
constexpr std::array<DurationUnit, 5> kDurationUnits{{
    {"d", 86'400'000},
    {"h", 3'600'000},
    {"m", 60'000},
    {"s", 1'000},
    {"ms", 1},
}};

bool IsDigit(char c) {
  return c >= '0' && c <= '9';
}

// The TOML reading shared with the fixtures loader.
using impl::Fail;
using impl::Field;
using impl::Located;
using impl::Position;
using impl::Quoted;
using impl::ReadFile;
using impl::TableReader;

// --- plain structs: the file as written ------------------------------------------------------

/// Where a table is declared; absent tables point at the start of the file.
struct RawTable {
  bool present = false;
  Position at;
};

struct RawDaemon {
  RawTable table;
  Field<std::string> instance;
  Field<std::string> group;
  Field<std::string> shutdown_grace;
};

struct RawStore {
  RawTable table;
  Field<std::string> backend;
  Field<std::string> dsn;
  Field<std::string> password_file;
  Field<std::string> connect_timeout;
  Field<std::string> fixtures;
};

struct RawScheduler {
  RawTable table;
  Field<std::string> interval;
  Field<std::string> jitter;
  Field<std::int64_t> max_dispatch_per_cycle;
  Field<std::int64_t> max_inflight;
  Field<std::string> takeover_after;
  Field<std::string> retry_backoff;
  Field<std::string> retry_backoff_max;
  Field<std::int64_t> max_attempts;
};

struct RawLeasing {
  RawTable table;
  Field<std::string> ttl;
  Field<std::string> renew_every;
  Field<std::int64_t> default_max_active;
};

struct RawWatchdog {
  RawTable table;
  Field<std::string> interval;
  Field<std::vector<Located<std::string>>> disabled_rules;
  Field<std::string> backlog_age_warning;
  Field<std::string> backlog_age_critical;
  Field<double> cycle_overrun_factor;
  Field<std::int64_t> cycle_missed_after;
  Field<std::int64_t> failure_streak;
  Field<std::string> agent_unresponsive_after;
  Field<std::string> instance_stale_after;
  Field<std::string> store_latency_warning;
  Field<std::string> clock_skew_warning;
  Field<std::string> proposal_review_stale_after;
};

struct RawLog {
  RawTable table;
  Field<std::string> level;
  Field<std::string> format;
};

struct RawRunner {
  RawTable table;
  std::string name;
  std::string key;  ///< runner.NAME
  Field<std::string> transport;
  Field<std::vector<Located<std::string>>> command;
  Field<std::string> timeout;
  Field<std::string> kill_grace;
  Field<std::string> url;
  Field<std::map<std::string, std::string>> headers;
  Field<std::string> bearer_token_file;
  Field<std::string> channel;
};

struct RawSchedule {
  RawTable table;
  std::string key;  ///< schedule[N]
  Field<std::string> name;
  Field<std::vector<Located<std::string>>> agents;
  Field<std::string> domain;
  Field<std::string> every;
  Field<std::string> cron;
  Field<std::string> kind;
  Field<std::string> payload_json;
  Field<std::string> misfire;
};

struct RawConfig {
  RawDaemon daemon;
  RawStore store;
  RawScheduler scheduler;
  RawLeasing leasing;
  RawWatchdog watchdog;
  RawLog log;
  std::vector<RawRunner> runners;  ///< in document order
  std::vector<RawSchedule> schedules;
};

RawTable TableOf(const TableReader& reader) {
  return {true, reader.at()};
}

RawDaemon ReadDaemon(const TableReader& t) {
  t.RejectUnknownKeys({"instance", "group", "shutdown_grace"});
  return {TableOf(t), t.String("instance"), t.String("group"), t.DurationText("shutdown_grace")};
}

RawStore ReadStore(const TableReader& t) {
  t.RejectUnknownKeys({"backend", "dsn", "password_file", "connect_timeout", "fixtures"});
  return {TableOf(t),
          t.String("backend"),
          t.String("dsn"),
          t.String("password_file"),
          t.DurationText("connect_timeout"),
          t.String("fixtures")};
}

RawScheduler ReadScheduler(const TableReader& t) {
  t.RejectUnknownKeys({"interval", "jitter", "max_dispatch_per_cycle", "max_inflight",
                       "takeover_after", "retry_backoff", "retry_backoff_max", "max_attempts"});
  return {TableOf(t),
          t.DurationText("interval"),
          t.DurationText("jitter"),
          t.Integer("max_dispatch_per_cycle"),
          t.Integer("max_inflight"),
          t.DurationText("takeover_after"),
          t.DurationText("retry_backoff"),
          t.DurationText("retry_backoff_max"),
          t.Integer("max_attempts")};
}

RawLeasing ReadLeasing(const TableReader& t) {
  t.RejectUnknownKeys({"ttl", "renew_every", "default_max_active"});
  return {TableOf(t), t.DurationText("ttl"), t.DurationText("renew_every"),
          t.Integer("default_max_active")};
}

RawWatchdog ReadWatchdog(const TableReader& t) {
  t.RejectUnknownKeys({"interval", "disabled_rules", "backlog_age_warning", "backlog_age_critical",
                       "cycle_overrun_factor", "cycle_missed_after", "failure_streak",
                       "agent_unresponsive_after", "instance_stale_after", "store_latency_warning",
                       "clock_skew_warning", "proposal_review_stale_after"});
  return {TableOf(t),
          t.DurationText("interval"),
          t.StringArray("disabled_rules"),
          t.DurationText("backlog_age_warning"),
          t.DurationText("backlog_age_critical"),
          t.Number("cycle_overrun_factor"),
          t.Integer("cycle_missed_after"),
          t.Integer("failure_streak"),
          t.DurationText("agent_unresponsive_after"),
          t.DurationText("instance_stale_after"),
          t.DurationText("store_latency_warning"),
          t.DurationText("clock_skew_warning"),
          t.DurationText("proposal_review_stale_after")};
}

RawLog ReadLog(const TableReader& t) {
  t.RejectUnknownKeys({"level", "format"});
  return {TableOf(t), t.String("level"), t.String("format")};
}

RawRunner ReadRunner(const std::string& name, const TableReader& t) {
  // The union of every transport's keys; which belong to which transport is checked later.
  t.RejectUnknownKeys({"transport", "command", "timeout", "kill_grace", "url", "headers",
                       "bearer_token_file", "channel"});
  return {TableOf(t),
          name,
          t.prefix(),
          t.String("transport"),
          t.StringArray("command"),
          t.DurationText("timeout"),
          t.DurationText("kill_grace"),
          t.String("url"),
          t.StringTable("headers"),
          t.String("bearer_token_file"),
          t.String("channel")};
}

RawSchedule ReadSchedule(const TableReader& t) {
  t.RejectUnknownKeys({"name", "agents", "domain", "every", "cron", "kind", "payload", "misfire"});
  return {TableOf(t),
          t.prefix(),
          t.String("name"),
          t.StringArray("agents"),
          t.String("domain"),
          t.DurationText("every"),
          t.String("cron"),
          t.String("kind"),
          t.JsonObject("payload"),
          t.String("misfire")};
}

RawConfig ReadConfig(const TableReader& root) {
  root.RejectUnknownKeys(
      {"daemon", "store", "scheduler", "leasing", "watchdog", "log", "runner", "schedule"});
  RawConfig raw;
  if (const auto t = root.Table("daemon")) {
    raw.daemon = ReadDaemon(*t);
  }
  if (const auto t = root.Table("store")) {
    raw.store = ReadStore(*t);
  }
  if (const auto t = root.Table("scheduler")) {
    raw.scheduler = ReadScheduler(*t);
  }
  if (const auto t = root.Table("leasing")) {
    raw.leasing = ReadLeasing(*t);
  }
  if (const auto t = root.Table("watchdog")) {
    raw.watchdog = ReadWatchdog(*t);
  }
  if (const auto t = root.Table("log")) {
    raw.log = ReadLog(*t);
  }
  for (const auto& [name, t] : root.TablesIn("runner")) {
    raw.runners.push_back(ReadRunner(name, t));
  }
  for (const auto& t : root.ArrayOfTables("schedule")) {
    raw.schedules.push_back(ReadSchedule(t));
  }
  return raw;
}

// --- compiling: plain structs -> validated Settings -------------------------------------------

constexpr Duration kPositive{1};  // the smallest duration above zero
constexpr Duration kNoLimit = Duration::max();

Position WhereTable(const RawTable& table) {
  return table.present ? table.at : Position{};
}

std::string ChoiceList(std::initializer_list<std::string_view> names) {
  std::string out;
  for (const auto name : names) {
    if (!out.empty()) {
      out += ", ";
    }
    out += name;
  }
  return out;
}

class Compiler {
 public:
  explicit Compiler(const std::string& file) : file_(file) {}

  [[noreturn]] void FailAt(const auto& field, std::string message) const {
    Fail(file_, field.at, field.key, std::move(message));
  }

  /// The duration written in `field` within [min, max], or `fallback` when absent.
  Duration DurationOf(const Field<std::string>& field, Duration fallback, Duration min,
                      Duration max = kNoLimit) const {
    if (!field) {
      return fallback;
    }
    const auto value = ParseDuration(field->value);
    if (!value) {
      FailAt(*field, "malformed duration " + Quoted(field->value) +
                         " (expected <integer><unit> groups, units ms s m h d, e.g. \"1h30m\")");
    }
    if (*value < min) {
      FailAt(*field,
             min == kPositive ? "must be more than 0s" : "must be at least " + FormatDuration(min));
    }
    if (*value > max) {
      FailAt(*field, "must be at most " + FormatDuration(max));
    }
    return *value;
  }

  std::optional<Duration> OptionalDurationOf(const Field<std::string>& field, Duration min) const {
    if (!field) {
      return std::nullopt;
    }
    return DurationOf(field, Duration::zero(), min);
  }

  /// A count >= 1 that fits an int.
  int CountOf(const Field<std::int64_t>& field, int fallback) const {
    if (!field) {
      return fallback;
    }
    if (field->value < 1) {
      FailAt(*field, "must be at least 1");
    }
    if (field->value > std::numeric_limits<int>::max()) {
      FailAt(*field, "must be at most " + std::to_string(std::numeric_limits<int>::max()));
    }
    return static_cast<int>(field->value);
  }

  std::string NonEmptyOf(const Field<std::string>& field, std::string fallback) const {
    if (!field) {
      return fallback;
    }
    if (field->value.empty()) {
      FailAt(*field, "must not be empty");
    }
    return field->value;
  }

  template <typename E>
  E ChoiceOf(const Field<std::string>& field, E fallback,
             std::initializer_list<std::pair<std::string_view, E>> choices) const {
    if (!field) {
      return fallback;
    }
    std::string names;
    for (const auto& [name, value] : choices) {
      if (name == field->value) {
        return value;
      }
      names += names.empty() ? "" : ", ";
      names += name;
    }
    FailAt(*field, "must be one of " + names + " (found " + Quoted(field->value) + ")");
  }

  /// An inconsistent pair of keys: reported at `first` when the file sets it, else at `second`
  /// (defaults are consistent with each other, so one of them is set).
  [[noreturn]] void FailPair(const Field<std::string>& first, std::string first_message,
                             const Field<std::string>& second, std::string second_message) const {
    if (first) {
      FailAt(*first, std::move(first_message));
    } else if (second) {
      FailAt(*second, std::move(second_message));
    } else {
      Fail(file_, Position{}, "", std::move(second_message));
    }
  }

  DaemonSettings Daemon(const RawDaemon& raw) const {
    DaemonSettings out;
    if (raw.instance) {
      if (!IsValidInstance(raw.instance->value)) {
        FailAt(*raw.instance,
               "must match [a-z0-9-]{1,63} (found " + Quoted(raw.instance->value) + ")");
      }
      out.instance = raw.instance->value;
    } else {
      out.instance = InstanceNameFromHost(HostName());
    }
    out.group = NonEmptyOf(raw.group, out.group);
    out.shutdown_grace = DurationOf(raw.shutdown_grace, out.shutdown_grace, Duration::zero());
    return out;
  }

  StoreSettings Store(const RawStore& raw) const {
    StoreSettings out;
    out.backend =
        ChoiceOf(raw.backend, out.backend,
                 {{"postgres", StoreBackend::kPostgres}, {"memory", StoreBackend::kMemory}});
    if (raw.dsn) {
      out.dsn = raw.dsn->value;
    }
    if (raw.password_file) {
      out.password_file = raw.password_file->value;
    }
    out.connect_timeout = DurationOf(raw.connect_timeout, out.connect_timeout, kPositive);
    if (raw.fixtures && !raw.fixtures->value.empty()) {
      // Relative to the config file, so a config and its fixtures move together.
      out.fixtures = std::filesystem::path(file_).parent_path() / raw.fixtures->value;
    }
    return out;
  }

  SchedulerSettings Scheduler(const RawScheduler& raw) const {
    SchedulerSettings out;
    out.interval =
        DurationOf(raw.interval, out.interval, std::chrono::seconds(1), std::chrono::hours(24));
    out.jitter = DurationOf(raw.jitter, out.jitter, Duration::zero());
    out.max_dispatch_per_cycle = CountOf(raw.max_dispatch_per_cycle, out.max_dispatch_per_cycle);
    out.max_inflight = CountOf(raw.max_inflight, out.max_inflight);
    out.takeover_after = DurationOf(raw.takeover_after, 3 * out.interval, kPositive);
    out.retry_backoff = DurationOf(raw.retry_backoff, out.retry_backoff, kPositive);
    out.retry_backoff_max = DurationOf(raw.retry_backoff_max, out.retry_backoff_max, kPositive);
    out.max_attempts = CountOf(raw.max_attempts, out.max_attempts);
    return out;
  }

  LeasingSettings Leasing(const RawLeasing& raw) const {
    LeasingSettings out;
    out.ttl = DurationOf(raw.ttl, out.ttl, kPositive);
    out.renew_every = DurationOf(raw.renew_every, out.renew_every, kPositive);
    out.default_max_active = CountOf(raw.default_max_active, out.default_max_active);
    return out;
  }

  WatchdogSettings Watchdog(const RawWatchdog& raw) const {
    WatchdogSettings out;
    out.interval = DurationOf(raw.interval, out.interval, kPositive);
    if (raw.disabled_rules) {
      for (const auto& rule : raw.disabled_rules->value) {
        if (!watchdog::IsKnownRule(rule.value)) {
          FailAt(rule, "unknown watchdog rule " + Quoted(rule.value));
        }
        out.disabled_rules.push_back(rule.value);
      }
    }
    out.backlog_age_warning =
        DurationOf(raw.backlog_age_warning, out.backlog_age_warning, kPositive);
    out.backlog_age_critical =
        DurationOf(raw.backlog_age_critical, out.backlog_age_critical, kPositive);
    if (raw.cycle_overrun_factor) {
      const double factor = raw.cycle_overrun_factor->value;
      if (!std::isfinite(factor) || factor < 1.0) {
        FailAt(*raw.cycle_overrun_factor, "must be a finite number of at least 1.0");
      }
      out.cycle_overrun_factor = factor;
    }
    out.cycle_missed_after = CountOf(raw.cycle_missed_after, out.cycle_missed_after);
    out.failure_streak = CountOf(raw.failure_streak, out.failure_streak);
    out.agent_unresponsive_after =
        DurationOf(raw.agent_unresponsive_after, out.agent_unresponsive_after, kPositive);
    out.instance_stale_after =
        DurationOf(raw.instance_stale_after, out.instance_stale_after, kPositive);
    out.store_latency_warning =
        DurationOf(raw.store_latency_warning, out.store_latency_warning, kPositive);
    out.clock_skew_warning = DurationOf(raw.clock_skew_warning, out.clock_skew_warning, kPositive);
    out.proposal_review_stale_after =
        DurationOf(raw.proposal_review_stale_after, out.proposal_review_stale_after, kPositive);
    return out;
  }

  LogSettings Log(const RawLog& raw) const {
    LogSettings out;
    if (raw.level) {
      const std::initializer_list<std::string_view> levels{"trace", "debug", "info",
                                                           "warn",  "error", "critical"};
      if (std::find(levels.begin(), levels.end(), raw.level->value) == levels.end()) {
        FailAt(*raw.level, "must be one of " + ChoiceList(levels) + " (found " +
                               Quoted(raw.level->value) + ")");
      }
      out.level = raw.level->value;
    }
    out.format = ChoiceOf(raw.format, out.format,
                          {{"auto", LogFormat::kAuto},
                           {"journal", LogFormat::kJournal},
                           {"text", LogFormat::kText},
                           {"json", LogFormat::kJson}});
    return out;
  }

  RunnerSettings Runner(const RawRunner& raw) const {
    RunnerSettings out;
    out.name = raw.name;
    // No default transport: a forgotten one must not silently become "null", which completes
    // work without running anything.
    if (!raw.transport) {
      Fail(file_, raw.table.at, raw.key + ".transport", "required (exec, http, notify or null)");
    }
    out.transport = ChoiceOf(raw.transport, out.transport,
                             {{"exec", Transport::kExec},
                              {"http", Transport::kHttp},
                              {"notify", Transport::kNotify},
                              {"null", Transport::kNull}});
    const std::string transport = raw.transport->value;
    const auto reject_unless = [&](const auto& field, std::initializer_list<Transport> owners) {
      if (field && std::find(owners.begin(), owners.end(), out.transport) == owners.end()) {
        Fail(file_, field->key_at, field->key,
             "not a key of a runner with transport " + Quoted(transport));
      }
    };
    reject_unless(raw.command, {Transport::kExec});
    reject_unless(raw.timeout, {Transport::kExec, Transport::kHttp, Transport::kNotify});
    reject_unless(raw.kill_grace, {Transport::kExec});
    reject_unless(raw.url, {Transport::kHttp});
    reject_unless(raw.headers, {Transport::kHttp});
    reject_unless(raw.bearer_token_file, {Transport::kHttp});
    reject_unless(raw.channel, {Transport::kNotify});

    out.timeout = DurationOf(raw.timeout, out.timeout, kPositive);
    out.kill_grace = DurationOf(raw.kill_grace, out.kill_grace, Duration::zero());
    switch (out.transport) {
      case Transport::kExec:
        if (!raw.command) {
          Fail(file_, raw.table.at, raw.key + ".command",
               "required for an exec runner (an array: program, then arguments)");
        }
        if (raw.command->value.empty()) {
          FailAt(*raw.command, "must not be empty");
        }
        if (raw.command->value.front().value.empty()) {
          FailAt(raw.command->value.front(), "the program must not be empty");
        }
        for (const auto& argument : raw.command->value) {
          out.command.push_back(argument.value);
        }
        // "agents/x.sh" is relative to the config file, like store.fixtures; "x" (no slash) is
        // looked up in PATH.
        if (const std::filesystem::path program(out.command.front());
            program.is_relative() && out.command.front().find('/') != std::string::npos) {
          out.command.front() = (std::filesystem::path(file_).parent_path() / program).string();
        }
        break;
      case Transport::kHttp:
        if (!raw.url) {
          Fail(file_, raw.table.at, raw.key + ".url", "required for an http runner");
        }
        if (!raw.url->value.starts_with("http://") && !raw.url->value.starts_with("https://")) {
          FailAt(*raw.url,
                 "must be an http:// or https:// URL (found " + Quoted(raw.url->value) + ")");
        }
        out.url = raw.url->value;
        if (const auto rest = std::string_view(out.url).substr(out.url.find("://") + 3);
            rest.empty() || rest.front() == '/' || rest.front() == ':') {
          FailAt(*raw.url, "names no host (found " + Quoted(out.url) + ")");
        }
        if (raw.headers) {
          for (const auto& [name, value] : raw.headers->value) {
            if (!IsHeaderName(name) || IsReservedHeader(name)) {
              Fail(file_, raw.headers->key_at, raw.headers->key + "." + name,
                   "not a header warpd lets a runner set (a token; not Host, Content-Length, "
                   "Content-Type, Connection, Transfer-Encoding, Authorization or "
                   "Warp-Fencing-Token)");
            }
            if (value.find_first_of("\r\n") != std::string::npos) {
              Fail(file_, raw.headers->key_at, raw.headers->key + "." + name,
                   "must not contain a line break");
            }
          }
          out.headers = raw.headers->value;
        }
        if (raw.bearer_token_file) {
          if (raw.bearer_token_file->value.empty()) {
            FailAt(*raw.bearer_token_file, "must not be empty");
          }
          // Relative to the config file, like store.fixtures.
          out.bearer_token_file =
              std::filesystem::path(file_).parent_path() / raw.bearer_token_file->value;
        }
        break;
      case Transport::kNotify:
        out.channel = NonEmptyOf(raw.channel, out.channel);
        // LISTEN folds an unquoted name to lower case, and PostgreSQL truncates identifiers
        // beyond 63 bytes: any other channel name could never be listened to as written.
        if (!IsChannelName(out.channel)) {
          FailAt(*raw.channel,
                 "must match [a-z_][a-z0-9_]{0,62} (found " + Quoted(out.channel) + ")");
        }
        break;
      case Transport::kNull:
        break;
    }
    return out;
  }

  ScheduleSettings Schedule(const RawSchedule& raw) const {
    ScheduleSettings out;
    if (!raw.name) {
      Fail(file_, raw.table.at, raw.key + ".name", "required");
    }
    out.name = NonEmptyOf(raw.name, "");

    if (raw.every && raw.cron) {
      Fail(file_, raw.cron->key_at, raw.cron->key, "give exactly one of every and cron, not both");
    }
    if (!raw.every && !raw.cron) {
      Fail(file_, raw.table.at, raw.key + ".every", "give exactly one of every and cron");
    }
    out.every = OptionalDurationOf(raw.every, kPositive);
    if (raw.cron) {
      try {
        scheduler::CronExpression::Parse(raw.cron->value);
      } catch (const std::invalid_argument& e) {
        FailAt(*raw.cron, "invalid cron expression " + Quoted(raw.cron->value) + ": " + e.what());
      }
      out.cron = raw.cron->value;
    }

    if (raw.agents && raw.domain) {
      Fail(file_, raw.domain->key_at, raw.domain->key,
           "give exactly one of agents and domain, not both");
    }
    if (!raw.agents && !raw.domain) {
      Fail(file_, raw.table.at, raw.key + ".agents", "give exactly one of agents and domain");
    }
    if (raw.agents) {
      if (raw.agents->value.empty()) {
        FailAt(*raw.agents, "must not be empty");
      }
      for (const auto& agent : raw.agents->value) {
        if (!store::IsValidSlug(agent.value)) {
          FailAt(agent, "not an agent slug (^[a-z0-9][a-z0-9-]{0,62}$): " + Quoted(agent.value));
        }
        out.agents.push_back(agent.value);
      }
    }
    out.domain = NonEmptyOf(raw.domain, "");

    if (!raw.kind) {
      Fail(file_, raw.table.at, raw.key + ".kind", "required");
    }
    out.kind = NonEmptyOf(raw.kind, "");
    if (raw.payload_json) {
      out.payload_json = raw.payload_json->value;
    }
    out.misfire = ChoiceOf(raw.misfire, out.misfire,
                           {{"run_once", Misfire::kRunOnce}, {"skip", Misfire::kSkip}});
    return out;
  }

  /// The relations between keys, checked once every key is valid on its own.
  void CheckPairs(const RawConfig& raw, const Settings& s) const {
    if (s.store.backend != StoreBackend::kPostgres) {
      for (const auto& runner : raw.runners) {
        if (runner.transport && runner.transport->value == "notify") {
          FailAt(*runner.transport,
                 "a notify runner needs store.backend = \"postgres\" (the notification is sent "
                 "in the transaction that records the dispatch)");
        }
      }
    }
    if (s.store.backend == StoreBackend::kPostgres && s.store.dsn.empty()) {
      if (raw.store.dsn) {
        FailAt(*raw.store.dsn, "must not be empty when store.backend is \"postgres\"");
      }
      Fail(file_, WhereTable(raw.store.table), "store.dsn",
           "required when store.backend is \"postgres\"");
    }
    if (s.scheduler.jitter >= s.scheduler.interval) {
      FailPair(
          raw.scheduler.jitter,
          "must be less than scheduler.interval (" + FormatDuration(s.scheduler.interval) + ")",
          raw.scheduler.interval,
          "must be more than scheduler.jitter (" + FormatDuration(s.scheduler.jitter) + ")");
    }
    // takeover_after may be shorter than the interval: that is what lets a crashed run be taken
    // over within its own slot. Decisions are unique per cycle, so an early takeover never
    // dispatches twice.
    if (s.scheduler.retry_backoff_max < s.scheduler.retry_backoff) {
      FailPair(raw.scheduler.retry_backoff_max,
               "must be at least scheduler.retry_backoff (" +
                   FormatDuration(s.scheduler.retry_backoff) + ")",
               raw.scheduler.retry_backoff,
               "must be at most scheduler.retry_backoff_max (" +
                   FormatDuration(s.scheduler.retry_backoff_max) + ")");
    }
    // A lease must survive one failed renewal: renew more often than every ttl / 2.
    if (s.leasing.renew_every >= s.leasing.ttl - s.leasing.renew_every) {
      FailPair(raw.leasing.renew_every,
               "must be less than leasing.ttl / 2 (ttl is " + FormatDuration(s.leasing.ttl) + ")",
               raw.leasing.ttl,
               "must be more than twice leasing.renew_every (" +
                   FormatDuration(s.leasing.renew_every) + ")");
    }
    if (s.watchdog.backlog_age_critical <= s.watchdog.backlog_age_warning) {
      FailPair(raw.watchdog.backlog_age_critical,
               "must be more than watchdog.backlog_age_warning (" +
                   FormatDuration(s.watchdog.backlog_age_warning) + ")",
               raw.watchdog.backlog_age_warning,
               "must be less than watchdog.backlog_age_critical (" +
                   FormatDuration(s.watchdog.backlog_age_critical) + ")");
    }
  }

  Settings Compile(const RawConfig& raw) const {
    Settings out;
    out.source = file_;
    out.daemon = Daemon(raw.daemon);
    out.store = Store(raw.store);
    out.scheduler = Scheduler(raw.scheduler);
    out.leasing = Leasing(raw.leasing);
    out.watchdog = Watchdog(raw.watchdog);
    out.log = Log(raw.log);
    for (const auto& runner : raw.runners) {
      out.runners.emplace(runner.name, Runner(runner));
    }

    std::map<std::string, int> first_line_of_name;
    for (const auto& schedule : raw.schedules) {
      ScheduleSettings compiled = Schedule(schedule);
      const auto [it, inserted] = first_line_of_name.emplace(compiled.name, schedule.name->at.line);
      if (!inserted) {
        FailAt(*schedule.name, "duplicate schedule name " + Quoted(compiled.name) +
                                   " (first used on line " + std::to_string(it->second) + ")");
      }
      out.schedules.push_back(std::move(compiled));
    }
    CheckPairs(raw, out);
    return out;
  }

 private:
  static bool IsChannelName(std::string_view name) {
    return !name.empty() && name.size() <= 63 && !IsDigit(name.front()) &&
           std::all_of(name.begin(), name.end(),
                       [](char c) { return (c >= 'a' && c <= 'z') || IsDigit(c) || c == '_'; });
  }

  /// An RFC 9110 token.
  static bool IsHeaderName(std::string_view name) {
    return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
             std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
    });
  }

  /// Headers warpd sets itself: a runner's `headers` table must not override them.
  static bool IsReservedHeader(std::string_view name) {
    std::string lower(name);
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    for (std::string_view reserved : {"host", "content-length", "content-type", "connection",
                                      "transfer-encoding", "authorization", "warp-fencing-token"}) {
      if (lower == reserved)
        return true;
    }
    return false;
  }

  static bool IsValidInstance(std::string_view name) { return IsValidInstanceName(name); }

  static std::string HostName() {
    std::array<char, 256> buffer{};
    if (::gethostname(buffer.data(), buffer.size() - 1) != 0) {
      return {};
    }
    return buffer.data();
  }

  const std::string& file_;
};

}  // namespace

ConfigError::ConfigError(std::string file, int line, int column, std::string key,
                         std::string message)
    : std::runtime_error(FormatErrorLine(file, line, column, key, message)),
      file_(std::move(file)),
      line_(line),
      column_(column),
      key_(std::move(key)),
      message_(std::move(message)) {}

std::optional<Duration> ParseDuration(std::string_view text) {
  if (text.empty()) {
    return std::nullopt;
  }
  constexpr Duration::rep kMax = std::numeric_limits<Duration::rep>::max();
  Duration::rep total = 0;
  std::size_t i = 0;
  while (i < text.size()) {
    if (!IsDigit(text[i])) {
      return std::nullopt;  // also rejects signs and a missing number
    }
    Duration::rep number = 0;
    for (; i < text.size() && IsDigit(text[i]); ++i) {
      const int digit = text[i] - '0';
      if (number > (kMax - digit) / 10) {
        return std::nullopt;
      }
      number = number * 10 + digit;
    }
    // "ms" before "m": the longest unit name that matches.
    const DurationUnit* unit = nullptr;
    for (const auto& candidate : kDurationUnits) {
      if (text.substr(i).starts_with(candidate.name) &&
          (unit == nullptr || candidate.name.size() > unit->name.size())) {
        unit = &candidate;
      }
    }
    if (unit == nullptr) {
      return std::nullopt;
    }
    i += unit->name.size();
    if (number > kMax / unit->milliseconds) {
      return std::nullopt;
    }
    const Duration::rep part = number * unit->milliseconds;
    if (total > kMax - part) {
      return std::nullopt;
    }
    total += part;
  }
  return Duration(total);
}

std::string FormatDuration(Duration d) {
  if (d == Duration::zero()) {
    return "0s";
  }
  std::string out;
  // The magnitude as unsigned, so that the most negative value renders too.
  std::uint64_t rest = static_cast<std::uint64_t>(d.count());
  if (d.count() < 0) {
    out = "-";
    rest = 0 - rest;
  }
  for (const auto& unit : kDurationUnits) {
    const auto size = static_cast<std::uint64_t>(unit.milliseconds);
    if (rest >= size) {
      out += std::to_string(rest / size);
      out += unit.name;
      rest %= size;
    }
  }
  return out;
}

bool IsValidInstanceName(std::string_view name) {
  return !name.empty() && name.size() <= 63 && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
  });
}

std::string InstanceNameFromHost(std::string_view host_name) {
  std::string out;
  for (const char c : host_name) {
    if (out.size() == 63) {
      break;
    }
    const char lower = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    const bool valid = (lower >= 'a' && lower <= 'z') || IsDigit(lower) || lower == '-';
    out += valid ? lower : '-';
  }
  return out.empty() ? "warpd" : out;
}

Settings Load(const std::filesystem::path& file) {
  Settings settings = LoadString(ReadFile(file), file.string());
  settings.source = file;
  return settings;
}

Settings LoadString(std::string_view toml, const std::string& source_name) {
  const toml::table root = impl::Parse(toml, source_name);
  const RawConfig raw = ReadConfig(TableReader(root, "", source_name));
  return Compiler(source_name).Compile(raw);
}

}  // namespace warp::config
