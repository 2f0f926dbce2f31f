#include "warpctl/commands.hpp"

#include <sysexits.h>

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>
#include <vector>

#include "config/config.hpp"
#include "config/fixtures.hpp"
#include "migrations/migrator.hpp"
#include "migrations/schema_version.hpp"
#include "warpctl/connect.hpp"

namespace warp::warpctl {
namespace {

using Json = nlohmann::ordered_json;
using migrations::ErrorKind;
using migrations::MigrationError;
using migrations::MigrationFile;
using migrations::SchemaStatus;

/// A configuration problem found by warpctl itself (not by the config loader).
class ConfigProblem : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

const char* ActionName(MigrateAction action) {
  switch (action) {
    case MigrateAction::kStatus:
      return "status";
    case MigrateAction::kUp:
      return "up";
    case MigrateAction::kVerify:
      return "verify";
  }
  return "?";
}

const char* KindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kBadDirectory:
      return "bad_directory";
    case ErrorKind::kChecksumChanged:
      return "checksum_changed";
    case ErrorKind::kMissingFile:
      return "missing_file";
    case ErrorKind::kDatabaseNewer:
      return "database_newer";
    case ErrorKind::kOutOfOrder:
      return "out_of_order";
    case ErrorKind::kMigrationFailed:
      return "migration_failed";
    case ErrorKind::kDatabase:
      return "database";
  }
  return "?";
}

int ExitCodeOf(const MigrationError& e) {
  if (e.kind() == ErrorKind::kBadDirectory)
    return EX_CONFIG;
  if (e.connection_lost())
    return EX_UNAVAILABLE;
  return 1;  // refused by the migrator or by the database
}

/// Reports a failure: one line on `err`; with --json also `doc`, completed, on `out`.
int Fail(const Options& options, Json doc, int code, const std::string& message, std::ostream& out,
         std::ostream& err) {
  err << "warpctl: " << message << "\n";
  if (options.json) {
    doc["ok"] = false;
    doc["exit_code"] = code;
    doc["error"] = message;
    out << doc.dump(2) << "\n";
  }
  return code;
}

Json NullOr(const std::string& text) {
  return text.empty() ? Json(nullptr) : Json(text);
}

std::string FileName(int version, const std::string& name) {
  return fmt::format("{:04}_{}.sql", version, name);
}

/// Adds the status fields to `doc`.
void AddStatus(Json& doc, const SchemaStatus& status) {
  doc["build_schema_version"] = migrations::kExpectedSchemaVersion;
  doc["database_version"] = status.database_version;
  doc["latest_version"] = status.latest_version;
  doc["pending"] = status.PendingCount();
  Json list = Json::array();
  for (const auto& m : status.migrations) {
    list.push_back({
        {"version", m.version},
        {"name", m.name},
        {"state", migrations::ToString(m.state)},
        {"applied_at",
         m.applied_at ? Json(migrations::FormatTimestamp(*m.applied_at)) : Json(nullptr)},
        {"file", NullOr(m.file.string())},
        {"file_checksum", NullOr(m.file_checksum)},
        {"applied_checksum", NullOr(m.applied_checksum)},
    });
  }
  doc["migrations"] = std::move(list);
  Json problems = Json::array();
  for (const auto& p : status.problems)
    problems.push_back(
        {{"version", p.version}, {"kind", KindName(p.kind)}, {"message", p.message}});
  doc["problems"] = std::move(problems);
}

/// The human table: version, name, applied_at, checksum prefix, state; then a summary line.
void PrintTable(const SchemaStatus& status, std::ostream& out) {
  std::vector<std::array<std::string, 5>> rows = {
      {"VERSION", "NAME", "APPLIED_AT", "CHECKSUM", "STATE"}};
  for (const auto& m : status.migrations) {
    const std::string& checksum = m.file_checksum.empty() ? m.applied_checksum : m.file_checksum;
    rows.push_back({fmt::format("{:04}", m.version), m.name,
                    m.applied_at ? migrations::FormatTimestamp(*m.applied_at) : "-",
                    checksum.substr(0, 12), migrations::ToString(m.state)});
  }
  std::array<std::size_t, 5> width{};
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size(); ++i)
      width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i)
      line += i + 1 < row.size() ? fmt::format("{:<{}}  ", row[i], width[i]) : row[i];
    out << line << "\n";
  }
  if (status.migrations.empty())
    out << "(no migrations)\n";
  out << fmt::format(
      "database at version {}; migration files up to {} ({} pending); this build "
      "expects {}\n",
      status.database_version, status.latest_version, status.PendingCount(),
      migrations::kExpectedSchemaVersion);
}

