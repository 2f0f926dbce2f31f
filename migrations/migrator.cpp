#include "migrations/migrator.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <libpq-fe.h>
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <map>
#include <regex>
#include <sstream>
#include <system_error>

namespace warp::migrations {
namespace {

// The migrator's own table. It is created under the advisory lock, so concurrent bootstraps
// do not race on the catalog.
constexpr const char* kCreateSchema = "CREATE SCHEMA IF NOT EXISTS warp";
constexpr const char* kCreateTable = R"sql(
CREATE TABLE IF NOT EXISTS warp.schema_migrations (
  version    integer     PRIMARY KEY CHECK (version >= 1),
  name       text        NOT NULL,
  checksum   text        NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
  applied_at timestamptz NOT NULL DEFAULT now()
))sql";
constexpr const char* kTableExists = "SELECT to_regclass('warp.schema_migrations') IS NOT NULL";
constexpr const char* kSelectApplied =
    "SELECT version, name, checksum, (extract(epoch FROM applied_at) * 1000000)::bigint"
    " FROM warp.schema_migrations ORDER BY version";
constexpr const char* kSelectDatabaseVersion =
    "SELECT coalesce(max(version), 0) FROM warp.schema_migrations";
constexpr const char* kInsertApplied =
    "INSERT INTO warp.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)";
constexpr const char* kLock = "SELECT pg_advisory_xact_lock($1::bigint)";
// Notices ("schema already exists, skipping") are noise for the caller; warnings are not.
constexpr const char* kQuietNotices = "SET LOCAL client_min_messages = warning";

struct ResultCloser {
  void operator()(PGresult* result) const noexcept { PQclear(result); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultCloser>;

/// libpq's messages end with a newline and may span lines ("...failed\n\tIs the server
/// running..."): one line, whitespace runs collapsed.
std::string OneLine(const char* text) {
  std::string out;
  bool space = false;
  for (const char* c = text ? text : ""; *c != '\0'; ++c) {
    if (*c == '\n' || *c == '\r' || *c == '\t' || *c == ' ') {
      space = !out.empty();
      continue;
    }
    if (space)
      out += ' ';
    space = false;
    out += *c;
  }
  return out;
}

std::string Field(const PGresult* result, int field) {
  const char* value = PQresultErrorField(result, field);
  return value ? value : "";
}

[[noreturn]] void ThrowDatabase(PGconn* conn, const PGresult* result, std::string_view what) {
  const bool lost = PQstatus(conn) == CONNECTION_BAD;
  std::string message = result && PQresultErrorMessage(result)[0] != '\0'
                            ? OneLine(PQresultErrorMessage(result))
                            : OneLine(PQerrorMessage(conn));
  if (message.empty())
    message = "no response from the server";
  throw MigrationError(ErrorKind::kDatabase, fmt::format("{}: {}", what, message),
                       result ? Field(result, PG_DIAG_SQLSTATE) : std::string(), lost);
}

/// Runs one parameterized statement (text parameters, text results); throws kDatabase.
ResultPtr Exec(PGconn* conn, const char* sql, std::initializer_list<std::string> params = {}) {
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& p : params)
    values.push_back(p.c_str());
  ResultPtr result(PQexecParams(conn, sql, static_cast<int>(values.size()), nullptr, values.data(),
                                nullptr, nullptr, 0));
  const ExecStatusType status = result ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK)
    ThrowDatabase(conn, result.get(), "migrations");
  return result;
}

/// A transaction that rolls back unless committed; the rollback's own failure is ignored (the
/// error being thrown already says what went wrong, and a lost connection rolls back anyway).
class Transaction {
 public:
  explicit Transaction(PGconn* conn) : conn_(conn) { Exec(conn_, "BEGIN"); }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction() {
    if (!done_ && PQstatus(conn_) == CONNECTION_OK && PQtransactionStatus(conn_) != PQTRANS_IDLE) {
      ResultPtr ignored(PQexec(conn_, "ROLLBACK"));
    }
  }
  void Commit() {
    Exec(conn_, "COMMIT");
    done_ = true;
  }

