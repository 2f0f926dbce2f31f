// warpctl's face over libpq: parameterized statements, results read by column name, one
// transaction per operator change. Blocking (warpctl runs one command and exits).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "migrations/migrator.hpp"

typedef struct pg_result PGresult;

namespace warp::warpctl {

/// A statement failed. `sqlstate()` is PostgreSQL's code ("" when none reached us);
/// `connection_lost()` is true when the connection broke (the store is unavailable).
class DbError : public std::runtime_error {
 public:
  DbError(const std::string& message, std::string sqlstate, std::string constraint,
          bool connection_lost)
      : std::runtime_error(message),
        sqlstate_(std::move(sqlstate)),
        constraint_(std::move(constraint)),
        connection_lost_(connection_lost) {}
  const std::string& sqlstate() const { return sqlstate_; }
  const std::string& constraint() const { return constraint_; }
  bool connection_lost() const { return connection_lost_; }

 private:
  std::string sqlstate_;
  std::string constraint_;
  bool connection_lost_;
};

/// A statement parameter: text, or NULL.
using Param = std::optional<std::string>;

/// The rows of one statement. Values are libpq's text forms.
class Rows {
 public:
  explicit Rows(PGresult* result);
  int size() const;
  bool empty() const { return size() == 0; }
  bool IsNull(int row, const char* column) const;
  /// The value, "" when NULL.
  std::string Text(int row, const char* column) const;
  std::optional<std::string> Optional(int row, const char* column) const;
  std::int64_t Int(int row, const char* column) const;
  std::optional<std::int64_t> OptionalInt(int row, const char* column) const;
  bool Bool(int row, const char* column) const;

 private:
  int Column(const char* column) const;
  std::shared_ptr<PGresult> result_;
};

/// One connection. Sessions run in UTC so that timestamps in JSON values are UTC.
class Db {
 public:
  explicit Db(migrations::ConnectionPtr conn);
  /// Runs `sql` with `$n` parameters; throws DbError.
  Rows Query(const char* sql, std::initializer_list<Param> params = {});
  PGconn* get() const { return conn_.get(); }

 private:
  migrations::ConnectionPtr conn_;
};

/// BEGIN now; ROLLBACK on destruction unless Commit() was called.
class Transaction {
 public:
  explicit Transaction(Db& db);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void Commit();

 private:
  Db& db_;
  bool done_ = false;
};

}  // namespace warp::warpctl
