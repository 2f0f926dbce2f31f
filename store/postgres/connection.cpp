#include "store/postgres/connection.hpp"

#include <libpq-fe.h>

#include <fmt/format.h>
#include <algorithm>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <charconv>
#include <cstdlib>

namespace warp::store::postgres {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using Kind = StoreError::Kind;

/// libpq messages end in newlines and indent hints with tabs; a log line wants one line.
std::string OneLine(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool blank = false;
  for (char c : text) {
    if (c == '\n' || c == '\r' || c == '\t' || c == ' ') {
      blank = !out.empty();
      continue;
    }
    if (blank)
      out.push_back(' ');
    blank = false;
    out.push_back(c);
  }
  return out;
}

std::string ConnectionMessage(const PGconn* conn) {
  const char* message = conn != nullptr ? PQerrorMessage(conn) : nullptr;
  std::string line = OneLine(message != nullptr ? message : "");
  return line.empty() ? std::string("connection lost") : line;
}

std::string Field(const PGresult* result, int code) {
  const char* value = PQresultErrorField(result, code);
  return value != nullptr ? std::string(value) : std::string();
}

std::string Ms(Duration d) {
  return fmt::format("{}ms", d.count());
}

bool IsErrorStatus(ExecStatusType status) {
  return status == PGRES_FATAL_ERROR || status == PGRES_BAD_RESPONSE ||
         status == PGRES_NONFATAL_ERROR;
}

std::vector<std::string> SplitList(const std::string& text) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (;;) {
    const auto comma = text.find(',', start);
    parts.push_back(text.substr(start, comma == std::string::npos ? comma : comma - start));
    if (comma == std::string::npos)
      return parts;
    start = comma + 1;
  }
}

std::string JoinList(const std::vector<std::string>& parts) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i > 0)
      out.push_back(',');
    out += parts[i];
  }
  return out;
}

struct ConninfoDeleter {
  void operator()(PQconninfoOption* options) const noexcept { PQconninfoFree(options); }
};

/// The host-related settings of a conninfo, explicit or from the environment.
struct HostSettings {
  std::string host;
  std::string hostaddr;
  std::string port;
  std::string service;
};

/// Parses `conninfo` (throws kInvalid when libpq cannot) and picks out the host settings.
HostSettings ParseHostSettings(const std::string& conninfo) {
  char* error = nullptr;
  std::unique_ptr<PQconninfoOption, ConninfoDeleter> options(
      PQconninfoParse(conninfo.c_str(), &error));
  if (!options) {
    std::string message = error != nullptr ? OneLine(error) : "out of memory";
    if (error != nullptr)
      PQfreemem(error);
    throw StoreError(Kind::kInvalid, "postgres: invalid connection string: " + message);
  }
  HostSettings settings;
  for (auto* option = options.get(); option->keyword != nullptr; ++option) {
    if (option->val == nullptr)
      continue;
    const std::string_view keyword = option->keyword;
    if (keyword == "host")
      settings.host = option->val;
    else if (keyword == "hostaddr")
      settings.hostaddr = option->val;
    else if (keyword == "port")
      settings.port = option->val;
    else if (keyword == "service")
      settings.service = option->val;
  }
  const auto from_env = [](std::string& value, const char* name) {
    if (value.empty()) {
      const char* env = std::getenv(name);
      value = env != nullptr ? env : "";
    }
  };
  from_env(settings.host, "PGHOST");
  from_env(settings.hostaddr, "PGHOSTADDR");
  from_env(settings.port, "PGPORT");
  from_env(settings.service, "PGSERVICE");
  return settings;
}

/// A host name libpq would look up in DNS (not a socket directory, not a numeric address).
bool NeedsLookup(const std::string& host) {
  if (host.empty() || host.front() == '/' || host.front() == '@')
    return false;
  boost::system::error_code ec;
  asio::ip::make_address(host, ec);
  return static_cast<bool>(ec);
}

/// One name lookup run by Asio's resolver (its own thread), awaited on a timer so that the
/// deadline holds even while getaddrinfo is stuck: the lookup's late completion only touches
/// this shared state.
struct Lookup {
  explicit Lookup(const asio::any_io_executor& executor) : resolver(executor), wake(executor) {}
  asio::ip::tcp::resolver resolver;
  asio::steady_timer wake;
  bool done = false;
  boost::system::error_code ec;
  asio::ip::tcp::resolver::results_type results;
};

