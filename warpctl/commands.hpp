// warpctl's commands: `migrate [up|status|verify]` and `check-config [PATH]`. Each returns a
// sysexits code and writes its report to `out` (a table, or one JSON document with --json) and
// its errors, one line each, to `err`.
#pragma once

#include <filesystem>
#include <optional>
#include <ostream>
#include <string>

namespace warp::warpctl {

/// The configuration file when --config is not given.
inline constexpr const char* kDefaultConfigPath = "/etc/warp/warpd.toml";

/// warpctl's global options.
struct Options {
  /// --config; when unset, kDefaultConfigPath, except that --dsn alone needs no config file.
  std::optional<std::filesystem::path> config_path;
  bool json = false;  ///< --json: one JSON document on `out`
  /// --dsn: a libpq conninfo replacing the config's store.dsn (its password_file still applies
  /// when a config is given).
  std::optional<std::string> dsn;
  /// --migrations; default migrations::DefaultMigrationsDir().
  std::optional<std::filesystem::path> migrations_dir;
};

enum class MigrateAction { kStatus, kUp, kVerify };

/// `migrate ACTION`. Exit codes: 0 ok (status reports problems but still exits 0), 1 verify
/// found a problem or up was refused or failed, 69 database unreachable, 70 internal error,
/// 78 configuration error (config file, password file, migrations directory).
int Migrate(const Options& options, MigrateAction action, std::ostream& out, std::ostream& err);

/// `check-config [PATH]`: loads and validates PATH (default: --config, else the default path)
/// and the fixtures file it names. One line; 0 when valid, 78 when not.
int CheckConfig(const Options& options, const std::optional<std::filesystem::path>& path,
                std::ostream& out, std::ostream& err);

}  // namespace warp::warpctl
