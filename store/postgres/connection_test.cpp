// Tests of the non-blocking libpq layer against a real PostgreSQL: the DSN comes from
// WARP_TEST_DSN (scripts/test-postgres.sh sets it up); without it every test here fails.
#include "store/postgres/connection.hpp"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdlib>
#include <functional>

#include "tests/support/async.hpp"

namespace warp::store::postgres {
namespace {

using namespace std::chrono_literals;
using Kind = StoreError::Kind;
using Clock = std::chrono::steady_clock;

std::string TestDsn() {
  const char* dsn = std::getenv("WARP_TEST_DSN");
  return dsn != nullptr ? std::string(dsn) : std::string();
}

/// The value of `key` in a `key=value ...` conninfo without quoting (what the test script
/// writes), or empty.
std::string DsnValue(const std::string& dsn, const std::string& key) {
  std::size_t start = 0;
  while (start < dsn.size()) {
    const auto end = std::min(dsn.find(' ', start), dsn.size());
    const auto word = dsn.substr(start, end - start);
    if (word.rfind(key + "=", 0) == 0)
      return word.substr(key.size() + 1);
    start = end + 1;
  }
  return {};
}

/// Runs `task` and returns the StoreError it throws; fails the test if it throws none.
template <typename T>
StoreError AwaitError(boost::asio::io_context& io, Task<T> task) {
  try {
    test::Await(io, std::move(task));
  } catch (const StoreError& e) {
    return e;
  }
  ADD_FAILURE() << "expected a StoreError";
  return StoreError(Kind::kInternal, "none thrown");
}

std::string KindName(Kind kind) {
  switch (kind) {
    case Kind::kUnavailable:
      return "kUnavailable";
    case Kind::kInvalid:
      return "kInvalid";
    case Kind::kConflict:
      return "kConflict";
    case Kind::kNotFound:
      return "kNotFound";
    case Kind::kInternal:
      return "kInternal";
  }
  return "?";
}

// --- array literals without a server -------------------------------------------------

TEST(ArrayLiteralTest, QuotesEveryElementAndEscapesBackslashesAndQuotes) {
  EXPECT_EQ(ArrayLiteral(std::vector<std::string>{}), "{}");
  EXPECT_EQ(ArrayLiteral(std::vector<std::string>{"a", "b,c", "say \"hi\"", "C:\\x", "NULL"}),
            R"({"a","b,c","say \"hi\"","C:\\x","NULL"})");
  EXPECT_EQ(ArrayLiteral(std::vector<std::optional<std::string>>{"x", std::nullopt}),
            R"({"x",NULL})");
  EXPECT_EQ(ArrayLiteral(std::vector<std::int64_t>{1, -2, INT64_MIN}),
            "{1,-2,-9223372036854775808}");
}

TEST(ArrayLiteralTest, ParsesServerOutputAndRejectsMalformedText) {
  using V = std::vector<std::optional<std::string>>;
  EXPECT_EQ(ParseArrayLiteral("{}"), V{});
  EXPECT_EQ(ParseArrayLiteral("{a,b}"), (V{"a", "b"}));
  EXPECT_EQ(ParseArrayLiteral(R"({"a b",NULL,"NULL",null,""})"),
            (V{"a b", std::nullopt, "NULL", std::nullopt, ""}));
  EXPECT_EQ(ParseArrayLiteral(R"({"q\"uote","back\\slash"})"), (V{"q\"uote", "back\\slash"}));
  EXPECT_EQ(ParseArrayLiteral("[0:1]={7,8}"), (V{"7", "8"}));
  EXPECT_EQ(ParseArrayLiteral("{ x , y }"), (V{"x", "y"}));
  for (const char* bad : {"", "{", "{a", "{a,}", "{{1},{2}}", "{\"a}", "{a} x", "a"}) {
    try {
      ParseArrayLiteral(bad);
      ADD_FAILURE() << "accepted: " << bad;
    } catch (const StoreError& e) {
      EXPECT_EQ(e.kind(), Kind::kInternal) << bad;
    }
  }
}

TEST(SqlStateTest, MapsClassesToKinds) {
  EXPECT_EQ(KindOfSqlState("23505"), Kind::kConflict);
  EXPECT_EQ(KindOfSqlState("23503"), Kind::kInvalid);
  EXPECT_EQ(KindOfSqlState("22012"), Kind::kInvalid);
  EXPECT_EQ(KindOfSqlState("P0001"), Kind::kInvalid);
  EXPECT_EQ(KindOfSqlState("P0002"), Kind::kNotFound);
  EXPECT_EQ(KindOfSqlState("08006"), Kind::kUnavailable);
  EXPECT_EQ(KindOfSqlState("57P01"), Kind::kUnavailable);
  EXPECT_EQ(KindOfSqlState("40001"), Kind::kUnavailable);
  EXPECT_EQ(KindOfSqlState("42601"), Kind::kInternal);
  EXPECT_TRUE(SqlStateBreaksConnection("57P01"));
  EXPECT_TRUE(SqlStateBreaksConnection("08003"));
  EXPECT_FALSE(SqlStateBreaksConnection("40001"));
}

