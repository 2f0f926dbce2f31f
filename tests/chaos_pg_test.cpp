// Chaos on real processes: four warpd instances share one PostgreSQL database and a backlog of
// 2,040 work items for 60 agents of lease bounds 1 to 3 (exec runner, 50-350ms per item). While
// they work, the test SIGKILLs and restarts instances at random (seeded, the seed is printed;
// WARP_CHAOS_SEED replays one) and freezes one instance with SIGSTOP for longer than the lease TTL,
// so that its leases expire, its work is requeued and re-leased elsewhere, and its late completions
// are refused after SIGCONT. Then all work finishes, the instances drain on SIGTERM, and SQL over
// the durable records proves the lease invariants of SPEC section 5 and that no work was lost or
// doubled.
#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "migrations/migrator.hpp"
#include "migrations/testdb/scratch_database.hpp"
#include "tests/support/process.hpp"

namespace {

using namespace warp::test;
using warp::migrations::testdb::ScratchDatabase;
using Clock = std::chrono::steady_clock;

constexpr int kInstances = 4;
constexpr int kAgents = 60;
constexpr int kRounds = 17;  // items per unit of bound: 17 * (20 * (1 + 2 + 3)) = 2,040
constexpr int kMaxAttempts = 20;
constexpr auto kTtl = 2s;

using Rows = std::vector<std::vector<std::string>>;

/// Runs `sql` (fixed test statements, no parameters) and returns every row, NULL as "".
Rows Query(PGconn* conn, const std::string& sql) {
  PGresult* r = PQexec(conn, sql.c_str());
  const auto status = PQresultStatus(r);
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    std::string message = PQresultErrorMessage(r);
    PQclear(r);
    throw std::runtime_error(sql + ": " + message);
  }
  Rows rows;
  for (int i = 0; i < PQntuples(r); ++i) {
    std::vector<std::string> row;
    for (int j = 0; j < PQnfields(r); ++j)
      row.emplace_back(PQgetvalue(r, i, j));
    rows.push_back(std::move(row));
  }
  PQclear(r);
  return rows;
}

/// The single value `sql` returns.
std::string Value(PGconn* conn, const std::string& sql) {
  auto rows = Query(conn, sql);
  if (rows.size() != 1 || rows[0].size() != 1)
    throw std::runtime_error(sql + ": expected one value");
  return rows[0][0];
}

long Count(PGconn* conn, const std::string& sql) {
  return std::stol(Value(conn, sql));
}

std::string Format(const Rows& rows, std::size_t limit = 20) {
  std::string out;
  for (std::size_t i = 0; i < rows.size() && i < limit; ++i) {
    out += "  ";
    for (const auto& v : rows[i])
      out += v + " | ";
    out += "\n";
  }
  if (rows.size() > limit)
    out += "  ... (" + std::to_string(rows.size()) + " rows)\n";
  return out;
}

std::string Tail(const std::string& text, std::size_t lines) {
  std::size_t pos = text.size();
  for (std::size_t n = 0; n <= lines && pos > 0; ++n) {
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos) {
      pos = 0;
      break;
    }
  }
  return text.substr(pos == 0 ? 0 : pos + 1);
}

/// The complete lines of `path` from byte `offset` on; advances `offset` past them.
std::string ReadLinesFrom(const fs::path& path, std::uintmax_t& offset) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(offset));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto end = text.rfind('\n');
  if (end == std::string::npos)
    return {};
  text.resize(end + 1);
  offset += text.size();
  return text;
}

/// One named instance: its config and the current incarnation (restarts keep name and config;
/// each incarnation logs to its own file, so nothing a killed one wrote is lost).
struct Instance {
  std::string name;
  fs::path config;
  int incarnation = 0;
  std::unique_ptr<Warpd> process;
  std::vector<fs::path> logs;
  bool paused = false;

  bool Up() const { return process != nullptr; }
  std::string Log() const { return process ? process->Err() : ReadFile(logs.back()); }
};

