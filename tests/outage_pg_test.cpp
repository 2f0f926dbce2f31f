// A database outage under a running warpd (SPEC sections 8, 11 and 12): PostgreSQL stops under
// it and comes back on the same port; warpd stays up, says it is degraded (sd_notify STATUS),
// recovers by itself and loses no work.
//
// The test runs its own PostgreSQL cluster (scripts/test-postgres.sh start / pause / resume /
// stop): stopping the shared server of $WARP_TEST_DSN would break the tests running beside it.
// warpd's sd_notify messages arrive on a unix datagram socket the test binds (NOTIFY_SOCKET);
// with WATCHDOG_USEC set, its systemd watchdog pings must go on through the outage.
#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "migrations/migrator.hpp"
#include "migrations/testdb/scratch_database.hpp"
#include "tests/support/process.hpp"

namespace {

using namespace warp::test;
using Clock = std::chrono::steady_clock;

/// `text` quoted for sh: single quotes, with each ' written as '\''.
std::string ShellQuoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

/// Runs `command` through sh; returns its exit status and puts its stdout into `out`.
int RunCommand(const std::string& command, std::string* out = nullptr) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr)
    return -1;
  char buf[4096];
  std::size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) {
    if (out != nullptr)
      out->append(buf, n);
  }
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/// The variables of `export A=x B=y\ z` lines as printed by bash's printf %q (backslash
/// escapes only; the values test-postgres.sh prints need nothing else).
std::map<std::string, std::string> ParseExports(const std::string& text) {
  std::map<std::string, std::string> vars;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (!line.starts_with("export "))
      continue;
    std::vector<std::string> words(1);
    for (std::size_t i = 7; i < line.size(); ++i) {
      if (line[i] == '\\' && i + 1 < line.size()) {
        words.back() += line[++i];
      } else if (line[i] == ' ') {
        if (!words.back().empty())
          words.emplace_back();
      } else {
        words.back() += line[i];
      }
    }
    for (const auto& word : words) {
      const auto eq = word.find('=');
      if (eq != std::string::npos)
        vars[word.substr(0, eq)] = word.substr(eq + 1);
    }
  }
  return vars;
}

/// A PostgreSQL cluster of this test alone (scripts/test-postgres.sh), stopped and removed when
/// the object goes, also when the test fails.
class PrivatePostgres {
 public:
  explicit PrivatePostgres(fs::path log) : log_(std::move(log)) {
    std::string out;
    const int rc = Script("start", &out);
    auto vars = ParseExports(out);
    dir_ = vars["WARP_TEST_PGDIR"];
    dsn_ = vars["WARP_TEST_DSN"];
    if (rc != 0 || dir_.empty() || dsn_.empty()) {
      throw std::runtime_error("cannot start a private PostgreSQL (exit " + std::to_string(rc) +
                               "): " + out + ReadFile(log_));
    }
  }
  ~PrivatePostgres() {
    if (!dir_.empty())
      (void)Script("stop " + ShellQuoted(dir_));
  }
  PrivatePostgres(const PrivatePostgres&) = delete;
  PrivatePostgres& operator=(const PrivatePostgres&) = delete;

  const std::string& dsn() const { return dsn_; }
  /// pg_ctl stop -m fast: every session is terminated, the socket goes away.
  bool Pause() { return Script("pause " + ShellQuoted(dir_)) == 0; }
  /// Starts it again on the same port.
  bool Resume() { return Script("resume " + ShellQuoted(dir_)) == 0; }
  /// What the script said on stderr (and the tail of the server's log on failures).
  std::string Log() const { return ReadFile(log_); }

 private:
  int Script(const std::string& args, std::string* out = nullptr) {
    const auto script = fs::path(WARP_SOURCE_DIR) / "scripts" / "test-postgres.sh";
    return RunCommand(
        "bash " + ShellQuoted(script.string()) + " " + args + " 2>>" + ShellQuoted(log_.string()),
        out);
  }

  fs::path log_;
  std::string dir_;
  std::string dsn_;
};

/// The receiving end of sd_notify: a unix datagram socket bound at `path` (NOTIFY_SOCKET).
class NotifySocket {
 public:
  struct Message {
    Clock::time_point at;
    std::string text;
  };

