// The store contract suite (SPEC sections 2-5 and 12): one value-parameterized GoogleTest that
// every Store backend must pass. Today it runs against the memory store; the PostgreSQL store
// joins by adding a StoreFactory and one INSTANTIATE_TEST_SUITE_P line at the bottom.
//
// The tests speak only the Store interface. A backend's Harness supplies the two things the
// interface cannot express: moving the store's clock (database time) forward, and another
// instance holding an agent's advisory lock. Time stands still unless a test advances it, so
// nothing here sleeps, and every expected instant is computed from the store's own Now().
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "store/memory/memory_store.hpp"
#include "store/store.hpp"

#ifdef WARP_CONTRACT_POSTGRES
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>

#include "migrations/testdb/scratch_database.hpp"
#include "store/postgres/postgres_store.hpp"
#endif

namespace warp::store {

// Readable failure messages; GoogleTest finds these by argument-dependent lookup.
void PrintTo(Lifecycle v, std::ostream* os) {
  *os << ToString(v);
}
void PrintTo(WorkState v, std::ostream* os) {
  *os << ToString(v);
}
void PrintTo(RunStatus v, std::ostream* os) {
  *os << ToString(v);
}
void PrintTo(Decision v, std::ostream* os) {
  *os << ToString(v);
}
void PrintTo(CompletionResult::Verdict v, std::ostream* os) {
  *os << ToString(v);
}
void PrintTo(ClaimResult::Outcome v, std::ostream* os) {
  *os << ToString(v);
}
void PrintTo(StoreError::Kind v, std::ostream* os) {
  switch (v) {
    case StoreError::Kind::kUnavailable:
      *os << "unavailable";
      return;
    case StoreError::Kind::kInvalid:
      *os << "invalid";
      return;
    case StoreError::Kind::kConflict:
      *os << "conflict";
      return;
    case StoreError::Kind::kNotFound:
      *os << "not_found";
      return;
    case StoreError::Kind::kInternal:
      *os << "internal";
      return;
  }
  *os << "?";
}

void PrintTo(const WorkItem& w, std::ostream* os) {
  *os << "work " << w.work_item_id << " (agent " << w.agent_id << ", " << ToString(w.state)
      << ", attempt " << w.attempts << "/" << w.max_attempts << ")";
}
void PrintTo(const Lease& l, std::ostream* os) {
  *os << "lease " << l.lease_id << " (agent " << l.agent_id << ", token " << l.fencing_token
      << (l.released_at ? ", released" : "") << ")";
}
void PrintTo(const DispatchDecision& d, std::ostream* os) {
  *os << "decision " << d.cycle_id << "/" << d.work_item_id << "#" << d.attempt << " "
      << ToString(d.decision);
}
void PrintTo(const Agent& a, std::ostream* os) {
  *os << "agent " << a.agent_id << " " << a.agent_slug;
}
void PrintTo(const SchedulerRun& r, std::ostream* os) {
  *os << "run " << r.run_id << " of " << r.cycle_id << " (" << ToString(r.status) << ")";
}

namespace test {
namespace {

using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::seconds;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::SizeIs;
using Verdict = CompletionResult::Verdict;
using ClaimOutcome = ClaimResult::Outcome;

// --- what a backend provides ---------------------------------------------------------------

/// One fresh, empty store under test plus the hooks the Store interface cannot express.
/// Owned by one test; used from the test's thread and io_context only.
class Harness {
 public:
  virtual ~Harness() = default;
  virtual Store& GetStore() = 0;
  /// Moves the store's clock (its "database time") forward by `d`. The clock never moves
  /// otherwise, so two calls to Store::Now() without an advance return the same instant.
  virtual void AdvanceClock(Duration d) = 0;
  /// Makes another instance hold (or let go of) agent `agent`'s advisory lock.
  virtual void SetAgentLockedElsewhere(AgentId agent, bool locked) = 0;
};

/// The suite's parameter. `make` builds a harness on the test's io_context (the PostgreSQL
/// store runs its connection on it); `name` becomes the test name suffix.
struct StoreFactory {
  std::string name;
  std::function<std::unique_ptr<Harness>(boost::asio::io_context&)> make;
};

void PrintTo(const StoreFactory& factory, std::ostream* os) {
  *os << factory.name;
}

/// The memory store on a manual clock that starts at a fixed instant.
class MemoryHarness final : public Harness {
 public:
  MemoryHarness()
      : now_(std::make_shared<TimePoint>(
            std::chrono::sys_days{std::chrono::year{2024} / std::chrono::January / 15} + hours{9})),
        store_([now = now_] { return *now; }) {}

  Store& GetStore() override { return store_; }
  void AdvanceClock(Duration d) override { *now_ += d; }
  void SetAgentLockedElsewhere(AgentId agent, bool locked) override {
    store_.SetAgentLockedElsewhere(agent, locked);
  }

 private:
  std::shared_ptr<TimePoint> now_;
  MemoryStore store_;
};

[[maybe_unused]] StoreFactory MemoryFactory() {
  return {"Memory", [](boost::asio::io_context&) { return std::make_unique<MemoryHarness>(); }};
}

#ifdef WARP_CONTRACT_POSTGRES
template <class T>
T Run(boost::asio::io_context& io, Task<T> task);

/// A throwaway database per test, cloned from a template that has the project's migrations
/// applied; database time pinned through warp.test_now; a second session for agent locks.
class PostgresHarness final : public Harness {
 public:
  explicit PostgresHarness(boost::asio::io_context& io) : io_(io), admin_(io.get_executor()) {
    const char* dsn = std::getenv("WARP_TEST_DSN");
    if (dsn == nullptr || *dsn == '\0') {
      throw std::runtime_error("WARP_TEST_DSN is not set: run the suite through scripts/test.sh");
    }
    dsn_ = dsn;
    Run(io_, admin_.Connect(dsn_, std::nullopt, seconds(10)));
    EnsureTemplate();
    static std::atomic<int> counter{0};
    database_ = "warp_contract_" + std::to_string(::getpid()) + "_" + std::to_string(++counter);
    Admin("CREATE DATABASE " + database_ + " TEMPLATE " + template_);
    postgres::PostgresStoreSettings settings;
    settings.pool.conninfo = dsn_ + " dbname=" + database_;
    settings.pool.size = 1;  // PinNowForTests sets a session variable
    store_.emplace(io_.get_executor(), settings, logging::Logger());
    now_ = std::chrono::sys_days{std::chrono::year{2024} / std::chrono::January / 15} + hours{9};
    Run(io_, store_->PinNowForTests(now_));
    locker_.emplace(io_.get_executor());
    Run(io_, locker_->Connect(settings.pool.conninfo, std::nullopt, seconds(10)));
  }

  ~PostgresHarness() override {
    locker_.reset();
    store_.reset();
    try {
      Admin("DROP DATABASE IF EXISTS " + database_ + " WITH (FORCE)");
    } catch (const std::exception&) {
      // A leftover database dies with the throwaway server.
    }
  }

  Store& GetStore() override { return *store_; }
  void AdvanceClock(Duration d) override {
    now_ += d;
    Run(io_, store_->PinNowForTests(now_));
  }
  void SetAgentLockedElsewhere(AgentId agent, bool locked) override {
    const char* sql = locked ? "SELECT pg_advisory_lock(warp.agent_lock_key($1::bigint))"
                             : "SELECT pg_advisory_unlock(warp.agent_lock_key($1::bigint))";
    Run(io_, locker_->Execute(sql, {std::to_string(agent)}, seconds(10)));
  }

 private:
  void Admin(const std::string& script) { Run(io_, admin_.ExecuteScript(script, seconds(30))); }

  /// The template database with every migration applied (migrations/testdb), looked up once
  /// per test process.
  void EnsureTemplate() {
    static const std::string name = migrations::testdb::MigratedTemplate(
        std::filesystem::path(WARP_SOURCE_DIR) / "migrations", "warp_contract_tpl");
    template_ = name;
  }

  boost::asio::io_context& io_;
  std::string dsn_;
  std::string template_;
  std::string database_;
  postgres::Connection admin_;
  std::optional<postgres::Connection> locker_;
  std::optional<postgres::PostgresStore> store_;
  TimePoint now_;
};

StoreFactory PostgresFactory() {
  return {"Postgres",
          [](boost::asio::io_context& io) { return std::make_unique<PostgresHarness>(io); }};
}
#endif

// --- running the store's coroutines --------------------------------------------------------

/// Runs `task` to completion on `io` and returns its result (rethrowing what it threw).
template <class T>
T Run(boost::asio::io_context& io, Task<T> task) {
  auto result = boost::asio::co_spawn(io, std::move(task), boost::asio::use_future);
  // Not io.run(): a connection pool may keep work on the context after the task is done.
  io.restart();
  while (result.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
    io.run_one_for(std::chrono::milliseconds(100));
    io.restart();
  }
  return result.get();
}

// --- the fixture ---------------------------------------------------------------------------

constexpr int kDefaultMaxAttempts = 3;
constexpr Duration kLeaseTtl = seconds(60);
constexpr Duration kTakeoverAfter = seconds(30);
const std::string kGroup = "default";

class StoreContract : public ::testing::TestWithParam<StoreFactory> {
 protected:
  void SetUp() override { harness_ = GetParam().make(io_); }

  Store& store() { return harness_->GetStore(); }
  template <class T>
  T Await(Task<T> task) {
    return test::Run(io_, std::move(task));
  }
  void Advance(Duration d) { harness_->AdvanceClock(d); }
  void SetLockedElsewhere(const Agent& agent, bool locked) {
    harness_->SetAgentLockedElsewhere(agent.agent_id, locked);
  }
  TimePoint Now() { return Await(store().Now()); }

  /// The kind of StoreError `task` throws, or nullopt when it completes.
  template <class T>
  std::optional<StoreError::Kind> ErrorOf(Task<T> task) {
    try {
      Await(std::move(task));
    } catch (const StoreError& e) {
      return e.kind();
    }
    return std::nullopt;
  }

  // Agents and work.
  static NewAgent AgentNamed(const std::string& slug, int bound = 1) {
    NewAgent agent;
    agent.agent_slug = slug;
    agent.display_name = "Agent " + slug;
    agent.domain_id = "contract";
    agent.runner = "shell";
    agent.business_link = "spindle:registration/" + slug;
    agent.max_active_leases = bound;
    return agent;
  }
  Agent AddAgent(const std::string& slug, int bound = 1) {
    return Await(store().RegisterAgent(AgentNamed(slug, bound)));
  }
  std::optional<Agent> FindAgent(const std::string& slug) {
    for (auto& agent : Await(store().ListAgents())) {
      if (agent.agent_slug == slug)
        return agent;
    }
    return std::nullopt;
  }