Task<std::vector<std::string>> LookUp(asio::any_io_executor executor, std::string host,
                                      Clock::time_point deadline, Duration timeout) {
  auto lookup = std::make_shared<Lookup>(executor);
  lookup->wake.expires_at(deadline);
  lookup->resolver.async_resolve(
      host, "5432", asio::ip::resolver_base::numeric_service,
      [lookup](const boost::system::error_code& ec, asio::ip::tcp::resolver::results_type results) {
        lookup->done = true;
        lookup->ec = ec;
        lookup->results = std::move(results);
        lookup->wake.cancel();
      });
  boost::system::error_code ignored;
  co_await lookup->wake.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  if (!lookup->done) {
    lookup->resolver.cancel();
    throw StoreError(Kind::kUnavailable, "postgres: connect timed out after " + Ms(timeout) +
                                             " resolving host \"" + host + "\"");
  }
  if (lookup->ec)
    throw StoreError(Kind::kUnavailable,
                     "postgres: could not resolve host \"" + host + "\": " + lookup->ec.message());
  std::vector<std::string> addresses;
  for (const auto& entry : lookup->results) {
    auto address = entry.endpoint().address().to_string();
    if (std::find(addresses.begin(), addresses.end(), address) == addresses.end())
      addresses.push_back(std::move(address));
  }
  if (addresses.empty())
    throw StoreError(Kind::kUnavailable, "postgres: host \"" + host + "\" has no address");
  co_return addresses;
}

/// Whether a timer-driven operation is still running and whether its deadline fired. Shared
/// with the deadline handler, which must not touch the connection once the operation ended.
struct OperationState {
  bool finished = false;
  bool timed_out = false;
};

}  // namespace

// --- errors ---------------------------------------------------------------------------

namespace {
std::string DatabaseMessage(const std::string& sqlstate, const std::string& primary,
                            const std::string& hint) {
  return OneLine("postgres: " + sqlstate + " " + primary +
                 (hint.empty() ? std::string() : " (hint: " + hint + ")"));
}
}  // namespace

DatabaseError::DatabaseError(Kind kind, std::string sqlstate, std::string primary,
                             std::string detail, std::string constraint, const std::string& hint)
    : StoreError(kind, DatabaseMessage(sqlstate, primary, hint)),
      sqlstate_(std::move(sqlstate)),
      primary_(std::move(primary)),
      detail_(std::move(detail)),
      constraint_(std::move(constraint)) {}

bool SqlStateBreaksConnection(std::string_view sqlstate) {
  return sqlstate.substr(0, 2) == "08"  // connection exception
         || sqlstate == "57P01"         // admin_shutdown (pg_terminate_backend, fast stop)
         || sqlstate == "57P02"         // crash_shutdown
         || sqlstate == "57P03"         // cannot_connect_now
         || sqlstate == "57P04"         // database_dropped
         || sqlstate == "57P05";        // idle_session_timeout
}

StoreError::Kind KindOfSqlState(std::string_view sqlstate) {
  const auto cls = sqlstate.substr(0, 2);
  if (SqlStateBreaksConnection(sqlstate))
    return Kind::kUnavailable;
  // Transient: a retry with backoff can succeed.
  if (sqlstate == "57014" || sqlstate == "40001" || sqlstate == "40P01" || cls == "53")
    return Kind::kUnavailable;
  if (sqlstate == "23505")
    return Kind::kConflict;
  if (sqlstate == "P0002")
    return Kind::kNotFound;
  if (cls == "23" || cls == "22" || sqlstate == "P0001")
    return Kind::kInvalid;
  return Kind::kInternal;
}

// --- arrays ---------------------------------------------------------------------------

namespace {
void AppendQuoted(std::string& out, std::string_view value) {
  out.push_back('"');
  for (char c : value) {
    if (c == '"' || c == '\\')
      out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('"');
}

[[noreturn]] void BadArray(std::string_view text, std::string_view why) {
  constexpr std::size_t kShown = 80;
  throw StoreError(Kind::kInternal,
                   fmt::format("postgres: malformed array literal ({}): {}{}", why,
                               OneLine(text.substr(0, kShown)), text.size() > kShown ? "..." : ""));
}

bool IsArraySpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

bool EqualsNullIgnoringCase(std::string_view s) {
  if (s.size() != 4)
    return false;
  constexpr std::string_view kNull = "null";
  for (std::size_t i = 0; i < 4; ++i) {
    if ((s[i] | 0x20) != kNull[i])
      return false;
  }
  return true;
}
}  // namespace

std::string ArrayLiteral(const std::vector<std::int64_t>& values) {
  std::string out = "{";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i > 0)
      out.push_back(',');
    out += std::to_string(values[i]);
  }
  out.push_back('}');
  return out;
}