 private:
  PGconn* conn_;
  bool done_ = false;
};

struct AppliedRow {
  int version = 0;
  std::string name;
  std::string checksum;
  std::chrono::system_clock::time_point applied_at;
};

std::vector<AppliedRow> ReadApplied(PGconn* conn) {
  std::vector<AppliedRow> rows;
  ResultPtr exists = Exec(conn, kTableExists);
  if (std::string_view(PQgetvalue(exists.get(), 0, 0)) != "t")
    return rows;
  ResultPtr result = Exec(conn, kSelectApplied);
  for (int i = 0; i < PQntuples(result.get()); ++i) {
    rows.push_back(AppliedRow{
        .version = std::atoi(PQgetvalue(result.get(), i, 0)),
        .name = PQgetvalue(result.get(), i, 1),
        .checksum = PQgetvalue(result.get(), i, 2),
        .applied_at = std::chrono::system_clock::time_point(
            std::chrono::microseconds(std::atoll(PQgetvalue(result.get(), i, 3)))),
    });
  }
  return rows;
}

std::string FileName(int version, std::string_view name) {
  return fmt::format("{:04}_{}.sql", version, name);
}

std::string Short(std::string_view checksum) {
  return std::string(checksum.substr(0, 12));
}

/// The directory compared with the applied rows.
SchemaStatus Compare(const std::filesystem::path& dir, const std::vector<MigrationFile>& files,
                     const std::vector<AppliedRow>& rows) {
  SchemaStatus status;
  status.latest_version = files.empty() ? 0 : files.back().version;
  for (const auto& row : rows)
    status.database_version = std::max(status.database_version, row.version);

  std::map<int, MigrationStatus> by_version;
  for (const auto& file : files) {
    by_version[file.version] = MigrationStatus{.version = file.version,
                                               .name = file.name,
                                               .file = file.path,
                                               .file_checksum = file.checksum};
  }
  for (const auto& row : rows) {
    auto& entry = by_version[row.version];
    entry.version = row.version;
    if (entry.name.empty())
      entry.name = row.name;
    entry.applied_checksum = row.checksum;
    entry.applied_at = row.applied_at;
  }

  const MigrationFile* newest = files.empty() ? nullptr : &files.back();
  for (auto& [version, entry] : by_version) {
    const bool has_file = !entry.file.empty();
    const bool applied = entry.applied_at.has_value();
    if (has_file && applied) {
      if (entry.file_checksum == entry.applied_checksum) {
        entry.state = MigrationState::kApplied;
        continue;
      }
      entry.state = MigrationState::kModified;
      status.problems.push_back(
          {ErrorKind::kChecksumChanged, version,
           fmt::format("{}: checksum changed since it was applied at {} (database {}, file {}); "
                       "an applied migration must not be edited, add a new one instead",
                       entry.file.string(), FormatTimestamp(*entry.applied_at),
                       Short(entry.applied_checksum), Short(entry.file_checksum))});
    } else if (has_file) {
      if (version < status.database_version) {
        entry.state = MigrationState::kOutOfOrder;
        status.problems.push_back(
            {ErrorKind::kOutOfOrder, version,
             fmt::format("{}: not applied, but the database is already at version {}; "
                         "migrations apply in order only (renumber it after {:04})",
                         entry.file.string(), status.database_version, status.database_version)});
      } else {
        entry.state = MigrationState::kPending;
      }
    } else if (version > status.latest_version) {
      entry.state = MigrationState::kNewer;
      status.problems.push_back(
          {ErrorKind::kDatabaseNewer, version,
           fmt::format("{}: applied to the database, newer than the newest migration file {}; "
                       "the database is at version {}, ahead of these migrations (use those "
                       "of a newer build)",
                       (dir / FileName(version, entry.name)).string(),
                       newest ? newest->path.string() : "(none in " + dir.string() + ")",
                       status.database_version)});
    } else {
      entry.state = MigrationState::kMissing;
      status.problems.push_back(
          {ErrorKind::kMissingFile, version,
           fmt::format("{}: missing, but version {} ({}) is applied to the database "
                       "(applied at {})",
                       (dir / FileName(version, entry.name)).string(), version, entry.name,
                       FormatTimestamp(*entry.applied_at))});
    }
  }
  for (auto& [version, entry] : by_version)
    status.migrations.push_back(std::move(entry));
  return status;
}

/// The 1-based line of the 1-based character `position` (PostgreSQL counts characters, not
/// bytes; the files are UTF-8).
int LineOf(std::string_view text, long position) {
  int line = 1;
  long characters = 0;
  for (const char c : text) {
    if ((static_cast<unsigned char>(c) & 0xC0) != 0x80 && ++characters >= position)
      break;
    if (c == '\n')
      ++line;
  }
  return line;
}

/// Runs a migration file's SQL (several statements: the simple query protocol, no values).
void ExecFile(PGconn* conn, const MigrationFile& file) {
  ResultPtr result(PQexec(conn, file.sql.c_str()));
  const ExecStatusType status = result ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
  if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK || status == PGRES_EMPTY_QUERY) {
    // A COMMIT or ROLLBACK in the file ended the migrator's transaction: what ran before it
    // is committed without a record. Say so rather than record it.
    if (PQtransactionStatus(conn) != PQTRANS_INTRANS) {
      throw MigrationError(ErrorKind::kMigrationFailed,
                           fmt::format("{}: ended the migrator's transaction; a migration file "
                                       "must not contain BEGIN, COMMIT or ROLLBACK",
                                       file.path.string()));
    }
    return;
  }
  if (PQstatus(conn) == CONNECTION_BAD)
    ThrowDatabase(conn, result.get(), file.path.string());
  std::string where = file.path.string();
  if (const std::string position = Field(result.get(), PG_DIAG_STATEMENT_POSITION);
      !position.empty()) {
    where += fmt::format(":{}", LineOf(file.sql, std::atol(position.c_str())));
  }
  const std::string sqlstate = Field(result.get(), PG_DIAG_SQLSTATE);
  std::string message = OneLine(PQresultErrorField(result.get(), PG_DIAG_MESSAGE_PRIMARY));
  if (message.empty())
    message = OneLine(PQerrorMessage(conn));
  throw MigrationError(ErrorKind::kMigrationFailed,
                       fmt::format("{}: {} (SQLSTATE {}); rolled back, nothing recorded", where,
                                   message, sqlstate.empty() ? "unknown" : sqlstate),
                       sqlstate);
}

