// Non-blocking libpq on the daemon's event loop: one Connection, its query Results, and a small
// Pool of connections, the layer the PostgreSQL store is built on (SPEC sections 11 and 12).
//
// Every wait (connect, send, result) is an Asio wait on the connection's socket under a
// deadline; the event loop never blocks on the database. Host names in the conninfo are
// resolved by Asio's resolver off the loop thread before libpq sees them.
//
// Errors are StoreErrors (store/store.hpp); those that come from the server are DatabaseErrors
// carrying the SQLSTATE. The mapping:
//   connection lost, PQstatus bad, SQLSTATE class 08, 57P01-57P03 admin/crash shutdown,
//   cannot connect now, a deadline that fires ......................... kUnavailable, broken()
//   57014 query_canceled (statement_timeout), 40001 serialization_failure, 40P01 deadlock,
//   class 53 insufficient resources ......................................... kUnavailable
//   23505 unique_violation ..................................................... kConflict
//   P0002 no_data_found (RAISE ... USING ERRCODE = 'no_data_found') ............ kNotFound
//   other class 23 integrity, class 22 data exceptions, P0001 raise_exception ... kInvalid
//   anything else (syntax errors, undefined tables...) ......................... kInternal
// Messages are one line: "postgres: <SQLSTATE> <primary message>".
//
// Outcome of a failed statement: when the server reported the error, nothing of the statement
// was applied. When the connection broke or the deadline fired (the connection is then closed),
// the statement may or may not have committed: a caller must not blindly redo a non-idempotent
// change; an open transaction is rolled back by the server when it sees the connection closed.
//
// A failed Pool::Acquire sent nothing. DatabaseErrors of kind kUnavailable whose SQLSTATE is
// 57014/40001/40P01/53xxx or a broken session (08xxx, 57P0x) were rolled back by the server.
//
// Use (GCC 12: arguments of co_await'ed calls are named locals, never braced temporaries):
//   Lease lease = co_await pool.Acquire();
//   Params params{slug, ArrayLiteral(ids)};
//   Result rows = co_await lease->Execute(kSelectSql, std::move(params), timeout);
//   for (int r = 0; r < rows.rows(); ++r) use(rows.GetInt64(r, "agent_id"));
//
// Thread-safety: none. Every object here belongs to one executor and must be used from the
// thread running it (a single-threaded io_context, or a strand).
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio/any_io_executor.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "logging/log.hpp"
#include "store/store.hpp"

// libpq's opaque types (PGconn, PGresult); libpq-fe.h stays out of this header.
struct pg_conn;
struct pg_result;

namespace warp::store::postgres {

/// Statement parameters `$1..$n`, sent as text (PostgreSQL casts them: `$1::bigint`,
/// `$2::jsonb`, `$3::text[]`). nullopt is SQL NULL. A value must not contain a NUL byte.
using Params = std::vector<std::optional<std::string>>;

/// A StoreError the server reported: the SQLSTATE (five characters) and the server's
/// diagnostics. Thrown by Connection::Execute / ExecuteScript; catch it as StoreError unless
/// the SQLSTATE matters. what() is "postgres: SQLSTATE primary", with the server's HINT in
/// parentheses when it gave one (what to change: "You might need to increase
/// max_locks_per_transaction."); never the DETAIL, which may quote row values.
class DatabaseError : public StoreError {
 public:
  DatabaseError(Kind kind, std::string sqlstate, std::string primary, std::string detail,
                std::string constraint, const std::string& hint = {});
  const std::string& sqlstate() const noexcept { return sqlstate_; }
  /// The primary message, e.g. `duplicate key value violates unique constraint "x_pkey"`.
  const std::string& primary() const noexcept { return primary_; }
  /// DETAIL (may quote row values: do not log it where payloads must not appear).
  const std::string& detail() const noexcept { return detail_; }
  /// The violated constraint's name, when the server named one.
  const std::string& constraint() const noexcept { return constraint_; }