std::string ArrayLiteral(const std::vector<std::string>& values) {
  std::string out = "{";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i > 0)
      out.push_back(',');
    AppendQuoted(out, values[i]);
  }
  out.push_back('}');
  return out;
}

std::string ArrayLiteral(const std::vector<std::optional<std::string>>& values) {
  std::string out = "{";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i > 0)
      out.push_back(',');
    if (values[i])
      AppendQuoted(out, *values[i]);
    else
      out += "NULL";
  }
  out.push_back('}');
  return out;
}

std::vector<std::optional<std::string>> ParseArrayLiteral(std::string_view text) {
  std::size_t i = 0;
  const std::size_t n = text.size();
  const auto skip_space = [&] {
    while (i < n && IsArraySpace(text[i]))
      ++i;
  };
  skip_space();
  if (i < n && text[i] == '[') {  // explicit bounds, e.g. "[0:1]={a,b}"
    const auto equals = text.find('=', i);
    if (equals == std::string_view::npos)
      BadArray(text, "bounds without '='");
    i = equals + 1;
    skip_space();
  }
  if (i >= n || text[i] != '{')
    BadArray(text, "no '{'");
  ++i;
  std::vector<std::optional<std::string>> values;
  skip_space();
  if (i < n && text[i] == '}') {
    ++i;
  } else {
    for (;;) {
      skip_space();
      if (i >= n)
        BadArray(text, "unterminated");
      if (text[i] == '{')
        BadArray(text, "multi-dimensional arrays are not supported");
      std::string value;
      if (text[i] == '"') {
        ++i;
        while (i < n && text[i] != '"') {
          if (text[i] == '\\' && ++i >= n)
            break;
          value.push_back(text[i++]);
        }
        if (i >= n)
          BadArray(text, "unterminated quoted element");
        ++i;
        values.emplace_back(std::move(value));
      } else {
        bool escaped = false;
        std::size_t kept = 0;  // length without trailing unescaped blanks
        while (i < n && text[i] != ',' && text[i] != '}') {
          if (text[i] == '"' || text[i] == '{')
            BadArray(text, "unexpected character");
          if (text[i] == '\\') {
            if (++i >= n)
              BadArray(text, "dangling backslash");
            escaped = true;
            value.push_back(text[i++]);
            kept = value.size();
            continue;
          }
          value.push_back(text[i]);
          if (!IsArraySpace(text[i]))
            kept = value.size();
          ++i;
        }
        value.resize(kept);
        if (value.empty() && !escaped)
          BadArray(text, "empty element");
        if (!escaped && EqualsNullIgnoringCase(value))
          values.emplace_back(std::nullopt);
        else
          values.emplace_back(std::move(value));
      }
      skip_space();
      if (i >= n)
        BadArray(text, "unterminated");
      if (text[i] == ',') {
        ++i;
        continue;
      }
      if (text[i] != '}')
        BadArray(text, "expected ',' or '}'");
      ++i;
      break;
    }
  }
  skip_space();
  if (i != n)
    BadArray(text, "text after '}'");
  return values;
}

// --- Result ---------------------------------------------------------------------------

void Result::Deleter::operator()(pg_result* result) const noexcept {
  PQclear(result);
}

Result::Result() noexcept = default;
Result::Result(pg_result* result) noexcept : result_(result) {}
Result::~Result() = default;
Result::Result(Result&&) noexcept = default;
Result& Result::operator=(Result&&) noexcept = default;

int Result::rows() const noexcept {
  return result_ ? PQntuples(result_.get()) : 0;
}

int Result::columns() const noexcept {
  return result_ ? PQnfields(result_.get()) : 0;
}

std::int64_t Result::affected_rows() const noexcept {
  if (!result_)
    return 0;
  const std::string_view text = PQcmdTuples(result_.get());
  std::int64_t n = 0;
  std::from_chars(text.data(), text.data() + text.size(), n);
  return n;
}

