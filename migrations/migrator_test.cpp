#include "migrations/migrator.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <latch>
#include <mutex>
#include <optional>
#include <thread>

#include "migrations/schema_version.hpp"
#include "migrations/testdb/scratch_database.hpp"

namespace warp::migrations {
namespace {

using testing::HasSubstr;
using warp::migrations::testdb::Connection;
using warp::migrations::testdb::kNoTestDsn;
using warp::migrations::testdb::ScratchDatabase;
using warp::migrations::testdb::TestDsn;

namespace fs = std::filesystem;

/// A fresh temporary directory, removed by the destructor.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "warp-migrations-test.XXXXXX").string();
    if (!::mkdtemp(pattern.data()))
      throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const fs::path& path() const { return path_; }
  void Write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name, std::ios::binary | std::ios::trunc) << text;
  }
  void Remove(const std::string& name) const { fs::remove(path_ / name); }

 private:
  fs::path path_;
};

/// The kind of the MigrationError `body` throws; fails the test when it throws none.
template <typename Body>
std::optional<MigrationError> ErrorOf(Body body) {
  try {
    body();
  } catch (const MigrationError& e) {
    return e;
  }
  ADD_FAILURE() << "no MigrationError";
  return std::nullopt;
}

// --- The directory (no database) ---

TEST(MigrationFilesTest, Sha256HexIsTheDigestOfTheBytesInLowerCaseHex) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(MigrationFilesTest, LoadDirectorySortsByVersionAndIgnoresOtherFiles) {
  TempDir dir;
  dir.Write("0010_later.sql", "SELECT 10;");
  dir.Write("0002_second-step.sql", "SELECT 2;");
  dir.Write("0001_init.sql", "SELECT 1;");
  dir.Write("CMakeLists.txt", "not sql");
  dir.Write("README.md", "not sql");
  const auto files = LoadDirectory(dir.path());
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(files[0].version, 1);
  EXPECT_EQ(files[0].name, "init");
  EXPECT_EQ(files[0].sql, "SELECT 1;");
  EXPECT_EQ(files[0].checksum, Sha256Hex("SELECT 1;"));
  EXPECT_EQ(files[0].path, dir.path() / "0001_init.sql");
  EXPECT_EQ(files[1].version, 2);
  EXPECT_EQ(files[1].name, "second-step");
  EXPECT_EQ(files[2].version, 10);
  EXPECT_EQ(Migrator(dir.path()).LatestVersion(), 10);
}

TEST(MigrationFilesTest, MalformedSqlFileNameIsRejectedNamingTheFile) {
  for (const std::string name :
       {"001_short.sql", "0001.sql", "0001_bad name.sql", "0000_zero.sql", "init.sql"}) {
    TempDir dir;
    dir.Write(name, "SELECT 1;");
    const auto error = ErrorOf([&] { LoadDirectory(dir.path()); });
    ASSERT_TRUE(error) << name;
    EXPECT_EQ(error->kind(), ErrorKind::kBadDirectory) << name;
    EXPECT_THAT(error->what(), HasSubstr(name));
  }
}

TEST(MigrationFilesTest, DuplicateVersionIsRejectedNamingBothFiles) {
  TempDir dir;
  dir.Write("0001_a.sql", "SELECT 1;");
  dir.Write("0001_b.sql", "SELECT 1;");
  const auto error = ErrorOf([&] { LoadDirectory(dir.path()); });
  ASSERT_TRUE(error);
  EXPECT_EQ(error->kind(), ErrorKind::kBadDirectory);
  EXPECT_THAT(error->what(), HasSubstr("0001_a.sql"));
  EXPECT_THAT(error->what(), HasSubstr("0001_b.sql"));
}

TEST(MigrationFilesTest, UnreadableDirectoryIsRejected) {
  const auto error = ErrorOf([] { Migrator("/nonexistent/warp/migrations"); });
  ASSERT_TRUE(error);
  EXPECT_EQ(error->kind(), ErrorKind::kBadDirectory);
  EXPECT_THAT(error->what(), HasSubstr("/nonexistent/warp/migrations"));
}

