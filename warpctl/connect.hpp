// Connecting warpctl to the store's PostgreSQL database: the DSN and connect timeout of the
// config's [store] table, the password from a file kept out of the DSN.
#pragma once

#include <chrono>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include "config/credentials.hpp"
#include "config/settings.hpp"
#include "migrations/migrator.hpp"

namespace warp::warpctl {

/// Where and how to connect.
struct ConnectOptions {
  std::string dsn;  ///< a libpq conninfo string or URI
  /// Sent as libpq's separate `password` keyword, overriding the DSN's; never logged. When
  /// unset, libpq's own mechanisms apply (the DSN, PGPASSWORD, ~/.pgpass).
  std::optional<std::string> password;
  /// libpq's connect_timeout, rounded up to whole seconds (libpq waits at least 2 s); a
  /// connect_timeout in the DSN takes precedence.
  std::chrono::milliseconds connect_timeout = std::chrono::seconds(5);
};

/// The database could not be reached (or refused the login) within the connect timeout.
class DatabaseUnavailable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A password file could not be read (a configuration error).
using PasswordFileError = config::PasswordFileError;

/// The database password of config::DatabasePassword for a [store] with `password_file`:
/// that file (relative to `config_dir`), else the systemd credential, else none.
std::optional<std::string> ResolvePassword(const std::filesystem::path& password_file,
                                           const std::filesystem::path& config_dir);

/// Connection options from the [store] settings of the config file in `config_dir`.
ConnectOptions OptionsFromStore(const config::StoreSettings& store,
                                const std::filesystem::path& config_dir);

/// Connects (blocking, up to the connect timeout). Throws DatabaseUnavailable with libpq's
/// message on one line.
migrations::ConnectionPtr Connect(const ConnectOptions& options);

}  // namespace warp::warpctl