// --- against the server ----------------------------------------------------------------

class PgTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dsn_ = TestDsn();
    ASSERT_FALSE(dsn_.empty())
        << "WARP_TEST_DSN is not set: these tests need a PostgreSQL server. Run them with "
           "`scripts/test-postgres.sh run <test binary>` or export a libpq conninfo in "
           "WARP_TEST_DSN.";
  }

  std::unique_ptr<Connection> Connect() {
    auto connection = std::make_unique<Connection>(io_.get_executor());
    test::Await(io_, connection->Connect(dsn_, std::nullopt, 5s));
    return connection;
  }

  Result Query(Connection& connection, std::string_view sql, Params params = {},
               Duration timeout = 5s) {
    return test::Await(io_, connection.Execute(sql, std::move(params), timeout));
  }

  PoolSettings Settings(std::size_t size) const {
    PoolSettings settings;
    settings.conninfo = dsn_;
    settings.size = size;
    return settings;
  }

  /// A conninfo for the test server over TCP by host name (the test script listens on
  /// 127.0.0.1 as well as on its socket directory).
  std::string TcpDsnByName(const std::string& host_list, const std::string& port_list) const {
    return "host=" + host_list + " port=" + port_list + " user=" + DsnValue(dsn_, "user") +
           " dbname=" + DsnValue(dsn_, "dbname");
  }
  std::string TcpHost() const {
    const auto host = DsnValue(dsn_, "host");
    return host.empty() || host.front() == '/' ? "localhost" : host;
  }
  std::string Port() const {
    const auto port = DsnValue(dsn_, "port");
    return port.empty() ? "5432" : port;
  }

  /// A TCP port on 127.0.0.1 nobody listens on.
  static unsigned short ClosedPort() {
    boost::asio::io_context io;
    boost::asio::ip::tcp::acceptor acceptor(
        io, boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0));
    return acceptor.local_endpoint().port();
  }

  // Coroutines of the tests (member functions: GCC 12 mishandles coroutine lambdas).

  Task<void> AcquireInTurn(Pool& pool, int id, std::vector<int>& order) {
    Lease lease = co_await pool.Acquire(5s);
    order.push_back(id);
    Params params{std::to_string(id)};
    auto result = co_await lease->Execute("SELECT $1::int AS id", std::move(params), 5s);
    EXPECT_EQ(result.GetInt64(0, "id"), id);
  }

  Task<void> QueryThroughPool(Pool& pool, int i, int& completed) {
    Lease lease = co_await pool.Acquire(30s);
    Params params{std::to_string(i)};
    auto result = co_await lease->Execute("SELECT $1::int * 2 AS twice", std::move(params), 10s);
    EXPECT_EQ(result.GetInt64(0, 0), 2 * i);
    ++completed;
  }

  Task<Result> QueryOnLease(Pool& pool, std::string sql, Duration timeout) {
    Lease lease = co_await pool.Acquire(5s);
    Params none;
    co_return co_await lease->Execute(sql, std::move(none), timeout);
  }

  Task<int> PidOnLease(Pool& pool) {
    Lease lease = co_await pool.Acquire(5s);
    co_return lease->backend_pid();
  }

  void Tick(boost::asio::steady_timer& timer, int& ticks, bool& stop) {
    timer.expires_after(10ms);
    timer.async_wait([this, &timer, &ticks, &stop](const boost::system::error_code& ec) {
      if (ec || stop)
        return;
      ++ticks;
      Tick(timer, ticks, stop);
    });
  }

  bool BackendAlive(Connection& observer, int pid) {
    Params params{std::to_string(pid)};
    auto result = Query(observer, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int",
                        std::move(params));
    return result.GetInt64(0, 0) > 0;
  }

  boost::asio::io_context io_;
  std::string dsn_;
};