TEST(MigrationFilesTest, DefaultMigrationsDirIsTheSourceTreeForThisBuildUnlessOverridden) {
  ::unsetenv("WARP_MIGRATIONS_DIR");
  EXPECT_EQ(fs::weakly_canonical(DefaultMigrationsDir()),
            fs::weakly_canonical(fs::path(WARP_SOURCE_DIR) / "migrations"));
  ::setenv("WARP_MIGRATIONS_DIR", "/somewhere/else", 1);
  EXPECT_EQ(DefaultMigrationsDir(), fs::path("/somewhere/else"));
  ::setenv("WARP_MIGRATIONS_DIR", "", 1);
  EXPECT_EQ(fs::weakly_canonical(DefaultMigrationsDir()),
            fs::weakly_canonical(fs::path(WARP_SOURCE_DIR) / "migrations"));
  ::unsetenv("WARP_MIGRATIONS_DIR");
}

TEST(MigrationFilesTest, ExpectedSchemaVersionIsTheNewestFileOfTheRepository) {
  EXPECT_EQ(Migrator(fs::path(WARP_SOURCE_DIR) / "migrations").LatestVersion(),
            kExpectedSchemaVersion);
}

TEST(MigrationFilesTest, FormatTimestampIsRfc3339Utc) {
  EXPECT_EQ(FormatTimestamp(std::chrono::system_clock::time_point(std::chrono::seconds(1714564800) +
                                                                  std::chrono::milliseconds(999))),
            "2024-05-01T12:00:00Z");
}

// --- Against a real PostgreSQL: a scratch database per test ---

class MigratorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(TestDsn().empty()) << kNoTestDsn;
    database_.emplace();
    conn_ = database_->Connect();
  }
  void TearDown() override {
    conn_.reset();
    database_.reset();
  }

  /// The first column of the first row of `sql`, as text ("" for NULL).
  std::string Scalar(const std::string& sql) {
    std::unique_ptr<PGresult, decltype(&PQclear)> result(PQexec(conn_.get(), sql.c_str()),
                                                         &PQclear);
    if (PQresultStatus(result.get()) != PGRES_TUPLES_OK) {
      ADD_FAILURE() << sql << ": " << PQerrorMessage(conn_.get());
      return "";
    }
    return PQgetvalue(result.get(), 0, 0);
  }

  std::vector<int> VersionsOf(const std::vector<MigrationFile>& files) {
    std::vector<int> out;
    for (const auto& f : files)
      out.push_back(f.version);
    return out;
  }

  /// Three files: a table, then two rows.
  void WriteThree() {
    dir_.Write("0001_one.sql", "CREATE TABLE t_log (v integer);\nINSERT INTO t_log VALUES (1);\n");
    dir_.Write("0002_two.sql", "INSERT INTO t_log VALUES (2);\n");
    dir_.Write("0003_three.sql", "INSERT INTO t_log VALUES (3);\n");
  }

  std::optional<ScratchDatabase> database_;
  Connection conn_{nullptr, &PQfinish};
  TempDir dir_;
};

TEST_F(MigratorTest, StatusOfAnEmptyDatabaseShowsEveryFilePendingAndCreatesNothing) {
  WriteThree();
  const SchemaStatus status = Migrator(dir_.path()).Status(conn_.get());
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(status.database_version, 0);
  EXPECT_EQ(status.latest_version, 3);
  EXPECT_EQ(status.PendingCount(), 3);
  ASSERT_EQ(status.migrations.size(), 3u);
  EXPECT_EQ(status.migrations[0].state, MigrationState::kPending);
  EXPECT_FALSE(status.migrations[0].applied_at);
  EXPECT_EQ(Scalar("SELECT to_regnamespace('warp') IS NULL"), "t");
  EXPECT_EQ(DatabaseVersion(conn_.get()), 0);
}

