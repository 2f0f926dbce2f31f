// The watchdog over both stores (SPEC section 7): every rule on an injected clock (appear,
// persist, escalate, resolve, reopen), disabled rules, per-instance scopes, and the apply's
// guard against stale judgments. Built twice: against the memory store (label `unit`) and,
// with WARP_WATCHDOG_POSTGRES, against PostgreSQL with a fresh database per test (label
// `postgres`), where it also proves that a pass is non-destructive (every other table is
// identical row for row before and after) and that concurrent passes of two instances keep one
// open observation per (kind, subject).
//
// Time stands still unless a test advances it: the memory store's clock, or warp.test_now
// pinned on every session of the PostgreSQL stores. The watchdog's host clock follows the same
// time (plus an offset the clock_skew test sets), so nothing here sleeps.
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <future>
#include <initializer_list>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "store/memory/memory_store.hpp"
#include "tests/support/async.hpp"
#include "watchdog/watchdog.hpp"

#ifdef WARP_WATCHDOG_POSTGRES
#include <unistd.h>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>

#include "migrations/testdb/scratch_database.hpp"
#include "store/postgres/postgres_store.hpp"
#endif

namespace warp::watchdog {
namespace {

using namespace std::chrono_literals;
using store::Observation;
using store::ObservationChange;
using store::Severity;
using store::TimePoint;
using Change = ObservationChange::Kind;
using nlohmann::json;

const TimePoint kStart =
    std::chrono::sys_days{std::chrono::year{2024} / std::chrono::January / 15} + 9h;

template <class T>
T Await(boost::asio::io_context& io, store::Task<T> task) {
  return warp::test::Await(io, std::move(task), std::chrono::seconds(30));
}

// --- what a backend provides ---------------------------------------------------------------

class Harness {
 public:
  virtual ~Harness() = default;
  virtual store::Store& GetStore() = 0;
  /// Moves the store's time forward by `d`.
  virtual void Advance(store::Duration d) = 0;
  TimePoint now() const { return now_; }

 protected:
  TimePoint now_ = kStart;
};

class MemoryHarness final : public Harness {
 public:
  MemoryHarness() : store_([this] { return now_; }) {}
  store::Store& GetStore() override { return store_; }
  void Advance(store::Duration d) override { now_ += d; }

 private:
  store::MemoryStore store_;
};

struct Factory {
  std::string name;
  std::function<std::unique_ptr<Harness>(boost::asio::io_context&)> make;
};
void PrintTo(const Factory& f, std::ostream* os) {
  *os << f.name;
}

#ifdef WARP_WATCHDOG_POSTGRES
namespace pg = store::postgres;

/// A database per test, cloned from a template with every migration applied. The template's
/// name carries a hash of the migration files, so an edited or added migration gets a fresh
/// one; concurrent test processes build it once, under an advisory lock.
class PostgresHarness final : public Harness {
 public:
  explicit PostgresHarness(boost::asio::io_context& io) : io_(io), admin_(io.get_executor()) {
    const char* dsn = std::getenv("WARP_TEST_DSN");
    if (dsn == nullptr || *dsn == '\0')
      throw std::runtime_error("WARP_TEST_DSN is not set: run the suite through scripts/test.sh");
    dsn_ = dsn;
    Await(io_, admin_.Connect(dsn_, std::nullopt, 10s));
    const auto tpl = EnsureTemplate();
    static std::atomic<int> counter{0};
    database_ = "warp_wd_" + std::to_string(::getpid()) + "_" + std::to_string(++counter);
    Admin("CREATE DATABASE " + database_ + " TEMPLATE " + tpl);
    AddStore();
    sql_.emplace(io_.get_executor());
    Await(io_, sql_->Connect(conninfo(), std::nullopt, 10s));
    PinSql();
  }

  ~PostgresHarness() override {
    stores_.clear();
    sql_.reset();
    try {
      Admin("DROP DATABASE IF EXISTS " + database_ + " WITH (FORCE)");
    } catch (const std::exception&) {
      // A leftover database dies with the throwaway server.
    }
  }

  store::Store& GetStore() override { return *stores_.front(); }
  void Advance(store::Duration d) override {
    now_ += d;
    for (auto& s : stores_)
      Await(io_, s->PinNowForTests(now_));
    PinSql();
  }

  /// Another store (another instance's pool) on the same database, at the same time.
  pg::PostgresStore& AddStore() {
    pg::PostgresStoreSettings settings;
    settings.pool.conninfo = conninfo();
    settings.pool.size = 1;  // PinNowForTests sets a session variable
    stores_.push_back(
        std::make_unique<pg::PostgresStore>(io_.get_executor(), settings, logging::Logger()));
    Await(io_, stores_.back()->PinNowForTests(now_));
    return *stores_.back();
  }

  /// A direct session on the test database (fixed test statements only).
  pg::Result Sql(const std::string& sql, pg::Params params = {}) {
    return Await(io_, sql_->Execute(sql, std::move(params), 30s));
  }

  std::string conninfo() const { return dsn_ + " dbname=" + database_; }

 private:
  void Admin(const std::string& script) { Await(io_, admin_.ExecuteScript(script, 60s)); }

  /// The direct session's warp.now() follows the stores' (as PostgresStore::PinNowForTests).
  void PinSql() {
    const auto us =
        std::chrono::duration_cast<std::chrono::microseconds>(now_.time_since_epoch()).count();
    pg::Params text{fmt::format("{:%Y-%m-%d %H:%M:%S}.{:06}+00",
                                std::chrono::sys_seconds(std::chrono::seconds(us / 1'000'000)),
                                us % 1'000'000)};
    Await(io_,
          sql_->Execute("SELECT set_config('warp.test_now', $1, false)", std::move(text), 10s));
  }

  std::string EnsureTemplate() {
    return migrations::testdb::MigratedTemplate(
        std::filesystem::path(WARP_SOURCE_DIR) / "migrations", "warp_wd_tpl");
  }