TEST_F(PgTest, ConnectsAndRunsASimpleQuery) {
  auto connection = Connect();
  EXPECT_TRUE(connection->connected());
  EXPECT_FALSE(connection->broken());
  EXPECT_GT(connection->backend_pid(), 0);
  EXPECT_GE(connection->server_version(), 90600);
  auto result = Query(*connection, "SELECT 1 AS one, 'two' AS two, true AS yes, NULL::int AS nil");
  ASSERT_EQ(result.rows(), 1);
  ASSERT_EQ(result.columns(), 4);
  EXPECT_EQ(result.GetInt64(0, "one"), 1);
  EXPECT_EQ(result.GetString(0, "two"), "two");
  EXPECT_TRUE(result.GetBool(0, "yes"));
  EXPECT_TRUE(result.IsNull(0, "nil"));
  EXPECT_EQ(result.Get(0, 3), std::nullopt);
  EXPECT_EQ(result.GetOptionalInt64(0, "nil"), std::nullopt);
  EXPECT_EQ(result.ColumnName(1), "two");
  EXPECT_EQ(result.FindColumn("missing"), std::nullopt);
  EXPECT_THROW(result.GetInt64(0, "two"), StoreError);
  EXPECT_THROW(result.GetInt64(0, "nil"), StoreError);
  EXPECT_THROW(result.Get(1, 0), StoreError);
  EXPECT_THROW(result.Column("missing"), StoreError);
  EXPECT_EQ(result.command_tag(), "SELECT 1");
  EXPECT_FALSE(connection->in_transaction());
}

TEST_F(PgTest, ParametersRoundTripNullsUnicodeAndQuotes) {
  auto connection = Connect();
  const std::string unicode = "Grüße, 世界 🚀 — ünïcödé";
  const std::string quotes = R"(it's "quoted"; back\slash \\ $1 ' -- /* not a comment */)";
  Params params{std::nullopt, unicode, quotes, "-9223372036854775808", "", "f"};
  auto result = Query(*connection,
                      "SELECT $1::text AS a, $2::text AS b, $3::text AS c, $4::bigint AS d, "
                      "$5::text AS e, $6::bool AS f, $1::text IS NULL AS a_is_null, "
                      "length($2::text) AS b_chars",
                      std::move(params));
  ASSERT_EQ(result.rows(), 1);
  EXPECT_TRUE(result.IsNull(0, "a"));
  EXPECT_EQ(result.GetString(0, "b"), unicode);
  EXPECT_EQ(result.GetString(0, "c"), quotes);
  EXPECT_EQ(result.GetInt64(0, "d"), INT64_MIN);
  EXPECT_EQ(result.Get(0, "e"), std::optional<std::string_view>(""));
  EXPECT_FALSE(result.GetBool(0, "f"));
  EXPECT_TRUE(result.GetBool(0, "a_is_null"));
  EXPECT_EQ(result.GetInt64(0, "b_chars"), 21);
}

TEST_F(PgTest, ArrayLiteralsRoundTripThroughTheServer) {
  auto connection = Connect();
  const std::vector<std::string> nasty{
      "plain", "a,b", "{braces}", R"(say "hi")", R"(C:\dir\)", "\\",      "\"",    "NULL",
      "null",  "",    " padded ", "tab\there",   "new\nline",  "ünïcödé", "(1,2)", "'single'"};
  {
    Params params{ArrayLiteral(nasty)};
    auto result = Query(*connection,
                        "SELECT $1::text[] AS a, cardinality($1::text[]) AS n, "
                        "$1::text[] @> ARRAY['NULL'] AS has_null_string, "
                        "array_position($1::text[], NULL) IS NULL AS no_null_element",
                        std::move(params));
    EXPECT_EQ(result.GetStringArray(0, "a"), nasty);
    EXPECT_EQ(result.GetInt64(0, "n"), static_cast<std::int64_t>(nasty.size()));
    EXPECT_TRUE(result.GetBool(0, "has_null_string"));
    EXPECT_TRUE(result.GetBool(0, "no_null_element"));
  }
  {
    // Element by element on the server side too, independent of ParseArrayLiteral.
    Params params{ArrayLiteral(nasty)};
    auto result = Query(*connection,
                        "SELECT v FROM unnest($1::text[]) WITH ORDINALITY AS u(v, i) "
                        "ORDER BY i",
                        std::move(params));
    ASSERT_EQ(result.rows(), static_cast<int>(nasty.size()));
    for (int i = 0; i < result.rows(); ++i)
      EXPECT_EQ(result.GetString(i, 0), nasty[static_cast<std::size_t>(i)]);
  }
  {
    const std::vector<std::optional<std::string>> with_nulls{"x", std::nullopt, "NULL", ""};
    Params params{ArrayLiteral(with_nulls)};
    auto result = Query(*connection, "SELECT $1::text[]", std::move(params));
    EXPECT_EQ(ParseArrayLiteral(*result.Get(0, 0)), with_nulls);
    EXPECT_THROW(result.GetStringArray(0, 0), StoreError);
  }
  {
    const std::vector<std::int64_t> numbers{0, 1, -1, INT64_MAX, INT64_MIN};
    Params params{ArrayLiteral(numbers), ArrayLiteral(std::vector<std::int64_t>{})};
    auto result =
        Query(*connection, "SELECT $1::bigint[] AS a, $2::bigint[] AS e", std::move(params));
    EXPECT_EQ(result.GetInt64Array(0, "a"), numbers);
    EXPECT_TRUE(result.GetInt64Array(0, "e").empty());
  }
}

