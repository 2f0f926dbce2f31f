#include "warpctl/connect.hpp"

#include <libpq-fe.h>

#include <string_view>
#include <vector>

namespace warp::warpctl {
namespace {

std::string OneLine(std::string_view text) {
  std::string out;
  bool space = false;
  for (const char c : text) {
    if (c == '\n' || c == '\r' || c == '\t' || c == ' ') {
      space = !out.empty();
      continue;
    }
    if (space)
      out += ' ';
    space = false;
    out += c;
  }
  return out;
}

}  // namespace

std::optional<std::string> ResolvePassword(const std::filesystem::path& password_file,
                                           const std::filesystem::path& config_dir) {
  config::StoreSettings store;
  store.password_file = password_file;
  return config::DatabasePassword(store, config_dir);
}

ConnectOptions OptionsFromStore(const config::StoreSettings& store,
                                const std::filesystem::path& config_dir) {
  return ConnectOptions{
      .dsn = store.dsn,
      .password = ResolvePassword(store.password_file, config_dir),
      .connect_timeout =
          std::chrono::duration_cast<std::chrono::milliseconds>(store.connect_timeout),
  };
}

migrations::ConnectionPtr Connect(const ConnectOptions& options) {
  const auto seconds = std::max<long long>(
      1, std::chrono::ceil<std::chrono::seconds>(options.connect_timeout).count());
  const std::string timeout = std::to_string(seconds);
  // Keywords apply in order and later ones win: the timeout and application name come before
  // the expanded DSN (which may set its own), the password after it (the password file is
  // the configured source of truth).
  std::vector<const char*> keywords = {"connect_timeout", "fallback_application_name", "dbname"};
  std::vector<const char*> values = {timeout.c_str(), "warpctl", options.dsn.c_str()};
  if (options.password) {
    keywords.push_back("password");
    values.push_back(options.password->c_str());
  }
  keywords.push_back(nullptr);
  values.push_back(nullptr);
  migrations::ConnectionPtr conn(PQconnectdbParams(keywords.data(), values.data(), 1));
  if (!conn)
    throw DatabaseUnavailable("database unreachable: libpq could not allocate a connection");
  if (PQstatus(conn.get()) != CONNECTION_OK)
    throw DatabaseUnavailable("database unreachable: " + OneLine(PQerrorMessage(conn.get())));
  return conn;
}

}  // namespace warp::warpctl