TEST_F(MigratorTest, FreshDatabaseGetsEveryFileInOrderRecordedWithChecksums) {
  WriteThree();
  const Migrator migrator(dir_.path());
  EXPECT_EQ(VersionsOf(migrator.Up(conn_.get())), (std::vector<int>{1, 2, 3}));

  EXPECT_EQ(Scalar("SELECT string_agg(v::text, ',' ORDER BY v) FROM t_log"), "1,2,3");
  EXPECT_EQ(Scalar("SELECT string_agg(version || ':' || name, ',' ORDER BY version)"
                   " FROM warp.schema_migrations"),
            "1:one,2:two,3:three");
  EXPECT_EQ(Scalar("SELECT checksum FROM warp.schema_migrations WHERE version = 2"),
            Sha256Hex("INSERT INTO t_log VALUES (2);\n"));
  EXPECT_EQ(Scalar("SELECT bool_and(applied_at > now() - interval '1 minute')"
                   " FROM warp.schema_migrations"),
            "t");
  EXPECT_EQ(DatabaseVersion(conn_.get()), 3);

  const SchemaStatus status = migrator.Verify(conn_.get());
  EXPECT_EQ(status.database_version, 3);
  EXPECT_EQ(status.PendingCount(), 0);
  for (const auto& m : status.migrations) {
    EXPECT_EQ(m.state, MigrationState::kApplied) << m.version;
    EXPECT_EQ(m.applied_checksum, m.file_checksum);
    EXPECT_TRUE(m.applied_at);
  }
}

TEST_F(MigratorTest, ReapplyingIsANoOpAndNewFilesApplyLater) {
  WriteThree();
  EXPECT_EQ(Migrator(dir_.path()).Up(conn_.get()).size(), 3u);
  EXPECT_TRUE(Migrator(dir_.path()).Up(conn_.get()).empty());
  EXPECT_EQ(Scalar("SELECT count(*) FROM t_log"), "3");

  dir_.Write("0004_four.sql", "INSERT INTO t_log VALUES (4);");
  EXPECT_EQ(VersionsOf(Migrator(dir_.path()).Up(conn_.get())), (std::vector<int>{4}));
  EXPECT_EQ(Scalar("SELECT count(*) FROM t_log"), "4");
}

TEST_F(MigratorTest, EmptyDirectoryOnlyBootstrapsTheMigrationsTable) {
  EXPECT_TRUE(Migrator(dir_.path()).Up(conn_.get()).empty());
  EXPECT_EQ(Scalar("SELECT count(*) FROM warp.schema_migrations"), "0");
}

TEST_F(MigratorTest, EditedAppliedFileIsRefusedNamingItAndNothingMoreIsApplied) {
  WriteThree();
  dir_.Remove("0003_three.sql");
  Migrator(dir_.path()).Up(conn_.get());
  dir_.Write("0002_two.sql", "INSERT INTO t_log VALUES (22);\n");
  dir_.Write("0003_three.sql", "INSERT INTO t_log VALUES (3);\n");
  const Migrator migrator(dir_.path());

  const auto error = ErrorOf([&] { migrator.Up(conn_.get()); });
  ASSERT_TRUE(error);
  EXPECT_EQ(error->kind(), ErrorKind::kChecksumChanged);
  EXPECT_THAT(error->what(), HasSubstr("0002_two.sql"));
  EXPECT_THAT(error->what(), HasSubstr("checksum changed"));
  EXPECT_EQ(DatabaseVersion(conn_.get()), 2);
  EXPECT_EQ(Scalar("SELECT count(*) FROM t_log"), "2");

  const auto verify_error = ErrorOf([&] { migrator.Verify(conn_.get()); });
  ASSERT_TRUE(verify_error);
  EXPECT_EQ(verify_error->kind(), ErrorKind::kChecksumChanged);

  const SchemaStatus status = migrator.Status(conn_.get());
  ASSERT_EQ(status.problems.size(), 1u);
  EXPECT_EQ(status.problems[0].version, 2);
  EXPECT_EQ(status.migrations[1].state, MigrationState::kModified);
  EXPECT_EQ(status.migrations[2].state, MigrationState::kPending);
}