  static NewWork WorkFor(const Agent& agent) {
    NewWork work;
    work.agent_slug = agent.agent_slug;
    work.kind = "report";
    work.payload_json = R"({"n":1})";
    return work;
  }
  EnqueueResult Enqueue(NewWork work, int default_max_attempts = kDefaultMaxAttempts) {
    return Await(store().EnqueueWork(std::move(work), default_max_attempts));
  }
  WorkItem AddWork(const Agent& agent, int priority = 0, int max_attempts = 0) {
    NewWork work = WorkFor(agent);
    work.priority = priority;
    work.max_attempts = max_attempts;
    return Enqueue(std::move(work)).item;
  }
  WorkItem AddWorkDueAt(const Agent& agent, TimePoint due_at, int priority = 0) {
    NewWork work = WorkFor(agent);
    work.priority = priority;
    work.due_at = due_at;
    return Enqueue(std::move(work)).item;
  }
  WorkItem Work(WorkItemId id) {
    auto item = Await(store().GetWork(id));
    if (!item)
      throw std::runtime_error("work item " + std::to_string(id) + " not found");
    return *item;
  }
  std::vector<WorkItemId> DueIds(int limit = 100, int default_max_active = 1) {
    std::vector<WorkItemId> ids;
    for (const auto& item : Await(store().SelectDueWork(limit, default_max_active)))
      ids.push_back(item.work_item_id);
    return ids;
  }

  // Cycles.
  ClaimResult Claim(const std::string& cycle_id, const std::string& instance = "host-a",
                    const std::string& group = kGroup) {
    return Await(store().ClaimCycle(CycleClaim{cycle_id, group, instance, kTakeoverAfter}));
  }
  /// Claims `cycle_id`; throws (failing the test) unless the claim is a plain kClaimed.
  /// The run this helper claimed before, if still running, is finished first: one cycle of a
  /// group runs at a time, as the scheduler's do.
  SchedulerRun ClaimRun(const std::string& cycle_id, const std::string& instance = "host-a") {
    if (helper_run_) {
      auto previous = FindRun(helper_run_->cycle_id, helper_run_->run_id);
      if (previous && previous->status == RunStatus::kRunning)
        Await(store().FinishRun(previous->run_id, RunStatus::kCompleted, RunCounts{}, ""));
    }
    ClaimResult result = Claim(cycle_id, instance);
    if (result.outcome != ClaimOutcome::kClaimed) {
      throw std::runtime_error("cycle " + cycle_id + ": " + std::string(ToString(result.outcome)));
    }
    helper_run_ = result.run;
    return result.run;
  }
  std::string NextCycleId() { return "default:60:" + std::to_string(++cycles_); }
  std::optional<SchedulerRun> FindRun(const std::string& cycle_id, RunId run_id) {
    for (auto& run : Await(store().ListRuns(cycle_id))) {
      if (run.run_id == run_id)
        return run;
    }
    return std::nullopt;
  }

  // Dispatch and leases.
  static DispatchCandidate CandidateFor(const WorkItem& item, int bound = 1) {
    DispatchCandidate candidate;
    candidate.work_item_id = item.work_item_id;
    candidate.agent_id = item.agent_id;
    candidate.max_active = bound;
    return candidate;
  }
  static DispatchCandidate VerdictFor(const WorkItem& item, Decision verdict, std::string reason) {
    DispatchCandidate candidate = CandidateFor(item);
    candidate.verdict = verdict;
    candidate.reason = std::move(reason);
    return candidate;
  }
  std::vector<DispatchClaim> Dispatch(const SchedulerRun& run,
                                      std::vector<DispatchCandidate> candidates,
                                      Duration ttl = kLeaseTtl) {
    DispatchBatch batch;
    batch.run_id = run.run_id;
    batch.cycle_id = run.cycle_id;
    batch.instance = run.instance;
    batch.lease_ttl = ttl;
    batch.candidates = std::move(candidates);
    return Await(store().ClaimDispatches(std::move(batch)));
  }
  /// Dispatches `item` in a cycle of its own; throws (failing the test) unless it got a lease.
  Lease LeaseWork(const WorkItem& item, int bound = 1, Duration ttl = kLeaseTtl) {
    const SchedulerRun run = ClaimRun(NextCycleId());
    auto claims = Dispatch(run, {CandidateFor(item, bound)}, ttl);
    if (claims.size() != 1 || !claims[0].recorded || !claims[0].lease) {
      throw std::runtime_error("work item " + std::to_string(item.work_item_id) +
                               " was not dispatched");
    }
    return *claims[0].lease;
  }
  std::vector<Lease> ActiveLeases(const Agent& agent) {
    return Await(store().ListLeases(agent.agent_id, /*active_only=*/true));
  }
  std::optional<Lease> FindLease(LeaseId id) {
    for (auto& lease : Await(store().ListLeases(std::nullopt, /*active_only=*/false))) {
      if (lease.lease_id == id)
        return lease;
    }
    return std::nullopt;
  }
  std::size_t LeaseCount() {
    return Await(store().ListLeases(std::nullopt, /*active_only=*/false)).size();
  }
  std::optional<DispatchDecision> FindDecision(const std::string& cycle_id, WorkItemId item,
                                               int attempt) {
    for (auto& d : Await(store().ListDecisions(cycle_id))) {
      if (d.work_item_id == item && d.attempt == attempt)
        return d;
    }
    return std::nullopt;
  }

  static LeaseRef RefOf(const Lease& lease) { return {lease.lease_id, lease.fencing_token}; }
  static Completion DoneWith(const Lease& lease) {
    Completion completion;
    completion.lease = RefOf(lease);
    completion.outcome = Outcome::kDone;
    completion.detail = R"({"ok":true})";
    return completion;
  }
  static Completion FailedWith(const Lease& lease, std::string detail = "exit status 1") {
    Completion completion;
    completion.lease = RefOf(lease);
    completion.outcome = Outcome::kFailed;
    completion.detail = std::move(detail);
    return completion;
  }
  CompletionResult Complete(Completion completion, RetryPolicy policy = {}) {
    return Await(store().CompleteWork(std::move(completion), policy));
  }

  static std::vector<Decision> DecisionsOf(const std::vector<DispatchClaim>& claims) {
    std::vector<Decision> out;
    for (const auto& claim : claims)
      out.push_back(claim.decision.decision);
    return out;
  }
  static std::vector<bool> RecordedOf(const std::vector<DispatchClaim>& claims) {
    std::vector<bool> out;
    for (const auto& claim : claims)
      out.push_back(claim.recorded);
    return out;
  }

