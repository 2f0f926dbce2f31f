// What every warpctl command shares: the lazily opened database session, the loaded config,
// the operator's identity, failures that carry their exit code, aligned tables, RFC 3339 times.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/settings.hpp"
#include "warpctl/commands.hpp"
#include "warpctl/db.hpp"

namespace warp::warpctl::impl {

using Json = nlohmann::ordered_json;

/// A command's expected failure: its sysexits code and one line for stderr.
class Failure : public std::runtime_error {
 public:
  Failure(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};

/// Bad input data (exit 65): "FIELD: message".
[[noreturn]] void BadData(const std::string& field, const std::string& message);
/// A refused request or a found violation (exit 1).
[[noreturn]] void Refused(const std::string& message);

/// One command's run: options, the database (connected on first use), the config (loaded on
/// first use), the actor recorded in audit_events.
class Context {
 public:
  explicit Context(const Options& options) : options_(options) {}
  const Options& options() const { return options_; }
  bool json() const { return options_.json; }
  /// Connects on first use. Throws Failure: 78 (config), 69 (database unreachable).
  Db& db();
  /// The config file's settings (--config, else the default path). Throws Failure(78).
  const config::Settings& settings();
  /// True when a config file was named with --config, or no --dsn was given (so the default
  /// config is the source of the connection).
  bool has_config() const { return options_.config_path.has_value() || !options_.dsn; }
  /// The OS user running warpctl (audit_events.actor).
  const std::string& actor();

 private:
  const Options& options_;
  std::optional<config::Settings> settings_;
  std::unique_ptr<Db> db_;
  std::string actor_;
};

/// Runs `body` with a Context; maps failures to exit codes (Failure: its code; a lost
/// connection: 69; a database refusal of bad data: 65; other errors: 70) and prints the error
/// line on `err` and, with --json, a document {"command", "ok": false, "exit_code", "error"} on
/// `out`. On success with --json, prints `doc` completed with "ok" and "exit_code".
int RunCommand(const Options& options, const std::string& name, std::ostream& out,
               std::ostream& err, const std::function<int(Context&, Json&)>& body);

/// Appends an audit event in the caller's transaction.
void Audit(Context& ctx, const std::string& event_type, const std::string& subject,
           const Json& detail);

/// An aligned text table: columns separated by two spaces, the last one not padded.
class Table {
 public:
  explicit Table(std::vector<std::string> headers);
  void Add(std::vector<std::string> row);
  bool empty() const { return rows_.size() == 1; }
  /// Prints the table, or `if_empty` alone when there are no rows.
  void Print(std::ostream& out, const std::string& if_empty = "(none)") const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

/// Microseconds since the epoch as RFC 3339 UTC: "2024-01-15T09:00:00Z" (`micros`: with
/// ".123456").
std::string Rfc3339(std::int64_t epoch_us, bool micros = false);
/// The JSON form of a nullable instant: RFC 3339 with microseconds, or null.
Json TimeJson(const std::optional<std::int64_t>& epoch_us);
/// The table form of a nullable instant: RFC 3339 to the second, or "-".
std::string TimeText(const std::optional<std::int64_t>& epoch_us);

/// Checks an agent slug (SPEC section 2); BadData(field) otherwise.
void CheckSlug(const std::string& field, const std::string& slug);
/// Parses `text` as a JSON object of at most `max_bytes`; BadData(field) otherwise.
Json ParseObject(const std::string& field, const std::string& text, std::size_t max_bytes);
/// Checks an RFC 3339 time ("2024-01-15T09:00:00Z", "...+02:00", fractions allowed) and returns
/// it as microseconds since the epoch (the database converts it); BadData(field) otherwise.
std::int64_t ParseTime(Context& ctx, const std::string& field, const std::string& text);

/// Paging for lists, newest first: --limit (1..10000) and --before ID.
void CheckLimit(int limit);
/// Adds "next_before" to `doc` (null on the last page) and, in table mode, prints the paging
/// hint. `more`: the query found a row past the page (lists fetch limit + 1 rows).
void PageEnd(Context& ctx, Json& doc, std::ostream& out, bool more, std::int64_t last_id);

}  // namespace warp::warpctl::impl