TEST_F(PgTest, ServerErrorsAreTypedAndLeaveTheConnectionUsable) {
  auto connection = Connect();
  Query(*connection, "CREATE TEMP TABLE things (id int PRIMARY KEY, n int CHECK (n > 0))");
  Query(*connection, "INSERT INTO things VALUES (1, 1)");
  struct Case {
    std::string sql;
    Kind kind;
    std::string sqlstate;
  };
  const std::vector<Case> cases{
      {"INSERT INTO things VALUES (1, 1)", Kind::kConflict, "23505"},
      {"SELECT 1 / 0", Kind::kInvalid, "22012"},
      {"INSERT INTO things VALUES (2, -1)", Kind::kInvalid, "23514"},
      {"SELEC 1", Kind::kInternal, "42601"},
      {"SELECT * FROM no_such_table", Kind::kInternal, "42P01"},
      {"DO $$ BEGIN RAISE EXCEPTION 'bad slug'; END $$", Kind::kInvalid, "P0001"},
      {"DO $$ BEGIN RAISE EXCEPTION 'no agent' USING ERRCODE = 'no_data_found'; END $$",
       Kind::kNotFound, "P0002"},
  };
  for (const auto& c : cases) {
    Params none;
    const auto error = AwaitError(io_, connection->Execute(c.sql, std::move(none), 5s));
    EXPECT_EQ(KindName(error.kind()), KindName(c.kind)) << c.sql << ": " << error.what();
    const std::string message = error.what();
    EXPECT_EQ(message.rfind("postgres: " + c.sqlstate + " ", 0), 0u) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    EXPECT_FALSE(connection->broken()) << c.sql;
  }
  try {
    Params params;
    test::Await(io_,
                connection->Execute("INSERT INTO things VALUES (1, 1)", std::move(params), 5s));
    ADD_FAILURE() << "no error";
  } catch (const DatabaseError& e) {
    EXPECT_EQ(e.sqlstate(), "23505");
    EXPECT_EQ(e.constraint(), "things_pkey");
    EXPECT_NE(e.detail().find("already exists"), std::string::npos);
  }
  EXPECT_EQ(Query(*connection, "SELECT count(*) FROM things").GetInt64(0, 0), 1);
}

TEST_F(PgTest, TheServersHintIsPartOfTheMessageAndTheDetailIsNot) {
  auto connection = Connect();
  Params none;
  auto error =
      AwaitError(io_, connection->Execute("SELECT no_such_function(1)", std::move(none), 5s));
  EXPECT_EQ(std::string(error.what()),
            "postgres: 42883 function no_such_function(integer) does not exist (hint: No "
            "function matches the given name and argument types. You might need to add "
            "explicit type casts.)");
  // A DETAIL may quote row values: it stays out of the message.
  Query(*connection, "CREATE TEMP TABLE secrets (v text PRIMARY KEY)");
  Query(*connection, "INSERT INTO secrets VALUES ('s3cret')");
  Params again;
  error = AwaitError(
      io_, connection->Execute("INSERT INTO secrets VALUES ('s3cret')", std::move(again), 5s));
  EXPECT_EQ(std::string(error.what()).find("s3cret"), std::string::npos) << error.what();
}

TEST_F(PgTest, ScriptsRunInOneRoundTripAllOrNothing) {
  auto connection = Connect();
  auto results = test::Await(
      io_, connection->ExecuteScript("CREATE TEMP TABLE s (x int); INSERT INTO s VALUES (1), (2); "
                                     "SELECT count(*) FROM s",
                                     5s));
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[1].affected_rows(), 2);
  EXPECT_EQ(results[2].GetInt64(0, 0), 2);
  const auto error =
      AwaitError(io_, connection->ExecuteScript("INSERT INTO s VALUES (3); SELECT 1 / 0", 5s));
  EXPECT_EQ(error.kind(), Kind::kInvalid);
  EXPECT_FALSE(connection->broken());
  EXPECT_EQ(Query(*connection, "SELECT count(*) FROM s").GetInt64(0, 0), 2);
}

TEST_F(PgTest, BadParametersAreRejectedBeforeSending) {
  auto connection = Connect();
  Params params{std::string("nul\0byte", 8)};
  const auto error = AwaitError(io_, connection->Execute("SELECT $1::text", std::move(params), 5s));
  EXPECT_EQ(error.kind(), Kind::kInvalid);
  EXPECT_TRUE(connection->connected());
}

