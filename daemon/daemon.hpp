// warpd's process: loads the config, builds the store, scheduler and lease keeper on one
// io_context, talks to systemd, and handles signals (SIGTERM/SIGINT drain, SIGHUP reload).
#pragma once

#include <filesystem>
#include <optional>

#include "config/settings.hpp"

namespace warp::daemon {

inline constexpr const char* kDefaultConfigPath = "/etc/warp/warpd.toml";

struct Options {
  std::filesystem::path config_path = kDefaultConfigPath;
  bool once = false;                            ///< one cycle, wait for its work, exit
  std::optional<config::LogFormat> log_format;  ///< overrides log.format
  std::optional<std::string> instance;          ///< overrides daemon.instance (warpd@NAME)
};

/// Runs warpd until it is told to stop. Returns the process exit code (sysexits: 0 ok,
/// 69 store unavailable, 70 internal error, 78 configuration error).
int Run(const Options& options);

/// `--check-config`: validates the config (and the fixtures and runners it names) and prints
/// one line saying so. Returns 0 or 78.
int CheckConfig(const std::filesystem::path& config_path);

}  // namespace warp::daemon