  boost::asio::io_context& io_;
  std::string dsn_;
  std::string database_;
  pg::Connection admin_;
  std::optional<pg::Connection> sql_;
  std::vector<std::unique_ptr<pg::PostgresStore>> stores_;
};

Factory BackendFactory() {
  return {"Postgres",
          [](boost::asio::io_context& io) { return std::make_unique<PostgresHarness>(io); }};
}
#else
Factory BackendFactory() {
  return {"Memory", [](boost::asio::io_context&) { return std::make_unique<MemoryHarness>(); }};
}
#endif

// --- the fixture ---------------------------------------------------------------------------

config::Settings TestSettings() {
  config::Settings s;
  s.daemon.instance = "warp-a";
  s.daemon.group = "default";
  s.scheduler.interval = 10s;
  s.scheduler.takeover_after = 30s;
  s.watchdog = config::WatchdogSettings{};  // the SPEC's defaults: 30s, 5m/30m, 2.0, 3, 3...
  return s;
}

class WatchdogStoreTest : public ::testing::TestWithParam<Factory> {
 protected:
  void SetUp() override {
    harness_ = GetParam().make(io_);
    settings_ = TestSettings();
  }

  store::Store& store() { return harness_->GetStore(); }
  template <class T>
  T Run(store::Task<T> task) {
    return Await(io_, std::move(task));
  }
  TimePoint Now() const { return harness_->now(); }
  void Advance(store::Duration d) { harness_->Advance(d); }

  /// Enables only `rules` (the others would add observations the test does not look at).
  void OnlyRules(std::initializer_list<std::string_view> rules) {
    settings_.watchdog.disabled_rules.clear();
    for (const auto name : kRuleNames) {
      if (std::find(rules.begin(), rules.end(), name) == rules.end())
        settings_.watchdog.disabled_rules.emplace_back(name);
    }
    if (watchdog_)
      watchdog_->Reconfigure(settings_);
  }

  Watchdog& watchdog() {
    if (!watchdog_) {
      watchdog_.emplace(store(), settings_, logging::Logger(),
                        [this] { return harness_->now() + host_offset_; });
    }
    return *watchdog_;
  }
  PassReport Pass() { return Run(watchdog().RunPass()); }

  std::vector<Observation> All() { return Run(store().ListObservations(false)); }
  std::vector<Observation> OpenOf(std::string_view kind) {
    std::vector<Observation> out;
    for (auto& o : Run(store().ListObservations(true))) {
      if (o.kind == kind)
        out.push_back(std::move(o));
    }
    return out;
  }
  /// The only open observation of `kind`; nullopt (and a failure) unless there is exactly one.
  std::optional<Observation> TheOpen(std::string_view kind) {
    auto open = OpenOf(kind);
    EXPECT_EQ(open.size(), 1u) << "open " << kind << " observations";
    if (open.size() != 1)
      return std::nullopt;
    return open.front();
  }
  std::optional<Observation> ById(store::ObservationId id) {
    for (auto& o : All()) {
      if (o.observation_id == id)
        return o;
    }
    return std::nullopt;
  }
  static json Evidence(const Observation& o) { return json::parse(o.evidence_json); }

  /// Asserts the four later steps of every rule's life on an observation opened by the last
  /// pass: persisting moves last_seen and counts, and the change is reported.
  void ExpectPersisted(const Observation& first, std::string_view kind) {
    Advance(30s);
    Pass();
    auto again = TheOpen(kind);
    ASSERT_TRUE(again);
    EXPECT_EQ(again->observation_id, first.observation_id);
    EXPECT_EQ(again->subject, first.subject);
    EXPECT_EQ(again->occurrences, first.occurrences + 1);
    EXPECT_EQ(again->first_seen, first.first_seen);
    EXPECT_EQ(again->last_seen, Now());
  }
  void ExpectResolved(const Observation& o, const PassReport& report) {
    auto after = ById(o.observation_id);
    ASSERT_TRUE(after);
    ASSERT_TRUE(after->resolved_at) << o.kind << " " << o.subject << " is still open";
    EXPECT_EQ(*after->resolved_at, Now());
    EXPECT_TRUE(OpenOf(o.kind).empty());
    EXPECT_TRUE(std::any_of(report.changes.begin(), report.changes.end(), [&](const auto& c) {
      return c.change == Change::kResolved && c.observation.observation_id == o.observation_id;
    }));
  }
  /// A new observation for the same key, after `old` was resolved.
  void ExpectReopened(const Observation& old) {
    auto reopened = TheOpen(old.kind);
    ASSERT_TRUE(reopened);
    EXPECT_EQ(reopened->subject, old.subject);
    EXPECT_NE(reopened->observation_id, old.observation_id);
    EXPECT_EQ(reopened->occurrences, 1);
    EXPECT_EQ(reopened->first_seen, Now());
  }

  // Agents, work and dispatches, through the Store interface only.
  store::Agent AddAgent(const std::string& slug, const std::string& profile = "tp", int bound = 1) {
    if (!profile_made_) {
      store::ToolProfile p;
      p.tool_profile_id = "tp";
      p.operations = {"sync"};
      Run(store().PutToolProfile(std::move(p)));
      profile_made_ = true;
    }
    store::NewAgent a;
    a.agent_slug = slug;
    a.tool_profile_id = profile;
    a.runner = "noop";
    a.business_link = "spindle:" + slug;
    a.max_active_leases = bound;
    return Run(store().RegisterAgent(std::move(a)));
  }
  store::WorkItem Enqueue(const std::string& slug, int max_attempts = 3) {
    store::NewWork w;
    w.agent_slug = slug;
    w.kind = "sync";
    w.max_attempts = max_attempts;
    return Run(store().EnqueueWork(std::move(w), 3)).item;
  }
  /// Dispatches `item` in a cycle of its own (group `dispatch-test`, finished at once).
  store::Lease Dispatch(const store::WorkItem& item, int bound = 1) {
    store::CycleClaim claim{"dispatch-test/10000ms/" + std::to_string(++cycles_), "dispatch-test",
                            "warp-a", 30s};
    auto run = Run(store().ClaimCycle(std::move(claim))).run;
    store::DispatchBatch batch;
    batch.run_id = run.run_id;
    batch.cycle_id = run.cycle_id;
    batch.instance = "warp-a";
    batch.lease_ttl = 60s;
    batch.candidates.push_back({item.work_item_id, item.agent_id, bound, std::nullopt, ""});
    auto claims = Run(store().ClaimDispatches(std::move(batch)));
    Run(store().FinishRun(run.run_id, store::RunStatus::kCompleted, {}, ""));
    EXPECT_TRUE(claims.at(0).lease) << "work item " << item.work_item_id << " was not leased";
    return claims.at(0).lease.value_or(store::Lease{});
  }
  store::CompletionResult Complete(const store::Lease& lease, store::Outcome outcome,
                                   const std::string& detail = "") {
    store::Completion c;
    c.lease = {lease.lease_id, lease.fencing_token};
    c.outcome = outcome;
    c.detail = detail;
    return Run(store().CompleteWork(std::move(c), store::RetryPolicy{}));
  }
  void HeartbeatInstance(const std::string& name, const std::string& group = "default") {
    store::InstanceInfo info{name, group, "host-" + name, 42, "test"};
    Run(store().HeartbeatInstance(std::move(info)));
  }