std::string_view Result::command_tag() const noexcept {
  if (!result_)
    return {};
  const char* tag = PQcmdStatus(result_.get());
  return tag != nullptr ? std::string_view(tag) : std::string_view();
}

std::string_view Result::ColumnName(int column) const {
  Check(0, column);
  return PQfname(result_.get(), column);
}

std::optional<int> Result::FindColumn(std::string_view name) const {
  if (names_.empty() && columns() > 0) {
    names_.reserve(static_cast<std::size_t>(columns()));
    for (int c = 0; c < columns(); ++c)
      names_.emplace_back(PQfname(result_.get(), c));
  }
  for (std::size_t c = 0; c < names_.size(); ++c) {
    if (names_[c] == name)
      return static_cast<int>(c);
  }
  return std::nullopt;
}

int Result::Column(std::string_view name) const {
  if (auto column = FindColumn(name))
    return *column;
  throw StoreError(Kind::kInternal, fmt::format("postgres result: no column \"{}\"", name));
}

void Result::Check(int row, int column) const {
  // Row 0 is accepted for column-only checks even when there are no rows.
  const bool row_ok = row >= 0 && (row < rows() || (row == 0 && result_));
  if (!row_ok || column < 0 || column >= columns())
    throw StoreError(Kind::kInternal,
                     fmt::format("postgres result: row {} column {} out of range ({} x {})", row,
                                 column, rows(), columns()));
}

bool Result::IsNull(int row, int column) const {
  Check(row, column);
  if (row >= rows())
    throw StoreError(Kind::kInternal, fmt::format("postgres result: no row {}", row));
  return PQgetisnull(result_.get(), row, column) != 0;
}

std::optional<std::string_view> Result::Get(int row, int column) const {
  if (IsNull(row, column))
    return std::nullopt;
  return std::string_view(PQgetvalue(result_.get(), row, column),
                          static_cast<std::size_t>(PQgetlength(result_.get(), row, column)));
}

namespace {
[[noreturn]] void BadValue(const Result& result, int column, std::string_view expected,
                           std::optional<std::string_view> value) {
  constexpr std::size_t kShown = 40;
  throw StoreError(
      Kind::kInternal,
      value ? fmt::format("postgres result: column \"{}\" is not {}: \"{}\"",
                          result.ColumnName(column), expected, OneLine(value->substr(0, kShown)))
            : fmt::format("postgres result: column \"{}\" is NULL, expected {}",
                          result.ColumnName(column), expected));
}

std::optional<std::int64_t> ParseInt64(std::string_view text) {
  std::int64_t n = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty())
    return std::nullopt;
  return n;
}
}  // namespace

std::int64_t Result::GetInt64(int row, int column) const {
  const auto value = Get(row, column);
  if (!value)
    BadValue(*this, column, "an integer", value);
  const auto n = ParseInt64(*value);
  if (!n)
    BadValue(*this, column, "an integer", value);
  return *n;
}

std::string Result::GetString(int row, int column) const {
  const auto value = Get(row, column);
  if (!value)
    BadValue(*this, column, "a string", value);
  return std::string(*value);
}

bool Result::GetBool(int row, int column) const {
  const auto value = Get(row, column);
  if (value == "t")
    return true;
  if (value == "f")
    return false;
  BadValue(*this, column, "a boolean", value);
}

std::vector<std::string> Result::GetStringArray(int row, int column) const {
  const auto value = Get(row, column);
  if (!value)
    BadValue(*this, column, "an array", value);
  std::vector<std::string> out;
  for (auto& element : ParseArrayLiteral(*value)) {
    if (!element)
      BadValue(*this, column, "an array without NULLs", value);
    out.push_back(std::move(*element));
  }
  return out;
}

std::vector<std::int64_t> Result::GetInt64Array(int row, int column) const {
  const auto value = Get(row, column);
  if (!value)
    BadValue(*this, column, "an array", value);
  std::vector<std::int64_t> out;
  for (const auto& element : ParseArrayLiteral(*value)) {
    const auto n = element ? ParseInt64(*element) : std::nullopt;
    if (!n)
      BadValue(*this, column, "an integer array without NULLs", value);
    out.push_back(*n);
  }
  return out;
}

std::optional<std::int64_t> Result::GetOptionalInt64(int row, int column) const {
  if (IsNull(row, column))
    return std::nullopt;
  return GetInt64(row, column);
}