  explicit NotifySocket(fs::path path) : path_(std::move(path)) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path_.string().size() >= sizeof(addr.sun_path))
      throw std::runtime_error("notify socket path too long: " + path_.string());
    std::strcpy(addr.sun_path, path_.c_str());
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd_ < 0 || bind(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0)
      throw std::runtime_error("cannot bind the notify socket " + path_.string());
  }
  ~NotifySocket() {
    if (fd_ >= 0)
      close(fd_);
    std::error_code ignored;
    fs::remove(path_, ignored);
  }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  const fs::path& path() const { return path_; }

  /// Takes in what arrived since the last call.
  void Poll() {
    std::vector<char> buf(64 * 1024);
    for (;;) {
      const ssize_t n = recv(fd_, buf.data(), buf.size(), 0);
      if (n < 0)
        return;
      messages_.push_back({Clock::now(), std::string(buf.data(), static_cast<std::size_t>(n))});
    }
  }

  /// The STATUS= values received at or after `since`, in order.
  std::vector<std::string> Statuses(Clock::time_point since = {}) const {
    std::vector<std::string> out;
    for (const auto& m : messages_) {
      if (m.at < since)
        continue;
      std::istringstream lines(m.text);
      std::string line;
      while (std::getline(lines, line)) {
        if (line.starts_with("STATUS="))
          out.push_back(line.substr(7));
      }
    }
    return out;
  }

  /// When the messages that are exactly `text` arrived (as polled), in [since, until).
  std::vector<Clock::time_point> Times(const std::string& text, Clock::time_point since,
                                       Clock::time_point until) const {
    std::vector<Clock::time_point> out;
    for (const auto& m : messages_) {
      if (m.text == text && m.at >= since && m.at < until)
        out.push_back(m.at);
    }
    return out;
  }

  bool Received(const std::string& assignment) const {
    for (const auto& m : messages_) {
      if (("\n" + m.text + "\n").find("\n" + assignment + "\n") != std::string::npos)
        return true;
    }
    return false;
  }

  /// Every message but the watchdog pings (counted), one per line, for failure messages.
  std::string Dump() const {
    std::string out;
    std::size_t pings = 0;
    for (const auto& m : messages_) {
      if (m.text == "WATCHDOG=1") {
        ++pings;
        continue;
      }
      std::string text = m.text;
      std::replace(text.begin(), text.end(), '\n', '|');
      out += "  " + text + "\n";
    }
    return out + "  (and " + std::to_string(pings) + " WATCHDOG=1)\n";
  }

 private:
  fs::path path_;
  int fd_ = -1;
  std::vector<Message> messages_;
};

std::size_t Count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto p = text.find(what); p != std::string::npos; p = text.find(what, p + what.size()))
    ++n;
  return n;
}

bool AnyContains(const std::vector<std::string>& lines, const std::string& what) {
  return std::any_of(lines.begin(), lines.end(),
                     [&](const std::string& l) { return l.find(what) != std::string::npos; });
}

/// The process has not ended. Unlike Warpd::Wait it does not reap it, so Wait still gets the
/// exit status for the failure message.
bool Alive(const Warpd& warpd) {
  if (warpd.pid() <= 0)
    return false;
  siginfo_t info{};
  if (waitid(P_PID, static_cast<id_t>(warpd.pid()), &info, WEXITED | WNOHANG | WNOWAIT) != 0)
    return false;
  return info.si_pid == 0;
}

/// The last `lines` lines of `text`.
std::string Tail(const std::string& text, std::size_t lines = 60) {
  std::size_t pos = text.size();
  for (std::size_t n = 0; n <= lines && pos > 0; ++n) {
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos)
      return text;
  }
  return text.substr(pos + 1);
}

class Outage : public ::testing::Test {
 protected:
  /// WatchdogSec=2s: a ping every second while the event loop is healthy.
  static constexpr std::chrono::microseconds kWatchdogUsec{2'000'000};

  void SetUp() override {
    pg_.emplace(dir_.path() / "test-postgres.log");
    conn_ = std::make_unique<warp::migrations::testdb::Connection>(
        warp::migrations::testdb::Connect(pg_->dsn()));
    notify_.emplace(dir_.path() / "notify.sock");
  }

  void TearDown() override {
    warpd_.reset();  // before the server goes: its connections, its children
    conn_.reset();
    notify_.reset();
    pg_.reset();
  }

  PGconn* conn() { return conn_->get(); }