TEST_F(MigratorTest, AppliedVersionMissingFromTheDirectoryIsRefused) {
  WriteThree();
  Migrator(dir_.path()).Up(conn_.get());
  dir_.Remove("0002_two.sql");
  dir_.Write("0004_four.sql", "INSERT INTO t_log VALUES (4);");
  const Migrator migrator(dir_.path());

  const auto error = ErrorOf([&] { migrator.Up(conn_.get()); });
  ASSERT_TRUE(error);
  EXPECT_EQ(error->kind(), ErrorKind::kMissingFile);
  EXPECT_THAT(error->what(), HasSubstr("0002_two.sql: missing"));
  EXPECT_EQ(DatabaseVersion(conn_.get()), 3);
  EXPECT_EQ(migrator.Status(conn_.get()).migrations[1].state, MigrationState::kMissing);
}

TEST_F(MigratorTest, DatabaseNewerThanTheNewestFileIsRefused) {
  WriteThree();
  Migrator(dir_.path()).Up(conn_.get());
  dir_.Remove("0003_three.sql");
  const Migrator migrator(dir_.path());

  const auto error = ErrorOf([&] { migrator.Up(conn_.get()); });
  ASSERT_TRUE(error);
  EXPECT_EQ(error->kind(), ErrorKind::kDatabaseNewer);
  EXPECT_THAT(error->what(), HasSubstr("0003_three.sql"));
  EXPECT_THAT(error->what(), HasSubstr("0002_two.sql"));  // the newest file
  const auto verify_error = ErrorOf([&] { migrator.Verify(conn_.get()); });
  ASSERT_TRUE(verify_error);
  EXPECT_EQ(verify_error->kind(), ErrorKind::kDatabaseNewer);
  EXPECT_EQ(migrator.Status(conn_.get()).migrations[2].state, MigrationState::kNewer);
}

TEST_F(MigratorTest, PendingFileOlderThanTheDatabaseVersionIsRefused) {
  WriteThree();
  dir_.Remove("0002_two.sql");
  Migrator(dir_.path()).Up(conn_.get());
  dir_.Write("0002_two.sql", "INSERT INTO t_log VALUES (2);\n");

  const auto error = ErrorOf([&] { Migrator(dir_.path()).Up(conn_.get()); });
  ASSERT_TRUE(error);
  EXPECT_EQ(error->kind(), ErrorKind::kOutOfOrder);
  EXPECT_THAT(error->what(), HasSubstr("0002_two.sql"));
  EXPECT_EQ(Scalar("SELECT count(*) FROM t_log"), "2");
}

TEST_F(MigratorTest, FailingFileRollsBackNamingFileAndLine) {
  dir_.Write("0001_one.sql", "CREATE TABLE t_one (v integer);");
  dir_.Write("0002_bad.sql", "CREATE TABLE t_two (v integer);\nSELECT 1;\n  SELEC oops;\n");
  dir_.Write("0003_three.sql", "CREATE TABLE t_three (v integer);");

  const auto error = ErrorOf([&] { Migrator(dir_.path()).Up(conn_.get()); });
  ASSERT_TRUE(error);
  EXPECT_EQ(error->kind(), ErrorKind::kMigrationFailed);
  EXPECT_EQ(error->sqlstate(), "42601");
  EXPECT_THAT(error->what(), HasSubstr("0002_bad.sql:3: syntax error"));
  EXPECT_EQ(std::string(error->what()).find('\n'), std::string::npos);
  EXPECT_EQ(DatabaseVersion(conn_.get()), 1);
  EXPECT_EQ(Scalar("SELECT to_regclass('t_one') IS NOT NULL"), "t");
  EXPECT_EQ(Scalar("SELECT to_regclass('t_two') IS NULL"), "t");
  EXPECT_EQ(Scalar("SELECT to_regclass('t_three') IS NULL"), "t");
}

TEST_F(MigratorTest, FileThatCommitsTheMigratorsTransactionIsReported) {
  dir_.Write("0001_commits.sql", "CREATE TABLE t_one (v integer);\nCOMMIT;\n");
  const auto error = ErrorOf([&] { Migrator(dir_.path()).Up(conn_.get()); });
  ASSERT_TRUE(error);
  EXPECT_EQ(error->kind(), ErrorKind::kMigrationFailed);
  EXPECT_THAT(error->what(), HasSubstr("0001_commits.sql"));
  EXPECT_THAT(error->what(), HasSubstr("COMMIT"));
  EXPECT_EQ(DatabaseVersion(conn_.get()), 0);
}

