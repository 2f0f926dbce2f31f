// warpctl: the command-line tool of the warp control plane (SPEC section 10).
#include <sysexits.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <functional>
#include <iostream>

#include "warpctl/commands.hpp"

namespace {

using namespace warp::warpctl;

/// --limit and --before of a list.
void AddPaging(CLI::App* command, Page& page) {
  command->add_option("--limit", page.limit, "rows per page, newest first (1..10000)")
      ->capture_default_str();
  command->add_option("--before", page.before, "show rows with an id below this one (paging)");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"warpctl: the command-line tool of the warp control plane", "warpctl"};
  Options options;
  std::string config_path;
  std::string dsn;
  std::string migrations_dir;
  app.add_option("--config", config_path,
                 std::string("configuration file (default ") + kDefaultConfigPath + ")");
  app.add_flag("--json", options.json, "print one JSON document");
  app.add_option("--dsn", dsn, "libpq connection string to use instead of the config's store.dsn");
  app.add_option("--migrations", migrations_dir,
                 "migrations directory (default $WARP_MIGRATIONS_DIR, else the installed ones)");
  app.set_version_flag("--version", std::string("warpctl ") + WARP_VERSION);
  app.require_subcommand(1);
  app.footer(
      "Exit codes: 0 ok, 1 refused or a violation found, 64 usage, 65 bad input data, 69 "
      "database unavailable, 70 internal error, 78 configuration error.");

  // What runs once the command line parsed.
  std::function<int()> run;

  CLI::App* migrate = app.add_subcommand("migrate", "apply or check the schema migrations");
  std::string action = "status";
  migrate->add_option("action", action, "up, status (the default) or verify")
      ->check(CLI::IsMember({"up", "status", "verify"}));
  migrate->callback([&] {
    const auto which = action == "up"       ? MigrateAction::kUp
                       : action == "verify" ? MigrateAction::kVerify
                                            : MigrateAction::kStatus;
    run = [&, which] { return Migrate(options, which, std::cout, std::cerr); };
  });

  CLI::App* check_config = app.add_subcommand("check-config", "validate a configuration file");
  std::string check_path;
  check_config->add_option("path", check_path, "the file (default: --config's)");
  check_config->callback([&] {
    run = [&] {
      std::optional<std::filesystem::path> path;
      if (!check_path.empty())
        path = check_path;
      return CheckConfig(options, path, std::cout, std::cerr);
    };
  });

  CLI::App* status = app.add_subcommand(
      "status", "instances, recent cycles, active leases, backlog, open observations");
  status->callback([&] { run = [&] { return Status(options, std::cout, std::cerr); }; });

  CLI::App* agents = app.add_subcommand("agents", "list, register, pause, resume, retire agents");
  agents->require_subcommand(1);
  CLI::App* agents_list = agents->add_subcommand("list", "list the agents");
  std::optional<std::string> lifecycle;
  agents_list->add_option("--lifecycle", lifecycle, "only agents in this lifecycle")
      ->check(CLI::IsMember({"active", "paused", "retired"}));
  agents_list->callback(
      [&] { run = [&] { return ListAgents(options, lifecycle, std::cout, std::cerr); }; });

  CLI::App* reg = agents->add_subcommand(
      "register",
      "register a persistent agent (needs a business link, a configured runner and "
      "an existing tool profile)");
  RegisterAgentArgs reg_args;
  reg->add_option("slug", reg_args.slug, "the agent's slug (^[a-z0-9][a-z0-9-]{0,62}$)")
      ->required();
  reg->add_option("--domain", reg_args.domain, "domain id")->required();
  reg->add_option("--tool-profile", reg_args.tool_profile, "tool profile id (must exist)")
      ->required();
  reg->add_option("--runner", reg_args.runner, "a runner of the config file")->required();
  reg->add_option("--business-link", reg_args.business_link,
                  "the Spindle registration request reference (required by the guardrail)")
      ->required();
  reg->add_option("--display-name", reg_args.display_name, "display name");
  reg->add_option("--max-active", reg_args.max_active,
                  "bound of active leases (default: leasing.default_max_active)");
  reg->callback(
      [&] { run = [&] { return RegisterAgent(options, reg_args, std::cout, std::cerr); }; });

  std::string lifecycle_slug;
  for (const auto& [name, which, help] :
       {std::tuple{"pause", LifecycleAction::kPause, "pause an agent (no new dispatches)"},
        std::tuple{"resume", LifecycleAction::kResume, "make a paused agent active again"},
        std::tuple{"retire", LifecycleAction::kRetire,
                   "retire an agent for good (never leased again)"}}) {
    CLI::App* sub = agents->add_subcommand(name, help);
    sub->add_option("slug", lifecycle_slug, "the agent's slug")->required();
    sub->callback([&, which = which] {
      run = [&, which] {
        return ChangeLifecycle(options, which, lifecycle_slug, std::cout, std::cerr);
      };
    });
  }

  CLI::App* enqueue = app.add_subcommand("enqueue", "add a work item for an agent");
  EnqueueArgs enqueue_args;
  enqueue->add_option("agent", enqueue_args.agent, "the agent's slug")->required();
  enqueue
      ->add_option("kind", enqueue_args.kind,
                   "the work kind (an operation of the agent's tool profile)")
      ->required();
  enqueue->add_option("--payload", enqueue_args.payload, "a JSON object (at most 64 KiB)");
  enqueue->add_option("--key", enqueue_args.key,
                      "idempotency key (default: a new one); a repeat reports the existing item");
  enqueue->add_option("--due", enqueue_args.due, "RFC 3339 time (default: now)");
  enqueue->add_option("--priority", enqueue_args.priority, "higher first")->capture_default_str();
  enqueue->add_option("--max-attempts", enqueue_args.max_attempts,
                      "attempts before dead (default: scheduler.max_attempts, else 5)");
  enqueue->callback(
      [&] { run = [&] { return Enqueue(options, enqueue_args, std::cout, std::cerr); }; });