  /// Runs `sql` (fixed test statements) and returns the first column of each row.
  std::vector<std::string> Sql(const std::string& sql) {
    PGresult* r = PQexec(conn(), sql.c_str());
    const auto status = PQresultStatus(r);
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
      std::string message = PQresultErrorMessage(r);
      PQclear(r);
      throw std::runtime_error(sql + ": " + message);
    }
    std::vector<std::string> rows;
    for (int i = 0; i < PQntuples(r); ++i)
      rows.emplace_back(PQgetvalue(r, i, 0));
    PQclear(r);
    return rows;
  }
  std::string One(const std::string& sql) {
    auto rows = Sql(sql);
    return rows.empty() ? std::string() : rows.front();
  }

  /// The test's connection after the server came back (the old session was terminated).
  void Reconnect() {
    conn_ = std::make_unique<warp::migrations::testdb::Connection>(
        warp::migrations::testdb::Connect(pg_->dsn()));
  }

  /// Agents with exec runners (`quick`, bound 2; `long`, bound 1, whose work outlives the lease
  /// ttl) and null runners (`noop-a`, bound 1; `noop-b`, bound 3); a backlog of due work and a
  /// stream of work coming due over the next 12 s, through the outage and after it.
  void Seed() {
    Sql("INSERT INTO warp.tool_profiles (tool_profile_id, operations) VALUES ('p', '{sync}')");
    Sql("INSERT INTO warp.agents (agent_slug, tool_profile_id, runner, business_link, "
        "max_active_leases) VALUES ('quick', 'p', 'quick', 'spindle:1', 2), "
        "('long', 'p', 'long', 'spindle:2', 1), ('noop-a', 'p', 'noop', 'spindle:3', 1), "
        "('noop-b', 'p', 'noop', 'spindle:4', 3)");
    Sql("INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts) "
        "SELECT agent_id, 'sync', now() - interval '1 minute', agent_slug || '-backlog-' || g, 10 "
        "FROM warp.agents, generate_series(1, CASE agent_slug WHEN 'long' THEN 1 "
        "WHEN 'noop-a' THEN 2 ELSE 4 END) g");
    Sql("INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts) "
        "SELECT agent_id, 'sync', now() + g * interval '1.5 seconds', "
        "agent_slug || '-stream-' || g, 10 "
        "FROM warp.agents, generate_series(1, CASE agent_slug WHEN 'noop-a' THEN 4 ELSE 8 END) g "
        "WHERE agent_slug LIKE 'noop-%'");
  }

  fs::path Config() {
    auto path = dir_.path() / "warpd.toml";
    WriteFile(path, R"([daemon]
instance = "outage"
shutdown_grace = "20s"

[store]
backend = "postgres"
dsn = ")" + pg_->dsn() + R"("
connect_timeout = "2s"

[scheduler]
interval = "1s"
retry_backoff = "1s"
retry_backoff_max = "2s"

[leasing]
ttl = "3s"
renew_every = "1s"

[log]
level = "info"
format = "text"

[runner.quick]
transport = "exec"
command = ["/bin/sh", "-c", "cat > /dev/null; sleep 2"]
timeout = "30s"
kill_grace = "1s"

[runner.long]
transport = "exec"
command = ["/bin/sh", "-c", "cat > /dev/null; sleep 5"]
timeout = "30s"
kill_grace = "1s"

[runner.noop]
transport = "null"
)");
    return path;
  }

  void StartWarpd() {
    const auto config = Config();
    setenv("NOTIFY_SOCKET", notify_->path().c_str(), 1);
    setenv("WATCHDOG_USEC", std::to_string(kWatchdogUsec.count()).c_str(), 1);
    // The child's pid is unknown before the spawn; without WATCHDOG_PID the watchdog is warpd's.
    unsetenv("WATCHDOG_PID");
    warpd_.emplace(dir_.path(), std::vector<std::string>{"--config", config.string()});
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
  }

  /// Polls (notify socket included) until `done` or `limit`; fails early if warpd exits.
  template <typename Done>
  bool WaitUntil(Done done, std::chrono::milliseconds limit) {
    const auto deadline = Clock::now() + limit;
    for (;;) {
      notify_->Poll();
      if (done())
        return true;
      if (Clock::now() >= deadline || !Alive(*warpd_))
        return false;
      std::this_thread::sleep_for(50ms);
    }
  }

  /// What a failure message shows: warpd's stderr tail, the sd_notify messages, the script's
  /// log.
  std::string Context() {
    notify_->Poll();
    return "\n--- warpd stderr (tail) ---\n" + Tail(warpd_ ? warpd_->Err() : "") +
           "--- sd_notify ---\n" + notify_->Dump() + "--- test-postgres ---\n" + pg_->Log();
  }

  TempDir dir_;
  std::optional<PrivatePostgres> pg_;
  std::unique_ptr<warp::migrations::testdb::Connection> conn_;
  std::optional<NotifySocket> notify_;
  std::optional<Warpd> warpd_;
};