TEST_F(PgTest, LargeParametersAreFlushedWithoutBlocking) {
  auto connection = Connect();
  const std::string big(8 * 1024 * 1024, 'x');
  auto result = Query(*connection, "SELECT length($1::text), md5($1::text) = md5(repeat('x', $2))",
                      {big, std::to_string(big.size())}, 30s);
  EXPECT_EQ(result.GetInt64(0, 0), static_cast<std::int64_t>(big.size()));
  EXPECT_TRUE(result.GetBool(0, 1));
  auto echoed = Query(*connection, "SELECT $1::text", {big}, 30s);
  EXPECT_EQ(echoed.GetString(0, 0).size(), big.size());
}

TEST_F(PgTest, ADeadlineClosesTheConnectionAndThrowsUnavailable) {
  auto connection = Connect();
  const auto started = Clock::now();
  Params none;
  const auto error =
      AwaitError(io_, connection->Execute("SELECT pg_sleep(5)", std::move(none), 200ms));
  const auto elapsed = Clock::now() - started;
  EXPECT_EQ(error.kind(), Kind::kUnavailable);
  EXPECT_EQ(std::string(error.what()), "query timed out after 200ms");
  EXPECT_GE(elapsed, 190ms);
  EXPECT_LT(elapsed, 1s);
  EXPECT_TRUE(connection->broken());
  EXPECT_FALSE(connection->connected());
  Params again;
  EXPECT_EQ(AwaitError(io_, connection->Execute("SELECT 1", std::move(again), 1s)).kind(),
            Kind::kUnavailable);
  // Reconnecting makes it usable again.
  test::Await(io_, connection->Connect(dsn_, std::nullopt, 5s));
  EXPECT_FALSE(connection->broken());
  EXPECT_EQ(Query(*connection, "SELECT 42").GetInt64(0, 0), 42);
}

TEST_F(PgTest, APoolRecoversFromADeadlineAndTheServerDropsTheStatement) {
  auto settings = Settings(1);
  // The server notices the closed client socket within 100ms instead of at the next write.
  settings.session_setup = "SET client_connection_check_interval = 100";
  Pool pool(io_.get_executor(), settings, logging::Logger());
  const int pid = test::Await(io_, PidOnLease(pool));
  const auto error = AwaitError(io_, QueryOnLease(pool, "SELECT pg_sleep(5)", 200ms));
  EXPECT_EQ(error.kind(), Kind::kUnavailable);
  auto result = test::Await(io_, QueryOnLease(pool, "SELECT 7", 5s));
  EXPECT_EQ(result.GetInt64(0, 0), 7);
  const auto stats = pool.stats();
  EXPECT_EQ(stats.connects, 2u);
  EXPECT_EQ(stats.broken_returned, 1u);
  EXPECT_FALSE(stats.outage.has_value());

  auto observer = Connect();
  const auto deadline = Clock::now() + 3s;
  while (BackendAlive(*observer, pid) && Clock::now() < deadline)
    test::RunFor(io_, 50ms);
  EXPECT_FALSE(BackendAlive(*observer, pid)) << "the abandoned backend still runs";
}

TEST_F(PgTest, ATerminatedBackendIsUnavailableAndBrokenAndThePoolReconnects) {
  auto killer = Connect();
  {
    auto victim = Connect();
    Params pid{std::to_string(victim->backend_pid())};
    EXPECT_TRUE(
        Query(*killer, "SELECT pg_terminate_backend($1::int, 5000)", std::move(pid)).GetBool(0, 0));
    Params none;
    const auto error = AwaitError(io_, victim->Execute("SELECT 1", std::move(none), 5s));
    EXPECT_EQ(error.kind(), Kind::kUnavailable) << error.what();
    EXPECT_TRUE(victim->broken());
    EXPECT_FALSE(victim->connected());
  }

  auto log_lines = std::make_shared<std::vector<std::string>>();
  Pool pool(io_.get_executor(), Settings(1),
            logging::MakeCaptureLogger(log_lines, logging::Format::kText));
  const int first_pid = test::Await(io_, PidOnLease(pool));
  Params pid{std::to_string(first_pid)};
  EXPECT_TRUE(
      Query(*killer, "SELECT pg_terminate_backend($1::int, 5000)", std::move(pid)).GetBool(0, 0));
  const auto error = AwaitError(io_, QueryOnLease(pool, "SELECT 1", 5s));
  EXPECT_EQ(error.kind(), Kind::kUnavailable) << error.what();
  const int second_pid = test::Await(io_, PidOnLease(pool));
  EXPECT_NE(second_pid, first_pid);
  EXPECT_EQ(test::Await(io_, QueryOnLease(pool, "SELECT 5", 5s)).GetInt64(0, 0), 5);
  EXPECT_EQ(pool.stats().connects, 2u);
  EXPECT_EQ(pool.stats().broken_returned, 1u);
  ASSERT_FALSE(log_lines->empty());
  EXPECT_NE(log_lines->back().find("returned broken"), std::string::npos) << log_lines->back();
}