  CLI::App* work = app.add_subcommand("work", "work items");
  work->require_subcommand(1);
  CLI::App* work_list = work->add_subcommand("list", "list work items, newest first");
  WorkFilter work_filter;
  Page work_page;
  work_list->add_option("--state", work_filter.state, "only items in this state")
      ->check(CLI::IsMember({"pending", "dispatched", "done", "failed", "dead"}));
  work_list->add_option("--agent", work_filter.agent, "only items of this agent");
  AddPaging(work_list, work_page);
  work_list->callback([&] {
    run = [&] { return ListWork(options, work_filter, work_page, std::cout, std::cerr); };
  });

  CLI::App* leases = app.add_subcommand("leases", "list agent leases, newest first");
  LeaseFilter lease_filter;
  Page lease_page;
  leases->add_flag("--active", lease_filter.active, "only active leases");
  leases->add_option("--agent", lease_filter.agent, "only leases of this agent");
  AddPaging(leases, lease_page);
  leases->callback([&] {
    run = [&] { return ListLeases(options, lease_filter, lease_page, std::cout, std::cerr); };
  });

  CLI::App* runs = app.add_subcommand("runs", "list scheduler runs, newest first");
  Page run_page;
  run_page.limit = 20;
  AddPaging(runs, run_page);
  runs->callback([&] { run = [&] { return ListRuns(options, run_page, std::cout, std::cerr); }; });

  CLI::App* observations =
      app.add_subcommand("observations", "list watchdog observations, newest first");
  ObservationFilter obs_filter;
  Page obs_page;
  observations->add_flag("--open", obs_filter.open, "only open (unresolved) observations");
  observations->add_option("--severity", obs_filter.severity, "only this severity")
      ->check(CLI::IsMember({"info", "warning", "critical"}));
  observations->add_option("--agent", obs_filter.agent, "only observations of this agent");
  AddPaging(observations, obs_page);
  observations->callback([&] {
    run = [&] { return ListObservations(options, obs_filter, obs_page, std::cout, std::cerr); };
  });

  CLI::App* complete = app.add_subcommand(
      "complete", "report a leased work item's outcome (through warp.complete_work)");
  CompleteArgs complete_args;
  complete->add_option("lease_id", complete_args.lease_id, "the lease id")->required();
  complete->add_option("fencing_token", complete_args.fencing_token, "the lease's fencing token")
      ->required();
  complete->add_option("--outcome", complete_args.outcome, "done or failed")
      ->required()
      ->check(CLI::IsMember({"done", "failed"}));
  complete->add_option("--detail", complete_args.detail, "a JSON object (e.g. the error)");
  complete->callback(
      [&] { run = [&] { return Complete(options, complete_args, std::cout, std::cerr); }; });

  CLI::App* audit = app.add_subcommand("audit", "check invariants over the durable history");
  audit->require_subcommand(1);
  CLI::App* audit_leases = audit->add_subcommand(
      "leases", "check the lease invariant (SPEC section 5); exit 1 on a violation");
  std::optional<int> default_max_active;
  audit_leases->add_option("--default-max-active", default_max_active,
                           "bound of agents without their own (default: the config's "
                           "leasing.default_max_active, else 1)");
  audit_leases->callback([&] {
    run = [&] { return AuditLeases(options, default_max_active, std::cout, std::cerr); };
  });

  CLI::App* workspaces = app.add_subcommand("workspaces", "agent workspaces");
  workspaces->require_subcommand(1);
  CLI::App* workspaces_list =
      workspaces->add_subcommand("list", "list workspaces with their retention state");
  std::optional<std::string> workspace_agent;
  Page workspace_page;
  workspaces_list->add_option("--agent", workspace_agent, "only this agent's");
  AddPaging(workspaces_list, workspace_page);
  workspaces_list->callback([&] {
    run = [&] {
      return ListWorkspaces(options, workspace_agent, workspace_page, std::cout, std::cerr);
    };
  });

  CLI::App* proposals = app.add_subcommand("proposals", "learning proposals");
  proposals->require_subcommand(1);
  CLI::App* proposals_list =
      proposals->add_subcommand("list", "list learning proposals with their review state");
  std::optional<std::string> proposal_status;
  std::optional<std::string> proposal_agent;
  Page proposal_page;
  proposals_list->add_option("--status", proposal_status, "only this review status")
      ->check(CLI::IsMember({"proposed", "in_review", "approved", "rejected"}));
  proposals_list->add_option("--agent", proposal_agent, "only this agent's");
  AddPaging(proposals_list, proposal_page);
  proposals_list->callback([&] {
    run = [&] {
      return ListProposals(options, proposal_status, proposal_agent, proposal_page, std::cout,
                           std::cerr);
    };
  });

  // Global options may also follow the command (`warpctl status --json`).
  for (CLI::App* sub : {migrate, check_config, status, agents, agents_list, reg, enqueue, work,
                        work_list, leases, runs, observations, complete, audit, audit_leases,
                        workspaces, workspaces_list, proposals, proposals_list})
    sub->fallthrough();
  for (CLI::App* sub : agents->get_subcommands({}))
    sub->fallthrough();

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
  if (!run) {
    std::fprintf(stderr, "warpctl: no command (see warpctl --help)\n");
    return EX_USAGE;
  }
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "warpctl: internal error: %s\n", e.what());
    return EX_SOFTWARE;
  }
}