TEST_F(Outage, WarpdStaysUpSaysDegradedRecoversByItselfAndLosesNoWork) {
  warp::migrations::Migrator migrator(fs::path(WARP_SOURCE_DIR) / "migrations");
  migrator.Up(conn());
  Seed();
  const int total = std::stoi(One("SELECT count(*) FROM warp.work_items"));

  StartWarpd();
  ASSERT_TRUE(WaitUntil([&] { return notify_->Received("READY=1"); }, 30s)) << Context();

  // Stop the server while exec work runs under young leases: `quick` work would finish during
  // the outage (its completion cannot be recorded); `long` work (5 s) outlives its lease (ttl
  // 3 s, no renewal once the server is gone): the lease keeper must give it up and stop it.
  const auto in_flight = [&] {
    return One("SELECT count(DISTINCT a.agent_slug) FROM warp.work_items w "
               "JOIN warp.agents a USING (agent_id) JOIN warp.agent_leases l "
               "ON l.lease_id = w.lease_id WHERE w.state = 'dispatched' AND "
               "((a.agent_slug = 'quick' AND l.acquired_at > now() - interval '1 second') OR "
               "(a.agent_slug = 'long' AND l.acquired_at > now() - interval '1.5 seconds'))") ==
           "2";
  };
  ASSERT_TRUE(WaitUntil(in_flight, 30s)) << "exec work in flight" << Context();
  const auto done_before = One("SELECT count(*) FROM warp.work_items WHERE state = 'done'");

  const auto paused_at = Clock::now();
  ASSERT_TRUE(pg_->Pause()) << Context();
  const auto pause_returned = Clock::now();
  conn_.reset();

  // The outage lasts longer than several intervals and the lease ttl, and at least until
  // warpd said it is degraded.
  const auto degraded = [&] {
    return AnyContains(notify_->Statuses(paused_at), "degraded: store unreachable");
  };
  (void)WaitUntil([] { return false; }, 6s);  // returns early only if warpd exits
  ASSERT_TRUE(Alive(*warpd_)) << "warpd exited during the outage with " << warpd_->Wait(1s)
                              << Context();
  ASSERT_TRUE(WaitUntil(degraded, 20s)) << "STATUS says degraded during the outage" << Context();
  const auto statuses_in_outage = notify_->Statuses(paused_at);
  for (const auto& s : statuses_in_outage) {
    if (s.starts_with("degraded: store unreachable")) {
      EXPECT_NE(s.find("postgres"), std::string::npos) << "names the store problem: " << s;
    }
  }
  const auto outage_log = warpd_->Err();

  const auto resumed_at = Clock::now();
  // The systemd watchdog did not notice the outage: pings came at half of WATCHDOG_USEC all
  // along (arrival times are as polled, every 50 ms, while the test was not in pg_ctl).
  auto pings = notify_->Times("WATCHDOG=1", pause_returned, resumed_at);
  pings.insert(pings.begin(), pause_returned);
  pings.push_back(resumed_at);
  Clock::duration longest_gap{};
  for (std::size_t i = 1; i < pings.size(); ++i)
    longest_gap = std::max(longest_gap, pings[i] - pings[i - 1]);
  EXPECT_GE(pings.size() - 2, static_cast<std::size_t>((resumed_at - pause_returned) / 2s))
      << Context();
  EXPECT_LT(longest_gap, kWatchdogUsec)
      << "systemd would have restarted warpd: no ping for "
      << std::chrono::duration_cast<std::chrono::milliseconds>(longest_gap).count() << " ms"
      << Context();
  ASSERT_TRUE(pg_->Resume()) << Context();
  Reconnect();
  const auto resumed_db = One("SELECT now()");

  // Recovery by itself: a normal cycle line after the degraded ones, new completed runs.
  const auto recovered = [&] {
    const auto statuses = notify_->Statuses(resumed_at);
    return std::any_of(statuses.begin(), statuses.end(), [](const std::string& s) {
      return s.starts_with("cycle ") && s.find(": dispatched ") != std::string::npos;
    });
  };
  ASSERT_TRUE(WaitUntil(recovered, 30s)) << "a normal cycle STATUS after the restart" << Context();
  const auto recovered_at = Clock::now();
  EXPECT_NE(One("SELECT count(*) FROM warp.scheduler_runs WHERE status = 'completed' AND "
                "started_at > '" +
                resumed_db + "'"),
            "0")
      << Context();

  // Everything gets done: the backlog, the stream, and the work the outage interrupted.
  const auto all_done = [&] {
    return One("SELECT count(*) FROM warp.work_items WHERE state = 'done'") ==
           std::to_string(total);
  };
  ASSERT_TRUE(WaitUntil(all_done, 45s))
      << One("SELECT string_agg(idempotency_key || '=' || state || '/' || attempts, ', ' ORDER BY "
             "work_item_id) FROM warp.work_items WHERE state <> 'done'")
      << Context();

  warpd_->Signal(SIGTERM);
  const int exit_code = warpd_->Wait(30s);
  const auto err = warpd_->Err();
  ASSERT_EQ(exit_code, 0) << Context();
  const auto ms = [](Clock::duration d) {
    return static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
  };
  std::printf(
      "PostgreSQL stopped with %s of %d items done, for %lld ms; warpd recovered %lld ms after "
      "the restart and had drained all work %lld ms after it\n",
      done_before.c_str(), total, ms(resumed_at - paused_at), ms(recovered_at - resumed_at),
      ms(Clock::now() - resumed_at));

  // Nothing lost, nothing doubled.
  EXPECT_EQ(One("SELECT count(*) FROM warp.work_items WHERE state <> 'done'"), "0");
  EXPECT_EQ(One("SELECT count(*) FROM (SELECT work_item_id, attempt FROM warp.dispatch_decisions "
                "WHERE decision = 'dispatched' GROUP BY 1, 2 HAVING count(*) > 1) twice"),
            "0")
      << "an attempt dispatched twice";
  EXPECT_EQ(One("SELECT count(*) FROM warp.work_items w WHERE attempts <> (SELECT count(*) FROM "
                "warp.dispatch_decisions d WHERE d.work_item_id = w.work_item_id "
                "AND d.decision = 'dispatched')"),
            "0")
      << "one dispatched decision per attempt";
  EXPECT_EQ(One("SELECT count(*) FROM warp.work_items w WHERE (SELECT count(*) FROM "
                "warp.agent_leases l WHERE l.work_item_id = w.work_item_id "
                "AND l.release_reason IN ('completed', 'completed_late')) <> 1"),
            "0")
      << "every item completed exactly once";
  // The lease invariant over the durable history: at each acquisition instant, the leases of
  // that agent live at that instant stay within its bound.
  EXPECT_EQ(One("SELECT count(*) FROM warp.agent_leases l JOIN warp.agents a USING (agent_id) "
                "WHERE (SELECT count(*) FROM warp.agent_leases o WHERE o.agent_id = l.agent_id "
                "AND o.acquired_at <= l.acquired_at AND l.acquired_at < "
                "least(coalesce(o.released_at, 'infinity'), o.expires_at)) > a.max_active_leases"),
            "0")
      << "more leases than the bound at some instant";

  // Interrupted work (its lease expired unreleased: the completion could not be recorded, or
  // the lease keeper stopped it) was retried under a newer lease and completed.
  const auto interrupted = Sql(
      "SELECT a.agent_slug || ':' || w.work_item_id || ':' || w.attempts || ':' || w.state || ':' "
      "|| (SELECT count(*) FROM warp.agent_leases n WHERE n.work_item_id = w.work_item_id "
      "AND n.lease_id > l.lease_id AND n.release_reason = 'completed') "
      "FROM warp.agent_leases l JOIN warp.work_items w USING (work_item_id) "
      "JOIN warp.agents a ON a.agent_id = w.agent_id WHERE l.released_at IS NULL ORDER BY 1");
  std::string interrupted_text;
  for (const auto& i : interrupted)
    interrupted_text += i + " ";
  EXPECT_TRUE(AnyContains(interrupted, "quick:")) << interrupted_text;
  EXPECT_TRUE(AnyContains(interrupted, "long:")) << interrupted_text;
  for (const auto& i : interrupted) {
    EXPECT_TRUE(i.ends_with(":done:1")) << "retried and completed: " << interrupted_text;
  }
  EXPECT_NE(err.find("of agent long lost"), std::string::npos)
      << "the lease keeper gave up the lease of work that outlived it" << Context();

  // The logs mark the outage once at each end, not once per tick.
  EXPECT_EQ(Count(err, "store unreachable:"), 1u) << Context();
  EXPECT_EQ(Count(err, "store reachable again after"), 1u) << Context();
  EXPECT_LE(Count(outage_log, "cannot read store time"), 1u) << Context();
  EXPECT_LE(Count(outage_log, "instance heartbeat failed"), 1u) << Context();
  // Renewal rounds fail until the leases are given up: at most ttl / renew_every of them.
  EXPECT_LE(Count(outage_log, "renewing"), 3u) << Context();
}

}  // namespace