TEST_F(PgTest, AClosedPortIsUnavailableWithinTheTimeout) {
  Connection connection(io_.get_executor());
  const auto port = ClosedPort();
  const auto started = Clock::now();
  const auto error = AwaitError(
      io_, connection.Connect("host=127.0.0.1 port=" + std::to_string(port) + " user=postgres",
                              std::nullopt, 2s));
  EXPECT_EQ(error.kind(), Kind::kUnavailable);
  EXPECT_LT(Clock::now() - started, 2s);
  EXPECT_NE(std::string(error.what()).find("connect failed"), std::string::npos) << error.what();
  EXPECT_FALSE(connection.connected());
  EXPECT_FALSE(connection.broken());
}

TEST_F(PgTest, AServerThatNeverAnswersTimesOut) {
  // Accepts TCP connections (the kernel completes the handshake) but never speaks.
  boost::asio::ip::tcp::acceptor silent(
      io_, boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0));
  const auto port = silent.local_endpoint().port();
  Connection connection(io_.get_executor());
  const auto started = Clock::now();
  const auto error = AwaitError(
      io_, connection.Connect("host=127.0.0.1 port=" + std::to_string(port) + " user=postgres",
                              std::nullopt, 300ms));
  const auto elapsed = Clock::now() - started;
  EXPECT_EQ(error.kind(), Kind::kUnavailable);
  EXPECT_EQ(std::string(error.what()), "connect timed out after 300ms");
  EXPECT_GE(elapsed, 290ms);
  EXPECT_LT(elapsed, 1s);
}

TEST_F(PgTest, HostNamesAreResolvedAndLaterHostsTriedWithAFreshSocket) {
  // The first entry refuses; libpq moves on to the second with a new socket.
  const auto closed = std::to_string(ClosedPort());
  Connection connection(io_.get_executor());
  test::Await(io_,
              connection.Connect(TcpDsnByName(TcpHost() + "," + TcpHost(), closed + "," + Port()),
                                 std::nullopt, 5s));
  EXPECT_EQ(Query(connection, "SELECT 3").GetInt64(0, 0), 3);
  const auto error = AwaitError(
      io_, connection.Connect("host=no-such-host.invalid user=postgres", std::nullopt, 5s));
  EXPECT_EQ(error.kind(), Kind::kUnavailable);
}

TEST_F(PgTest, AMalformedConninfoIsInvalid) {
  Connection connection(io_.get_executor());
  const auto error =
      AwaitError(io_, connection.Connect("host=x no_such_option=1", std::nullopt, 1s));
  EXPECT_EQ(error.kind(), Kind::kInvalid);
}

TEST_F(PgTest, TheEventLoopKeepsRunningWhileAQueryWaits) {
  auto connection = Connect();
  boost::asio::steady_timer timer(io_);
  int ticks = 0;
  bool stop = false;
  Tick(timer, ticks, stop);
  Query(*connection, "SELECT pg_sleep(0.3)");
  stop = true;
  timer.cancel();
  EXPECT_GE(ticks, 15) << "timers starved while the query ran";
}

TEST_F(PgTest, OneOperationAtATimePerConnection) {
  auto connection = Connect();
  int completed = 0;
  Params first;
  auto sleeper = connection->Execute("SELECT pg_sleep(0.1)", std::move(first), 5s);
  boost::asio::co_spawn(io_, std::move(sleeper), [&](std::exception_ptr e, Result) {
    EXPECT_FALSE(e);
    ++completed;
  });
  test::RunFor(io_, 20ms);
  Params second;
  const auto error = AwaitError(io_, connection->Execute("SELECT 1", std::move(second), 5s));
  EXPECT_EQ(error.kind(), Kind::kInternal);
  while (completed == 0)
    test::RunFor(io_, 20ms);
  EXPECT_EQ(Query(*connection, "SELECT 1").GetInt64(0, 0), 1);
}