  boost::asio::io_context io_;
  std::unique_ptr<Harness> harness_;
  config::Settings settings_;
  std::optional<Watchdog> watchdog_;
  store::Duration host_offset_{0};
  bool profile_made_ = false;
  int cycles_ = 0;
};

// --- the store-backed rules ------------------------------------------------------------------

TEST_P(WatchdogStoreTest, LeaseExpiredUnreleasedFollowsALeaseNobodyReleasedOrOvertook) {
  OnlyRules({kLeaseExpiredUnreleased});
  const auto agent = AddAgent("lea");
  const auto lease = Dispatch(Enqueue("lea"));
  Pass();
  EXPECT_TRUE(OpenOf(kLeaseExpiredUnreleased).empty()) << "the lease is live";

  Advance(61s);
  auto report = Pass();
  auto o = TheOpen(kLeaseExpiredUnreleased);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "agent:lea");
  EXPECT_EQ(o->agent_id, agent.agent_id);
  EXPECT_EQ(o->severity, Severity::kWarning);
  EXPECT_EQ(o->occurrences, 1);
  EXPECT_EQ(o->first_seen, Now());
  EXPECT_EQ(Evidence(*o)["lease_ids"], json::array({lease.lease_id}));
  EXPECT_EQ(Evidence(*o)["expired_for_ms"], 1000);
  ASSERT_EQ(report.changes.size(), 1u);
  EXPECT_EQ(report.changes[0].change, Change::kOpened);
  ExpectPersisted(*o, kLeaseExpiredUnreleased);

  // Its holder completes after all (accepted late: nobody leased the agent since).
  EXPECT_EQ(Complete(lease, store::Outcome::kDone).verdict,
            store::CompletionResult::Verdict::kAcceptedLate);
  Advance(1s);
  ExpectResolved(*o, Pass());

  Dispatch(Enqueue("lea"));
  Advance(61s);
  Pass();
  ExpectReopened(*o);
}

TEST_P(WatchdogStoreTest, CycleAbandonedIsARunningRunWhoseHeartbeatStopped) {
  OnlyRules({kCycleAbandoned});
  store::CycleClaim claim{"default/10000ms/1", "default", "warp-b", 30s};
  const auto run = Run(store().ClaimCycle(std::move(claim))).run;
  Advance(30s);
  Pass();
  EXPECT_TRUE(OpenOf(kCycleAbandoned).empty()) << "30s is not older than takeover_after";

  Advance(1s);
  Pass();
  auto o = TheOpen(kCycleAbandoned);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "run:" + std::to_string(run.run_id));
  EXPECT_EQ(Evidence(*o)["instance"], "warp-b");
  EXPECT_EQ(Evidence(*o)["heartbeat_age_ms"], 31000);
  ExpectPersisted(*o, kCycleAbandoned);

  // The heartbeat resumes: not abandoned any more.
  EXPECT_TRUE(Run(store().HeartbeatRun(run.run_id)));
  Advance(1s);
  ExpectResolved(*o, Pass());

  Advance(31s);
  Pass();
  ExpectReopened(*o);
}

TEST_P(WatchdogStoreTest, CycleOverrunIsALiveRunRunningLongerThanTheFactorTimesTheInterval) {
  OnlyRules({kCycleOverrun, kCycleAbandoned});
  store::CycleClaim claim{"default/10000ms/7", "default", "warp-b", 30s};
  const auto run = Run(store().ClaimCycle(std::move(claim))).run;
  Advance(20s);
  Run(store().HeartbeatRun(run.run_id));
  Pass();
  EXPECT_TRUE(OpenOf(kCycleOverrun).empty()) << "20s is not more than 2.0 x 10s";

  Advance(5s);
  Run(store().HeartbeatRun(run.run_id));
  Pass();
  auto o = TheOpen(kCycleOverrun);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "run:" + std::to_string(run.run_id));
  EXPECT_EQ(Evidence(*o)["limit_ms"], 20000);
  EXPECT_EQ(Evidence(*o)["running_for_ms"], 25000);
  Run(store().HeartbeatRun(run.run_id));
  ExpectPersisted(*o, kCycleOverrun);

  // The run stalls: that is cycle_abandoned, which replaces the overrun.
  Advance(2s);
  auto report = Pass();
  ExpectResolved(*o, report);
  EXPECT_EQ(OpenOf(kCycleAbandoned).size(), 1u);

  // It comes back to life, still overrunning.
  Run(store().HeartbeatRun(run.run_id));
  Pass();
  ExpectReopened(*o);
  EXPECT_TRUE(OpenOf(kCycleAbandoned).empty());

  // Finished: nothing is running.
  Run(store().FinishRun(run.run_id, store::RunStatus::kCompleted, {}, ""));
  Advance(1s);
  Pass();
  EXPECT_TRUE(OpenOf(kCycleOverrun).empty());
}