TEST_F(MigratorTest, ConcurrentMigratorsSerializeAndApplyEachFileExactlyOnce) {
  dir_.Write("0001_one.sql",
             "CREATE TABLE t_log (v integer);\nINSERT INTO t_log VALUES (1);\n"
             "SELECT pg_sleep(0.2);\n");
  for (int v = 2; v <= 6; ++v) {
    dir_.Write(fmt::format("{:04}_step.sql", v),
               fmt::format("INSERT INTO t_log VALUES ({});\nSELECT pg_sleep(0.05);\n", v));
  }
  const Migrator migrator(dir_.path());
  constexpr int kMigrators = 4;
  std::latch start(kMigrators);
  std::mutex mutex;
  std::vector<int> applied;
  std::vector<std::string> errors;
  std::vector<std::thread> threads;
  for (int i = 0; i < kMigrators; ++i) {
    threads.emplace_back([&] {
      try {
        auto conn = database_->Connect();
        start.arrive_and_wait();
        const auto files = migrator.Up(conn.get());
        std::lock_guard lock(mutex);
        for (const auto& f : files)
          applied.push_back(f.version);
      } catch (const std::exception& e) {
        std::lock_guard lock(mutex);
        errors.push_back(e.what());
      }
    });
  }
  for (auto& t : threads)
    t.join();
  EXPECT_THAT(errors, testing::IsEmpty());
  std::sort(applied.begin(), applied.end());
  EXPECT_EQ(applied, (std::vector<int>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(Scalar("SELECT string_agg(v::text, ',' ORDER BY v) FROM t_log"), "1,2,3,4,5,6");
  EXPECT_EQ(Scalar("SELECT count(*) FROM warp.schema_migrations"), "6");
}

TEST_F(MigratorTest, LostConnectionIsADatabaseErrorMarkedLost) {
  WriteThree();
  const std::string pid = Scalar("SELECT pg_backend_pid()");
  auto other = database_->Connect();
  std::unique_ptr<PGresult, decltype(&PQclear)> killed(
      PQexec(other.get(), ("SELECT pg_terminate_backend(" + pid + ", 5000)").c_str()), &PQclear);
  ASSERT_EQ(PQresultStatus(killed.get()), PGRES_TUPLES_OK);
  const auto error = ErrorOf([&] { Migrator(dir_.path()).Up(conn_.get()); });
  ASSERT_TRUE(error);
  EXPECT_EQ(error->kind(), ErrorKind::kDatabase);
  EXPECT_TRUE(error->connection_lost());
}

TEST_F(MigratorTest, ConnectionInsideATransactionIsRefusedUntouched) {
  WriteThree();
  std::unique_ptr<PGresult, decltype(&PQclear)> begun(PQexec(conn_.get(), "BEGIN"), &PQclear);
  const auto error = ErrorOf([&] { Migrator(dir_.path()).Up(conn_.get()); });
  ASSERT_TRUE(error);
  EXPECT_EQ(error->kind(), ErrorKind::kDatabase);
  EXPECT_FALSE(error->connection_lost());
  EXPECT_EQ(PQtransactionStatus(conn_.get()), PQTRANS_INTRANS);
}

TEST_F(MigratorTest, RepositoryMigrationsApplyToAnEmptyDatabaseOnce) {
  const Migrator migrator(fs::path(WARP_SOURCE_DIR) / "migrations");
  EXPECT_EQ(migrator.Up(conn_.get()).size(), migrator.files().size());
  EXPECT_EQ(DatabaseVersion(conn_.get()), kExpectedSchemaVersion);
  EXPECT_TRUE(migrator.Up(conn_.get()).empty());
  EXPECT_TRUE(migrator.Verify(conn_.get()).ok());
}

}  // namespace
}  // namespace warp::migrations