TEST_F(PgTest, PoolWaitersAreServedInArrivalOrderWhenLeasesAreDestroyed) {
  Pool pool(io_.get_executor(), Settings(1), logging::Logger());
  std::vector<int> order;
  int done = 0;
  {
    Lease held = test::Await(io_, pool.Acquire(5s));
    ASSERT_TRUE(held);
    EXPECT_EQ(pool.stats().leased, 1u);
    const auto error = AwaitError(io_, pool.Acquire(50ms));
    EXPECT_EQ(error.kind(), Kind::kUnavailable);
    EXPECT_NE(std::string(error.what()).find("no free connection within 50ms"), std::string::npos)
        << error.what();
    for (int id = 1; id <= 3; ++id) {
      auto waiter = AcquireInTurn(pool, id, order);
      boost::asio::co_spawn(io_, std::move(waiter), [&](std::exception_ptr e) {
        EXPECT_FALSE(e);
        ++done;
      });
      test::RunFor(io_, 5ms);  // arrive one after the other
    }
    EXPECT_EQ(pool.stats().waiting, 3u);
    EXPECT_TRUE(order.empty());
  }  // `held` goes back here
  const auto deadline = Clock::now() + 10s;
  while (done < 3 && Clock::now() < deadline)
    test::RunFor(io_, 10ms);
  EXPECT_EQ(done, 3);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
  const auto stats = pool.stats();
  EXPECT_EQ(stats.waiting, 0u);
  EXPECT_EQ(stats.leased, 0u);
  EXPECT_EQ(stats.idle_connected, 1u);
  EXPECT_EQ(stats.connects, 1u);
}

TEST_F(PgTest, TwoHundredConcurrentQueriesOverAPoolOfTwoAllComplete) {
  Pool pool(io_.get_executor(), Settings(2), logging::Logger());
  int completed = 0;
  int failed = 0;
  for (int i = 0; i < 200; ++i) {
    auto query = QueryThroughPool(pool, i, completed);
    boost::asio::co_spawn(io_, std::move(query), [&](std::exception_ptr e) {
      if (e)
        ++failed;
    });
  }
  const auto deadline = Clock::now() + 30s;
  while (completed + failed < 200 && Clock::now() < deadline)
    test::RunFor(io_, 10ms);
  EXPECT_EQ(completed, 200);
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(pool.stats().connects, 2u);
  EXPECT_EQ(pool.stats().size, 2u);
}

TEST_F(PgTest, ALeaseReturnedInsideATransactionIsRolledBack) {
  auto setup = Connect();
  Query(*setup, "DROP TABLE IF EXISTS pg_connection_test_tx");
  Query(*setup, "CREATE TABLE pg_connection_test_tx (x int)");
  Pool pool(io_.get_executor(), Settings(1), logging::Logger());
  {
    Lease lease = test::Await(io_, pool.Acquire(5s));
    Query(*lease, "BEGIN");
    Query(*lease, "INSERT INTO pg_connection_test_tx VALUES (1)");
    EXPECT_TRUE(lease->in_transaction());
  }  // given back mid-transaction: closed, so the server rolls back
  EXPECT_EQ(test::Await(io_, QueryOnLease(pool, "SELECT count(*) FROM pg_connection_test_tx", 5s))
                .GetInt64(0, 0),
            0);
  EXPECT_EQ(pool.stats().connects, 2u);
  Query(*setup, "DROP TABLE pg_connection_test_tx");
}

TEST_F(PgTest, APoolBacksOffWhileTheServerIsUnreachableAndReportsTheOutage) {
  auto settings = Settings(2);
  settings.conninfo = "host=127.0.0.1 user=postgres port=" + std::to_string(ClosedPort());
  auto log_lines = std::make_shared<std::vector<std::string>>();
  Pool pool(io_.get_executor(), settings,
            logging::MakeCaptureLogger(log_lines, logging::Format::kText));
  const auto started = Clock::now();
  const auto error = AwaitError(io_, pool.Acquire(1s));
  EXPECT_LT(Clock::now() - started, 1100ms);
  EXPECT_EQ(error.kind(), Kind::kUnavailable);
  EXPECT_NE(std::string(error.what()).find("postgres unreachable"), std::string::npos)
      << error.what();
  const auto stats = pool.stats();
  // Attempts at about 0, 100, 300 and 700ms; the next (1500ms) lies past the deadline.
  EXPECT_GE(stats.failed_connects, 3u);
  EXPECT_LE(stats.failed_connects, 5u);
  ASSERT_TRUE(stats.outage.has_value());
  EXPECT_EQ(stats.outage->failed_connects, stats.failed_connects);
  EXPECT_LE(stats.outage->since, Clock::now());
  EXPECT_NE(stats.outage->last_error.find("connect failed"), std::string::npos);
  EXPECT_EQ(stats.connects, 0u);
  EXPECT_EQ(stats.leased, 0u);
  ASSERT_EQ(log_lines->size(), 1u) << "the same failure is logged once per 30s";
  EXPECT_NE(log_lines->front().find("postgres connect failed"), std::string::npos);
}