class ChaosOnPostgres : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(warp::migrations::testdb::TestDsn().empty())
        << warp::migrations::testdb::kNoTestDsn;
    db_.emplace();
    conn_ = std::make_unique<warp::migrations::testdb::Connection>(db_->Connect());
    warp::migrations::Migrator migrator(std::filesystem::path(WARP_SOURCE_DIR) / "migrations");
    migrator.Up(conn());
  }

  void TearDown() override {
    // WARP_CHAOS_LOG_DIR=DIR keeps the configs and logs of the run there.
    const char* keep = std::getenv("WARP_CHAOS_LOG_DIR");
    if (keep != nullptr && *keep != '\0') {
      std::error_code ec;
      fs::create_directories(keep, ec);
      fs::copy(dir_.path(), keep,
               fs::copy_options::recursive | fs::copy_options::overwrite_existing, ec);
      std::cout << "logs kept in " << keep << std::endl;
    }
    for (auto& i : instances_) {
      if (i.process && i.paused)
        i.process->Cont();
      i.process.reset();  // SIGKILL and reap
    }
  }

  PGconn* conn() { return conn_->get(); }

  /// 60 agents of bounds 1, 2, 3 (in turn) and 17 due items per unit of bound (2,040), in
  /// rounds: round r holds `bound` items of every agent, and ids follow the rounds, so the
  /// oldest due items always cover every agent and each cycle can fill every bound.
  void Seed() {
    Query(conn(),
          "INSERT INTO warp.tool_profiles (tool_profile_id, operations) VALUES ('p', '{sync}')");
    Query(conn(),
          "INSERT INTO warp.agents (agent_slug, tool_profile_id, runner, business_link, "
          "max_active_leases) SELECT format('c%s', lpad(i::text, 2, '0')), 'p', 'work', "
          "'spindle:' || i, 1 + i % 3 FROM generate_series(1, " +
              std::to_string(kAgents) + ") i");
    Query(conn(),
          "INSERT INTO warp.work_items (agent_id, kind, due_at, idempotency_key, max_attempts) "
          "SELECT a.agent_id, 'sync', now() - interval '1 minute', "
          "'chaos-' || a.agent_id || '-' || j, " +
              std::to_string(kMaxAttempts) + " FROM warp.agents a, generate_series(0, " +
              std::to_string(kRounds) +
              " * a.max_active_leases - 1) j "
              "ORDER BY j / a.max_active_leases, a.agent_id, j");
    items_ = Count(conn(), "SELECT count(*) FROM warp.work_items");
  }

  fs::path Config(const std::string& instance) {
    auto path = dir_.path() / (instance + ".toml");
    WriteFile(path, "[daemon]\ninstance = \"" + instance +
                        "\"\ngroup = \"chaos\"\nshutdown_grace = \"30s\"\n\n"
                        "[store]\nbackend = \"postgres\"\ndsn = \"" +
                        db_->dsn() +
                        "\"\n\n[scheduler]\ninterval = \"1s\"\ntakeover_after = \"2s\"\n"
                        "max_dispatch_per_cycle = 240\nmax_inflight = 240\n"
                        "retry_backoff = \"1s\"\nretry_backoff_max = \"2s\"\n\n"
                        "[leasing]\nttl = \"2s\"\nrenew_every = \"500ms\"\n\n"
                        "[log]\nformat = \"text\"\n\n"
                        "[runner.work]\ntransport = \"exec\"\n"
                        "command = [\"/bin/sh\", \"-c\", "
                        "\"cat > /dev/null; sleep 0.$((WARP_WORK_ID % 4))5\"]\n"
                        "timeout = \"30s\"\nkill_grace = \"1s\"\n");
    return path;
  }

  void Start(Instance& i) {
    ++i.incarnation;
    const std::string log_name = i.name + ".run" + std::to_string(i.incarnation);
    i.process = std::make_unique<Warpd>(
        dir_.path(), std::vector<std::string>{"--config", i.config.string()}, log_name);
    i.logs.push_back(i.process->ErrPath());
  }

  void KillInstance(Instance& i) {
    i.process->Kill();
    i.process.reset();
  }

  /// What a failure shows: the seed, the work's states and each instance's last log lines.
  std::string Diagnostics() {
    std::string out = "seed " + std::to_string(seed_) + "\n";
    try {
      out += "work items by state:\n" +
             Format(Query(conn(), "SELECT state, count(*) FROM warp.work_items GROUP BY 1"));
      out += "unreleased unexpired leases by holder:\n" +
             Format(Query(conn(),
                          "SELECT holder_instance, count(*) FROM warp.agent_leases "
                          "WHERE released_at IS NULL AND expires_at > now() GROUP BY 1"));
    } catch (const std::exception& e) {
      out += std::string("(store unreadable: ") + e.what() + ")\n";
    }
    for (const auto& i : instances_) {
      out += "---- " + i.name + " (incarnation " + std::to_string(i.incarnation) +
             (i.Up() ? "" : ", down") + (i.paused ? ", paused" : "") + ") stderr tail:\n";
      out += Tail(i.Log(), 12);
    }
    return out;
  }

  /// Sleeps, failing at once if an instance that should be running has exited.
  void Sleep(std::chrono::milliseconds span) {
    const auto until = Clock::now() + span;
    while (Clock::now() < until) {
      for (auto& i : instances_) {
        if (i.process && !i.process->Running()) {
          throw std::runtime_error(i.name + " exited unexpectedly with " +
                                   std::to_string(i.process->ExitStatus()) + "\n" + Diagnostics());
        }
      }
      std::this_thread::sleep_for(
          std::min<Clock::duration>(20ms, std::max<Clock::duration>(until - Clock::now(), 0ms)));
    }
  }

  std::chrono::milliseconds Between(int lo_ms, int hi_ms) {
    return std::chrono::milliseconds(std::uniform_int_distribution<int>(lo_ms, hi_ms)(rng_));
  }

  /// SIGKILLs a random running instance other than `except` (one that holds live leases, if
  /// any does), keeps it down a little and restarts it with the same name and config.
  void KillAndRestart(const Instance* except = nullptr) {
    const auto holders = Query(conn(),
                               "SELECT DISTINCT holder_instance FROM warp.agent_leases "
                               "WHERE released_at IS NULL AND expires_at > now()");
    std::vector<Instance*> candidates;
    std::vector<Instance*> holding;
    for (auto& i : instances_) {
      if (&i == except || !i.Up() || i.paused)
        continue;
      candidates.push_back(&i);
      if (std::any_of(holders.begin(), holders.end(),
                      [&](const auto& row) { return row[0] == i.name; }))
        holding.push_back(&i);
    }
    auto& pool = holding.empty() ? candidates : holding;
    Instance& victim =
        *pool.at(std::uniform_int_distribution<std::size_t>(0, pool.size() - 1)(rng_));
    const auto down = Between(200, 900);
    std::cout << "chaos: SIGKILL " << victim.name << (holding.empty() ? "" : " (holding leases)")
              << ", restart after " << down.count() << "ms" << std::endl;
    KillInstance(victim);
    ++kills_;
    Sleep(down);
    Start(victim);
  }

  /// Unreleased leases of `instance` whose work is neither finished nor leased again since the
  /// lease expired.
  long NotYetReleased(const std::string& instance) {
    return Count(conn(),
                 "SELECT count(*) FROM warp.agent_leases l JOIN warp.work_items w "
                 "ON w.work_item_id = l.work_item_id WHERE l.holder_instance = '" +
                     instance +
                     "' AND l.released_at IS NULL AND w.state NOT IN ('done', 'dead') "
                     "AND NOT EXISTS (SELECT 1 FROM warp.agent_leases n "
                     "WHERE n.work_item_id = l.work_item_id AND n.acquired_at >= l.expires_at)");
  }

  /// Freezes an instance right after one of its cycles dispatched work, while the children
  /// run, for longer than the lease TTL and until its work has been leased again by others
  /// (meanwhile another instance is killed and restarted), then thaws it. Returns the instance,
  /// or nullptr when no cycle dispatched anything for 20s.
  Instance* PauseRound() {
    std::vector<Instance*> order;
    for (auto& i : instances_) {
      if (i.Up())
        order.push_back(&i);
    }
    std::shuffle(order.begin(), order.end(), rng_);
    // Only cycle reports written from now on count: read each log on from its current end.
    std::vector<std::uintmax_t> offsets;
    for (auto* i : order)
      offsets.push_back(fs::file_size(i->logs.back()));
    static const std::regex kDispatched(R"(cycle \S+: due=\d+ dispatched=(\d+) )");
    Instance* target = nullptr;
    const auto find_deadline = Clock::now() + 20s;
    while (target == nullptr && Clock::now() < find_deadline) {
      for (std::size_t n = 0; n < order.size() && target == nullptr; ++n) {
        const std::string fresh = ReadLinesFrom(order[n]->logs.back(), offsets[n]);
        for (std::sregex_iterator it(fresh.begin(), fresh.end(), kDispatched), end; it != end;
             ++it) {
          if (std::stoi((*it)[1]) >= 5)
            target = order[n];
        }
      }
      if (target == nullptr)
        std::this_thread::sleep_for(5ms);
    }
    if (target == nullptr)
      return nullptr;
    target->process->Stop();
    target->paused = true;
    const auto paused_at = Clock::now();
    std::cout << "chaos: SIGSTOP " << target->name << " right after a cycle that dispatched"
              << std::endl;

    Sleep(Between(300, 700));
    KillAndRestart(target);
    const auto release_deadline = Clock::now() + 40s;
    long left = NotYetReleased(target->name);
    while (Clock::now() - paused_at < kTtl + 700ms || left > 0) {
      if (Clock::now() > release_deadline) {
        throw std::runtime_error("the work of paused instance " + target->name +
                                 " was not leased again within 40s (" + std::to_string(left) +
                                 " lease(s) left)\n" + Diagnostics());
      }
      Sleep(50ms);
      left = NotYetReleased(target->name);
    }
    const auto paused_for =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - paused_at);
    std::cout << "chaos: SIGCONT " << target->name << " after " << paused_for.count() << "ms"
              << std::endl;
    target->process->Cont();
    target->paused = false;
    return target;
  }

  void StopAll() {
    for (auto& i : instances_) {
      if (i.process->pid() > 0)  // never kill(-1, ...)
        i.process->Signal(SIGTERM);
    }
    for (auto& i : instances_) {
      const int rc = i.process->Wait(60s);
      EXPECT_EQ(rc, 0) << i.name << " did not drain and exit 0 on SIGTERM\n" << Diagnostics();
      i.process.reset();
    }
  }

  TempDir dir_;
  std::optional<ScratchDatabase> db_;
  std::unique_ptr<warp::migrations::testdb::Connection> conn_;
  std::vector<Instance> instances_;
  std::uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  int kills_ = 0;
  long items_ = 0;
};