 private:
  boost::asio::io_context io_;  // declared first: outlives the harness and its store
  std::unique_ptr<Harness> harness_;
  int cycles_ = 0;
  std::optional<SchedulerRun> helper_run_;  // the last run ClaimRun claimed
};

// --- agents and tool profiles --------------------------------------------------------------

TEST_P(StoreContract, RegisterAgentReturnsDistinctIdsAndStoresTheRecord) {
  NewAgent first = AgentNamed("billing-1", 2);
  first.labels = {{"team", "billing"}};
  const Agent a = Await(store().RegisterAgent(first));
  const Agent b = AddAgent("billing-2");

  EXPECT_GT(a.agent_id, 0);
  EXPECT_GT(b.agent_id, 0);
  EXPECT_NE(a.agent_id, b.agent_id);
  EXPECT_EQ(a.agent_slug, "billing-1");

  auto listed = FindAgent("billing-1");
  ASSERT_TRUE(listed);
  EXPECT_EQ(listed->agent_id, a.agent_id);
  EXPECT_EQ(listed->display_name, "Agent billing-1");
  EXPECT_EQ(listed->domain_id, "contract");
  EXPECT_EQ(listed->runner, "shell");
  EXPECT_EQ(listed->business_link, "spindle:registration/billing-1");
  EXPECT_EQ(listed->max_active_leases, 2);
  EXPECT_EQ(listed->lifecycle, Lifecycle::kActive);
  EXPECT_EQ(listed->labels, first.labels);
  EXPECT_EQ(listed->fencing_counter, 0);
  EXPECT_THAT(Await(store().ListAgents()), SizeIs(2));
}

TEST_P(StoreContract, GetAgentsReturnsTheExistingOnesOfTheIdsInIdOrder) {
  const Agent a = AddAgent("first");
  const Agent b = AddAgent("second", 3);
  AddAgent("third");
  std::vector<AgentId> ids{b.agent_id, a.agent_id, b.agent_id, b.agent_id + 1000};
  const auto agents = Await(store().GetAgents(ids));
  ASSERT_THAT(agents, SizeIs(2));
  EXPECT_EQ(agents[0].agent_slug, "first");
  EXPECT_EQ(agents[1].agent_slug, "second");
  EXPECT_EQ(agents[1].max_active_leases, 3);
  std::vector<AgentId> none;
  EXPECT_THAT(Await(store().GetAgents(std::move(none))), IsEmpty());
}

TEST_P(StoreContract, RegisterAgentWithoutBusinessLinkIsInvalid) {
  NewAgent agent = AgentNamed("unlinked");
  agent.business_link.clear();
  EXPECT_EQ(ErrorOf(store().RegisterAgent(agent)), StoreError::Kind::kInvalid);
  EXPECT_THAT(Await(store().ListAgents()), IsEmpty());
}

TEST_P(StoreContract, RegisterAgentWithBadSlugIsInvalid) {
  for (const std::string& slug :
       {std::string(), std::string("Upper"), std::string("-lead"), std::string("has space"),
        std::string("under_score"), std::string("dot.ted"), std::string(64, 'a')}) {
    SCOPED_TRACE("slug '" + slug + "'");
    EXPECT_EQ(ErrorOf(store().RegisterAgent(AgentNamed(slug))), StoreError::Kind::kInvalid);
  }
  EXPECT_THAT(Await(store().ListAgents()), IsEmpty());

  // The edges of the pattern are accepted.
  EXPECT_EQ(AddAgent(std::string(63, 'z')).agent_slug, std::string(63, 'z'));
  EXPECT_EQ(AddAgent("0-").agent_slug, "0-");
}

TEST_P(StoreContract, RegisterAgentWithDuplicateSlugConflicts) {
  const Agent first = AddAgent("dup");
  EXPECT_EQ(ErrorOf(store().RegisterAgent(AgentNamed("dup", 3))), StoreError::Kind::kConflict);
  auto listed = FindAgent("dup");
  ASSERT_TRUE(listed);
  EXPECT_EQ(listed->agent_id, first.agent_id);
  EXPECT_EQ(listed->max_active_leases, 1);
  EXPECT_THAT(Await(store().ListAgents()), SizeIs(1));
}

TEST_P(StoreContract, AgentLifecyclePausesAndResumes) {
  AddAgent("cycler");
  EXPECT_TRUE(Await(store().SetAgentLifecycle("cycler", Lifecycle::kPaused)));
  EXPECT_EQ(FindAgent("cycler")->lifecycle, Lifecycle::kPaused);
  EXPECT_TRUE(Await(store().SetAgentLifecycle("cycler", Lifecycle::kActive)));
  EXPECT_EQ(FindAgent("cycler")->lifecycle, Lifecycle::kActive);
}

TEST_P(StoreContract, RetiredAgentCannotBeReactivated) {
  AddAgent("old");
  EXPECT_TRUE(Await(store().SetAgentLifecycle("old", Lifecycle::kRetired)));
  EXPECT_EQ(ErrorOf(store().SetAgentLifecycle("old", Lifecycle::kActive)),
            StoreError::Kind::kInvalid);
  EXPECT_EQ(ErrorOf(store().SetAgentLifecycle("old", Lifecycle::kPaused)),
            StoreError::Kind::kInvalid);
  EXPECT_EQ(FindAgent("old")->lifecycle, Lifecycle::kRetired);
}

TEST_P(StoreContract, SetLifecycleOfUnknownSlugReturnsFalse) {
  AddAgent("known");
  EXPECT_FALSE(Await(store().SetAgentLifecycle("unknown", Lifecycle::kPaused)));
  EXPECT_EQ(FindAgent("known")->lifecycle, Lifecycle::kActive);
}

TEST_P(StoreContract, ToolProfilesArePutAndListed) {
  ToolProfile ops;
  ops.tool_profile_id = "ops";
  ops.capabilities = {"shell", "http"};
  ops.operations = {"deploy", "report"};
  ops.system_overlays = {{"role", "operator"}};
  ToolProfile readonly;
  readonly.tool_profile_id = "readonly";
  readonly.operations = {"report"};
  Await(store().PutToolProfile(ops));
  Await(store().PutToolProfile(readonly));

  auto by_id = [&] {
    std::map<std::string, ToolProfile> out;
    for (auto& p : Await(store().ListToolProfiles()))
      out[p.tool_profile_id] = p;
    return out;
  };
  auto listed = by_id();
  ASSERT_THAT(listed, SizeIs(2));
  EXPECT_EQ(listed["ops"].capabilities, ops.capabilities);
  EXPECT_EQ(listed["ops"].operations, ops.operations);
  EXPECT_EQ(listed["ops"].system_overlays, ops.system_overlays);
  EXPECT_EQ(listed["readonly"].operations, readonly.operations);

  // Putting an existing id replaces the profile.
  ops.operations = {"report"};
  Await(store().PutToolProfile(ops));
  listed = by_id();
  ASSERT_THAT(listed, SizeIs(2));
  EXPECT_EQ(listed["ops"].operations, std::vector<std::string>{"report"});
}

// --- enqueue -------------------------------------------------------------------------------

TEST_P(StoreContract, EnqueueCreatesPendingWorkDueNow) {
  const Agent agent = AddAgent("worker");
  NewWork work = WorkFor(agent);
  work.kind = "deploy";
  work.payload_json = R"({"version":"1.2.3"})";
  work.priority = 4;
  work.idempotency_key = "deploy:1.2.3";
  const TimePoint now = Now();
  const EnqueueResult result = Enqueue(work);

  EXPECT_TRUE(result.created);
  const WorkItem& item = result.item;
  EXPECT_GT(item.work_item_id, 0);
  EXPECT_EQ(item.agent_id, agent.agent_id);
  EXPECT_EQ(item.kind, "deploy");
  EXPECT_EQ(item.payload_json, R"({"version":"1.2.3"})");
  EXPECT_EQ(item.priority, 4);
  EXPECT_EQ(item.due_at, now);
  EXPECT_EQ(item.idempotency_key, "deploy:1.2.3");
  EXPECT_EQ(item.attempts, 0);
  EXPECT_EQ(item.state, WorkState::kPending);
  EXPECT_FALSE(item.lease_id);

  const WorkItem stored = Work(item.work_item_id);
  EXPECT_EQ(stored.state, WorkState::kPending);
  EXPECT_EQ(stored.idempotency_key, "deploy:1.2.3");
  EXPECT_THAT(Await(store().ListWork(WorkState::kPending)), SizeIs(1));
}

TEST_P(StoreContract, EnqueueWithSameIdempotencyKeyReturnsExistingItem) {
  const Agent agent = AddAgent("worker");
  NewWork work = WorkFor(agent);
  work.idempotency_key = "order-1";
  work.payload_json = R"({"a":1})";
  const EnqueueResult first = Enqueue(work);

  work.payload_json = R"({"a":2})";
  work.priority = 9;
  const EnqueueResult second = Enqueue(work);

  EXPECT_TRUE(first.created);
  EXPECT_FALSE(second.created);
  EXPECT_EQ(second.item.work_item_id, first.item.work_item_id);
  EXPECT_EQ(second.item.payload_json, R"({"a":1})");
  EXPECT_EQ(second.item.priority, 0);
  EXPECT_THAT(Await(store().ListWork(std::nullopt)), SizeIs(1));
}

TEST_P(StoreContract, EnqueueWithoutIdempotencyKeyAlwaysCreates) {
  // Producers' keys must not make a key-less enqueue collide with an unrelated item, whatever
  // the store names its generated keys (the memory store used "work:<id>").
  const Agent agent = AddAgent("worker");
  const WorkItem first = AddWork(agent);
  for (int i = 1; i <= 5; ++i) {
    NewWork keyed = WorkFor(agent);
    keyed.idempotency_key = "work:" + std::to_string(first.work_item_id + 5 + i);
    ASSERT_TRUE(Enqueue(keyed).created);
  }
  std::vector<WorkItemId> ids{first.work_item_id};
  for (int i = 0; i < 5; ++i) {
    const EnqueueResult result = Enqueue(WorkFor(agent));
    EXPECT_TRUE(result.created);
    ids.push_back(result.item.work_item_id);
  }
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(std::adjacent_find(ids.begin(), ids.end()), ids.end());
  EXPECT_THAT(Await(store().ListWork(std::nullopt)), SizeIs(11));
}

TEST_P(StoreContract, EnqueueForUnknownAgentIsNotFound) {
  AddAgent("worker");
  NewWork work;
  work.agent_slug = "nobody";
  work.kind = "report";
  EXPECT_EQ(ErrorOf(store().EnqueueWork(work, kDefaultMaxAttempts)), StoreError::Kind::kNotFound);
  EXPECT_THAT(Await(store().ListWork(std::nullopt)), IsEmpty());
}

TEST_P(StoreContract, EnqueueRejectsPayloadsThatAreNotSmallJsonObjects) {
  const Agent agent = AddAgent("worker");
  const std::string oversized = R"({"blob":")" + std::string(kMaxPayloadBytes, 'x') + R"("})";
  for (const std::string& payload :
       {std::string("[1,2]"), std::string("42"), std::string("null"), std::string(R"("text")"),
        std::string("{"), std::string("not json"), std::string(), oversized}) {
    SCOPED_TRACE("payload '" + payload.substr(0, 20) + "'");
    NewWork work = WorkFor(agent);
    work.payload_json = payload;
    EXPECT_EQ(ErrorOf(store().EnqueueWork(work, kDefaultMaxAttempts)), StoreError::Kind::kInvalid);
  }
  EXPECT_THAT(Await(store().ListWork(std::nullopt)), IsEmpty());
}

TEST_P(StoreContract, EnqueueAppliesDefaultMaxAttempts) {
  const Agent agent = AddAgent("worker");
  EXPECT_EQ(Enqueue(WorkFor(agent), /*default_max_attempts=*/7).item.max_attempts, 7);
  NewWork explicit_attempts = WorkFor(agent);
  explicit_attempts.max_attempts = 2;
  EXPECT_EQ(Enqueue(explicit_attempts, /*default_max_attempts=*/7).item.max_attempts, 2);
}

// --- selecting due work --------------------------------------------------------------------

TEST_P(StoreContract, SelectDueWorkOrdersByPriorityThenDueAtThenId) {
  const Agent agent = AddAgent("worker", 10);
  const TimePoint now = Now();
  const WorkItem low_old = AddWorkDueAt(agent, now - seconds(60), 0);
  const WorkItem mid_late = AddWorkDueAt(agent, now - seconds(10), 1);
  const WorkItem high = AddWorkDueAt(agent, now, 5);
  const WorkItem mid_early = AddWorkDueAt(agent, now - seconds(20), 1);
  const WorkItem mid_late_twin = AddWorkDueAt(agent, now - seconds(10), 1);

  EXPECT_THAT(DueIds(),
              ElementsAre(high.work_item_id, mid_early.work_item_id, mid_late.work_item_id,
                          mid_late_twin.work_item_id, low_old.work_item_id));
}

TEST_P(StoreContract, SelectDueWorkExcludesFutureWork) {
  const Agent agent = AddAgent("worker", 10);
  const WorkItem now_item = AddWork(agent);
  const WorkItem later = AddWorkDueAt(agent, Now() + minutes(5), 10);
  EXPECT_THAT(DueIds(), ElementsAre(now_item.work_item_id));
  Advance(minutes(5));
  EXPECT_THAT(DueIds(), ElementsAre(later.work_item_id, now_item.work_item_id));
}

TEST_P(StoreContract, SelectDueWorkHonoursLimit) {
  const Agent agent = AddAgent("worker", 10);
  std::vector<WorkItemId> ids;
  for (int i = 0; i < 5; ++i)
    ids.push_back(AddWork(agent).work_item_id);
  EXPECT_THAT(DueIds(2), ElementsAre(ids[0], ids[1]));
  EXPECT_THAT(DueIds(0), IsEmpty());
  EXPECT_THAT(DueIds(10), SizeIs(5));
}

TEST_P(StoreContract, SelectDueWorkYieldsPerAgentTheRoomLeftUnderItsBoundButAtLeastOne) {
  const Agent two = AddAgent("two", 2);
  std::vector<WorkItemId> ids;
  for (int i = 0; i < 4; ++i)
    ids.push_back(AddWork(two).work_item_id);
  EXPECT_THAT(DueIds(), ElementsAre(ids[0], ids[1]));
  LeaseWork(Work(ids[0]), 2);
  EXPECT_THAT(DueIds(), ElementsAre(ids[1]));
  LeaseWork(Work(ids[1]), 2);
  // At its bound the agent still yields one item, which a cycle records as deferred.
  EXPECT_THAT(DueIds(), ElementsAre(ids[2]));
  // Expired leases do not count.
  Advance(kLeaseTtl);
  EXPECT_THAT(DueIds(), ElementsAre(ids[2], ids[3]));
}

TEST_P(StoreContract, SelectDueWorkAppliesTheDefaultBoundToAgentsWithoutOne) {
  const Agent agent = AddAgent("unbounded", 0);
  std::vector<WorkItemId> ids;
  for (int i = 0; i < 4; ++i)
    ids.push_back(AddWork(agent).work_item_id);
  EXPECT_THAT(DueIds(100, 1), ElementsAre(ids[0]));
  EXPECT_THAT(DueIds(100, 3), ElementsAre(ids[0], ids[1], ids[2]));
}

TEST_P(StoreContract, SelectDueWorkDoesNotLetAnAgentAtItsBoundCrowdOutOthers) {
  const Agent busy = AddAgent("busy", 1);
  const Agent other = AddAgent("other", 1);
  const TimePoint now = Now();
  const WorkItem first = AddWorkDueAt(busy, now - seconds(30));
  for (int i = 0; i < 3; ++i)
    AddWorkDueAt(busy, now - seconds(20));
  const WorkItem later = AddWorkDueAt(other, now - seconds(10));
  // Within the scan window (limit 2 looks at up to kDueScanFactor * 2 items).
  EXPECT_THAT(DueIds(2), ElementsAre(first.work_item_id, later.work_item_id));
}

TEST_P(StoreContract, SelectDueWorkLooksNoFurtherThanTheScanFactorTimesItsLimit) {
  const Agent busy = AddAgent("busy", 1);
  const Agent other = AddAgent("other", 1);
  const TimePoint now = Now();
  const WorkItem first = AddWorkDueAt(busy, now - seconds(30));
  for (int i = 0; i < kDueScanFactor * 2 - 1; ++i)
    AddWorkDueAt(busy, now - seconds(20));
  const WorkItem beyond = AddWorkDueAt(other, now - seconds(10));
  // Limit 2 looks at the first 8 due items: `beyond` is the 9th.
  EXPECT_THAT(DueIds(2), ElementsAre(first.work_item_id));
  EXPECT_THAT(DueIds(3), ElementsAre(first.work_item_id, beyond.work_item_id));
}

TEST_P(StoreContract, SelectDueWorkExcludesDispatchedAndDoneWork) {
  const Agent agent = AddAgent("worker", 2);
  const WorkItem dispatched = AddWork(agent);
  const WorkItem done = AddWork(agent);
  const WorkItem pending = AddWork(agent);
  LeaseWork(dispatched, 2);
  ASSERT_EQ(Complete(DoneWith(LeaseWork(done, 2))).verdict, Verdict::kAccepted);
  EXPECT_THAT(DueIds(), ElementsAre(pending.work_item_id));
}

TEST_P(StoreContract, SelectDueWorkIncludesFailedWorkOnceItsRetryIsDue) {
  const Agent agent = AddAgent("worker");
  const WorkItem item = AddWork(agent);
  const RetryPolicy policy{seconds(10), minutes(10)};
  ASSERT_EQ(Complete(FailedWith(LeaseWork(item)), policy).verdict, Verdict::kAccepted);
  ASSERT_EQ(Work(item.work_item_id).state, WorkState::kFailed);

  EXPECT_THAT(DueIds(), IsEmpty());
  Advance(seconds(9));
  EXPECT_THAT(DueIds(), IsEmpty());
  Advance(seconds(1));
  EXPECT_THAT(DueIds(), ElementsAre(item.work_item_id));
}

// --- claiming cycles -----------------------------------------------------------------------

TEST_P(StoreContract, ClaimCycleClaimsAFreshCycle) {
  const TimePoint now = Now();
  const ClaimResult result = Claim("default:60:100", "host-a");
  EXPECT_EQ(result.outcome, ClaimOutcome::kClaimed);
  EXPECT_FALSE(result.abandoned_run);
  EXPECT_GT(result.run.run_id, 0);
  EXPECT_EQ(result.run.cycle_id, "default:60:100");
  EXPECT_EQ(result.run.group, kGroup);
  EXPECT_EQ(result.run.instance, "host-a");
  EXPECT_EQ(result.run.status, RunStatus::kRunning);
  EXPECT_EQ(result.run.started_at, now);
  EXPECT_EQ(result.run.heartbeat_at, now);

  auto runs = Await(store().ListRuns("default:60:100"));
  ASSERT_THAT(runs, SizeIs(1));
  EXPECT_EQ(runs[0].run_id, result.run.run_id);
  EXPECT_EQ(runs[0].status, RunStatus::kRunning);
}

TEST_P(StoreContract, SecondClaimWhileHeartbeatIsFreshIsRunningElsewhere) {
  const SchedulerRun first = ClaimRun("c", "host-a");
  Advance(seconds(10));
  ClaimResult second = Claim("c", "host-b");
  EXPECT_EQ(second.outcome, ClaimOutcome::kRunningElsewhere);
  EXPECT_EQ(second.run.run_id, first.run_id);

  // A heartbeat keeps the run alive past takeover_after from its start.
  Advance(seconds(10));
  EXPECT_TRUE(Await(store().HeartbeatRun(first.run_id)));
  Advance(seconds(25));
  second = Claim("c", "host-b");
  EXPECT_EQ(second.outcome, ClaimOutcome::kRunningElsewhere);
  EXPECT_EQ(second.run.run_id, first.run_id);
  EXPECT_THAT(Await(store().ListRuns("c")), SizeIs(1));
}

TEST_P(StoreContract, ClaimWhileAnotherCycleOfTheGroupRunsIsGroupBusyUntilItEndsOrGoesStale) {
  const SchedulerRun first = ClaimRun("c1", "host-a");
  Advance(seconds(10));
  ClaimResult second = Claim("c2", "host-b");
  EXPECT_EQ(second.outcome, ClaimOutcome::kGroupBusy);
  EXPECT_EQ(second.run.run_id, first.run_id);  // the run in the way, with its own cycle
  EXPECT_EQ(second.run.cycle_id, "c1");
  EXPECT_EQ(second.run.instance, "host-a");
  EXPECT_EQ(second.run.status, RunStatus::kRunning);
  EXPECT_THAT(Await(store().ListRuns("c2")), IsEmpty());
  // Another group is not held up.
  EXPECT_EQ(Claim("other:60:2", "host-b", "other").outcome, ClaimOutcome::kClaimed);

  // Heartbeats keep the group busy past takeover_after from the start.
  Advance(seconds(15));
  EXPECT_TRUE(Await(store().HeartbeatRun(first.run_id)));
  Advance(seconds(25));
  EXPECT_EQ(Claim("c2", "host-b").outcome, ClaimOutcome::kGroupBusy);

  // A run that stopped heartbeating no longer holds the group; it is not taken over either
  // (only a claim of its own cycle does that).
  Advance(kTakeoverAfter + seconds(1));
  second = Claim("c2", "host-b");
  EXPECT_EQ(second.outcome, ClaimOutcome::kClaimed);
  EXPECT_EQ(FindRun("c1", first.run_id)->status, RunStatus::kRunning);

  // A finished run holds nothing: the next cycle is claimed right away.
  Await(store().FinishRun(second.run.run_id, RunStatus::kCompleted, RunCounts{}, ""));
  EXPECT_EQ(Claim("c3", "host-c").outcome, ClaimOutcome::kClaimed);
}

TEST_P(StoreContract, AStaleRunOfTheCycleIsTakenOverOnlyWhenNoOtherCycleOfTheGroupIsLive) {
  const SchedulerRun stale = ClaimRun("c1", "host-a");
  Advance(kTakeoverAfter + seconds(1));
  const SchedulerRun live = Claim("c2", "host-b").run;
  ASSERT_EQ(live.status, RunStatus::kRunning);
  // c1 is stale, but c2 runs: the takeover waits, and c1's run is left as it is.
  const ClaimResult retry = Claim("c1", "host-c");
  EXPECT_EQ(retry.outcome, ClaimOutcome::kGroupBusy);
  EXPECT_EQ(retry.run.run_id, live.run_id);
  EXPECT_EQ(FindRun("c1", stale.run_id)->status, RunStatus::kRunning);

  Await(store().FinishRun(live.run_id, RunStatus::kCompleted, RunCounts{}, ""));
  const ClaimResult takeover = Claim("c1", "host-c");
  EXPECT_EQ(takeover.outcome, ClaimOutcome::kTookOver);
  EXPECT_EQ(takeover.abandoned_run, stale.run_id);
  EXPECT_EQ(FindRun("c1", stale.run_id)->status, RunStatus::kAbandoned);
}

TEST_P(StoreContract, ClaimAfterCompletedRunIsAlreadyCompleted) {
  const SchedulerRun run = ClaimRun("c", "host-a");
  RunCounts counts;
  counts.due = 2;
  counts.dispatched = 1;
  Await(store().FinishRun(run.run_id, RunStatus::kCompleted, counts, ""));

  const ClaimResult again = Claim("c", "host-b");
  EXPECT_EQ(again.outcome, ClaimOutcome::kAlreadyCompleted);
  EXPECT_EQ(again.run.run_id, run.run_id);
  auto finished = FindRun("c", run.run_id);
  ASSERT_TRUE(finished);
  EXPECT_EQ(finished->status, RunStatus::kCompleted);
  EXPECT_EQ(finished->counts.due, 2);
  EXPECT_EQ(finished->counts.dispatched, 1);
  EXPECT_TRUE(finished->finished_at);

  // Long after, still completed: completion is final.
  Advance(hours(1));
  EXPECT_EQ(Claim("c", "host-b").outcome, ClaimOutcome::kAlreadyCompleted);
}

TEST_P(StoreContract, StaleRunIsTakenOverAndMarkedAbandoned) {
  const SchedulerRun stale = ClaimRun("c", "host-a");
  Advance(kTakeoverAfter + seconds(1));
  const ClaimResult takeover = Claim("c", "host-b");

  EXPECT_EQ(takeover.outcome, ClaimOutcome::kTookOver);
  ASSERT_TRUE(takeover.abandoned_run);
  EXPECT_EQ(*takeover.abandoned_run, stale.run_id);
  EXPECT_NE(takeover.run.run_id, stale.run_id);
  EXPECT_EQ(takeover.run.cycle_id, "c");
  EXPECT_EQ(takeover.run.instance, "host-b");
  EXPECT_EQ(takeover.run.status, RunStatus::kRunning);

  EXPECT_EQ(FindRun("c", stale.run_id)->status, RunStatus::kAbandoned);
  EXPECT_EQ(FindRun("c", takeover.run.run_id)->status, RunStatus::kRunning);
}

TEST_P(StoreContract, HeartbeatOfAbandonedRunReturnsFalse) {
  const SchedulerRun stale = ClaimRun("c", "host-a");
  EXPECT_TRUE(Await(store().HeartbeatRun(stale.run_id)));
  Advance(kTakeoverAfter + seconds(1));
  ASSERT_EQ(Claim("c", "host-b").outcome, ClaimOutcome::kTookOver);
  EXPECT_FALSE(Await(store().HeartbeatRun(stale.run_id)));
  EXPECT_EQ(FindRun("c", stale.run_id)->status, RunStatus::kAbandoned);
}

TEST_P(StoreContract, FinishingAnAbandonedRunLeavesItAbandoned) {
  const SchedulerRun stale = ClaimRun("c", "host-a");
  Advance(kTakeoverAfter + seconds(1));
  const ClaimResult takeover = Claim("c", "host-b");
  ASSERT_EQ(takeover.outcome, ClaimOutcome::kTookOver);

  Await(store().FinishRun(stale.run_id, RunStatus::kCompleted, RunCounts{}, ""));
  EXPECT_EQ(FindRun("c", stale.run_id)->status, RunStatus::kAbandoned);
  // The late finish did not complete the cycle: the new owner still holds it.
  const ClaimResult third = Claim("c", "host-c");
  EXPECT_EQ(third.outcome, ClaimOutcome::kRunningElsewhere);
  EXPECT_EQ(third.run.run_id, takeover.run.run_id);
}

TEST_P(StoreContract, FailedRunCanBeReclaimed) {
  const SchedulerRun failed = ClaimRun("c", "host-a");
  Await(store().FinishRun(failed.run_id, RunStatus::kFailed, RunCounts{}, "store unavailable"));
  EXPECT_EQ(FindRun("c", failed.run_id)->error, "store unavailable");

  const ClaimResult again = Claim("c", "host-a");
  EXPECT_EQ(again.outcome, ClaimOutcome::kClaimed);
  EXPECT_NE(again.run.run_id, failed.run_id);
  EXPECT_EQ(FindRun("c", failed.run_id)->status, RunStatus::kFailed);
  EXPECT_EQ(FindRun("c", again.run.run_id)->status, RunStatus::kRunning);
}

// --- claiming dispatches -------------------------------------------------------------------

TEST_P(StoreContract, DispatchMarksItemDispatchedAndCountsTheAttempt) {
  const Agent agent = AddAgent("worker");
  const WorkItem item = AddWork(agent);
  const SchedulerRun run = ClaimRun("c", "host-a");
  const TimePoint now = Now();
  auto claims = Dispatch(run, {CandidateFor(item)}, seconds(45));

  ASSERT_THAT(claims, SizeIs(1));
  const DispatchClaim& claim = claims[0];
  EXPECT_TRUE(claim.recorded);
  EXPECT_EQ(claim.decision.decision, Decision::kDispatched);
  ASSERT_TRUE(claim.lease);
  const Lease& lease = *claim.lease;
  EXPECT_EQ(lease.agent_id, agent.agent_id);
  EXPECT_EQ(lease.work_item_id, item.work_item_id);
  EXPECT_EQ(lease.holder_instance, "host-a");
  EXPECT_EQ(lease.holder_run_id, run.run_id);
  EXPECT_EQ(lease.acquired_at, now);
  EXPECT_EQ(lease.expires_at, now + seconds(45));
  EXPECT_FALSE(lease.released_at);
  EXPECT_EQ(claim.decision.lease_id, lease.lease_id);

  ASSERT_TRUE(claim.item);
  EXPECT_EQ(claim.item->state, WorkState::kDispatched);
  EXPECT_EQ(claim.item->attempts, 1);
  EXPECT_EQ(claim.item->lease_id, lease.lease_id);

  const WorkItem stored = Work(item.work_item_id);
  EXPECT_EQ(stored.state, WorkState::kDispatched);
  EXPECT_EQ(stored.attempts, 1);
  EXPECT_EQ(stored.lease_id, lease.lease_id);
  EXPECT_THAT(ActiveLeases(agent), SizeIs(1));
}

TEST_P(StoreContract, LeaseBoundOfOneIsEnforced) {
  const Agent agent = AddAgent("solo", 1);
  const WorkItem first = AddWork(agent);
  const WorkItem second = AddWork(agent);
  auto claims = Dispatch(ClaimRun("c1"), {CandidateFor(first, 1), CandidateFor(second, 1)});
  EXPECT_THAT(RecordedOf(claims), ElementsAre(true, true));
  EXPECT_THAT(DecisionsOf(claims),
              ElementsAre(Decision::kDispatched, Decision::kDeferredLeaseHeld));
  EXPECT_FALSE(claims[1].lease);
  // A deferred candidate comes with its item as it was: still pending, no attempt counted.
  ASSERT_TRUE(claims[1].item);
  EXPECT_EQ(claims[1].item->work_item_id, second.work_item_id);
  EXPECT_EQ(claims[1].item->state, WorkState::kPending);
  EXPECT_EQ(claims[1].item->attempts, 0);
  EXPECT_FALSE(claims[1].item->lease_id);
  EXPECT_THAT(ActiveLeases(agent), SizeIs(1));

  // A later cycle, while the lease is live, defers it again.
  Advance(seconds(30));
  claims = Dispatch(ClaimRun("c2"), {CandidateFor(second, 1)});
  EXPECT_THAT(DecisionsOf(claims), ElementsAre(Decision::kDeferredLeaseHeld));
  EXPECT_EQ(Work(second.work_item_id).state, WorkState::kPending);
  EXPECT_EQ(Work(second.work_item_id).attempts, 0);
}

TEST_P(StoreContract, ThirdCandidateOfBoundTwoAgentIsDeferredLeaseHeld) {
  const Agent agent = AddAgent("pair", 2);
  std::vector<WorkItem> items;
  for (int i = 0; i < 3; ++i)
    items.push_back(AddWork(agent));
  auto claims = Dispatch(ClaimRun("c"), {CandidateFor(items[0], 2), CandidateFor(items[1], 2),
                                         CandidateFor(items[2], 2)});
  EXPECT_THAT(RecordedOf(claims), ElementsAre(true, true, true));
  EXPECT_THAT(DecisionsOf(claims), ElementsAre(Decision::kDispatched, Decision::kDispatched,
                                               Decision::kDeferredLeaseHeld));
  EXPECT_FALSE(claims[2].lease);
  EXPECT_FALSE(claims[2].decision.lease_id);
  EXPECT_EQ(Work(items[2].work_item_id).state, WorkState::kPending);
  EXPECT_THAT(ActiveLeases(agent), SizeIs(2));
}

TEST_P(StoreContract, LeaseBoundOfThreeIsEnforced) {
  const Agent agent = AddAgent("trio", 3);
  std::vector<DispatchCandidate> candidates;
  for (int i = 0; i < 5; ++i)
    candidates.push_back(CandidateFor(AddWork(agent), 3));
  auto claims = Dispatch(ClaimRun("c"), candidates);
  EXPECT_THAT(DecisionsOf(claims),
              ElementsAre(Decision::kDispatched, Decision::kDispatched, Decision::kDispatched,
                          Decision::kDeferredLeaseHeld, Decision::kDeferredLeaseHeld));
  EXPECT_THAT(ActiveLeases(agent), SizeIs(3));
  // Leases of one batch get strictly increasing tokens in candidate order.
  EXPECT_LT(claims[0].lease->fencing_token, claims[1].lease->fencing_token);
  EXPECT_LT(claims[1].lease->fencing_token, claims[2].lease->fencing_token);
}

TEST_P(StoreContract, FencingTokensIncreasePerAgentAndAreIndependentBetweenAgents) {
  const Agent a = AddAgent("agent-a");
  const Agent b = AddAgent("agent-b");
  auto lease_and_complete = [&](const Agent& agent) {
    const Lease lease = LeaseWork(AddWork(agent));
    EXPECT_EQ(Complete(DoneWith(lease)).verdict, Verdict::kAccepted);
    Advance(seconds(1));
    return lease.fencing_token;
  };
  const FencingToken a1 = lease_and_complete(a);
  const FencingToken a2 = lease_and_complete(a);
  const FencingToken b1 = lease_and_complete(b);
  const FencingToken a3 = lease_and_complete(a);
  const FencingToken b2 = lease_and_complete(b);

  EXPECT_LT(a1, a2);
  EXPECT_LT(a2, a3);
  EXPECT_LT(b1, b2);
  // b's counter did not move while a's leases were handed out.
  EXPECT_EQ(b1, a1);
  EXPECT_EQ(FindAgent("agent-a")->fencing_counter, a3);
  EXPECT_EQ(FindAgent("agent-b")->fencing_counter, b2);
}

TEST_P(StoreContract, VerdictCandidatesAreRecordedAsGiven) {
  const Agent paused = AddAgent("paused");
  const Agent limited = AddAgent("limited");
  const WorkItem paused_item = AddWork(paused);
  const WorkItem limited_item = AddWork(limited);
  ASSERT_TRUE(Await(store().SetAgentLifecycle("paused", Lifecycle::kPaused)));

  const SchedulerRun run = ClaimRun("c");
  auto claims = Dispatch(run, {VerdictFor(paused_item, Decision::kSkippedPaused, "agent is paused"),
                               VerdictFor(limited_item, Decision::kSkippedCapability,
                                          "kind 'report' is outside tool profile 'readonly'")});
  EXPECT_THAT(RecordedOf(claims), ElementsAre(true, true));
  EXPECT_THAT(DecisionsOf(claims),
              ElementsAre(Decision::kSkippedPaused, Decision::kSkippedCapability));
  EXPECT_FALSE(claims[0].lease);
  EXPECT_FALSE(claims[1].lease);

  auto decision = FindDecision("c", paused_item.work_item_id, 1);
  ASSERT_TRUE(decision);
  EXPECT_EQ(decision->decision, Decision::kSkippedPaused);
  EXPECT_EQ(decision->reason, "agent is paused");
  EXPECT_EQ(decision->run_id, run.run_id);
  EXPECT_EQ(decision->agent_id, paused.agent_id);
  EXPECT_FALSE(decision->lease_id);
  decision = FindDecision("c", limited_item.work_item_id, 1);
  ASSERT_TRUE(decision);
  EXPECT_EQ(decision->decision, Decision::kSkippedCapability);
  EXPECT_EQ(decision->reason, "kind 'report' is outside tool profile 'readonly'");

  EXPECT_EQ(Work(paused_item.work_item_id).state, WorkState::kPending);
  EXPECT_EQ(Work(paused_item.work_item_id).attempts, 0);
  EXPECT_EQ(LeaseCount(), 0u);
}

TEST_P(StoreContract, ContendedAgentIsDeferredContended) {
  const Agent contended = AddAgent("contended");
  const Agent free = AddAgent("free");
  const WorkItem contended_item = AddWork(contended);
  const WorkItem free_item = AddWork(free);
  SetLockedElsewhere(contended, true);

  auto claims = Dispatch(ClaimRun("c1"), {CandidateFor(contended_item), CandidateFor(free_item)});
  EXPECT_THAT(RecordedOf(claims), ElementsAre(true, true));
  EXPECT_THAT(DecisionsOf(claims),
              ElementsAre(Decision::kDeferredContended, Decision::kDispatched));
  EXPECT_FALSE(claims[0].lease);
  EXPECT_THAT(ActiveLeases(contended), IsEmpty());
  EXPECT_EQ(Work(contended_item.work_item_id).state, WorkState::kPending);

  SetLockedElsewhere(contended, false);
  Advance(seconds(60));
  claims = Dispatch(ClaimRun("c2"), {CandidateFor(contended_item)});
  EXPECT_THAT(DecisionsOf(claims), ElementsAre(Decision::kDispatched));
}

TEST_P(StoreContract, ReplayingACycleBatchAfterACrashRecordsAndDispatchesNothingTwice) {
  const Agent agent = AddAgent("solo", 1);
  const Agent paused = AddAgent("paused");
  const WorkItem first = AddWork(agent);
  const WorkItem second = AddWork(agent);
  const WorkItem skipped = AddWork(paused);
  const std::vector<DispatchCandidate> batch = {
      CandidateFor(first), CandidateFor(second),
      VerdictFor(skipped, Decision::kSkippedPaused, "agent is paused")};

  const SchedulerRun crashed = ClaimRun("c", "host-a");
  auto claims = Dispatch(crashed, batch);
  ASSERT_THAT(DecisionsOf(claims), ElementsAre(Decision::kDispatched, Decision::kDeferredLeaseHeld,
                                               Decision::kSkippedPaused));
  const FencingToken token = claims[0].lease->fencing_token;
  const std::size_t decisions = Await(store().ListDecisions("c")).size();
  ASSERT_EQ(decisions, 3u);

  // The same run retries its batch (say the reply was lost) ...
  claims = Dispatch(crashed, batch);
  EXPECT_THAT(RecordedOf(claims), ElementsAre(false, false, false));
  for (const auto& claim : claims)
    EXPECT_FALSE(claim.lease);

  // ... and another instance takes the cycle over and replays it.
  Advance(kTakeoverAfter + seconds(1));
  const ClaimResult takeover = Claim("c", "host-b");
  ASSERT_EQ(takeover.outcome, ClaimOutcome::kTookOver);
  claims = Dispatch(takeover.run, batch);
  EXPECT_THAT(RecordedOf(claims), ElementsAre(false, false, false));
  for (const auto& claim : claims)
    EXPECT_FALSE(claim.lease);

  EXPECT_EQ(Await(store().ListDecisions("c")).size(), decisions);
  EXPECT_EQ(LeaseCount(), 1u);
  EXPECT_EQ(Work(first.work_item_id).attempts, 1);
  EXPECT_EQ(Work(second.work_item_id).attempts, 0);
  EXPECT_EQ(Work(skipped.work_item_id).attempts, 0);
  EXPECT_EQ(FindAgent("solo")->fencing_counter, token);
}

TEST_P(StoreContract, ItemNoLongerPendingIsNotDispatched) {
  const Agent agent = AddAgent("busy", 3);
  const WorkItem done = AddWork(agent);
  const WorkItem dispatched = AddWork(agent);
  const WorkItem dead = AddWork(agent, 0, /*max_attempts=*/1);
  const WorkItem retrying = AddWork(agent);
  ASSERT_EQ(Complete(DoneWith(LeaseWork(done, 3))).verdict, Verdict::kAccepted);
  LeaseWork(dispatched, 3);
  ASSERT_EQ(Complete(FailedWith(LeaseWork(dead, 3))).item->state, WorkState::kDead);
  ASSERT_EQ(
      Complete(FailedWith(LeaseWork(retrying, 3)), RetryPolicy{minutes(5), minutes(5)}).item->state,
      WorkState::kFailed);
  const std::size_t leases = LeaseCount();

  auto claims = Dispatch(ClaimRun("late"), {CandidateFor(done, 3), CandidateFor(dispatched, 3),
                                            CandidateFor(dead, 3), CandidateFor(retrying, 3)});
  EXPECT_THAT(RecordedOf(claims), ElementsAre(false, false, false, false));
  for (const auto& claim : claims)
    EXPECT_FALSE(claim.lease);
  EXPECT_EQ(LeaseCount(), leases);
  EXPECT_THAT(Await(store().ListDecisions("late")), IsEmpty());
  EXPECT_EQ(Work(done.work_item_id).state, WorkState::kDone);
  EXPECT_EQ(Work(dispatched.work_item_id).attempts, 1);
  EXPECT_EQ(Work(dead.work_item_id).state, WorkState::kDead);
  EXPECT_EQ(Work(retrying.work_item_id).state, WorkState::kFailed);
}

TEST_P(StoreContract, ClaimDispatchesWithAnUnknownItemWritesNothing) {
  const Agent agent = AddAgent("worker");
  const WorkItem item = AddWork(agent);
  DispatchCandidate unknown;
  unknown.work_item_id = item.work_item_id + 1000;
  unknown.agent_id = agent.agent_id;
  const SchedulerRun run = ClaimRun("c");

  EXPECT_EQ(ErrorOf(store().ClaimDispatches(DispatchBatch{
                run.run_id, "c", "host-a", kLeaseTtl, {CandidateFor(item), unknown}})),
            StoreError::Kind::kNotFound);
  // The verb is atomic: the valid candidate before the unknown one was not applied.
  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kPending);
  EXPECT_EQ(Work(item.work_item_id).attempts, 0);
  EXPECT_EQ(LeaseCount(), 0u);
  EXPECT_THAT(Await(store().ListDecisions("c")), IsEmpty());
  EXPECT_EQ(FindAgent("worker")->fencing_counter, 0);
}

TEST_P(StoreContract, DecisionsAreListedWithAttemptNumbers) {
  const Agent agent = AddAgent("worker", 1);
  const WorkItem retried = AddWork(agent);
  const WorkItem waiting = AddWork(agent);
  const RetryPolicy policy{seconds(10), minutes(1)};

  const SchedulerRun run1 = ClaimRun("c1");
  auto claims = Dispatch(run1, {CandidateFor(retried)});
  ASSERT_TRUE(claims[0].lease);
  const LeaseId lease1 = claims[0].lease->lease_id;
  ASSERT_EQ(Complete(FailedWith(*claims[0].lease), policy).verdict, Verdict::kAccepted);

  Advance(seconds(10));
  const SchedulerRun run2 = ClaimRun("c2");
  claims = Dispatch(run2, {CandidateFor(retried), CandidateFor(waiting)});
  ASSERT_THAT(DecisionsOf(claims),
              ElementsAre(Decision::kDispatched, Decision::kDeferredLeaseHeld));
  const LeaseId lease2 = claims[0].lease->lease_id;

  auto in_c1 = Await(store().ListDecisions("c1"));
  ASSERT_THAT(in_c1, SizeIs(1));
  EXPECT_EQ(in_c1[0].work_item_id, retried.work_item_id);
  EXPECT_EQ(in_c1[0].attempt, 1);
  EXPECT_EQ(in_c1[0].decision, Decision::kDispatched);
  EXPECT_EQ(in_c1[0].lease_id, lease1);
  EXPECT_EQ(in_c1[0].run_id, run1.run_id);
  EXPECT_EQ(in_c1[0].cycle_id, "c1");

  EXPECT_THAT(Await(store().ListDecisions("c2")), SizeIs(2));
  auto second_attempt = FindDecision("c2", retried.work_item_id, 2);
  ASSERT_TRUE(second_attempt);
  EXPECT_EQ(second_attempt->decision, Decision::kDispatched);
  EXPECT_EQ(second_attempt->lease_id, lease2);
  EXPECT_EQ(second_attempt->run_id, run2.run_id);
  // A deferral names the attempt it would have been.
  auto deferred = FindDecision("c2", waiting.work_item_id, 1);
  ASSERT_TRUE(deferred);
  EXPECT_EQ(deferred->decision, Decision::kDeferredLeaseHeld);
  EXPECT_FALSE(deferred->lease_id);
  EXPECT_EQ(Work(retried.work_item_id).attempts, 2);
}

// --- expiry and renewal --------------------------------------------------------------------

TEST_P(StoreContract, ExpiredLeaseNoLongerCountsTowardTheBound) {
  const Agent agent = AddAgent("solo", 1);
  const Lease first = LeaseWork(AddWork(agent), 1, seconds(60));
  const WorkItem next = AddWork(agent);

  Advance(seconds(59));
  auto claims = Dispatch(ClaimRun("c-before"), {CandidateFor(next)});
  EXPECT_THAT(DecisionsOf(claims), ElementsAre(Decision::kDeferredLeaseHeld));

  Advance(seconds(2));
  EXPECT_THAT(ActiveLeases(agent), IsEmpty());
  claims = Dispatch(ClaimRun("c-after"), {CandidateFor(next)});
  ASSERT_THAT(DecisionsOf(claims), ElementsAre(Decision::kDispatched));
  EXPECT_GT(claims[0].lease->fencing_token, first.fencing_token);
  EXPECT_THAT(ActiveLeases(agent), SizeIs(1));
}

TEST_P(StoreContract, RenewExtendsALiveLease) {
  const Agent agent = AddAgent("worker");
  const Lease lease = LeaseWork(AddWork(agent), 1, seconds(60));
  Advance(seconds(30));
  const TimePoint now = Now();

  auto renewed = Await(store().RenewLeases({RefOf(lease)}, seconds(60)));
  ASSERT_THAT(renewed, SizeIs(1));
  EXPECT_EQ(renewed[0], now + seconds(60));
  auto stored = FindLease(lease.lease_id);
  EXPECT_EQ(stored->expires_at, now + seconds(60));
  EXPECT_EQ(stored->renewed_at, now);
  EXPECT_EQ(stored->acquired_at, lease.acquired_at);

  // Past the original expiry it is still live and completes on time.
  Advance(seconds(45));
  EXPECT_THAT(ActiveLeases(agent), SizeIs(1));
  EXPECT_EQ(Complete(DoneWith(lease)).verdict, Verdict::kAccepted);
}

TEST_P(StoreContract, RenewOfExpiredReleasedUnknownOrWrongTokenLeaseFails) {
  const Lease expired = LeaseWork(AddWork(AddAgent("expired")), 1, seconds(10));
  const Lease released = LeaseWork(AddWork(AddAgent("released")));
  const Lease wrong_token = LeaseWork(AddWork(AddAgent("wrong-token")));
  const Lease live = LeaseWork(AddWork(AddAgent("live")));
  ASSERT_EQ(Complete(DoneWith(released)).verdict, Verdict::kAccepted);
  Advance(seconds(20));
  const TimePoint now = Now();

  const LeaseRef unknown{live.lease_id + 1000, 1};
  const LeaseRef bad_token{wrong_token.lease_id, wrong_token.fencing_token + 1};
  auto renewed = Await(store().RenewLeases(
      {RefOf(expired), RefOf(released), unknown, bad_token, RefOf(live)}, seconds(60)));
  EXPECT_THAT(renewed, ElementsAre(std::nullopt, std::nullopt, std::nullopt, std::nullopt,
                                   std::optional<TimePoint>(now + seconds(60))));

  // The refused renewals changed nothing.
  EXPECT_EQ(FindLease(expired.lease_id)->expires_at, expired.expires_at);
  EXPECT_EQ(FindLease(wrong_token.lease_id)->expires_at, wrong_token.expires_at);
  EXPECT_TRUE(FindLease(released.lease_id)->released_at);
}

// --- completion ----------------------------------------------------------------------------

TEST_P(StoreContract, AcceptedCompletionReleasesTheLeaseAndMarksWorkDone) {
  const Agent agent = AddAgent("worker");
  const WorkItem item = AddWork(agent);
  const Lease lease = LeaseWork(item);
  Advance(seconds(5));
  const TimePoint now = Now();

  const CompletionResult result = Complete(DoneWith(lease));
  EXPECT_EQ(result.verdict, Verdict::kAccepted);
  EXPECT_TRUE(result.accepted());
  ASSERT_TRUE(result.item);
  EXPECT_EQ(result.item->state, WorkState::kDone);
  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kDone);
  EXPECT_EQ(FindLease(lease.lease_id)->released_at, now);
  EXPECT_THAT(ActiveLeases(agent), IsEmpty());
  // The bound is free again.
  LeaseWork(AddWork(agent));
}

TEST_P(StoreContract, CompletionWithWrongTokenIsUnknownLease) {
  const Agent agent = AddAgent("worker");
  const WorkItem item = AddWork(agent);
  const Lease lease = LeaseWork(item);

  Completion forged = DoneWith(lease);
  forged.lease.fencing_token += 1;
  EXPECT_EQ(Complete(forged).verdict, Verdict::kUnknownLease);
  Completion unknown = DoneWith(lease);
  unknown.lease.lease_id += 1000;
  EXPECT_EQ(Complete(unknown).verdict, Verdict::kUnknownLease);
  EXPECT_FALSE(Complete(unknown).accepted());

  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kDispatched);
  EXPECT_FALSE(FindLease(lease.lease_id)->released_at);
  EXPECT_THAT(ActiveLeases(agent), SizeIs(1));
}