TEST_F(PgTest, APoolReportsTheEndOfAnOutage) {
  auto setup = Connect();
  Query(*setup, "DROP TABLE IF EXISTS pg_connection_test_probe");
  auto settings = Settings(1);
  settings.backoff_initial = 20ms;
  // The session setup fails until the table exists: a stand-in for an unreachable server.
  settings.session_setup = "SELECT * FROM pg_connection_test_probe";
  auto log_lines = std::make_shared<std::vector<std::string>>();
  Pool pool(io_.get_executor(), settings,
            logging::MakeCaptureLogger(log_lines, logging::Format::kText));
  EXPECT_EQ(AwaitError(io_, pool.Acquire(100ms)).kind(), Kind::kUnavailable);
  ASSERT_TRUE(pool.stats().outage.has_value());
  Query(*setup, "CREATE TABLE pg_connection_test_probe (x int)");
  EXPECT_TRUE(test::Await(io_, pool.Acquire(2s)));
  EXPECT_FALSE(pool.stats().outage.has_value());
  EXPECT_EQ(pool.stats().connects, 1u);
  ASSERT_FALSE(log_lines->empty());
  EXPECT_NE(log_lines->back().find("postgres reachable again"), std::string::npos)
      << log_lines->back();
  Query(*setup, "DROP TABLE pg_connection_test_probe");
}

TEST_F(PgTest, AConnectCutShortByTheCallersDeadlineDoesNotDelayTheNextOne) {
  auto settings = Settings(1);
  settings.connect_timeout = 3s;
  settings.backoff_initial = 10s;  // a counted failure would fail the next Acquire at once
  // Connecting takes at least 300ms: longer than the first caller waits.
  settings.session_setup = "SELECT pg_sleep(0.3)";
  auto log_lines = std::make_shared<std::vector<std::string>>();
  Pool pool(io_.get_executor(), settings,
            logging::MakeCaptureLogger(log_lines, logging::Format::kText));
  EXPECT_EQ(AwaitError(io_, pool.Acquire(50ms)).kind(), Kind::kUnavailable);
  EXPECT_EQ(pool.stats().failed_connects, 0u);
  EXPECT_FALSE(pool.stats().outage.has_value());
  EXPECT_TRUE(test::Await(io_, pool.Acquire(5s))) << "the next caller connects at once";
  EXPECT_EQ(pool.stats().connects, 1u);
  for (const auto& line : *log_lines)
    EXPECT_EQ(line.find("connect failed"), std::string::npos) << "not a failure: " << line;
}

TEST_F(PgTest, DestroyingThePoolFailsWaitersAndLeasesOutliveIt) {
  auto pool = std::make_unique<Pool>(io_.get_executor(), Settings(1), logging::Logger());
  Lease lease = test::Await(io_, pool->Acquire(5s));
  std::exception_ptr waiter_error;
  bool waiter_done = false;
  boost::asio::co_spawn(io_, pool->Acquire(5s), [&](std::exception_ptr e, Lease) {
    waiter_error = e;
    waiter_done = true;
  });
  test::RunFor(io_, 10ms);
  pool.reset();
  while (!waiter_done)
    test::RunFor(io_, 10ms);
  ASSERT_TRUE(waiter_error);
  try {
    std::rethrow_exception(waiter_error);
  } catch (const StoreError& e) {
    EXPECT_EQ(e.kind(), Kind::kUnavailable);
  }
  EXPECT_EQ(Query(*lease, "SELECT 9").GetInt64(0, 0), 9);
  lease.Release();
  EXPECT_FALSE(lease);
}

TEST_F(PgTest, DestroyingTheLoopWithAQueryInFlightIsSafe) {
  // The coroutine frames (holding a Lease and a suspended query) are destroyed with the
  // io_context, after the Pool; nothing may touch freed memory (run under WARP_SANITIZE).
  bool finished = false;
  {
    boost::asio::io_context io;
    {
      Pool pool(io.get_executor(), Settings(1), logging::Logger());
      auto query = QueryOnLease(pool, "SELECT pg_sleep(5)", 10s);
      boost::asio::co_spawn(io, std::move(query),
                            [&](std::exception_ptr, Result) { finished = true; });
      test::RunFor(io, 200ms);
      EXPECT_EQ(pool.stats().leased, 1u);
    }
  }
  EXPECT_FALSE(finished);
  auto connection = Connect();
  EXPECT_EQ(Query(*connection, "SELECT 1").GetInt64(0, 0), 1);
}

}  // namespace
}  // namespace warp::store::postgres