TEST_P(WatchdogStoreTest, CycleMissedReportsAGroupWithoutACompletedCycleAndEscalates) {
  OnlyRules({kCycleMissed});
  HeartbeatInstance("warp-b");  // the group exists from now on
  Advance(30s);
  HeartbeatInstance("warp-b");
  Pass();
  EXPECT_TRUE(OpenOf(kCycleMissed).empty()) << "3 intervals are not more than 3";

  Advance(1s);
  Pass();
  auto o = TheOpen(kCycleMissed);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "group:default");
  EXPECT_EQ(o->severity, Severity::kWarning);
  EXPECT_EQ(Evidence(*o)["missed_intervals"], 3);
  EXPECT_TRUE(Evidence(*o)["last_run_id"].is_null());

  // Twice the threshold: critical, in place.
  Advance(30s);
  auto report = Pass();
  auto escalated = TheOpen(kCycleMissed);
  ASSERT_TRUE(escalated);
  EXPECT_EQ(escalated->observation_id, o->observation_id);
  EXPECT_EQ(escalated->severity, Severity::kCritical);
  EXPECT_EQ(escalated->occurrences, 2);
  ASSERT_EQ(report.changes.size(), 1u);
  EXPECT_EQ(report.changes[0].change, Change::kEscalated);
  EXPECT_EQ(report.changes[0].previous_severity, Severity::kWarning);

  // Any instance of the group completes a cycle.
  store::CycleClaim claim{"default/10000ms/100", "default", "warp-b", 30s};
  auto run = Run(store().ClaimCycle(std::move(claim))).run;
  Run(store().FinishRun(run.run_id, store::RunStatus::kCompleted, {}, ""));
  Advance(1s);
  ExpectResolved(*o, Pass());

  Advance(31s);
  Pass();
  ExpectReopened(*o);
  EXPECT_EQ(Evidence(*TheOpen(kCycleMissed))["last_run_id"], run.run_id);
}

TEST_P(WatchdogStoreTest, CycleMissedJudgesAnotherGroupByTheIntervalOfItsCycleIds) {
  OnlyRules({kCycleMissed});
  HeartbeatInstance("warp-c", "batch");
  store::CycleClaim claim{"batch/60000ms/5", "batch", "warp-c", 30s};
  auto run = Run(store().ClaimCycle(std::move(claim))).run;
  Run(store().FinishRun(run.run_id, store::RunStatus::kCompleted, {}, ""));
  Advance(3min);
  Pass();
  EXPECT_TRUE(OpenOf(kCycleMissed).empty()) << "3 x 60s, not our 3 x 10s";
  Advance(1s);
  Pass();
  auto o = TheOpen(kCycleMissed);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "group:batch");
  EXPECT_EQ(Evidence(*o)["interval_ms"], 60000);
}

TEST_P(WatchdogStoreTest, WorkBacklogAgeWarnsThenEscalatesInPlace) {
  OnlyRules({kWorkBacklogAge});
  const auto agent = AddAgent("bk");
  const auto item = Enqueue("bk");
  Advance(5min - 1s);
  Pass();
  EXPECT_TRUE(OpenOf(kWorkBacklogAge).empty());

  Advance(1s);
  Pass();
  auto o = TheOpen(kWorkBacklogAge);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "agent:bk");
  EXPECT_EQ(o->agent_id, agent.agent_id);
  EXPECT_EQ(o->severity, Severity::kWarning);
  EXPECT_EQ(Evidence(*o)["oldest_work_item_id"], item.work_item_id);
  EXPECT_EQ(Evidence(*o)["old_items"], 1);
  ExpectPersisted(*o, kWorkBacklogAge);

  Advance(25min);
  auto report = Pass();
  auto critical = TheOpen(kWorkBacklogAge);
  ASSERT_TRUE(critical);
  EXPECT_EQ(critical->observation_id, o->observation_id);
  EXPECT_EQ(critical->severity, Severity::kCritical);
  ASSERT_EQ(report.changes.size(), 1u);
  EXPECT_EQ(report.changes[0].change, Change::kEscalated);

  Dispatch(item);
  Advance(1s);
  ExpectResolved(*o, Pass());

  Enqueue("bk");
  Advance(6min);
  Pass();
  ExpectReopened(*o);
  EXPECT_EQ(TheOpen(kWorkBacklogAge).value().severity, Severity::kWarning)
      << "a reopened one starts over";
}

TEST_P(WatchdogStoreTest, DispatchFailureStreakCountsTheLatestFinishedAttempts) {
  OnlyRules({kDispatchFailureStreak});
  const auto agent = AddAgent("fs");
  auto fail = [&] {
    const auto lease = Dispatch(Enqueue("fs", 1));
    Complete(lease, store::Outcome::kFailed, "exit 3");
    Advance(1s);
    return lease;
  };
  fail();
  fail();
  Pass();
  EXPECT_TRUE(OpenOf(kDispatchFailureStreak).empty()) << "2 failures, threshold 3";

  const auto third = fail();
  Pass();
  auto o = TheOpen(kDispatchFailureStreak);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "agent:fs");
  EXPECT_EQ(o->agent_id, agent.agent_id);
  EXPECT_EQ(o->severity, Severity::kWarning);
  EXPECT_EQ(Evidence(*o)["streak"], 3);
  EXPECT_EQ(Evidence(*o)["lease_ids"].at(0), third.lease_id);
  EXPECT_EQ(Evidence(*o)["last_error"], "exit 3");
  ExpectPersisted(*o, kDispatchFailureStreak);

  // An expired lease is a failed attempt too; 6 = 2 x 3 is critical.
  fail();
  fail();
  Dispatch(Enqueue("fs", 1));
  Advance(61s);
  Pass();
  auto critical = TheOpen(kDispatchFailureStreak);
  ASSERT_TRUE(critical);
  EXPECT_EQ(critical->observation_id, o->observation_id);
  EXPECT_EQ(critical->severity, Severity::kCritical);
  EXPECT_EQ(Evidence(*critical)["streak"], 6);

  // One success ends the streak.
  Complete(Dispatch(Enqueue("fs")), store::Outcome::kDone);
  Advance(1s);
  ExpectResolved(*o, Pass());

  fail();
  fail();
  fail();
  Pass();
  ExpectReopened(*o);
}