TEST_P(StoreContract, SecondCompletionIsReleased) {
  const Agent agent = AddAgent("worker");
  const WorkItem item = AddWork(agent);
  const Lease lease = LeaseWork(item);
  ASSERT_EQ(Complete(DoneWith(lease)).verdict, Verdict::kAccepted);
  const CompletionResult again = Complete(FailedWith(lease));
  EXPECT_EQ(again.verdict, Verdict::kReleased);
  EXPECT_FALSE(again.accepted());
  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kDone);
}

TEST_P(StoreContract, CompletionBatchJudgesEachCompletionOnItsOwnInOrder) {
  const Agent agent = AddAgent("batch", 3);
  const Agent solo = AddAgent("solo", 1);
  const WorkItem done_item = AddWork(agent);
  const WorkItem failed_item = AddWork(agent);
  const WorkItem untouched = AddWork(agent);
  const Lease done = LeaseWork(done_item, 3);
  const Lease failed = LeaseWork(failed_item, 3);
  const Lease kept = LeaseWork(untouched, 3);
  const Lease stale = LeaseWork(AddWork(solo), 1, seconds(30));
  Advance(seconds(31));
  LeaseWork(AddWork(solo), 1);  // overtakes `stale`

  Completion forged = DoneWith(kept);
  forged.lease.fencing_token += 100;
  std::vector<Completion> batch{DoneWith(done), FailedWith(failed), forged, DoneWith(stale),
                                DoneWith(done)};
  const RetryPolicy policy{seconds(10), minutes(10)};
  const auto results = Await(store().CompleteWorkBatch(batch, policy));
  ASSERT_THAT(results, SizeIs(5));
  EXPECT_EQ(results[0].verdict, Verdict::kAccepted);
  ASSERT_TRUE(results[0].item);
  EXPECT_EQ(results[0].item->work_item_id, done_item.work_item_id);
  EXPECT_EQ(results[0].item->state, WorkState::kDone);
  EXPECT_EQ(results[1].verdict, Verdict::kAccepted);
  ASSERT_TRUE(results[1].item);
  EXPECT_EQ(results[1].item->state, WorkState::kFailed);
  EXPECT_EQ(results[1].item->due_at, Now() + seconds(10));
  EXPECT_EQ(results[2].verdict, Verdict::kUnknownLease);
  EXPECT_FALSE(results[2].item);
  EXPECT_EQ(results[3].verdict, Verdict::kOvertaken);
  EXPECT_FALSE(results[3].item);
  // The same lease twice in one batch is completed once.
  EXPECT_EQ(results[4].verdict, Verdict::kReleased);

  EXPECT_EQ(Work(done_item.work_item_id).state, WorkState::kDone);
  EXPECT_EQ(Work(failed_item.work_item_id).state, WorkState::kFailed);
  EXPECT_EQ(Work(untouched.work_item_id).state, WorkState::kDispatched);
  EXPECT_FALSE(FindLease(kept.lease_id)->released_at);
  EXPECT_FALSE(FindLease(stale.lease_id)->released_at);
  EXPECT_THAT(ActiveLeases(agent), SizeIs(1));
  EXPECT_THAT(Await(store().CompleteWorkBatch({}, policy)), IsEmpty());
}