std::optional<std::string> Result::GetOptionalString(int row, int column) const {
  if (IsNull(row, column))
    return std::nullopt;
  return GetString(row, column);
}

// --- Connection -----------------------------------------------------------------------
//
// Socket ownership: libpq owns the socket. The Asio descriptor only wraps it for readiness
// waits and is release()d (never closed) before any libpq call that may close or replace the
// socket: during connect before every PQconnectPoll (libpq moves on to the next address with a
// new socket, possibly under the same number, which must be registered afresh), and before
// PQfinish. libpq also closes the socket by itself when it detects a lost connection; after
// every libpq call the wrapper is re-synchronised at once with PQsocket, before anything else
// could reuse the number.
//
// Cancellation: when a deadline fires the connection is closed (PQfinish) instead of sending a
// PQcancel, which is a blocking connect to the server and would stall the loop for as long as
// an unreachable server takes to time out. The server abandons the statement when it next
// notices the closed socket (at the latest when it sends the result; sooner with
// client_connection_check_interval set, which PoolSettings::session_setup can do) and rolls
// back its transaction. The connection is then broken(); a Pool reopens it on a later Acquire.

namespace {
void IgnoreNotice(void* /*arg*/, const char* /*message*/) {}

struct PgConnDeleter {
  void operator()(PGconn* conn) const noexcept { PQfinish(conn); }
};
}  // namespace

struct Connection::Impl {
  explicit Impl(asio::any_io_executor executor_in) : executor(std::move(executor_in)) {}
  ~Impl() { Close(); }

  asio::any_io_executor executor;
  std::unique_ptr<PGconn, PgConnDeleter> conn;
  std::optional<asio::posix::stream_descriptor> socket;
  int socket_fd = -1;
  bool broken = false;
  bool busy = false;

  void ReleaseSocket() noexcept {
    if (socket) {
      socket->release();
      socket.reset();
    }
    socket_fd = -1;
  }

  /// Follows libpq's socket (see "Socket ownership" above). A socket Asio cannot register
  /// leaves no wrapper; the next wait then fails as a lost connection.
  void SyncSocket() noexcept {
    const int fd = conn ? PQsocket(conn.get()) : -1;
    if (fd == socket_fd && (fd < 0 || socket))
      return;
    ReleaseSocket();
    if (fd < 0)
      return;
    try {
      socket.emplace(executor, fd);
      socket_fd = fd;
    } catch (...) {  // registration failed (or out of memory)
      socket.reset();
    }
  }

  void Close() noexcept {
    ReleaseSocket();
    conn.reset();
  }

  /// The session is unusable: close it and remember why broken() is true.
  void Break() noexcept {
    broken = true;
    Close();
  }

  /// The connection failed: a kUnavailable error naming libpq's reason; closes the session,
  /// and marks it broken when it had been established.
  StoreError Failure(std::string_view doing, bool established) {
    std::string message = fmt::format("postgres: {}: {}", doing, ConnectionMessage(conn.get()));
    if (established)
      Break();
    else
      Close();
    return StoreError(Kind::kUnavailable, message);
  }
  StoreError Lost(std::string_view doing) { return Failure(doing, true); }

  /// Throws the error of a failed result; breaks the session when it is gone.
  [[noreturn]] void ThrowErrorOf(const PGresult* result, bool lost) {
    const std::string sqlstate = Field(result, PG_DIAG_SQLSTATE);
    const bool gone = lost || !conn || PQstatus(conn.get()) == CONNECTION_BAD ||
                      SqlStateBreaksConnection(sqlstate);
    if (sqlstate.empty()) {
      // Generated by libpq itself (no SQLSTATE): a lost connection, a protocol problem.
      const char* message = PQresultErrorMessage(result);
      std::string line = OneLine(message != nullptr ? message : "");
      if (line.empty())
        line = ConnectionMessage(conn.get());
      if (gone)
        Break();
      throw StoreError(gone ? Kind::kUnavailable : Kind::kInternal, "postgres: " + line);
    }
    std::string primary = Field(result, PG_DIAG_MESSAGE_PRIMARY);
    if (primary.empty())
      primary = OneLine(PQresultErrorMessage(result));
    if (gone)
      Break();
    throw DatabaseError(gone ? Kind::kUnavailable : KindOfSqlState(sqlstate), sqlstate,
                        std::move(primary), Field(result, PG_DIAG_MESSAGE_DETAIL),
                        Field(result, PG_DIAG_CONSTRAINT_NAME),
                        Field(result, PG_DIAG_MESSAGE_HINT));
  }