TEST_P(WatchdogStoreTest, AgentUnresponsiveIsWorkOutstandingWithoutAnyCompletion) {
  OnlyRules({kAgentUnresponsive});
  const auto agent = AddAgent("ur");
  Complete(Dispatch(Enqueue("ur")), store::Outcome::kDone);  // it used to answer
  Advance(1s);
  const auto item = Enqueue("ur");
  const auto first = Dispatch(item);
  Advance(15min - 1s);
  Pass();
  EXPECT_TRUE(OpenOf(kAgentUnresponsive).empty());

  Advance(1s);
  Pass();
  auto o = TheOpen(kAgentUnresponsive);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "agent:ur");
  EXPECT_EQ(o->agent_id, agent.agent_id);
  EXPECT_EQ(Evidence(*o)["first_lease_id"], first.lease_id);
  EXPECT_EQ(Evidence(*o)["unanswered_leases"], 1);
  EXPECT_FALSE(Evidence(*o)["last_completion_at"].is_null());

  // Its work expired, went back to pending and was leased again: still nothing answered.
  Run(store().RequeueExpiredWork());
  const auto second = Dispatch(item);
  ExpectPersisted(*o, kAgentUnresponsive);
  EXPECT_EQ(Evidence(*TheOpen(kAgentUnresponsive))["unanswered_leases"], 2);

  Complete(second, store::Outcome::kDone);
  Advance(1s);
  ExpectResolved(*o, Pass());

  Dispatch(Enqueue("ur"));
  Advance(15min);
  Pass();
  ExpectReopened(*o);
}

TEST_P(WatchdogStoreTest, InstanceStaleFollowsTheInstanceHeartbeat) {
  OnlyRules({kInstanceStale});
  HeartbeatInstance("warp-b");
  Advance(2min);
  Pass();
  EXPECT_TRUE(OpenOf(kInstanceStale).empty());

  Advance(1s);
  Pass();
  auto o = TheOpen(kInstanceStale);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "instance:warp-b");
  EXPECT_EQ(Evidence(*o)["host"], "host-warp-b");
  EXPECT_EQ(Evidence(*o)["heartbeat_age_ms"], 121000);
  ExpectPersisted(*o, kInstanceStale);

  HeartbeatInstance("warp-b");
  Advance(1s);
  ExpectResolved(*o, Pass());

  Advance(3min);
  Pass();
  ExpectReopened(*o);
}

TEST_P(WatchdogStoreTest, LateCompletionIsInfoWhenAcceptedAndWarningWhenOvertaken) {
  OnlyRules({kLateCompletion});
  const auto agent = AddAgent("lc");
  const auto late = Dispatch(Enqueue("lc"));
  Advance(61s);
  EXPECT_EQ(Complete(late, store::Outcome::kDone).verdict,
            store::CompletionResult::Verdict::kAcceptedLate);
  Pass();
  auto o = TheOpen(kLateCompletion);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "agent:lc");
  EXPECT_EQ(o->agent_id, agent.agent_id);
  EXPECT_EQ(o->severity, Severity::kInfo);
  EXPECT_EQ(Evidence(*o)["accepted_late"], 1);

  // A stale holder completes after the agent was leased again: refused, and escalated.
  const auto item = Enqueue("lc");
  const auto stale = Dispatch(item);
  Advance(61s);
  Run(store().RequeueExpiredWork());
  Dispatch(item);
  EXPECT_EQ(Complete(stale, store::Outcome::kDone).verdict,
            store::CompletionResult::Verdict::kOvertaken);
  Pass();
  auto escalated = TheOpen(kLateCompletion);
  ASSERT_TRUE(escalated);
  EXPECT_EQ(escalated->observation_id, o->observation_id);
  EXPECT_EQ(escalated->severity, Severity::kWarning);
  EXPECT_EQ(Evidence(*escalated)["refused_overtaken"], 1);
  EXPECT_EQ(Evidence(*escalated)["accepted_late"], 0) << "the first one left the 60s window";
  ExpectPersisted(*escalated, kLateCompletion);

  Advance(31s);  // the refusal is 61s old: out of the window of two watchdog intervals
  ExpectResolved(*o, Pass());

  const auto again = Dispatch(Enqueue("lc"));
  Advance(61s);
  Complete(again, store::Outcome::kFailed);
  Pass();
  ExpectReopened(*o);
}

TEST_P(WatchdogStoreTest, WorkspaceRetentionOverdueUntilDeletedOrExtended) {
  OnlyRules({kWorkspaceRetentionOverdue});
  const auto agent = AddAgent("ws");
  store::NewWorkspace w;
  w.path = "/srv/warp/ws";
  w.agent_id = agent.agent_id;
  w.retention_policy = "30d";
  w.retain_until = Now() + 1h;
  const auto ws = Run(store().PutWorkspace(w));
  Advance(1h - 1s);
  Pass();
  EXPECT_TRUE(OpenOf(kWorkspaceRetentionOverdue).empty());

  Advance(1s);
  Pass();
  auto o = TheOpen(kWorkspaceRetentionOverdue);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "workspace:" + std::to_string(ws.workspace_id));
  EXPECT_EQ(o->agent_id, agent.agent_id);
  EXPECT_EQ(o->severity, Severity::kInfo);
  EXPECT_EQ(Evidence(*o)["path"], "/srv/warp/ws");
  ExpectPersisted(*o, kWorkspaceRetentionOverdue);

  w.retain_until = Now() + 1h;  // extended
  Run(store().PutWorkspace(w));
  Advance(1s);
  ExpectResolved(*o, Pass());

  Advance(1h);
  Pass();
  ExpectReopened(*o);
  w.lifecycle = store::WorkspaceLifecycle::kDeleted;
  Run(store().PutWorkspace(w));
  Advance(1s);
  Pass();
  EXPECT_TRUE(OpenOf(kWorkspaceRetentionOverdue).empty()) << "a deleted workspace is not retained";
}