TEST_P(StoreContract, CompletionAfterExpiryWithNobodyOvertakingIsAcceptedLate) {
  const Agent agent = AddAgent("worker");
  const WorkItem item = AddWork(agent);
  const Lease lease = LeaseWork(item, 1, seconds(60));
  Advance(seconds(90));

  const CompletionResult result = Complete(DoneWith(lease));
  EXPECT_EQ(result.verdict, Verdict::kAcceptedLate);
  EXPECT_TRUE(result.accepted());
  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kDone);
  EXPECT_TRUE(FindLease(lease.lease_id)->released_at);
}

TEST_P(StoreContract, CompletionAfterExpiryAndANewerLeaseIsOvertaken) {
  const Agent agent = AddAgent("solo", 1);
  const WorkItem stale_item = AddWork(agent);
  const Lease stale = LeaseWork(stale_item, 1, seconds(60));
  Advance(seconds(61));
  const Lease newer = LeaseWork(AddWork(agent), 1);

  const CompletionResult result = Complete(DoneWith(stale));
  EXPECT_EQ(result.verdict, Verdict::kOvertaken);
  EXPECT_FALSE(result.accepted());
  // A refused completion changes nothing.
  EXPECT_EQ(Work(stale_item.work_item_id).state, WorkState::kDispatched);
  EXPECT_FALSE(FindLease(stale.lease_id)->released_at);
  EXPECT_THAT(ActiveLeases(agent), SizeIs(1));
  EXPECT_EQ(Complete(DoneWith(newer)).verdict, Verdict::kAccepted);
}

