#include "migrations/testdb/scratch_database.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <random>
#include <stdexcept>

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

void Run(PGconn* conn, const std::string& sql) {
  std::unique_ptr<PGresult, decltype(&PQclear)> result(PQexec(conn, sql.c_str()), &PQclear);
  if (!result || PQresultStatus(result.get()) != PGRES_COMMAND_OK)
    throw std::runtime_error(sql + ": " + PQerrorMessage(conn));
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
