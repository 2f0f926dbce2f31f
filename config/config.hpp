// Loading warpd's TOML configuration: parse into plain structs, then validate and compile into
// typed Settings (config/settings.hpp). Strict: unknown keys, wrong types, bad durations,
// out-of-range values and inconsistent pairs are errors naming file, line, column and key.
#pragma once

#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "config/settings.hpp"

namespace warp::config {

/// A configuration (or fixtures) error. what() is one line:
/// `FILE:LINE:COLUMN: KEY: WHAT IS WRONG` (KEY is dotted, e.g. `leasing.renew_every`;
/// for TOML syntax errors KEY is omitted).
class ConfigError : public std::runtime_error {
 public:
  ConfigError(std::string file, int line, int column, std::string key, std::string message);
  const std::string& file() const { return file_; }
  int line() const { return line_; }
  int column() const { return column_; }
  const std::string& key() const { return key_; }
  const std::string& message() const { return message_; }

 private:
  std::string file_;
  int line_;
  int column_;
  std::string key_;
  std::string message_;
};

/// Parses a duration: one or more `<integer><unit>` groups, units ms s m h d
/// ("250ms", "10s", "1h30m", "7d"). "0s" is zero. Returns nullopt when malformed.
std::optional<Duration> ParseDuration(std::string_view text);
/// The shortest exact rendering: 90000ms -> "1m30s".
std::string FormatDuration(Duration d);

/// The default `daemon.instance` for a host: lower-cased, every character outside [a-z0-9-]
/// replaced by '-', truncated to 63 characters; "warpd" for an empty host name.
std::string InstanceNameFromHost(std::string_view host_name);
/// True for a valid `daemon.instance`: 1 to 63 characters of [a-z0-9-].
bool IsValidInstanceName(std::string_view name);

/// Reads and validates `file`. Throws ConfigError (also for an unreadable file: line 0).
Settings Load(const std::filesystem::path& file);
/// Same, from text; `source_name` stands for the file name in errors.
Settings LoadString(std::string_view toml, const std::string& source_name);

}  // namespace warp::config
