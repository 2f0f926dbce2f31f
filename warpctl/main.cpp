// warpctl: the command-line tool of the warp control plane (SPEC section 10).
#include <sysexits.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "warpctl/commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"warpctl: the command-line tool of the warp control plane", "warpctl"};
  warp::warpctl::Options options;
  std::string config_path;
  std::string dsn;
  std::string migrations_dir;
  app.add_option(
      "--config", config_path,
      std::string("configuration file (default ") + warp::warpctl::kDefaultConfigPath + ")");
  app.add_flag("--json", options.json, "print one JSON document");
  app.add_option("--dsn", dsn, "libpq connection string to use instead of the config's store.dsn");
  app.add_option("--migrations", migrations_dir,
                 "migrations directory (default $WARP_MIGRATIONS_DIR, else the installed ones)");
  app.set_version_flag("--version", std::string("warpctl ") + WARP_VERSION);
  app.require_subcommand(1);

  CLI::App* migrate = app.add_subcommand("migrate", "apply or check the schema migrations");
  std::string action = "status";
  migrate->add_option("action", action, "up, status (the default) or verify")
      ->check(CLI::IsMember({"up", "status", "verify"}));
  migrate->fallthrough();

  CLI::App* check_config = app.add_subcommand("check-config", "validate a configuration file");
  std::string check_path;
  check_config->add_option("path", check_path, "the file (default: --config's)");
  check_config->fallthrough();

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "warpctl: %s (see warpctl --help)\n", e.what());
    return EX_USAGE;
  }
  if (!config_path.empty())
    options.config_path = config_path;
  if (!dsn.empty())
    options.dsn = dsn;
  if (!migrations_dir.empty())
    options.migrations_dir = migrations_dir;

  try {
    if (*migrate) {
      const auto which = action == "up"       ? warp::warpctl::MigrateAction::kUp
                         : action == "verify" ? warp::warpctl::MigrateAction::kVerify
                                              : warp::warpctl::MigrateAction::kStatus;
      return warp::warpctl::Migrate(options, which, std::cout, std::cerr);
    }
    std::optional<std::filesystem::path> path;
    if (!check_path.empty())
      path = check_path;
    return warp::warpctl::CheckConfig(options, path, std::cout, std::cerr);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "warpctl: internal error: %s\n", e.what());
    return EX_SOFTWARE;
  }
}