 private:
  std::string sqlstate_;
  std::string primary_;
  std::string detail_;
  std::string constraint_;
};

/// The StoreError kind of a SQLSTATE (see the table at the top of this file), and whether it
/// means the session is gone.
StoreError::Kind KindOfSqlState(std::string_view sqlstate);
bool SqlStateBreaksConnection(std::string_view sqlstate);

/// A PostgreSQL array literal for a `$n::bigint[]` parameter: `{1,-2,3}`; `{}` when empty.
std::string ArrayLiteral(const std::vector<std::int64_t>& values);
/// A PostgreSQL array literal for a `$n::text[]` parameter. Every element is double-quoted with
/// `\` and `"` escaped, so commas, braces, blanks, backslashes and the string "NULL" survive.
std::string ArrayLiteral(const std::vector<std::string>& values);
/// As above; nullopt elements become unquoted NULL.
std::string ArrayLiteral(const std::vector<std::optional<std::string>>& values);
/// Parses the text form of a one-dimensional array (what the server sends for `text[]`,
/// `bigint[]`...; an optional `[lo:hi]=` prefix is ignored). Unquoted NULL is nullopt.
/// Throws StoreError(kInternal) for malformed or multi-dimensional input.
std::vector<std::optional<std::string>> ParseArrayLiteral(std::string_view text);

/// The outcome of one statement: rows of text values. Move-only; owns its PGresult.
/// Accessors with a row/column out of range, or a typed getter on a value that does not parse,
/// throw StoreError(kInternal): those are bugs in the SQL/code pairing, not data problems.
class Result {
 public:
  Result() noexcept;  ///< empty: no rows, no columns
  ~Result();
  Result(Result&&) noexcept;
  Result& operator=(Result&&) noexcept;
  Result(const Result&) = delete;
  Result& operator=(const Result&) = delete;

  int rows() const noexcept;
  int columns() const noexcept;
  /// Rows an INSERT/UPDATE/DELETE/SELECT... affected (PQcmdTuples); 0 when not applicable.
  std::int64_t affected_rows() const noexcept;
  /// The command tag, e.g. "INSERT 0 1"; empty for an empty Result.
  std::string_view command_tag() const noexcept;

  std::string_view ColumnName(int column) const;
  /// The index of the column called `name` (the first one if repeated), or nullopt.
  std::optional<int> FindColumn(std::string_view name) const;
  /// The index of the column called `name`; throws StoreError(kInternal) when there is none.
  int Column(std::string_view name) const;

  bool IsNull(int row, int column) const;
  /// The value as text; nullopt for NULL. The view lives as long as this Result.
  std::optional<std::string_view> Get(int row, int column) const;
  /// Typed getters: throw StoreError(kInternal) on NULL or a value of another type.
  std::int64_t GetInt64(int row, int column) const;
  std::string GetString(int row, int column) const;
  bool GetBool(int row, int column) const;                             ///< the text forms `t` / `f`
  std::vector<std::string> GetStringArray(int row, int column) const;  ///< NULL elements throw
  std::vector<std::int64_t> GetInt64Array(int row, int column) const;
  /// nullopt for NULL, otherwise as GetInt64 / GetString.
  std::optional<std::int64_t> GetOptionalInt64(int row, int column) const;
  std::optional<std::string> GetOptionalString(int row, int column) const;

  // The same by column name (Column(name) then the index form).
  bool IsNull(int row, std::string_view column) const { return IsNull(row, Column(column)); }
  std::optional<std::string_view> Get(int row, std::string_view column) const {
    return Get(row, Column(column));
  }
  std::int64_t GetInt64(int row, std::string_view column) const {
    return GetInt64(row, Column(column));
  }
  std::string GetString(int row, std::string_view column) const {
    return GetString(row, Column(column));
  }
  bool GetBool(int row, std::string_view column) const { return GetBool(row, Column(column)); }
  std::vector<std::string> GetStringArray(int row, std::string_view column) const {
    return GetStringArray(row, Column(column));
  }
  std::vector<std::int64_t> GetInt64Array(int row, std::string_view column) const {
    return GetInt64Array(row, Column(column));
  }
  std::optional<std::int64_t> GetOptionalInt64(int row, std::string_view column) const {
    return GetOptionalInt64(row, Column(column));
  }
  std::optional<std::string> GetOptionalString(int row, std::string_view column) const {
    return GetOptionalString(row, Column(column));
  }

