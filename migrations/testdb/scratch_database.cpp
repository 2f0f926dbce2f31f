#include "migrations/testdb/scratch_database.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace warp::migrations::testdb {
namespace {

std::string Quoted(const std::string& value) {
  std::string out = "'";
  for (const char c : value) {
    if (c == '\'' || c == '\\')
      out += '\\';
    out += c;
  }
  return out + "'";
}

using ResultPtr = std::unique_ptr<PGresult, decltype(&PQclear)>;

/// Runs `sql` (one or more statements); throws naming `what` unless it succeeded.
ResultPtr Exec(PGconn* conn, const std::string& sql, const std::string& what) {
  ResultPtr result(PQexec(conn, sql.c_str()), &PQclear);
  const auto status = result ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK)
    throw std::runtime_error(what + ": " + PQerrorMessage(conn));
  return result;
}

void Run(PGconn* conn, const std::string& sql) {
  Exec(conn, sql, sql);
}

std::string QuotedIdentifier(PGconn* conn, const std::string& name) {
  std::unique_ptr<char, decltype(&PQfreemem)> quoted(
      PQescapeIdentifier(conn, name.c_str(), name.size()), &PQfreemem);
  if (!quoted)
    throw std::runtime_error(std::string("PQescapeIdentifier: ") + PQerrorMessage(conn));
  return quoted.get();
}

}  // namespace

std::string TestDsn() {
  const char* dsn = std::getenv("WARP_TEST_DSN");
  return dsn ? dsn : "";
}

std::string WithDatabase(const std::string& dsn, const std::string& dbname) {
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(dsn.c_str(), &error);
  if (!options) {
    std::string message = error ? error : "out of memory";
    PQfreemem(error);
    throw std::runtime_error("WARP_TEST_DSN: " + message);
  }
  std::string out;
  for (const PQconninfoOption* option = options; option->keyword; ++option) {
    if (std::string_view(option->keyword) == "dbname" || !option->val || !*option->val)
      continue;
    out += std::string(option->keyword) + "=" + Quoted(option->val) + " ";
  }
  PQconninfoFree(options);
  return out + "dbname=" + Quoted(dbname);
}

Connection Connect(const std::string& dsn) {
  Connection conn(PQconnectdb(dsn.c_str()), &PQfinish);
  if (!conn || PQstatus(conn.get()) != CONNECTION_OK) {
    throw std::runtime_error("cannot connect to the test database: " +
                             std::string(conn ? PQerrorMessage(conn.get()) : "out of memory"));
  }
  return conn;
}

std::string MigratedTemplate(const std::filesystem::path& migrations_dir,
                             const std::string& prefix) {
  const std::string admin_dsn = TestDsn();
  if (admin_dsn.empty())
    throw std::runtime_error(kNoTestDsn);
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(migrations_dir)) {
    if (e.path().extension() == ".sql")
      files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<std::string> scripts;
  std::string all;
  for (const auto& f : files) {
    std::ifstream in(f);
    std::stringstream text;
    text << in.rdbuf();
    scripts.push_back(text.str());
    all += f.filename().string() + scripts.back();
  }
  std::ostringstream name;
  name << prefix << '_' << std::hex << std::hash<std::string>{}(all);
  const std::string tpl = name.str();

  // The session lock goes with this connection if anything below throws.
  auto admin = testdb::Connect(admin_dsn);
  Run(admin.get(), "SELECT pg_advisory_lock(hashtext('warp_migrated_template'))");
  const char* param = tpl.c_str();
  ResultPtr exists(PQexecParams(admin.get(), "SELECT 1 FROM pg_database WHERE datname = $1", 1,
                                nullptr, &param, nullptr, nullptr, 0),
                   &PQclear);
  if (!exists || PQresultStatus(exists.get()) != PGRES_TUPLES_OK)
    throw std::runtime_error("looking up " + tpl + ": " + PQerrorMessage(admin.get()));
  if (PQntuples(exists.get()) == 0) {
    const std::string quoted = QuotedIdentifier(admin.get(), tpl);
    Run(admin.get(), "CREATE DATABASE " + quoted);
    try {
      auto conn = testdb::Connect(WithDatabase(admin_dsn, tpl));
      for (std::size_t i = 0; i < files.size(); ++i)
        Exec(conn.get(), scripts[i], files[i].string());
    } catch (...) {  // no half-migrated template for the next process to find
      Run(admin.get(), "DROP DATABASE " + quoted + " WITH (FORCE)");
      throw;
    }
  }  // `conn` is closed here: a template must have no sessions when it is copied
  Run(admin.get(), "SELECT pg_advisory_unlock(hashtext('warp_migrated_template'))");
  return tpl;
}

ScratchDatabase::ScratchDatabase() : admin_dsn_(TestDsn()) {
  if (admin_dsn_.empty())
    throw std::runtime_error(kNoTestDsn);
  static std::atomic<int> counter{0};
  std::random_device random;
  name_ = "warp_t_" + std::to_string(::getpid()) + "_" + std::to_string(++counter) + "_" +
          std::to_string(random() % 1000000);
  auto admin = testdb::Connect(admin_dsn_);
  // template0: nobody connects to it, so concurrent CREATE DATABASEs never find it busy.
  Run(admin.get(), "CREATE DATABASE " + QuotedIdentifier(admin.get(), name_) +
                       " TEMPLATE template0 ENCODING 'UTF8'");
  dsn_ = WithDatabase(admin_dsn_, name_);
}

ScratchDatabase::~ScratchDatabase() {
  try {
    auto admin = testdb::Connect(admin_dsn_);
    Run(admin.get(),
        "DROP DATABASE IF EXISTS " + QuotedIdentifier(admin.get(), name_) + " WITH (FORCE)");
  } catch (const std::exception&) {
    // The server is gone or the test broke it: the throwaway cluster is removed anyway.
  }
}

}  // namespace warp::migrations::testdb