[[noreturn]] void ThrowProblem(const Problem& problem) {
  throw MigrationError(problem.kind, problem.message);
}

/// True when `path` lies inside `dir` (both made absolute and normalized).
bool IsInside(const std::filesystem::path& path, const std::filesystem::path& dir) {
  std::error_code ec;
  const auto p = std::filesystem::weakly_canonical(path, ec);
  if (ec)
    return false;
  const auto d = std::filesystem::weakly_canonical(dir, ec);
  if (ec || d.empty())
    return false;
  auto [dir_end, path_end] = std::mismatch(d.begin(), d.end(), p.begin(), p.end());
  // "build/" has an empty last element when it ends with a separator.
  return dir_end == d.end() || (std::next(dir_end) == d.end() && dir_end->empty());
}

}  // namespace

MigrationError::MigrationError(ErrorKind kind, const std::string& message, std::string sqlstate,
                               bool connection_lost)
    : std::runtime_error(message),
      kind_(kind),
      sqlstate_(std::move(sqlstate)),
      connection_lost_(connection_lost) {}

const char* ToString(MigrationState state) {
  switch (state) {
    case MigrationState::kApplied:
      return "applied";
    case MigrationState::kPending:
      return "pending";
    case MigrationState::kModified:
      return "modified";
    case MigrationState::kMissing:
      return "missing";
    case MigrationState::kNewer:
      return "newer";
    case MigrationState::kOutOfOrder:
      return "out_of_order";
  }
  return "unknown";
}

int SchemaStatus::PendingCount() const {
  return static_cast<int>(std::count_if(migrations.begin(), migrations.end(), [](const auto& m) {
    return m.state == MigrationState::kPending;
  }));
}

std::string FormatTimestamp(std::chrono::system_clock::time_point at) {
  const auto seconds = std::chrono::floor<std::chrono::seconds>(at);
  return fmt::format("{:%Y-%m-%dT%H:%M:%SZ}",
                     fmt::gmtime(std::chrono::system_clock::to_time_t(seconds)));
}

std::string Sha256Hex(std::string_view bytes) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest.data(), &length, EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("SHA-256: OpenSSL's EVP_Digest failed");
  std::string hex;
  hex.reserve(2 * length);
  for (unsigned int i = 0; i < length; ++i)
    hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