  /// Waits for readiness of the socket; throws kUnavailable when the deadline fired (the
  /// session is then closed) or the wait failed.
  Task<void> Wait(asio::posix::descriptor_base::wait_type type, const OperationState& op,
                  std::string_view what, Duration timeout) {
    if (!op.timed_out && socket) {
      boost::system::error_code ec;
      co_await socket->async_wait(type, asio::redirect_error(asio::use_awaitable, ec));
      if (!op.timed_out && ec)
        throw Lost(fmt::format("waiting for the server failed ({})", ec.message()));
    }
    if (op.timed_out) {
      Break();
      throw StoreError(Kind::kUnavailable, fmt::format("{} timed out after {}", what, Ms(timeout)));
    }
    if (!socket)
      throw Lost("the connection has no socket");
  }
};

namespace {
/// Marks the connection busy for the duration of one operation.
class BusyScope {
 public:
  explicit BusyScope(bool& busy) : busy_(busy) {
    if (busy_)
      throw StoreError(Kind::kInternal,
                       "postgres: the connection is busy with another operation (one at a time)");
    busy_ = true;
  }
  ~BusyScope() { busy_ = false; }
  BusyScope(const BusyScope&) = delete;
  BusyScope& operator=(const BusyScope&) = delete;

 private:
  bool& busy_;
};

/// Arms the deadline of one operation: when it fires, the state records it and the pending
/// socket wait is cancelled. Disarms on destruction; a handler already queued then sees
/// `finished` and touches nothing else.
class DeadlineScope {
 public:
  DeadlineScope(const asio::any_io_executor& executor, Duration timeout,
                std::optional<asio::posix::stream_descriptor>& socket)
      : state_(std::make_shared<OperationState>()), timer_(executor) {
    timer_.expires_after(timeout);
    timer_.async_wait([state = state_, &socket](const boost::system::error_code& ec) {
      if (ec || state->finished)
        return;
      state->timed_out = true;
      if (socket) {
        boost::system::error_code ignored;
        socket->cancel(ignored);
      }
    });
  }
  ~DeadlineScope() {
    state_->finished = true;
    timer_.cancel();
  }
  DeadlineScope(const DeadlineScope&) = delete;
  DeadlineScope& operator=(const DeadlineScope&) = delete;

  const OperationState& state() const { return *state_; }
  Clock::time_point expiry() const { return timer_.expiry(); }

 private:
  std::shared_ptr<OperationState> state_;
  asio::steady_timer timer_;
};
}  // namespace

Connection::Connection(asio::any_io_executor executor)
    : impl_(std::make_unique<Impl>(std::move(executor))) {}

Connection::~Connection() = default;

void Connection::Close() noexcept {
  impl_->Close();
}

bool Connection::connected() const noexcept {
  return impl_->conn && !impl_->broken && PQstatus(impl_->conn.get()) == CONNECTION_OK;
}

bool Connection::broken() const noexcept {
  return impl_->broken;
}

bool Connection::busy() const noexcept {
  return impl_->busy;
}

bool Connection::in_transaction() const noexcept {
  if (!impl_->conn)
    return false;
  const auto status = PQtransactionStatus(impl_->conn.get());
  return status == PQTRANS_INTRANS || status == PQTRANS_INERROR;
}

int Connection::backend_pid() const noexcept {
  return impl_->conn ? PQbackendPID(impl_->conn.get()) : 0;
}

int Connection::server_version() const noexcept {
  return impl_->conn ? PQserverVersion(impl_->conn.get()) : 0;
}

Task<void> Connection::Connect(std::string conninfo, std::optional<std::string> password,
                               Duration timeout) {
  return ConnectImpl(std::move(conninfo), std::move(password), timeout);
}