TEST_P(StoreContract, OlderValidLeaseIsNotStaleBecauseANewerOneExists) {
  const Agent agent = AddAgent("pair", 2);
  const Lease older = LeaseWork(AddWork(agent), 2);
  Advance(seconds(10));
  const Lease newer = LeaseWork(AddWork(agent), 2);
  ASSERT_GT(newer.fencing_token, older.fencing_token);

  EXPECT_EQ(Complete(DoneWith(older)).verdict, Verdict::kAccepted);
  EXPECT_EQ(Complete(DoneWith(newer)).verdict, Verdict::kAccepted);
}

TEST_P(StoreContract, LeaseAcquiredBeforeExpiryDoesNotOvertake) {
  const Agent agent = AddAgent("pair", 2);
  const WorkItem item = AddWork(agent);
  const Lease older = LeaseWork(item, 2, seconds(30));
  Advance(seconds(10));
  LeaseWork(AddWork(agent), 2, seconds(60));
  Advance(seconds(25));  // older expired 5s ago; the newer one was acquired before that

  EXPECT_EQ(Complete(DoneWith(older)).verdict, Verdict::kAcceptedLate);
  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kDone);
}

TEST_P(StoreContract, FailedCompletionRetriesWithDoublingBackoffCappedByMax) {
  const Agent agent = AddAgent("worker");
  const WorkItem item = AddWork(agent, 0, /*max_attempts=*/5);
  const RetryPolicy policy{seconds(10), seconds(25)};

  const std::vector<Duration> expected_delays = {seconds(10), seconds(20), seconds(25),
                                                 seconds(25)};
  for (std::size_t i = 0; i < expected_delays.size(); ++i) {
    SCOPED_TRACE("attempt " + std::to_string(i + 1));
    const Lease lease = LeaseWork(Work(item.work_item_id));
    Advance(seconds(3));
    const TimePoint now = Now();
    const CompletionResult result =
        Complete(FailedWith(lease, "exit status " + std::to_string(i + 1)), policy);
    ASSERT_EQ(result.verdict, Verdict::kAccepted);
    const WorkItem failed = Work(item.work_item_id);
    EXPECT_EQ(failed.state, WorkState::kFailed);
    EXPECT_EQ(failed.attempts, static_cast<int>(i + 1));
    EXPECT_EQ(failed.due_at, now + expected_delays[i]);
    EXPECT_EQ(failed.last_error, "exit status " + std::to_string(i + 1));
    EXPECT_TRUE(FindLease(lease.lease_id)->released_at);
    Advance(expected_delays[i]);
  }
}