 private:
  friend class Connection;
  struct Deleter {
    void operator()(pg_result* result) const noexcept;  // PQclear
  };
  explicit Result(pg_result* result) noexcept;
  void Check(int row, int column) const;

  std::unique_ptr<pg_result, Deleter> result_;
  /// The column names, read from the result once (FindColumn runs per field of every row).
  mutable std::vector<std::string_view> names_;
};

/// One libpq connection driven by the executor. Not copyable or movable (operations in flight
/// refer to it). One operation at a time: starting a second while one is in flight throws
/// StoreError(kInternal). Must not be destroyed while an operation is in flight.
///
/// After a failure that breaks the session (see the table above) the connection is closed
/// and broken() is true: the caller must Connect() again (Pool does it) rather than reuse it.
class Connection {
 public:
  explicit Connection(boost::asio::any_io_executor executor);
  ~Connection();  ///< closes the connection (the server rolls back an open transaction)
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  /// Opens a session. `conninfo` is a libpq connection string (`host=... port=... dbname=...`
  /// or a `postgresql://` URI); `password`, when set, overrides any in the conninfo (so it
  /// need not be written into it). Closes any previous session first. Throws
  /// StoreError(kInvalid) for a malformed conninfo and StoreError(kUnavailable) when the server
  /// cannot be reached, refuses, or `timeout` passes (name resolution included).
  Task<void> Connect(std::string conninfo, std::optional<std::string> password, Duration timeout);

  /// Runs one statement with `$n` parameters (text format) and returns its rows. `timeout`
  /// bounds the whole round trip; when it passes the connection is closed (so the server
  /// abandons the statement; see Cancellation in connection.cpp), broken() becomes true and
  /// StoreError(kUnavailable, "query timed out after Nms") is thrown. Server errors throw
  /// DatabaseError per the table above. `sql` is copied before the first suspension.
  Task<Result> Execute(std::string_view sql, Params params, Duration timeout);

  /// Runs a script of one or more `;`-separated statements without parameters in ONE round
  /// trip (simple query protocol) and returns one Result per statement. Unless the script has
  /// its own BEGIN/COMMIT the statements form one implicit transaction: all or nothing. For
  /// migrations and session setup; never assemble a script from values. Throws as Execute.
  Task<std::vector<Result>> ExecuteScript(std::string_view sql, Duration timeout);

  /// Closes the session now (idempotent); connected() becomes false, broken() is unchanged.
  void Close() noexcept;

  /// A session is open and not known to be broken.
  bool connected() const noexcept;
  /// The session broke (or a deadline closed it); it stays true until the next Connect.
  bool broken() const noexcept;
  /// An operation is in flight.
  bool busy() const noexcept;
  /// Inside a transaction block (after BEGIN, or aborted in one). A pool must not hand such a
  /// session to another user.
  bool in_transaction() const noexcept;
  /// The server process id of the session (for pg_terminate_backend, logs); 0 when closed.
  int backend_pid() const noexcept;
  /// The server version as an integer (150004 for 15.4); 0 when closed.
  int server_version() const noexcept;

 private:
  struct Impl;
  Task<Result> ExecuteParams(std::string sql, Params params, Duration timeout);
  Task<std::vector<Result>> ExecuteSimple(std::string sql, Duration timeout);
  Task<std::vector<Result>> RunQuery(bool with_params, const std::string& sql, const Params& params,
                                     Duration timeout);
  Task<void> ConnectImpl(std::string conninfo, std::optional<std::string> password,
                         Duration timeout);