// Coroutines take their parameters by value: a reference would dangle after a suspension.
// cppcheck-suppress passedByValue
Task<void> Connection::ConnectImpl(std::string conninfo, std::optional<std::string> password,
                                   Duration timeout) {
  Impl& impl = *impl_;
  BusyScope busy(impl.busy);
  impl.Close();
  impl.broken = false;
  HostSettings hosts = ParseHostSettings(conninfo);
  DeadlineScope deadline(impl.executor, timeout, impl.socket);

  // Look host names up off the loop (libpq would call getaddrinfo on it) and hand libpq the
  // addresses as hostaddr, keeping host for authentication and TLS. Each address becomes a
  // host entry of its own, so libpq still tries them in order.
  std::vector<std::pair<const char*, std::string>> overrides;
  if (hosts.hostaddr.empty() && hosts.service.empty() && !hosts.host.empty()) {
    const auto names = SplitList(hosts.host);
    const auto ports = SplitList(hosts.port);
    const bool port_per_host = ports.size() > 1;
    bool any_lookup = false;
    for (const auto& name : names)
      any_lookup = any_lookup || NeedsLookup(name);
    if (any_lookup && (!port_per_host || ports.size() == names.size())) {
      std::vector<std::string> host_list, addr_list, port_list;
      for (std::size_t i = 0; i < names.size(); ++i) {
        std::vector<std::string> addresses{std::string()};
        if (NeedsLookup(names[i])) {
          const std::string& name = names[i];
          addresses = co_await LookUp(impl.executor, name, deadline.expiry(), timeout);
        }
        for (auto& address : addresses) {
          host_list.push_back(names[i]);
          addr_list.push_back(std::move(address));
          if (port_per_host)
            port_list.push_back(ports[i]);
        }
      }
      overrides.emplace_back("host", JoinList(host_list));
      overrides.emplace_back("hostaddr", JoinList(addr_list));
      if (port_per_host)
        overrides.emplace_back("port", JoinList(port_list));
    }
  }

  // Later keywords override what the expanded conninfo (given as dbname) sets.
  std::vector<const char*> keywords{"dbname"};
  std::vector<const char*> values{conninfo.c_str()};
  for (const auto& [keyword, value] : overrides) {
    keywords.push_back(keyword);
    values.push_back(value.c_str());
  }
  if (password) {
    keywords.push_back("password");
    values.push_back(password->c_str());
  }
  keywords.push_back(nullptr);
  values.push_back(nullptr);

  impl.conn.reset(PQconnectStartParams(keywords.data(), values.data(), /*expand_dbname=*/1));
  if (!impl.conn)
    throw StoreError(Kind::kUnavailable, "postgres: connect failed: out of memory");
  // Server notices (RAISE NOTICE, "table does not exist, skipping") would go to stderr.
  PQsetNoticeProcessor(impl.conn.get(), IgnoreNotice, nullptr);
  if (PQstatus(impl.conn.get()) == CONNECTION_BAD) {
    throw impl.Failure("connect failed", false);
  }

  const std::string_view what = "connect";
  // Before the first PQconnectPoll libpq waits for the socket to become writable.
  PostgresPollingStatusType poll = PGRES_POLLING_WRITING;
  while (poll != PGRES_POLLING_OK) {
    if (poll == PGRES_POLLING_FAILED) {
      throw impl.Failure("connect failed", false);
    }
    if (poll == PGRES_POLLING_READING || poll == PGRES_POLLING_WRITING) {
      impl.SyncSocket();
      const auto type = poll == PGRES_POLLING_READING ? asio::posix::descriptor_base::wait_read
                                                      : asio::posix::descriptor_base::wait_write;
      try {
        co_await impl.Wait(type, deadline.state(), what, timeout);
      } catch (const StoreError&) {
        impl.broken = false;  // never connected: nothing to reuse or distrust
        throw;
      }
      impl.ReleaseSocket();  // PQconnectPoll may close it and open another
    }
    poll = PQconnectPoll(impl.conn.get());
  }
  if (PQsetnonblocking(impl.conn.get(), 1) != 0) {
    throw impl.Failure("could not make the connection non-blocking", false);
  }
  impl.SyncSocket();
}

Task<Result> Connection::Execute(std::string_view sql, Params params, Duration timeout) {
  return ExecuteParams(std::string(sql), std::move(params), timeout);
}

Task<std::vector<Result>> Connection::ExecuteScript(std::string_view sql, Duration timeout) {
  return ExecuteSimple(std::string(sql), timeout);
}

// cppcheck-suppress [passedByValue,passedByValue] ; a coroutine's parameters, see ConnectImpl
Task<Result> Connection::ExecuteParams(std::string sql, Params params, Duration timeout) {
  auto results = co_await RunQuery(true, sql, params, timeout);
  if (results.empty())
    co_return Result();
  co_return std::move(results.back());
}