TEST_P(StoreContract, FailedCompletionOutOfAttemptsIsDead) {
  const Agent agent = AddAgent("worker");
  const WorkItem item = AddWork(agent, 0, /*max_attempts=*/2);
  const RetryPolicy policy{seconds(10), minutes(1)};

  EXPECT_EQ(Complete(FailedWith(LeaseWork(item)), policy).item->state, WorkState::kFailed);
  Advance(seconds(10));
  const CompletionResult last = Complete(FailedWith(LeaseWork(item), "still broken"), policy);
  EXPECT_EQ(last.verdict, Verdict::kAccepted);
  EXPECT_EQ(last.item->state, WorkState::kDead);

  const WorkItem dead = Work(item.work_item_id);
  EXPECT_EQ(dead.state, WorkState::kDead);
  EXPECT_EQ(dead.attempts, 2);
  EXPECT_EQ(dead.last_error, "still broken");
  Advance(hours(1));
  EXPECT_THAT(DueIds(), IsEmpty());
  EXPECT_THAT(Await(store().ListWork(WorkState::kDead)), SizeIs(1));
}

TEST_P(StoreContract, FailedCompletionWithoutRetryIsDead) {
  const Agent agent = AddAgent("worker");
  const WorkItem item = AddWork(agent, 0, /*max_attempts=*/3);
  Completion final_failure = FailedWith(LeaseWork(item), "payload rejected");
  final_failure.retry = false;
  EXPECT_EQ(Complete(final_failure).verdict, Verdict::kAccepted);
  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kDead);
  EXPECT_EQ(Work(item.work_item_id).attempts, 1);
  Advance(hours(1));
  EXPECT_THAT(DueIds(), IsEmpty());
}