/// The connection: --dsn, or the config's [store]; the password file of a config either way.
ConnectOptions ResolveConnection(const Options& options) {
  if (options.dsn && !options.config_path)
    return ConnectOptions{.dsn = *options.dsn,
                          .password = ResolvePassword({}, {}),
                          .connect_timeout = std::chrono::seconds(5)};
  const std::filesystem::path path = options.config_path.value_or(kDefaultConfigPath);
  const config::Settings settings = config::Load(path);
  if (!options.dsn && settings.store.backend != config::StoreBackend::kPostgres) {
    throw ConfigProblem(path.string() +
                        ": store.backend is \"memory\": there is no PostgreSQL database to "
                        "migrate (give --dsn)");
  }
  ConnectOptions connect = OptionsFromStore(settings.store, path.parent_path());
  if (options.dsn)
    connect.dsn = *options.dsn;
  return connect;
}

}  // namespace

int Migrate(const Options& options, MigrateAction action, std::ostream& out, std::ostream& err) {
  Json doc = {{"command", std::string("migrate ") + ActionName(action)}};
  try {
    ConnectOptions connect;
    try {
      connect = ResolveConnection(options);
    } catch (const config::ConfigError& e) {
      return Fail(options, std::move(doc), EX_CONFIG, e.what(), out, err);
    } catch (const PasswordFileError& e) {
      return Fail(options, std::move(doc), EX_CONFIG, e.what(), out, err);
    } catch (const ConfigProblem& e) {
      return Fail(options, std::move(doc), EX_CONFIG, e.what(), out, err);
    }

    const auto dir = options.migrations_dir.value_or(migrations::DefaultMigrationsDir());
    doc["migrations_dir"] = dir.string();
    // Read the files before connecting: a bad directory fails fast, without a database.
    const migrations::Migrator migrator(dir);

    migrations::ConnectionPtr conn;
    try {
      conn = Connect(connect);
    } catch (const DatabaseUnavailable& e) {
      return Fail(options, std::move(doc), EX_UNAVAILABLE, e.what(), out, err);
    }

    std::vector<MigrationFile> applied;
    if (action == MigrateAction::kUp) {
      try {
        applied = migrator.Up(conn.get());
      } catch (const MigrationError& e) {
        if (options.json && !e.connection_lost()) {
          try {
            AddStatus(doc, migrator.Status(conn.get()));
          } catch (const MigrationError&) {
            // The error being reported matters more than the status.
          }
        }
        return Fail(options, std::move(doc), ExitCodeOf(e), e.what(), out, err);
      }
    }
    const SchemaStatus status = migrator.Status(conn.get());
    const int code = action == MigrateAction::kVerify && !status.ok() ? 1 : EX_OK;

    if (options.json) {
      doc["ok"] = code == EX_OK;
      doc["exit_code"] = code;
      if (action == MigrateAction::kUp) {
        Json list = Json::array();
        for (const auto& f : applied)
          list.push_back({{"version", f.version}, {"name", f.name}, {"checksum", f.checksum}});
        doc["applied"] = std::move(list);
      }
      AddStatus(doc, status);
      out << doc.dump(2) << "\n";
    } else if (action == MigrateAction::kUp) {
      for (const auto& f : applied)
        out << "applied " << FileName(f.version, f.name) << "\n";
      out << (applied.empty() ? "already up to date; " : "") << "database at version "
          << status.database_version << "\n";
    } else {
      PrintTable(status, out);
    }
    if (action == MigrateAction::kVerify) {
      for (const auto& p : status.problems)
        err << "warpctl: " << p.message << "\n";
    }
    return code;
  } catch (const MigrationError& e) {
    return Fail(options, std::move(doc), ExitCodeOf(e), e.what(), out, err);
  } catch (const std::exception& e) {
    return Fail(options, std::move(doc), EX_SOFTWARE, std::string("internal error: ") + e.what(),
                out, err);
  }
}

int CheckConfig(const Options& options, const std::optional<std::filesystem::path>& path,
                std::ostream& out, std::ostream& err) {
  const std::filesystem::path file =
      path.value_or(options.config_path.value_or(kDefaultConfigPath));
  Json doc = {{"command", "check-config"}, {"config", file.string()}};
  try {
    const config::Settings settings = config::Load(file);
    if (!settings.store.fixtures.empty())
      (void)config::LoadFixtures(settings.store.fixtures);
  } catch (const config::ConfigError& e) {
    return Fail(options, std::move(doc), EX_CONFIG, e.what(), out, err);
  } catch (const std::exception& e) {
    return Fail(options, std::move(doc), EX_SOFTWARE, std::string("internal error: ") + e.what(),
                out, err);
  }
  if (options.json) {
    doc["ok"] = true;
    doc["exit_code"] = EX_OK;
    out << doc.dump(2) << "\n";
  } else {
    out << file.string() << ": configuration ok\n";
  }
  return EX_OK;
}

}  // namespace warp::warpctl