// cppcheck-suppress passedByValue ; a coroutine's parameter, see ConnectImpl
Task<std::vector<Result>> Connection::ExecuteSimple(std::string sql, Duration timeout) {
  const Params none;
  co_return co_await RunQuery(false, sql, none, timeout);
}

Task<std::vector<Result>> Connection::RunQuery(bool with_params, const std::string& sql,
                                               const Params& params, Duration timeout) {
  Impl& impl = *impl_;
  BusyScope busy(impl.busy);
  if (impl.broken)
    throw StoreError(Kind::kUnavailable, "postgres: the connection is broken; reconnect");
  if (!impl.conn)
    throw StoreError(Kind::kUnavailable, "postgres: not connected");

  int sent = 0;
  if (with_params) {
    // The protocol counts parameters in 16 bits.
    if (params.size() > 65535)
      throw StoreError(Kind::kInvalid, "postgres: more than 65535 parameters");
    std::vector<const char*> values;
    values.reserve(params.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
      const auto& param = params[i];
      // Text parameters are C strings: a NUL byte would silently cut the value short.
      if (param && param->find('\0') != std::string::npos)
        throw StoreError(Kind::kInvalid,
                         fmt::format("postgres: parameter ${} contains a NUL byte", i + 1));
      values.push_back(param ? param->c_str() : nullptr);
    }
    sent = PQsendQueryParams(impl.conn.get(), sql.c_str(), static_cast<int>(params.size()), nullptr,
                             values.data(), nullptr, nullptr, /*resultFormat=*/0);
  } else {
    sent = PQsendQuery(impl.conn.get(), sql.c_str());
  }
  impl.SyncSocket();
  if (sent == 0) {
    if (PQstatus(impl.conn.get()) == CONNECTION_BAD)
      throw impl.Lost("sending the query failed");
    throw StoreError(Kind::kInternal,
                     "postgres: sending the query failed: " + ConnectionMessage(impl.conn.get()));
  }

  DeadlineScope deadline(impl.executor, timeout, impl.socket);
  const std::string_view what = "query";

  // Send what libpq buffered. Waiting for writability alone is enough here: input is drained
  // before each wait, and the server does not produce more than a few bytes of output before
  // it has read the whole query.
  for (;;) {
    const int flushed = PQflush(impl.conn.get());
    impl.SyncSocket();
    if (flushed == 0)
      break;
    if (flushed < 0)
      throw impl.Lost("sending the query failed");
    const int consumed = PQconsumeInput(impl.conn.get());
    impl.SyncSocket();
    if (consumed == 0)
      throw impl.Lost("sending the query failed");
    co_await impl.Wait(asio::posix::descriptor_base::wait_write, deadline.state(), what, timeout);
  }

  // Collect every result until PQgetResult says the query is over. A lost connection still
  // yields the results read before it (e.g. the 57P01 error a terminated backend sends).
  std::vector<Result> results;
  bool lost = false;
  for (;;) {
    if (PQconsumeInput(impl.conn.get()) == 0)
      lost = true;
    impl.SyncSocket();
    // libpq keeps the socket after some read errors; PQgetResult would then poll(2) on it.
    if (lost && PQsocket(impl.conn.get()) >= 0)
      break;
    bool done = false;
    while (lost || PQisBusy(impl.conn.get()) == 0) {
      PGresult* raw = PQgetResult(impl.conn.get());
      impl.SyncSocket();
      if (raw == nullptr) {
        done = true;
        break;
      }
      results.push_back(Result(raw));
      const auto status = PQresultStatus(raw);
      if (status == PGRES_COPY_IN || status == PGRES_COPY_OUT || status == PGRES_COPY_BOTH) {
        impl.Break();
        throw StoreError(Kind::kInternal, "postgres: COPY is not supported by this connection");
      }
      // After a lost connection libpq reports an error once and then no more results.
      if (lost && results.size() > 1000)
        break;
    }
    if (done || lost)
      break;
    co_await impl.Wait(asio::posix::descriptor_base::wait_read, deadline.state(), what, timeout);
  }

  for (const auto& result : results) {
    if (IsErrorStatus(PQresultStatus(result.result_.get())))
      impl.ThrowErrorOf(result.result_.get(), lost);
  }
  if (lost || PQstatus(impl.conn.get()) == CONNECTION_BAD)
    throw impl.Lost("the connection was lost");
  co_return results;
}

}  // namespace warp::store::postgres
