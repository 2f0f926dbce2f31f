#include "config/config.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <map>
#include <sstream>
#include <system_error>
#include <utility>
#include <vector>

#include <toml++/toml.h>
#include <nlohmann/json.hpp>

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

// --- source positions and errors -------------------------------------------------------------

struct Position {
  int line = 1;
  int column = 1;
};

Position PositionOf(const toml::source_region& region) {
  return {static_cast<int>(region.begin.line), static_cast<int>(region.begin.column)};
}

[[noreturn]] void Fail(const std::string& file, Position at, std::string key, std::string message) {
  throw ConfigError(file, at.line, at.column, std::move(key), std::move(message));
}

/// A value as written in the file: its dotted key and where the key and the value stand.
template <typename T>
struct Located {
  T value{};
  std::string key;
  Position key_at;
  Position at;
};

/// A key that may be absent from the file.
template <typename T>
using Field = std::optional<Located<T>>;

std::string_view Described(toml::node_type type) {
  switch (type) {
    case toml::node_type::none:
      return "nothing";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
  }
  return "an unknown value";
}

/// Converts a TOML value to JSON (payloads). Dates and times become their TOML text.
nlohmann::json ToJson(const toml::node& node, const std::string& key, const std::string& file) {
  switch (node.type()) {
    case toml::node_type::table: {
      nlohmann::json object = nlohmann::json::object();
      for (auto&& [k, v] : *node.as_table()) {
        object[std::string(k.str())] = ToJson(v, key + "." + std::string(k.str()), file);
      }
      return object;
    }
    case toml::node_type::array: {
      nlohmann::json array = nlohmann::json::array();
      std::size_t index = 0;
      for (const toml::node& element : *node.as_array()) {
        array.push_back(ToJson(element, key + "[" + std::to_string(index++) + "]", file));
      }
      return array;
    }
    case toml::node_type::string:
      return node.as_string()->get();
    case toml::node_type::integer:
      return node.as_integer()->get();
    case toml::node_type::floating_point: {
      const double value = node.as_floating_point()->get();
      if (!std::isfinite(value)) {
        Fail(file, PositionOf(node.source()), key, "not representable in JSON");
      }
      return value;
    }
    case toml::node_type::boolean:
      return node.as_boolean()->get();
    case toml::node_type::date:
    case toml::node_type::time:
    case toml::node_type::date_time: {
      std::ostringstream text;
      node.visit([&text](auto&& value) { text << value; });
      return text.str();
    }
    case toml::node_type::none:
      break;
  }
  Fail(file, PositionOf(node.source()), key, "not representable in JSON");
}

/// Typed, strict access to one TOML table. `prefix` is the table's dotted key in errors.
class TableReader {
 public:
  TableReader(const toml::table& table, std::string prefix, const std::string& file)
      : table_(&table), prefix_(std::move(prefix)), file_(&file) {}

  Position at() const { return PositionOf(table_->source()); }
  const std::string& file() const { return *file_; }
  const std::string& prefix() const { return prefix_; }

  std::string KeyOf(std::string_view key) const {
    return prefix_.empty() ? std::string(key) : prefix_ + "." + std::string(key);
  }

  /// Throws at the first key (in document order) that is not in `allowed`.
  void RejectUnknownKeys(std::initializer_list<std::string_view> allowed) const {
    const toml::key* first = nullptr;
    for (auto&& [k, v] : *table_) {
      if (std::find(allowed.begin(), allowed.end(), k.str()) != allowed.end()) {
        continue;
      }
      if (first == nullptr || Before(PositionOf(k.source()), PositionOf(first->source()))) {
        first = &k;
      }
    }
    if (first != nullptr) {
      Fail(file(), PositionOf(first->source()), KeyOf(first->str()), "unknown key");
    }
  }

  std::optional<TableReader> Table(std::string_view key) const {
    const toml::node* node = table_->get(key);
    if (node == nullptr) {
      return std::nullopt;
    }
    if (!node->is_table()) {
      WrongType(key, *node, "a table");
    }
    return TableReader(*node->as_table(), KeyOf(key), file());
  }