TEST_P(WatchdogStoreTest, LearningProposalReviewStaleWhilePendingReview) {
  OnlyRules({kLearningProposalReviewStale});
  const auto agent = AddAgent("lp");
  store::LearningProposal p;
  p.agent_id = agent.agent_id;
  p.title = "use the read replica";
  p = Run(store().PutLearningProposal(p));
  Advance(7 * 24h - 1s);
  Pass();
  EXPECT_TRUE(OpenOf(kLearningProposalReviewStale).empty());

  Advance(1s);
  Pass();
  auto o = TheOpen(kLearningProposalReviewStale);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "proposal:" + std::to_string(p.proposal_id));
  EXPECT_EQ(o->agent_id, agent.agent_id);
  EXPECT_EQ(Evidence(*o)["review_status"], "proposed");
  ExpectPersisted(*o, kLearningProposalReviewStale);

  p.review_status = store::ReviewStatus::kApproved;
  Run(store().PutLearningProposal(p));
  Advance(1s);
  ExpectResolved(*o, Pass());

  p.review_status = store::ReviewStatus::kInReview;  // sent back for another review
  Run(store().PutLearningProposal(p));
  Advance(1s);
  Pass();
  ExpectReopened(*o);
}

TEST_P(WatchdogStoreTest, AgentToolProfileMissingUntilTheProfileExistsOrTheAgentRetires) {
  OnlyRules({kAgentToolProfileMissing});
  AddAgent("ok");
  const auto ghost = AddAgent("ghost", "erp-read");
  const auto gone = AddAgent("gone", "old-profile");
  Pass();
  auto open = OpenOf(kAgentToolProfileMissing);
  ASSERT_EQ(open.size(), 2u);
  EXPECT_EQ(open[0].subject, "agent:ghost");
  EXPECT_EQ(open[0].agent_id, ghost.agent_id);
  EXPECT_EQ(Evidence(open[0])["tool_profile_id"], "erp-read");
  EXPECT_EQ(open[1].subject, "agent:gone");

  Advance(30s);
  Pass();
  EXPECT_EQ(OpenOf(kAgentToolProfileMissing).at(0).occurrences, 2);

  store::ToolProfile p;
  p.tool_profile_id = "erp-read";
  Run(store().PutToolProfile(std::move(p)));
  Run(store().SetAgentLifecycle("gone", store::Lifecycle::kRetired));
  Advance(1s);
  auto report = Pass();
  EXPECT_TRUE(OpenOf(kAgentToolProfileMissing).empty());
  EXPECT_EQ(report.changes.size(), 2u);
  // No reopen: the interface can neither delete a profile nor un-retire an agent.
  (void)gone;
}

// --- the daemon-side rules -----------------------------------------------------------------

TEST_P(WatchdogStoreTest, StoreUnreachableRecordsAnOutageOnceTheStoreIsBack) {
  OnlyRules({kStoreUnreachable});
  const auto start = Now() - 42s;
  watchdog().RecordOutage(start, Now() - 2s, 7, "postgres: connection refused");
  Pass();
  auto o = TheOpen(kStoreUnreachable);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "instance:warp-a");
  EXPECT_EQ(Evidence(*o)["duration_ms"], 40000);
  EXPECT_EQ(Evidence(*o)["failed_attempts"], 7);
  EXPECT_EQ(Evidence(*o)["start"], FormatTime(start));
  EXPECT_EQ(Evidence(*o)["last_error"], "postgres: connection refused");

  // Two outages before the next pass: one observation covering both.
  watchdog().RecordOutage(Now(), Now() + 1s, 2, "a");
  watchdog().RecordOutage(Now() + 5s, Now() + 6s, 3, "b");
  ExpectPersisted(*o, kStoreUnreachable);
  EXPECT_EQ(Evidence(*TheOpen(kStoreUnreachable))["outages"], 2);
  EXPECT_EQ(Evidence(*TheOpen(kStoreUnreachable))["failed_attempts"], 5);

  Advance(30s);
  ExpectResolved(*o, Pass());

  watchdog().RecordOutage(Now() - 10s, Now(), 1, "c");
  Pass();
  ExpectReopened(*o);
}

TEST_P(WatchdogStoreTest, StoreLatencyReportsTheSlowestRoundTripSinceTheLastPass) {
  OnlyRules({kStoreLatency});
  watchdog().ObserveLatency(499ms);
  Pass();
  EXPECT_TRUE(OpenOf(kStoreLatency).empty());

  watchdog().ObserveLatency(120ms);
  watchdog().ObserveLatency(800ms);
  Pass();
  auto o = TheOpen(kStoreLatency);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "instance:warp-a");
  EXPECT_EQ(Evidence(*o)["max_ms"], 800);
  watchdog().ObserveLatency(600ms);
  ExpectPersisted(*o, kStoreLatency);

  Advance(30s);
  ExpectResolved(*o, Pass());  // only the pass's own probe: fast

  watchdog().ObserveLatency(2s);
  Pass();
  ExpectReopened(*o);
}

TEST_P(WatchdogStoreTest, ClockSkewComparesTheHostClockWithStoreTime) {
  OnlyRules({kClockSkew});
  host_offset_ = -2s;  // exactly the threshold: not beyond it
  Pass();
  EXPECT_TRUE(OpenOf(kClockSkew).empty());

  host_offset_ = -5s;  // the host is 5s behind
  Pass();
  auto o = TheOpen(kClockSkew);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->subject, "instance:warp-a");
  EXPECT_EQ(Evidence(*o)["skew_ms"], 5000);
  ExpectPersisted(*o, kClockSkew);

  host_offset_ = 0s;
  Advance(1s);
  ExpectResolved(*o, Pass());

  host_offset_ = 1min;
  Advance(1s);
  Pass();
  ExpectReopened(*o);
  EXPECT_EQ(Evidence(*TheOpen(kClockSkew))["skew_ms"], -60000);
}

TEST_P(WatchdogStoreTest, AnInstanceNeverResolvesWhatAnotherInstanceSaw) {
  OnlyRules({kStoreUnreachable});
  watchdog().RecordOutage(Now() - 5s, Now(), 3, "down");
  Pass();
  ASSERT_TRUE(TheOpen(kStoreUnreachable));

  auto other_settings = settings_;
  other_settings.daemon.instance = "warp-b";
  Watchdog other(store(), other_settings, logging::Logger(), [this] { return Now(); });
  Advance(1s);
  Run(other.RunPass());
  auto open = OpenOf(kStoreUnreachable);
  ASSERT_EQ(open.size(), 1u);
  EXPECT_EQ(open[0].subject, "instance:warp-a");
}

