// warpd: the scheduler and watchdog daemon of a jhf-warp style control plane.
#include <sysexits.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "config/config.hpp"
#include "daemon/daemon.hpp"

int main(int argc, char** argv) {
  CLI::App app{"warpd: scheduler and watchdog daemon of the warp control plane", "warpd"};
  warp::daemon::Options options;
  std::string config_path = warp::daemon::kDefaultConfigPath;
  bool check_config = false;
  std::string log_format;
  std::string instance;
  app.add_option("--config", config_path, "configuration file")->capture_default_str();
  app.add_flag("--once", options.once,
               "run one cycle and one watchdog pass, wait for the dispatched work, exit");
  app.add_flag("--check-config", check_config, "validate the configuration and exit");
  app.add_option("--log-format", log_format, "override log.format")
      ->check(CLI::IsMember({"auto", "journal", "text", "json"}));
  app.add_option("--instance", instance,
                 "override daemon.instance (warpd@NAME.service passes NAME)")
      ->check([](const std::string& name) {
        return warp::config::IsValidInstanceName(name) ? std::string()
                                                       : "must match [a-z0-9-]{1,63}";
      });
  app.set_version_flag("--version", std::string("warpd ") + WARP_VERSION);
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "warpd: %s (see warpd --help)\n", e.what());
    return EX_USAGE;
  }
  options.config_path = config_path;
  if (!instance.empty())
    options.instance = instance;
  if (check_config)
    return warp::daemon::CheckConfig(options.config_path);
  if (log_format == "auto")
    options.log_format = warp::config::LogFormat::kAuto;
  if (log_format == "journal")
    options.log_format = warp::config::LogFormat::kJournal;
  if (log_format == "text")
    options.log_format = warp::config::LogFormat::kText;
  if (log_format == "json")
    options.log_format = warp::config::LogFormat::kJson;
  return warp::daemon::Run(options);
}