TEST_P(StoreContract, TransportErrorTurnsTheDecisionIntoFailed) {
  const Agent agent = AddAgent("worker");
  const WorkItem item = AddWork(agent);
  const SchedulerRun run = ClaimRun("c");
  auto claims = Dispatch(run, {CandidateFor(item)});
  ASSERT_TRUE(claims[0].lease);

  Completion transport = FailedWith(*claims[0].lease, "connection refused");
  transport.transport_error = true;
  EXPECT_EQ(Complete(transport).verdict, Verdict::kAccepted);

  auto decision = FindDecision("c", item.work_item_id, 1);
  ASSERT_TRUE(decision);
  EXPECT_EQ(decision->decision, Decision::kFailed);
  EXPECT_EQ(decision->lease_id, claims[0].lease->lease_id);
  EXPECT_THAT(Await(store().ListDecisions("c")), SizeIs(1));
  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kFailed);
}

// --- requeueing expired work ---------------------------------------------------------------

TEST_P(StoreContract, ExpiredDispatchGoesBackToPendingAndItsLateCompletionIsOvertaken) {
  const Agent agent = AddAgent("solo", 1);
  const WorkItem item = AddWork(agent);
  const Lease first = LeaseWork(item, 1, seconds(60));
  Advance(seconds(61));

  EXPECT_EQ(Await(store().RequeueExpiredWork()), 1);
  WorkItem requeued = Work(item.work_item_id);
  EXPECT_EQ(requeued.state, WorkState::kPending);
  EXPECT_EQ(requeued.attempts, 1);
  EXPECT_FALSE(FindLease(first.lease_id)->released_at);  // the lease is left as it is
  EXPECT_THAT(DueIds(), ElementsAre(item.work_item_id));

  const Lease second = LeaseWork(requeued);
  EXPECT_GT(second.fencing_token, first.fencing_token);
  EXPECT_EQ(Complete(DoneWith(first)).verdict, Verdict::kOvertaken);
  requeued = Work(item.work_item_id);
  EXPECT_EQ(requeued.state, WorkState::kDispatched);
  EXPECT_EQ(requeued.attempts, 2);
  EXPECT_EQ(requeued.lease_id, second.lease_id);
  EXPECT_EQ(Complete(DoneWith(second)).verdict, Verdict::kAccepted);
  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kDone);
}

TEST_P(StoreContract, ExpiredDispatchOutOfAttemptsIsDead) {
  const Agent agent = AddAgent("worker");
  const WorkItem item = AddWork(agent, 0, /*max_attempts=*/1);
  LeaseWork(item, 1, seconds(60));
  Advance(seconds(61));
  EXPECT_EQ(Await(store().RequeueExpiredWork()), 1);
  EXPECT_EQ(Work(item.work_item_id).state, WorkState::kDead);
  EXPECT_THAT(DueIds(), IsEmpty());
}

TEST_P(StoreContract, RequeueLeavesUnexpiredAndFinishedWorkUntouched) {
  const Agent agent = AddAgent("trio", 3);
  const WorkItem live = AddWork(agent);
  const WorkItem done = AddWork(agent);
  const WorkItem pending = AddWork(agent);
  LeaseWork(live, 3, seconds(60));
  ASSERT_EQ(Complete(DoneWith(LeaseWork(done, 3, seconds(10)))).verdict, Verdict::kAccepted);
  Advance(seconds(30));  // done's lease would have expired by now; live's has not

  EXPECT_EQ(Await(store().RequeueExpiredWork()), 0);
  EXPECT_EQ(Work(live.work_item_id).state, WorkState::kDispatched);
  EXPECT_EQ(Work(done.work_item_id).state, WorkState::kDone);
  EXPECT_EQ(Work(pending.work_item_id).state, WorkState::kPending);

  // Once moved, an item is not moved again.
  Advance(seconds(31));
  EXPECT_EQ(Await(store().RequeueExpiredWork()), 1);
  EXPECT_EQ(Await(store().RequeueExpiredWork()), 0);
}

// --- the lease invariant -------------------------------------------------------------------

/// For every instant t, the leases of one agent with acquired_at <= t < min(released_at,
/// expires_at) number at most `bound`. Returns the largest such number seen.
int CheckLeaseInvariant(const std::vector<Lease>& leases, int bound) {
  auto end_of = [](const Lease& l) {
    return l.released_at ? std::min(*l.released_at, l.expires_at) : l.expires_at;
  };
  int peak = 0;
  // The count only rises at an acquisition, so checking those instants covers all of them.
  for (const Lease& at : leases) {
    const TimePoint t = at.acquired_at;
    int active = 0;
    for (const Lease& l : leases) {
      if (l.acquired_at <= t && t < end_of(l))
        ++active;
    }
    EXPECT_LE(active, bound) << "lease " << at.lease_id << " made " << active << " active";
    peak = std::max(peak, active);
  }
  return peak;
}

TEST_P(StoreContract, LeaseInvariantHoldsOverARandomizedHistory) {
  std::map<AgentId, int> bounds;
  std::vector<Agent> agents;
  for (int bound : {1, 2, 3}) {
    agents.push_back(AddAgent("bound-" + std::to_string(bound), bound));
    bounds[agents.back().agent_id] = bound;
  }
  std::mt19937 rng(20240115);
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
  const RetryPolicy policy{seconds(5), seconds(40)};

  std::vector<Lease> held;  // handed out and not yet completed; expires_at tracks renewals
  int dispatched = 0;
  int deferred = 0;
  for (int step = 0; step < 800; ++step) {
    const int action = pick(12);
    if (action < 3) {  // producers enqueue
      const Agent& agent = agents[pick(3)];
      for (int n = pick(3); n >= 0; --n)
        AddWork(agent, pick(3), 1 + pick(4));
    } else if (action < 6) {  // a scheduler cycle
      const SchedulerRun run = ClaimRun(NextCycleId());
      std::vector<DispatchCandidate> candidates;
      for (const auto& item : Await(store().SelectDueWork(8, 1))) {
        candidates.push_back(CandidateFor(item, bounds.at(item.agent_id)));
      }
      for (const auto& claim : Dispatch(run, candidates, seconds(15 + pick(46)))) {
        if (claim.lease) {
          held.push_back(*claim.lease);
          ++dispatched;
        }
        if (claim.decision.decision == Decision::kDeferredLeaseHeld)
          ++deferred;
      }
      Await(store().FinishRun(run.run_id, RunStatus::kCompleted, RunCounts{}, ""));
      for (const auto& agent : agents) {
        EXPECT_LE(static_cast<int>(ActiveLeases(agent).size()), bounds.at(agent.agent_id));
      }
    } else if (action < 8 && !held.empty()) {  // a holder reports
      const std::size_t index = static_cast<std::size_t>(pick(static_cast<int>(held.size())));
      const Lease lease = held[index];
      held.erase(held.begin() + static_cast<std::ptrdiff_t>(index));
      const bool live = Now() < lease.expires_at;
      const CompletionResult result =
          Complete(pick(2) == 0 ? DoneWith(lease) : FailedWith(lease), policy);
      if (live) {
        EXPECT_EQ(result.verdict, Verdict::kAccepted);
      } else {
        EXPECT_TRUE(result.verdict == Verdict::kAcceptedLate ||
                    result.verdict == Verdict::kOvertaken)
            << ToString(result.verdict);
      }
    } else if (action < 9 && !held.empty()) {  // holders renew
      std::vector<LeaseRef> refs;
      for (const auto& lease : held)
        refs.push_back(RefOf(lease));
      const TimePoint now = Now();
      auto renewed = Await(store().RenewLeases(refs, seconds(30)));
      ASSERT_EQ(renewed.size(), held.size());
      for (std::size_t i = 0; i < held.size(); ++i) {
        if (now < held[i].expires_at) {
          EXPECT_EQ(renewed[i], now + seconds(30));
          held[i].expires_at = now + seconds(30);
        } else {
          EXPECT_EQ(renewed[i], std::nullopt);
        }
      }
    } else if (action < 11) {
      Advance(seconds(1 + pick(30)));
    } else {
      Await(store().RequeueExpiredWork());
    }
  }

  const auto history = Await(store().ListLeases(std::nullopt, /*active_only=*/false));
  ASSERT_EQ(static_cast<int>(history.size()), dispatched);
  EXPECT_GT(dispatched, 100);
  EXPECT_GT(deferred, 0);
  for (const auto& agent : agents) {
    SCOPED_TRACE(agent.agent_slug);
    std::vector<Lease> leases;
    for (const auto& l : history) {
      if (l.agent_id == agent.agent_id)
        leases.push_back(l);
    }
    const int bound = bounds.at(agent.agent_id);
    // Under this load every agent fills its bound at some point, so the check is not vacuous.
    EXPECT_EQ(CheckLeaseInvariant(leases, bound), bound);

    std::sort(leases.begin(), leases.end(),
              [](const Lease& a, const Lease& b) { return a.fencing_token < b.fencing_token; });
    for (std::size_t i = 1; i < leases.size(); ++i) {
      EXPECT_LT(leases[i - 1].fencing_token, leases[i].fencing_token);
      EXPECT_LE(leases[i - 1].acquired_at, leases[i].acquired_at);
    }
  }
}

// One executable per backend: the PostgreSQL one is built with WARP_CONTRACT_POSTGRES and
// carries the ctest label `postgres`.
#ifdef WARP_CONTRACT_POSTGRES
INSTANTIATE_TEST_SUITE_P(Postgres, StoreContract, ::testing::Values(PostgresFactory()),
                         [](const ::testing::TestParamInfo<StoreFactory>& info) {
                           return info.param.name;
                         });
#else
INSTANTIATE_TEST_SUITE_P(Memory, StoreContract, ::testing::Values(MemoryFactory()),
                         [](const ::testing::TestParamInfo<StoreFactory>& info) {
                           return info.param.name;
                         });
#endif

}  // namespace
}  // namespace test
}  // namespace warp::store