std::vector<MigrationFile> LoadDirectory(const std::filesystem::path& dir) {
  static const std::regex kName(R"(([0-9]{4})_([A-Za-z0-9_-]+)\.sql)");
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) {
    throw MigrationError(
        ErrorKind::kBadDirectory,
        fmt::format("{}: cannot read the migrations directory: {}", dir.string(), ec.message()));
  }
  std::vector<MigrationFile> files;
  for (const auto& entry : it) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() != ".sql")
      continue;
    std::smatch match;
    if (!std::regex_match(name, match, kName) || std::stoi(match[1].str()) == 0) {
      throw MigrationError(
          ErrorKind::kBadDirectory,
          fmt::format("{}: not a migration file name: want NNNN_name.sql (four digits from 0001, "
                      "then letters, digits, '_' or '-')",
                      entry.path().string()));
    }
    std::ifstream in(entry.path(), std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    if (!in) {
      throw MigrationError(ErrorKind::kBadDirectory,
                           fmt::format("{}: cannot read the file", entry.path().string()));
    }
    MigrationFile file{.version = std::stoi(match[1].str()),
                       .name = match[2].str(),
                       .path = entry.path(),
                       .sql = text.str()};
    file.checksum = Sha256Hex(file.sql);
    files.push_back(std::move(file));
  }
  std::sort(files.begin(), files.end(),
            [](const auto& a, const auto& b) { return a.version < b.version; });
  for (std::size_t i = 1; i < files.size(); ++i) {
    if (files[i].version == files[i - 1].version) {
      throw MigrationError(ErrorKind::kBadDirectory,
                           fmt::format("{}: version {:04} is also {}", files[i].path.string(),
                                       files[i].version, files[i - 1].path.string()));
    }
  }
  return files;
}

std::filesystem::path DefaultMigrationsDir() {
  if (const char* env = std::getenv("WARP_MIGRATIONS_DIR"); env && *env)
    return env;
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec && IsInside(self, WARP_BUILD_DIR))
    return WARP_SOURCE_MIGRATIONS_DIR;
  return WARP_INSTALLED_MIGRATIONS_DIR;
}

int DatabaseVersion(PGconn* conn) {
  ResultPtr exists = Exec(conn, kTableExists);
  if (std::string_view(PQgetvalue(exists.get(), 0, 0)) != "t")
    return 0;
  ResultPtr result = Exec(conn, kSelectDatabaseVersion);
  return std::atoi(PQgetvalue(result.get(), 0, 0));
}

Migrator::Migrator(std::filesystem::path dir) : dir_(std::move(dir)), files_(LoadDirectory(dir_)) {}

int Migrator::LatestVersion() const {
  return files_.empty() ? 0 : files_.back().version;
}

SchemaStatus Migrator::Status(PGconn* conn) const {
  return Compare(dir_, files_, ReadApplied(conn));
}

SchemaStatus Migrator::Verify(PGconn* conn) const {
  SchemaStatus status = Status(conn);
  if (!status.ok())
    ThrowProblem(status.problems.front());
  return status;
}

std::vector<MigrationFile> Migrator::Up(PGconn* conn) const {
  if (PQtransactionStatus(conn) != PQTRANS_IDLE) {
    // BEGIN would only warn, and the migrator's COMMIT would commit the caller's work.
    throw MigrationError(ErrorKind::kDatabase,
                         "migrations: the connection is inside a transaction or busy",
                         std::string(), PQstatus(conn) == CONNECTION_BAD);
  }
  std::vector<MigrationFile> applied;
  const std::string lock_key = std::to_string(kAdvisoryLockKey);
  for (;;) {
    // One transaction per file. The lock is held to its end, and the applied set is read
    // after taking it, so a concurrent migrator's commits are seen before deciding.
    Transaction transaction(conn);
    Exec(conn, kQuietNotices);
    Exec(conn, kLock, {lock_key});
    Exec(conn, kCreateSchema);
    Exec(conn, kCreateTable);
    const SchemaStatus status = Status(conn);
    if (!status.ok())
      ThrowProblem(status.problems.front());
    const auto next =
        std::find_if(status.migrations.begin(), status.migrations.end(),
                     [](const auto& m) { return m.state == MigrationState::kPending; });
    if (next == status.migrations.end()) {
      transaction.Commit();
      return applied;
    }
    const MigrationFile& file = *std::find_if(
        files_.begin(), files_.end(), [&](const auto& f) { return f.version == next->version; });
    ExecFile(conn, file);
    Exec(conn, kInsertApplied, {std::to_string(file.version), file.name, file.checksum});
    try {
      transaction.Commit();
    } catch (const MigrationError& e) {
      // Deferred constraints of the file are checked at COMMIT.
      if (e.connection_lost())
        throw;
      throw MigrationError(ErrorKind::kMigrationFailed,
                           fmt::format("{}: {}", file.path.string(), e.what()), e.sqlstate());
    }
    applied.push_back(file);
  }
}

void ConnectionCloser::operator()(PGconn* conn) const noexcept {
  PQfinish(conn);
}

}  // namespace warp::migrations