const std::regex kRefusal(R"(completion of work (\d+) refused \((\w+)\).*lease_id=(\d+))");

TEST_F(ChaosOnPostgres, KillsAndAPauseNeverBreakTheLeaseBoundFencingOrTheWork) {
  const char* fixed = std::getenv("WARP_CHAOS_SEED");
  seed_ = fixed != nullptr && *fixed != '\0' ? std::stoull(fixed) : std::random_device{}();
  rng_.seed(seed_);
  std::cout << "chaos seed " << seed_ << " (replay with WARP_CHAOS_SEED=" << seed_ << ")"
            << std::endl;
  RecordProperty("seed", std::to_string(seed_));
  const auto began = Clock::now();

  Seed();
  instances_.resize(kInstances);
  for (int n = 0; n < kInstances; ++n) {
    auto& i = instances_[n];
    i.name = "chaos-" + std::to_string(n + 1);
    i.config = Config(i.name);
    Start(i);
  }

  // Chaos while the backlog is large: kills, one freeze, more kills. The freeze is tried again
  // (at most three times) if the frozen instance reported no completion: that happens when all
  // its children were still waiting for their stdin when it froze; they are then rightly
  // stopped when the lease is found lost, and report nothing.
  Sleep(Between(1000, 2000));
  KillAndRestart();
  Sleep(Between(300, 1200));
  Instance* paused = nullptr;
  std::string refusal_line;
  for (int round = 0; round < 3 && refusal_line.empty(); ++round) {
    paused = PauseRound();
    ASSERT_NE(paused, nullptr) << "no instance held leases to freeze\n" << Diagnostics();
    // The children finished while it was frozen; it reaps them now and reports completions.
    const auto deadline = Clock::now() + 15s;
    while (refusal_line.empty() && Clock::now() < deadline) {
      Sleep(50ms);
      const std::string log = paused->Log();
      const auto at = log.find(" refused (");
      if (at != std::string::npos) {
        const auto begin = log.rfind('\n', at) + 1;  // npos + 1 == 0
        refusal_line = log.substr(begin, log.find('\n', at) - begin);
      }
    }
    if (refusal_line.empty())
      std::cout << "chaos: " << paused->name << " reported no refused completion; again"
                << std::endl;
  }
  ASSERT_FALSE(refusal_line.empty()) << "the frozen instance never logged a refused completion\n"
                                     << Diagnostics();
  for (int kills = std::uniform_int_distribution<int>(1, 2)(rng_); kills > 0; --kills) {
    Sleep(Between(200, 1000));
    KillAndRestart();
  }
  const auto chaos_took =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - began);
  std::cout << "chaos: done after " << chaos_took.count() << "ms, " << kills_ << " kill(s)"
            << std::endl;

  // All work finishes (every item done, or dead once out of attempts).
  const auto finish_deadline = Clock::now() + 150s;
  long open = 0;
  while ((open = Count(conn(),
                       "SELECT count(*) FROM warp.work_items "
                       "WHERE state NOT IN ('done', 'dead')")) > 0) {
    ASSERT_LT(Clock::now(), finish_deadline)
        << open << " work item(s) still open 150s after the chaos\n"
        << Diagnostics();
    Sleep(200ms);
  }
  const auto work_took =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - began);
  std::cout << "all work terminal after " << work_took.count() << "ms" << std::endl;
  StopAll();

  // (1) The bound held at every instant. The number of active leases of an agent only rises at
  // an acquisition, so checking at every acquisition instant covers all instants.
  const auto over_bound = Query(
      conn(),
      "SELECT l.agent_id, l.acquired_at, a.max_active_leases, "
      "  (SELECT string_agg(o.lease_id || '@' || o.holder_instance || ' [' || o.acquired_at || "
      "     ', ' || least(coalesce(o.released_at, 'infinity'), o.expires_at) || ')', '; ') "
      "     FROM warp.agent_leases o WHERE o.agent_id = l.agent_id "
      "      AND o.acquired_at <= l.acquired_at "
      "      AND l.acquired_at < least(coalesce(o.released_at, 'infinity'), o.expires_at)) "
      "FROM warp.agent_leases l JOIN warp.agents a ON a.agent_id = l.agent_id "
      "WHERE (SELECT count(*) FROM warp.agent_leases o WHERE o.agent_id = l.agent_id "
      "        AND o.acquired_at <= l.acquired_at "
      "        AND l.acquired_at < least(coalesce(o.released_at, 'infinity'), o.expires_at)) "
      "      > a.max_active_leases "
      "ORDER BY l.acquired_at");
  EXPECT_TRUE(over_bound.empty()) << "agents over their lease bound (agent, instant, bound, "
                                     "active leases):\n"
                                  << Format(over_bound) << "seed " << seed_;

  // (2) Fencing tokens rise strictly with acquisition, per agent, and the counter is not behind.
  const auto token_order =
      Query(conn(),
            "SELECT agent_id, lease_id, acquired_at, fencing_token, prev_lease, prev_token FROM ("
            "  SELECT agent_id, lease_id, acquired_at, fencing_token, "
            "         lag(lease_id) OVER w AS prev_lease, lag(fencing_token) OVER w AS prev_token "
            "    FROM warp.agent_leases WINDOW w AS (PARTITION BY agent_id ORDER BY acquired_at, "
            "lease_id)) x WHERE fencing_token <= prev_token");
  EXPECT_TRUE(token_order.empty()) << "fencing tokens not rising with acquisition (agent, lease, "
                                      "acquired, token, previous lease, its token):\n"
                                   << Format(token_order) << "seed " << seed_;
  EXPECT_EQ(Count(conn(),
                  "SELECT count(*) FROM warp.agents a WHERE a.fencing_counter < "
                  "(SELECT coalesce(max(fencing_token), 0) FROM warp.agent_leases l "
                  "WHERE l.agent_id = a.agent_id)"),
            0);

  // (3) Only completions of live leases, or of expired ones nobody overtook, were accepted.
  // Completion is the only release; a release records the verdict and the instant of it.
  EXPECT_EQ(Count(conn(),
                  "SELECT count(*) FROM warp.agent_leases WHERE (released_at IS NULL) <> "
                  "(release_reason = '') OR release_reason NOT IN ('', 'completed', "
                  "'completed_late')"),
            0)
      << "releases without a completion verdict, or verdicts without a release";
  const auto bad_in_time = Query(conn(),
                                 "SELECT lease_id, acquired_at, expires_at, released_at FROM "
                                 "warp.agent_leases WHERE release_reason = 'completed' AND NOT "
                                 "(released_at >= acquired_at AND released_at < expires_at)");
  EXPECT_TRUE(bad_in_time.empty()) << "completed in time, but not while live:\n"
                                   << Format(bad_in_time);
  const auto bad_late =
      Query(conn(),
            "SELECT l.lease_id, l.expires_at, l.released_at, o.lease_id, o.acquired_at "
            "FROM warp.agent_leases l JOIN warp.agent_leases o ON o.agent_id = l.agent_id "
            " AND o.lease_id <> l.lease_id AND o.acquired_at >= l.expires_at "
            " AND o.acquired_at < l.released_at "
            "WHERE l.release_reason = 'completed_late'");
  EXPECT_TRUE(bad_late.empty()) << "late completions accepted although the agent was leased "
                                   "again after their expiry (lease, expired, released, newer "
                                   "lease, acquired):\n"
                                << Format(bad_late) << "seed " << seed_;
  EXPECT_EQ(Count(conn(),
                  "SELECT count(*) FROM warp.agent_leases WHERE release_reason = "
                  "'completed_late' AND released_at < expires_at"),
            0);

  // (4) No work lost or doubled.
  EXPECT_GE(items_, 2000);
  EXPECT_EQ(Count(conn(), "SELECT count(*) FROM warp.work_items"), items_);
  EXPECT_EQ(Count(conn(),
                  "SELECT count(DISTINCT idempotency_key) FROM warp.work_items "
                  "WHERE idempotency_key LIKE 'chaos-%'"),
            items_);
  EXPECT_EQ(Count(conn(),
                  "SELECT count(*) FROM warp.work_items WHERE NOT (state IN ('done', "
                  "'dead') OR (state IN ('pending', 'failed') AND due_at IS NOT NULL))"),
            0);
  const auto overlapping = Query(
      conn(),
      "SELECT a.work_item_id, a.lease_id, b.lease_id FROM warp.agent_leases a "
      "JOIN warp.agent_leases b ON b.work_item_id = a.work_item_id AND b.lease_id > a.lease_id "
      "WHERE a.acquired_at < least(coalesce(b.released_at, 'infinity'), b.expires_at) "
      "  AND b.acquired_at < least(coalesce(a.released_at, 'infinity'), a.expires_at)");
  EXPECT_TRUE(overlapping.empty()) << "work items with two live leases at once:\n"
                                   << Format(overlapping) << "seed " << seed_;
  EXPECT_EQ(Count(conn(),
                  "SELECT count(*) FROM warp.agent_leases "
                  "WHERE released_at IS NULL AND expires_at > now()"),
            0)
      << "live leases left after every instance drained";
  EXPECT_EQ(Count(conn(),
                  "SELECT count(*) FROM (SELECT 1 FROM warp.dispatch_decisions "
                  "GROUP BY cycle_id, work_item_id, attempt HAVING count(*) > 1) d"),
            0);
  EXPECT_EQ(Count(conn(),
                  "SELECT count(*) FROM warp.agent_leases l WHERE (SELECT count(*) "
                  "FROM warp.dispatch_decisions d WHERE d.lease_id = l.lease_id "
                  "AND d.decision = 'dispatched' AND d.work_item_id = l.work_item_id) "
                  "<> 1"),
            0)
      << "leases without exactly one dispatched decision";
  EXPECT_EQ(Count(conn(),
                  "SELECT count(*) FROM warp.work_items w WHERE w.attempts <> "
                  "(SELECT count(*) FROM warp.agent_leases l "
                  "WHERE l.work_item_id = w.work_item_id)"),
            0)
      << "attempts that do not match the leases taken";
  const auto done_wrong = Query(
      conn(),
      "SELECT w.work_item_id, "
      "  (SELECT count(*) FROM warp.agent_leases l WHERE l.work_item_id = w.work_item_id "
      "    AND l.release_reason IN ('completed', 'completed_late')) AS completions, "
      "  (SELECT max(l.lease_id) FROM warp.agent_leases l WHERE l.work_item_id = w.work_item_id "
      "    AND l.release_reason IN ('completed', 'completed_late')) AS completed_lease, "
      "  (SELECT max(l.lease_id) FROM warp.agent_leases l "
      "    WHERE l.work_item_id = w.work_item_id) AS newest_lease "
      "FROM warp.work_items w WHERE w.state = 'done'");
  Rows done_bad;
  for (const auto& row : done_wrong) {
    if (row[1] != "1" || row[2] != row[3])
      done_bad.push_back(row);
  }
  EXPECT_TRUE(done_bad.empty()) << "done items without exactly one completed lease, or completed "
                                   "under a lease other than their newest (item, completions, "
                                   "completed lease, newest lease):\n"
                                << Format(done_bad);
  EXPECT_EQ(Count(conn(),
                  "SELECT count(*) FROM warp.work_items w WHERE w.state = 'dead' AND "
                  "EXISTS (SELECT 1 FROM warp.agent_leases l WHERE l.work_item_id = "
                  "w.work_item_id AND l.release_reason <> '')"),
            0)
      << "dead items with an accepted completion (the runner never fails)";

  // (5) The frozen instance's late completions were refused: each refused lease stays
  // unreleased by that completion, and at least one of them was overtaken by a newer lease of
  // the same work item acquired after it expired.
  std::string paused_log;
  for (const auto& log : paused->logs)
    paused_log += ReadFile(log);
  int refused = 0;
  int refused_and_released_again = 0;
  std::set<std::string> verdicts;
  for (std::sregex_iterator it(paused_log.begin(), paused_log.end(), kRefusal), end; it != end;
       ++it) {
    const std::string work = (*it)[1];
    const std::string verdict = (*it)[2];
    const std::string lease = (*it)[3];
    ++refused;
    verdicts.insert(verdict);
    EXPECT_TRUE(verdict == "overtaken" || verdict == "released") << it->str();
    const auto row = Query(conn(),
                           "SELECT l.release_reason, l.work_item_id, "
                           "(SELECT count(*) FROM warp.agent_leases n "
                           " WHERE n.work_item_id = l.work_item_id "
                           "   AND n.acquired_at >= l.expires_at) "
                           "FROM warp.agent_leases l WHERE l.lease_id = " +
                               lease + " AND l.holder_instance = '" + paused->name + "'");
    ASSERT_EQ(row.size(), 1u) << "refused lease " << lease << " is not a lease of " << paused->name;
    EXPECT_NE(row[0][0], "completed") << it->str();
    EXPECT_NE(row[0][0], "completed_late") << it->str();
    EXPECT_EQ(row[0][1], work) << it->str();
    if (std::stol(row[0][2]) > 0)
      ++refused_and_released_again;
  }
  EXPECT_GT(refused, 0) << refusal_line;
  EXPECT_GT(refused_and_released_again, 0)
      << "no refused lease of " << paused->name << " whose work was leased again after expiry";
  std::string verdict_list;
  for (const auto& v : verdicts)
    verdict_list += v + " ";

  const auto summary =
      Query(conn(),
            "SELECT (SELECT count(*) FROM warp.agent_leases), "
            "(SELECT count(*) FROM warp.work_items WHERE state = 'done'), "
            "(SELECT count(*) FROM warp.work_items WHERE state = 'dead'), "
            "(SELECT count(*) FROM warp.agent_leases WHERE release_reason = 'completed_late'), "
            "(SELECT count(*) FROM warp.agent_leases WHERE released_at IS NULL), "
            "(SELECT count(*) FROM warp.scheduler_runs), "
            "(SELECT count(*) FROM warp.scheduler_runs WHERE status = 'abandoned')");
  std::cout << "leases " << summary[0][0] << ", done " << summary[0][1] << ", dead "
            << summary[0][2] << ", late completions " << summary[0][3] << ", expired leases "
            << summary[0][4] << ", runs " << summary[0][5] << " (abandoned " << summary[0][6]
            << "), refused completions of " << paused->name << ": " << refused << " ("
            << verdict_list << "), took "
            << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - began).count()
            << "ms" << std::endl;
  if (HasFailure())
    std::cout << Diagnostics();
}

}  // namespace