  /// Every entry of the table `key` is itself a table (`[runner.NAME]`); in document order.
  std::vector<std::pair<std::string, TableReader>> TablesIn(std::string_view key) const {
    std::vector<std::pair<std::string, TableReader>> out;
    const auto outer = Table(key);
    if (!outer) {
      return out;
    }
    for (auto&& [k, v] : *outer->table_) {
      const std::string name(k.str());
      if (!v.is_table()) {
        outer->WrongType(name, v, "a table");
      }
      out.emplace_back(name, TableReader(*v.as_table(), outer->KeyOf(name), file()));
    }
    std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
      return Before(a.second.at(), b.second.at());
    });
    return out;
  }

  /// `[[key]]`: the tables of an array, named `key[0]`, `key[1]`...
  std::vector<TableReader> ArrayOfTables(std::string_view key) const {
    std::vector<TableReader> out;
    const toml::node* node = table_->get(key);
    if (node == nullptr) {
      return out;
    }
    if (!node->is_array()) {
      WrongType(key, *node, "an array of tables ([[" + std::string(key) + "]])");
    }
    for (const toml::node& element : *node->as_array()) {
      const std::string name = KeyOf(key) + "[" + std::to_string(out.size()) + "]";
      if (!element.is_table()) {
        Fail(file(), PositionOf(element.source()), name,
             "expected a table, found " + std::string(Described(element.type())));
      }
      out.emplace_back(*element.as_table(), name, file());
    }
    return out;
  }

  Field<std::string> String(std::string_view key, std::string_view expected = "a string") const {
    const auto entry = Find(key);
    if (!entry) {
      return std::nullopt;
    }
    const auto* value = entry->second->as_string();
    if (value == nullptr) {
      WrongType(key, *entry->second, expected);
    }
    return Locate(key, *entry, std::string(value->get()));
  }

  Field<std::string> DurationText(std::string_view key) const {
    return String(key, R"(a duration string such as "10s")");
  }

  Field<std::int64_t> Integer(std::string_view key) const {
    const auto entry = Find(key);
    if (!entry) {
      return std::nullopt;
    }
    const auto* value = entry->second->as_integer();
    if (value == nullptr) {
      WrongType(key, *entry->second, "an integer");
    }
    return Locate(key, *entry, value->get());
  }

  /// A float; an integer is accepted too.
  Field<double> Number(std::string_view key) const {
    const auto entry = Find(key);
    if (!entry) {
      return std::nullopt;
    }
    if (const auto* integer = entry->second->as_integer()) {
      return Locate(key, *entry, static_cast<double>(integer->get()));
    }
    const auto* value = entry->second->as_floating_point();
    if (value == nullptr) {
      WrongType(key, *entry->second, "a number");
    }
    return Locate(key, *entry, value->get());
  }

  Field<std::vector<Located<std::string>>> StringArray(std::string_view key) const {
    const auto entry = Find(key);
    if (!entry) {
      return std::nullopt;
    }
    const auto* array = entry->second->as_array();
    if (array == nullptr) {
      WrongType(key, *entry->second, "an array of strings");
    }
    std::vector<Located<std::string>> values;
    for (const toml::node& element : *array) {
      Located<std::string> value;
      value.key = KeyOf(key) + "[" + std::to_string(values.size()) + "]";
      value.key_at = PositionOf(entry->first->source());
      value.at = PositionOf(element.source());
      const auto* text = element.as_string();
      if (text == nullptr) {
        Fail(file(), value.at, value.key,
             "expected a string, found " + std::string(Described(element.type())));
      }
      value.value = text->get();
      values.push_back(std::move(value));
    }
    return Locate(key, *entry, std::move(values));
  }

  /// A table (usually inline) converted to the text of a JSON object.
  Field<std::string> JsonObject(std::string_view key) const {
    const auto entry = Find(key);
    if (!entry) {
      return std::nullopt;
    }
    if (!entry->second->is_table()) {
      WrongType(key, *entry->second, "a table");
    }
    const std::string json = ToJson(*entry->second, KeyOf(key), file()).dump();
    auto field = Locate(key, *entry, json);
    if (const std::string problem = store::PayloadProblem(json); !problem.empty()) {
      Fail(file(), field.at, field.key, problem);
    }
    return field;
  }

 private:
  using Entry = std::pair<const toml::key*, const toml::node*>;

  static bool Before(Position a, Position b) {
    return a.line != b.line ? a.line < b.line : a.column < b.column;
  }

  std::optional<Entry> Find(std::string_view key) const {
    const auto it = table_->find(key);
    if (it == table_->end()) {
      return std::nullopt;
    }
    return Entry{&(*it).first, &(*it).second};
  }

  template <typename T>
  Located<T> Locate(std::string_view key, const Entry& entry, T value) const {
    return Located<T>{std::move(value), KeyOf(key), PositionOf(entry.first->source()),
                      PositionOf(entry.second->source())};
  }

  [[noreturn]] void WrongType(std::string_view key, const toml::node& node,
                              std::string_view expected) const {
    Fail(file(), PositionOf(node.source()), KeyOf(key),
         "expected " + std::string(expected) + ", found " + std::string(Described(node.type())));
  }

  const toml::table* table_;
  std::string prefix_;
  const std::string* file_;
};

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
  t.RejectUnknownKeys({"transport", "command", "timeout", "kill_grace", "url", "channel"});
  return {TableOf(t),
          name,
          t.prefix(),
          t.String("transport"),
          t.StringArray("command"),
          t.DurationText("timeout"),
          t.DurationText("kill_grace"),
          t.String("url"),
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

std::string Quoted(std::string_view text) {
  return "\"" + std::string(text) + "\"";
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
    }
    if (second) {
      FailAt(*second, std::move(second_message));
    }
    Fail(file_, Position{}, "", std::move(second_message));
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
    reject_unless(raw.timeout, {Transport::kExec, Transport::kHttp});
    reject_unless(raw.kill_grace, {Transport::kExec});
    reject_unless(raw.url, {Transport::kHttp});
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
        break;
      case Transport::kNotify:
        out.channel = NonEmptyOf(raw.channel, out.channel);
        // PostgreSQL truncates identifiers beyond 63 bytes; a listener would never match.
        if (out.channel.size() > 63) {
          FailAt(*raw.channel, "must be at most 63 characters");
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
  static bool IsValidInstance(std::string_view name) {
    return !name.empty() && name.size() <= 63 && std::all_of(name.begin(), name.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || IsDigit(c) || c == '-';
    });
  }

  static std::string HostName() {
    std::array<char, 256> buffer{};
    if (::gethostname(buffer.data(), buffer.size() - 1) != 0) {
      return {};
    }
    return buffer.data();
  }

  const std::string& file_;
};

/// The whole file; errors name it with line 0, column 0.
std::string ReadFile(const std::filesystem::path& file) {
  const auto fail = [&file](int error) {
    Fail(file.string(), {0, 0}, "", "cannot read: " + std::system_category().message(error));
  };
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fail(errno);
  }
  std::string text;
  std::array<char, 64 * 1024> buffer;
  for (;;) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n == 0) {
      break;
    }
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      const int error = errno;
      ::close(fd);
      fail(error);
    }
    text.append(buffer.data(), static_cast<std::size_t>(n));
  }
  ::close(fd);
  return text;
}

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
  toml::table root;
  try {
    root = toml::parse(toml, std::string_view(source_name));
  } catch (const toml::parse_error& e) {
    Fail(source_name, PositionOf(e.source()), "", std::string(e.description()));
  }
  const RawConfig raw = ReadConfig(TableReader(root, "", source_name));
  return Compiler(source_name).Compile(raw);
}

}  // namespace warp::config