// --- the pass as a whole -------------------------------------------------------------------

TEST_P(WatchdogStoreTest, ADisabledRuleNeitherOpensNorResolves) {
  OnlyRules({kWorkBacklogAge, kInstanceStale});
  AddAgent("dr");
  const auto item = Enqueue("dr");
  Advance(6min);
  Pass();
  auto o = TheOpen(kWorkBacklogAge);
  ASSERT_TRUE(o);

  OnlyRules({kInstanceStale});
  Dispatch(item);  // the condition clears...
  HeartbeatInstance("warp-b");
  Advance(3min);  // ...and another one appears
  Enqueue("dr");
  Advance(6min);
  Pass();
  auto still = TheOpen(kWorkBacklogAge);
  ASSERT_TRUE(still) << "a disabled rule does not resolve";
  EXPECT_EQ(still->observation_id, o->observation_id);
  EXPECT_EQ(still->occurrences, 1) << "nor refresh";
  EXPECT_EQ(OpenOf(kInstanceStale).size(), 1u) << "the enabled rules still run";

  OnlyRules({kWorkBacklogAge});
  Pass();
  auto again = TheOpen(kWorkBacklogAge);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->observation_id, o->observation_id) << "the new backlog continues it";
  EXPECT_EQ(again->occurrences, 2);
}

TEST_P(WatchdogStoreTest, ApplyNeverOverridesANewerJudgment) {
  const auto at = Now();
  store::ObservationBatch newer;
  newer.at = at;
  newer.scopes = {{"instance_stale", std::nullopt}};
  newer.observations = {{"instance_stale", "instance:x", std::nullopt, Severity::kWarning, "{}"}};
  auto opened = Run(store().ApplyObservations(newer));
  ASSERT_EQ(opened.size(), 1u);

  // An older pass that did not see it must not resolve it...
  store::ObservationBatch older;
  older.at = at - 1s;
  older.scopes = {{"instance_stale", std::nullopt}};
  EXPECT_TRUE(Run(store().ApplyObservations(older)).empty());
  // ...nor count it, and a pass that resolved it keeps it resolved against an older pass.
  older.observations = newer.observations;
  EXPECT_TRUE(Run(store().ApplyObservations(older)).empty());
  store::ObservationBatch resolve;
  resolve.at = at + 1s;
  resolve.scopes = newer.scopes;
  ASSERT_EQ(Run(store().ApplyObservations(resolve)).size(), 1u);
  older.at = at;
  EXPECT_TRUE(Run(store().ApplyObservations(older)).empty());
  auto all = All();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].occurrences, 1);
  EXPECT_EQ(all[0].resolved_at, at + 1s);
}

TEST_P(WatchdogStoreTest, ApplyRejectsObservationsOutsideTheScopesAndDuplicates) {
  store::ObservationBatch batch;
  batch.at = Now();
  batch.scopes = {{"store_latency", std::string("instance:a")}};
  batch.observations = {{"store_latency", "instance:b", std::nullopt, Severity::kWarning, "{}"}};
  try {
    Run(store().ApplyObservations(batch));
    ADD_FAILURE() << "an observation outside the scopes was applied";
  } catch (const store::StoreError& e) {
    EXPECT_EQ(e.kind(), store::StoreError::Kind::kInvalid) << e.what();
  }
  batch.observations = {{"store_latency", "instance:a", std::nullopt, Severity::kWarning, "{}"},
                        {"store_latency", "instance:a", std::nullopt, Severity::kInfo, "{}"}};
  try {
    Run(store().ApplyObservations(batch));
    ADD_FAILURE() << "a duplicate key was applied";
  } catch (const store::StoreError& e) {
    EXPECT_EQ(e.kind(), store::StoreError::Kind::kInvalid) << e.what();
  }
  EXPECT_TRUE(All().empty()) << "nothing of a rejected batch is written";
}

TEST_P(WatchdogStoreTest, SeverityNeverDropsWhileOpen) {
  OnlyRules({kWorkBacklogAge});
  AddAgent("sv");
  const auto old_item = Enqueue("sv");
  Advance(31min);
  Pass();
  ASSERT_EQ(TheOpen(kWorkBacklogAge).value().severity, Severity::kCritical);
  Dispatch(old_item);  // a younger item is now the oldest: warning age
  Enqueue("sv");
  Advance(6min);
  Pass();
  auto o = TheOpen(kWorkBacklogAge);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->severity, Severity::kCritical);
  EXPECT_EQ(o->occurrences, 2);
  EXPECT_LT(Evidence(*o)["oldest_age_ms"], 30 * 60 * 1000) << "the evidence is current";
}

#ifdef WARP_WATCHDOG_POSTGRES
// --- PostgreSQL only -----------------------------------------------------------------------

PostgresHarness& Pg(Harness& h) {
  return static_cast<PostgresHarness&>(h);
}

/// Every row of every table of schema warp but watchdog_observations, as JSON text, by table.
/// The tables come from the catalog, so a table added later is covered too.
std::map<std::string, std::vector<std::string>> Snapshot(PostgresHarness& pg) {
  std::map<std::string, std::vector<std::string>> out;
  auto tables = pg.Sql(
      "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
      "WHERE n.nspname = 'warp' AND c.relkind IN ('r', 'p') "
      "AND c.relname <> 'watchdog_observations' ORDER BY 1");
  for (int i = 0; i < tables.rows(); ++i) {
    const auto table = tables.GetString(i, 0);
    auto ident = pg.Sql("SELECT quote_ident($1)", {table}).GetString(0, 0);
    auto rows = pg.Sql("SELECT to_jsonb(t)::text FROM warp." + ident + " t ORDER BY 1");
    auto& list = out[table];
    for (int r = 0; r < rows.rows(); ++r)
      list.push_back(rows.GetString(r, 0));
  }
  return out;
}

