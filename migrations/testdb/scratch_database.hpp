// Test support: a throwaway database per test, created through $WARP_TEST_DSN (the server that
// scripts/test-postgres.sh starts) and dropped afterwards.
#pragma once

#include <libpq-fe.h>

#include <filesystem>
#include <memory>
#include <string>

namespace warp::migrations::testdb {

/// $WARP_TEST_DSN, or an empty string when it is not set.
std::string TestDsn();

/// The message a test fails with when $WARP_TEST_DSN is not set.
inline constexpr const char* kNoTestDsn =
    "WARP_TEST_DSN is not set: these tests need a PostgreSQL server; run scripts/test.sh, or "
    "scripts/test-postgres.sh run ctest -L postgres";

/// `dsn` (a libpq conninfo string or URI) as a key=value conninfo with dbname replaced.
std::string WithDatabase(const std::string& dsn, const std::string& dbname);

/// An owned libpq connection.
using Connection = std::unique_ptr<PGconn, decltype(&PQfinish)>;

/// Connects to `dsn`; throws std::runtime_error with libpq's message on failure.
Connection Connect(const std::string& dsn);

/// The name of a database, made through $WARP_TEST_DSN if it does not exist yet, that has every
/// NNNN_*.sql file of `migrations_dir` applied in order: a template to copy a migrated database
/// from (CREATE DATABASE ... TEMPLATE name) instead of migrating each. The name is
/// `<prefix>_<hash of the files' names and text>`, so a server that outlives an edit of the
/// migrations gets a new template rather than the old schema. Processes that ask at once (ctest
/// -j) wait for one another under an advisory lock; a template whose migration failed is
/// dropped. Throws std::runtime_error naming the failing file.
std::string MigratedTemplate(const std::filesystem::path& migrations_dir,
                             const std::string& prefix);

/// A database with a unique name (`warp_t_<pid>_<n>_<random>`) created from template0 through
/// $WARP_TEST_DSN; the destructor drops it (WITH (FORCE), so connections left open do not
/// keep it). Throws std::runtime_error when $WARP_TEST_DSN is unset or the server unreachable.
class ScratchDatabase {
 public:
  ScratchDatabase();
  ~ScratchDatabase();
  ScratchDatabase(const ScratchDatabase&) = delete;
  ScratchDatabase& operator=(const ScratchDatabase&) = delete;

  const std::string& name() const { return name_; }
  /// A key=value conninfo for this database.
  const std::string& dsn() const { return dsn_; }
  /// A new connection to this database.
  Connection Connect() const { return testdb::Connect(dsn_); }

 private:
  std::string admin_dsn_;
  std::string name_;
  std::string dsn_;
};

}  // namespace warp::migrations::testdb
