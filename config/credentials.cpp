#include "config/credentials.hpp"

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace warp::config {
namespace {

std::optional<std::string> ReadSecret(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in)
    return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  std::string secret = text.str();
  if (secret.ends_with('\n'))
    secret.pop_back();
  if (secret.ends_with('\r'))
    secret.pop_back();
  return secret;
}

}  // namespace

std::optional<std::string> DatabasePassword(const StoreSettings& store,
                                            const std::filesystem::path& config_dir) {
  std::optional<std::string> secret;
  if (!store.password_file.empty()) {
    const auto file =
        store.password_file.is_relative() ? config_dir / store.password_file : store.password_file;
    secret = ReadSecret(file);
    if (!secret)
      throw PasswordFileError("store.password_file: cannot read " + file.string());
  } else if (const char* dir = std::getenv("CREDENTIALS_DIRECTORY"); dir && *dir) {
    secret = ReadSecret(std::filesystem::path(dir) / "warp-db-password");
  }
  if (secret && secret->empty())
    return std::nullopt;
  return secret;
}

}  // namespace warp::config