  std::unique_ptr<Impl> impl_;
};

/// Settings of a Pool. Durations are milliseconds.
struct PoolSettings {
  std::string conninfo;                 ///< libpq connection string or URI
  std::optional<std::string> password;  ///< overrides one in the conninfo
  std::size_t size = 2;                 ///< connections (at least 1)
  Duration connect_timeout{std::chrono::seconds(5)};
  Duration acquire_timeout{std::chrono::seconds(5)};         ///< Acquire() without an argument
  Duration backoff_initial{std::chrono::milliseconds(100)};  ///< after the first failed connect
  Duration backoff_max{std::chrono::seconds(5)};             ///< doubling stops here
  /// A script run once after every connect (e.g. `SET TIME ZONE 'UTC'`); empty for none.
  /// Its failure counts as a failed connect.
  std::string session_setup;
};

/// A database outage as the pool sees it: connects failing since `since`.
struct PoolOutage {
  std::chrono::steady_clock::time_point since;       ///< first failed connect of the outage
  std::chrono::system_clock::time_point since_wall;  ///< the same instant on the host clock
  std::uint64_t failed_connects = 0;                 ///< failed connects during the outage
  std::string last_error;                            ///< message of the latest failure
};

struct PoolStats {
  std::uint64_t connects = 0;         ///< successful connects since the pool was made
  std::uint64_t failed_connects = 0;  ///< failed connect attempts since the pool was made
  std::uint64_t broken_returned = 0;  ///< leases returned with a broken connection
  std::optional<PoolOutage> outage;   ///< set from a failed connect until a connect succeeds
  std::size_t size = 0;               ///< connections, whatever their state
  std::size_t idle_connected = 0;     ///< free and open
  std::size_t leased = 0;             ///< held by Leases (including ones connecting)
  std::size_t waiting = 0;            ///< Acquire calls waiting for a connection
};

class Pool;
namespace impl {
struct PoolCore;
}  // namespace impl

/// Exclusive use of one pooled connection; gives it back when destroyed or Release()d.
/// A connection given back broken, or inside a transaction block, is closed (the server rolls
/// the transaction back) and reopened on a later Acquire. Move-only. May outlive the Pool.
class Lease {
 public:
  Lease() noexcept;
  ~Lease();
  Lease(Lease&& other) noexcept;
  Lease& operator=(Lease&& other) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;

  explicit operator bool() const noexcept { return connection_ != nullptr; }
  /// The leased connection; only valid while this Lease holds it.
  Connection& operator*() const noexcept { return *connection_; }
  Connection* operator->() const noexcept { return connection_; }
  /// Gives the connection back now (idempotent).
  void Release() noexcept;

 private:
  friend struct impl::PoolCore;
  Lease(std::shared_ptr<impl::PoolCore> core, std::size_t slot, Connection* connection) noexcept;

  std::shared_ptr<impl::PoolCore> core_;  ///< the pool's shared state (keeps it alive)
  std::size_t slot_ = 0;
  Connection* connection_ = nullptr;
};

/// A fixed number of Connections on one executor, opened lazily. Acquire waits in FIFO order
/// for a free connection; a closed or broken one is (re)opened by the acquirer, with
/// exponential backoff across failures (backoff_initial doubling to backoff_max) that every
/// acquirer honours. An attempt that the acquirer's own deadline cut short (less time left than
/// connect_timeout) is not a failure: it neither grows nor renews the backoff. Failed connects
/// and recoveries are logged as Event::kStoreError (failures at most every 30 s while the
/// message stays the same).
///
/// Destroying the Pool fails waiting Acquires with kUnavailable and closes free connections;
/// outstanding Leases keep the shared state alive and close theirs when released. Destroy the
/// Pool (and every Lease) before the io_context, like any Asio I/O object.
class Pool {
 public:
  Pool(boost::asio::any_io_executor executor, PoolSettings settings, logging::Logger log);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// Waits up to settings.acquire_timeout; see Acquire(Duration).
  Task<Lease> Acquire();
  /// Waits up to `timeout` for a free connection and opens it if needed. Throws
  /// StoreError(kUnavailable) when the time runs out (naming the last connect error during an
  /// outage) or the pool is destroyed meanwhile.
  Task<Lease> Acquire(Duration timeout);

  PoolStats stats() const;
  const PoolSettings& settings() const noexcept;

 private:
  std::shared_ptr<impl::PoolCore> core_;
};

}  // namespace warp::store::postgres
