// The database password of a configuration: never in the TOML itself (SPEC section 8).
#pragma once

#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include "config/settings.hpp"

namespace warp::config {

/// store.password_file names a file that cannot be read.
class PasswordFileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The password: the file `store.password_file` (relative to `config_dir`), else the systemd
/// credential $CREDENTIALS_DIRECTORY/warp-db-password (LoadCredential=), else none, and then
/// libpq uses its own .pgpass or service file. One trailing newline is dropped; an empty
/// password (the empty /etc/warp/db-password the package installs) counts as none. Throws
/// PasswordFileError when password_file is set but unreadable.
std::optional<std::string> DatabasePassword(const StoreSettings& store,
                                            const std::filesystem::path& config_dir);

}  // namespace warp::config