TEST_P(WatchdogStoreTest, APassChangesNoRowOutsideTheObservations) {
  auto& pg = Pg(*harness_);
  // Every store-backed anomaly at once.
  HeartbeatInstance("warp-b");  // goes stale; its group misses cycles
  AddAgent("ghost", "missing-profile");
  const auto agent = AddAgent("any");
  store::NewWorkspace w;
  w.path = "/srv/ws/any";
  w.agent_id = agent.agent_id;
  w.retain_until = Now() + 1h;
  Run(store().PutWorkspace(w));
  store::LearningProposal p;
  p.agent_id = agent.agent_id;
  Run(store().PutLearningProposal(p));
  store::CycleClaim abandoned{"default/10000ms/1", "default", "warp-b", 30s};
  Run(store().ClaimCycle(std::move(abandoned)));
  AddAgent("fails");
  for (int i = 0; i < 3; ++i)
    Complete(Dispatch(Enqueue("fails", 1)), store::Outcome::kFailed, "boom");
  AddAgent("backlog");
  Enqueue("backlog");
  Advance(8 * 24h);
  AddAgent("late");
  const auto item = Enqueue("late");
  const auto stale = Dispatch(item);
  AddAgent("late2");
  const auto late = Dispatch(Enqueue("late2"));
  AddAgent("hung");
  Dispatch(Enqueue("hung"));
  Advance(16min);
  Run(store().RequeueExpiredWork());
  const auto fresh = Dispatch(item);
  EXPECT_EQ(Complete(stale, store::Outcome::kDone).verdict,
            store::CompletionResult::Verdict::kOvertaken);
  EXPECT_EQ(Complete(late, store::Outcome::kDone).verdict,
            store::CompletionResult::Verdict::kAcceptedLate);
  store::CycleClaim overrun{"default/10000ms/2", "default", "warp-a", 30s};
  const auto run = Run(store().ClaimCycle(std::move(overrun))).run;
  Advance(25s);
  Run(store().HeartbeatRun(run.run_id));
  (void)fresh;

  const auto before = Snapshot(pg);
  ASSERT_GT(before.size(), 8u);
  const auto report = Pass();
  EXPECT_EQ(Snapshot(pg), before);

  std::set<std::string> opened;
  for (const auto& c : report.changes)
    opened.insert(c.observation.kind);
  for (const auto name : kRuleNames) {
    if (IsStoreRule(name)) {
      EXPECT_TRUE(opened.contains(std::string(name))) << name << " found nothing to report";
    }
  }
}

TEST_P(WatchdogStoreTest, ConcurrentPassesOfTwoInstancesKeepOneOpenObservationPerKey) {
  auto& pg = Pg(*harness_);
  auto& second = pg.AddStore();
  auto other_settings = settings_;
  other_settings.daemon.instance = "warp-b";
  Watchdog a(store(), settings_, logging::Logger(), [this] { return Now(); });
  Watchdog b(second, other_settings, logging::Logger(), [this] { return Now(); });
  AddAgent("dd");
  HeartbeatInstance("warp-z");
  int passes = 0;
  for (int round = 0; round < 24; ++round) {
    // Conditions come and go, so that passes open, refresh and resolve concurrently.
    if (round % 3 == 0)
      HeartbeatInstance("warp-z");
    if (round % 4 == 0)
      Enqueue("dd");
    if (round % 4 == 2) {
      for (const auto& item : Run(store().ListWork(store::WorkState::kPending)))
        Dispatch(item);
    }
    a.RecordOutage(Now() - 1s, Now(), 1, "x");
    b.RecordOutage(Now() - 1s, Now(), 1, "y");
    Advance(70s);
    auto fa = boost::asio::co_spawn(io_, a.RunPass(), boost::asio::use_future);
    auto fb = boost::asio::co_spawn(io_, b.RunPass(), boost::asio::use_future);
    while (fa.wait_for(0s) != std::future_status::ready ||
           fb.wait_for(0s) != std::future_status::ready) {
      io_.restart();
      io_.run_one_for(50ms);
    }
    fa.get();
    fb.get();
    passes += 2;
    auto dup = pg.Sql(
        "SELECT kind || ' ' || subject FROM warp.watchdog_observations "
        "WHERE resolved_at IS NULL GROUP BY kind, subject HAVING count(*) > 1");
    ASSERT_EQ(dup.rows(), 0) << "round " << round << ": " << dup.GetString(0, 0);
  }
  EXPECT_EQ(passes, 48);
  auto reopened =
      pg.Sql("SELECT count(*) FROM warp.watchdog_observations WHERE kind = 'instance_stale'");
  EXPECT_GT(reopened.GetInt64(0, 0), 1) << "the test must make observations come and go";
  EXPECT_EQ(OpenOf(kStoreUnreachable).size(), 2u) << "one per instance";
}

TEST_P(WatchdogStoreTest, AnAgentsOwnRefusedCompletionThroughSqlIsALateCompletion) {
  auto& pg = Pg(*harness_);
  OnlyRules({kLateCompletion});
  AddAgent("sql");
  const auto item = Enqueue("sql");
  const auto stale = Dispatch(item);
  Advance(61s);
  Run(store().RequeueExpiredWork());
  Dispatch(item);
  auto verdict = pg.Sql("SELECT warp.complete_work($1::bigint, $2::bigint, 'done', '{}')",
                        {std::to_string(stale.lease_id), std::to_string(stale.fencing_token)});
  EXPECT_EQ(verdict.GetString(0, 0), "overtaken");
  auto audit = pg.Sql(
      "SELECT actor, detail->>'verdict' FROM warp.audit_events "
      "WHERE event_type = 'completion_refused'");
  ASSERT_EQ(audit.rows(), 1);
  EXPECT_EQ(audit.GetString(0, 1), "overtaken");
  Pass();
  auto o = TheOpen(kLateCompletion);
  ASSERT_TRUE(o);
  EXPECT_EQ(Evidence(*o)["refused_overtaken"], 1);
  EXPECT_EQ(o->severity, Severity::kWarning);
}
#endif

INSTANTIATE_TEST_SUITE_P(Store, WatchdogStoreTest, ::testing::Values(BackendFactory()),
                         [](const ::testing::TestParamInfo<Factory>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace warp::watchdog
