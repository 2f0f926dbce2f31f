#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include "config/fixtures.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "config/config.hpp"
#include "store/memory/memory_store.hpp"

namespace warp::config {
namespace {

using testing::HasSubstr;

constexpr std::string_view kSpecFixtures = R"([[tool_profile]]
id = "erp-read"
capabilities = ["erp.read", "wiki.write"]
operations = ["sync", "report"]
system_overlays = { erpnext = "read-first" }

[[agent]]
slug = "erp-sales"
display_name = "ERP sales agent"
domain = "sales"
tool_profile = "erp-read"
runner = "demo"
business_link = "spindle:req-1042"
max_active = 1
lifecycle = "active"

[[work]]
agent = "erp-sales"
kind = "sync"
payload = { full = true }
priority = 0
key = "initial-sync"
)";

// A valid profile and agent that error tests build on; they come last so that the positions the
// tests assert start at line 1.
constexpr std::string_view kBase = R"(
[[tool_profile]]
id = "base"

[[agent]]
slug = "base-agent"
display_name = "Base"
domain = "ops"
tool_profile = "base"
runner = "noop"
business_link = "spindle:req-1"
)";

/// The pieces one after the other (GCC 12 warns falsely on `std::string + "literal"` here).
std::string Joined(std::initializer_list<std::string_view> pieces) {
  std::string out;
  for (const auto piece : pieces) {
    out += piece;
  }
  return out;
}

/// The error loading `toml` followed by kBase raises.
ConfigError ErrorOf(std::string_view toml) {
  const std::string text = Joined({toml, kBase});
  try {
    LoadFixturesString(text, "fixtures.toml");
  } catch (const ConfigError& e) {
    return e;
  }
  ADD_FAILURE() << "no ConfigError for:\n" << text;
  return ConfigError("", -1, -1, "", "");
}

void ExpectError(const ConfigError& e, int line, int column, std::string_view key,
                 std::string_view message_part) {
  EXPECT_EQ(e.file(), "fixtures.toml");
  EXPECT_EQ(e.line(), line) << e.what();
  EXPECT_EQ(e.column(), column) << e.what();
  EXPECT_EQ(e.key(), key) << e.what();
  EXPECT_THAT(e.message(), HasSubstr(std::string(message_part))) << e.what();
}

/// A complete agent of 7 lines: a key added after it stands on line 8.
constexpr std::string_view kValidAgent = R"([[agent]]
slug = "erp-sales"
display_name = "ERP"
domain = "sales"
tool_profile = "base"
runner = "demo"
business_link = "spindle:req-1"
)";

/// A fixtures file (followed by kBase) that fails to load, and the error it must raise: one test
/// each, named `name`.
struct ErrorCase {
  std::string_view name;
  std::string toml;
  int line;
  int column;
  std::string_view key;
  std::string_view message_part;
};

void PrintTo(const ErrorCase& c, std::ostream* out) {
  *out << c.name;
}

std::string CaseName(const testing::TestParamInfo<ErrorCase>& info) {
  return std::string(info.param.name);
}

class FixturesErrorTest : public testing::TestWithParam<ErrorCase> {};

TEST_P(FixturesErrorTest, RaisesTheErrorAtLineColumnAndKey) {
  const ErrorCase& c = GetParam();
  ExpectError(ErrorOf(c.toml), c.line, c.column, c.key, c.message_part);
}

/// Runs a store coroutine to completion on a fresh event loop.
template <typename T>
T RunToCompletion(store::Task<T> task) {
  boost::asio::io_context io;
  auto result = boost::asio::co_spawn(io, std::move(task), boost::asio::use_future);
  io.run();
  return result.get();
}

// --- loading ----------------------------------------------------------------------------------

TEST(LoadFixturesTest, SpecExampleLoadsEveryKey) {
  const Fixtures f = LoadFixturesString(kSpecFixtures, "fixtures.toml");
  ASSERT_EQ(f.tool_profiles.size(), 1u);
  EXPECT_EQ(f.tool_profiles[0].tool_profile_id, "erp-read");
  EXPECT_EQ(f.tool_profiles[0].capabilities, (std::vector<std::string>{"erp.read", "wiki.write"}));
  EXPECT_EQ(f.tool_profiles[0].operations, (std::vector<std::string>{"sync", "report"}));
  EXPECT_EQ(f.tool_profiles[0].system_overlays,
            (std::map<std::string, std::string>{{"erpnext", "read-first"}}));

  ASSERT_EQ(f.agents.size(), 1u);
  const store::NewAgent& agent = f.agents[0];
  EXPECT_EQ(agent.agent_slug, "erp-sales");
  EXPECT_EQ(agent.display_name, "ERP sales agent");
  EXPECT_EQ(agent.domain_id, "sales");
  EXPECT_EQ(agent.tool_profile_id, "erp-read");
  EXPECT_EQ(agent.runner, "demo");
  EXPECT_EQ(agent.business_link, "spindle:req-1042");
  EXPECT_EQ(agent.max_active_leases, 1);
  EXPECT_EQ(agent.lifecycle, store::Lifecycle::kActive);
  EXPECT_TRUE(agent.labels.empty());

  ASSERT_EQ(f.work.size(), 1u);
  EXPECT_EQ(f.work[0].agent_slug, "erp-sales");
  EXPECT_EQ(f.work[0].kind, "sync");
  EXPECT_EQ(f.work[0].payload_json, R"({"full":true})");
  EXPECT_EQ(f.work[0].priority, 0);
  EXPECT_EQ(f.work[0].idempotency_key, "initial-sync");
  EXPECT_EQ(f.work[0].max_attempts, 0);
}

TEST(LoadFixturesTest, OptionalKeysTakeTheirDefaults) {
  const Fixtures f = LoadFixturesString(Joined({kBase, R"(
[[work]]
agent = "base-agent"
kind = "check"
)"}),
                                        "fixtures.toml");
  ASSERT_EQ(f.agents.size(), 1u);
  EXPECT_EQ(f.agents[0].max_active_leases, 0);  // leasing.default_max_active applies
  EXPECT_EQ(f.agents[0].lifecycle, store::Lifecycle::kActive);
  EXPECT_TRUE(f.agents[0].labels.empty());
  EXPECT_TRUE(f.tool_profiles[0].capabilities.empty());
  EXPECT_TRUE(f.tool_profiles[0].operations.empty());
  ASSERT_EQ(f.work.size(), 1u);
  EXPECT_EQ(f.work[0].payload_json, "{}");
  EXPECT_EQ(f.work[0].priority, 0);
  EXPECT_EQ(f.work[0].idempotency_key, "");
  EXPECT_EQ(f.work[0].max_attempts, 0);
}

TEST(LoadFixturesTest, LabelsLifecyclePriorityAndMaxAttemptsAreRead) {
  const Fixtures f = LoadFixturesString(Joined({R"([[agent]]
slug = "erp-buy"
display_name = "ERP purchasing"
domain = "buy"
tool_profile = "base"
runner = "demo"
business_link = "spindle:req-7"
max_active = 3
lifecycle = "paused"
labels = { team = "finance", tier = "2" }

[[work]]
agent = "erp-buy"
kind = "report"
priority = -5
max_attempts = 2
)",
                                                kBase}),
                                        "fixtures.toml");
  ASSERT_EQ(f.agents.size(), 2u);
  EXPECT_EQ(f.agents[0].agent_slug, "erp-buy");
  EXPECT_EQ(f.agents[0].max_active_leases, 3);
  EXPECT_EQ(f.agents[0].lifecycle, store::Lifecycle::kPaused);
  EXPECT_EQ(f.agents[0].labels,
            (std::map<std::string, std::string>{{"team", "finance"}, {"tier", "2"}}));
  ASSERT_EQ(f.work.size(), 1u);
  EXPECT_EQ(f.work[0].priority, -5);
  EXPECT_EQ(f.work[0].max_attempts, 2);
}

TEST(LoadFixturesTest, EmptyFileHasNoFixtures) {
  const Fixtures f = LoadFixturesString("", "fixtures.toml");
  EXPECT_TRUE(f.tool_profiles.empty());
  EXPECT_TRUE(f.agents.empty());
  EXPECT_TRUE(f.work.empty());
}

TEST(LoadFixturesTest, ReadsAFile) {
  const auto path = std::filesystem::path(testing::TempDir()) /
                    ("warp_fixtures_test_" + std::to_string(::getpid()) + ".toml");
  std::ofstream(path) << kSpecFixtures;
  const Fixtures f = LoadFixtures(path);
  std::filesystem::remove(path);
  EXPECT_EQ(f.agents.size(), 1u);
  EXPECT_EQ(f.work.size(), 1u);
}

TEST(LoadFixturesTest, MissingFileReportsTheOsErrorAtLineZero) {
  const auto path = std::filesystem::path(testing::TempDir()) / "warp_no_such_fixtures.toml";
  try {
    LoadFixtures(path);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.line(), 0);
    EXPECT_EQ(e.column(), 0);
    EXPECT_EQ(e.file(), path.string());
    EXPECT_THAT(e.message(), HasSubstr(std::strerror(ENOENT)));
  }
}

// --- bad input --------------------------------------------------------------------------------

TEST(BadFixturesTest, TomlSyntaxErrorNamesPositionWithoutKey) {
  const ConfigError e = ErrorOf("[[agent]]\nslug = \"a\n");
  EXPECT_EQ(e.line(), 2);
  EXPECT_EQ(e.key(), "");
  EXPECT_THAT(e.what(), testing::StartsWith("fixtures.toml:2:"));
}

const ErrorCase kBadFixturesCases[] = {
    {"UnknownTopLevelKeyIsRejected", "[[agents]]\nslug = \"x\"\n", 1, 3, "agents", "unknown key"},
    {"UnknownKeyInAnAgentIsRejectedAtTheKey", Joined({kValidAgent, "owner = \"me\"\n"}), 8, 1,
     "agent[0].owner", "unknown key"},
    {"UnknownKeyInAToolProfileIsRejected", "[[tool_profile]]\nid = \"x\"\ncapability = [\"a\"]\n",
     3, 1, "tool_profile[0].capability", "unknown key"},
    {"UnknownKeyInWorkIsRejected",
     "[[work]]\nagent = \"base-agent\"\nkind = \"sync\"\ndue = \"now\"\n", 4, 1, "work[0].due",
     "unknown key"},
    {"WorkThatIsNotAnArrayOfTablesIsRejected", "work = \"x\"\n", 1, 8, "work",
     "expected an array of tables ([[work]])"},
    {"WrongTypeIsRejectedAtTheValue", Joined({kValidAgent, "max_active = \"2\"\n"}), 8, 14,
     "agent[0].max_active", "expected an integer, found a string"},
    {"CapabilityThatIsNotAStringIsRejectedAtTheElement",
     "[[tool_profile]]\nid = \"x\"\ncapabilities = [\"a\", true]\n", 3, 22,
     "tool_profile[0].capabilities[1]", "expected a string, found a boolean"},
    {"LabelThatIsNotAStringIsRejected", Joined({kValidAgent, "labels = { tier = 2 }\n"}), 8, 19,
     "agent[0].labels.tier", "expected a string, found an integer"},
    {"InvalidSlugIsRejected", R"([[agent]]
slug = "ERP_Sales"
display_name = "ERP"
domain = "sales"
tool_profile = "base"
runner = "demo"
business_link = "spindle:req-1"
)",
     2, 8, "agent[0].slug", "must match ^[a-z0-9][a-z0-9-]{0,62}$"},
    {"EmptyBusinessLinkIsRejected", R"([[agent]]
slug = "erp-sales"
display_name = "ERP"
domain = "sales"
tool_profile = "base"
runner = "demo"
business_link = ""
)",
     7, 17, "agent[0].business_link", "must not be empty"},
    {"MissingBusinessLinkIsRejectedAtTheAgentTable", R"([[agent]]
slug = "erp-sales"
display_name = "ERP"
domain = "sales"
tool_profile = "base"
runner = "demo"
)",
     1, 1, "agent[0].business_link", "required"},
    {"UnknownToolProfileIsRejectedAtTheReference", R"([[agent]]
slug = "erp-sales"
display_name = "ERP"
domain = "sales"
tool_profile = "erp-write"
runner = "demo"
business_link = "spindle:req-1"
)",
     5, 16, "agent[0].tool_profile", "unknown tool profile \"erp-write\""},
    {"WorkForAnUnknownAgentIsRejected", "[[work]]\nagent = \"ghost\"\nkind = \"sync\"\n", 2, 9,
     "work[0].agent", "unknown agent \"ghost\""},
    {"DuplicateAgentSlugIsRejectedAtTheSecond", R"([[agent]]
slug = "base-agent"
display_name = "Again"
domain = "ops"
tool_profile = "base"
runner = "noop"
business_link = "spindle:req-2"
)",
     13, 8, "agent[1].slug", "duplicate agent slug \"base-agent\" (first on line 2)"},
    {"DuplicateToolProfileIdIsRejected", "[[tool_profile]]\nid = \"base\"\n", 5, 6,
     "tool_profile[1].id", "duplicate tool profile id \"base\" (first on line 2)"},
    {"DuplicateWorkKeyIsRejected", R"([[work]]
agent = "base-agent"
kind = "sync"
key = "once"

[[work]]
agent = "base-agent"
kind = "sync"
key = "once"
)",
     9, 7, "work[1].key", "duplicate work key \"once\" (first on line 4)"},
    {"PayloadThatIsNotATableIsRejected",
     "[[work]]\nagent = \"base-agent\"\nkind = \"sync\"\npayload = [1, 2]\n", 4, 11,
     "work[0].payload", "expected a table, found an array"},
    {"UnknownLifecycleIsRejected", Joined({kValidAgent, "lifecycle = \"sleeping\"\n"}), 8, 13,
     "agent[0].lifecycle", "must be one of active, paused, retired"},
    {"ZeroMaxActiveIsRejected", Joined({kValidAgent, "max_active = 0\n"}), 8, 14,
     "agent[0].max_active", "must be at least 1"},
    {"MissingWorkKindIsRejectedAtTheWorkTable", "[[work]]\nagent = \"base-agent\"\n", 1, 1,
     "work[0].kind", "required"},
};
INSTANTIATE_TEST_SUITE_P(BadFixturesTest, FixturesErrorTest, testing::ValuesIn(kBadFixturesCases),
                         CaseName);

// --- applying ---------------------------------------------------------------------------------

TEST(ApplyFixturesTest, WritesProfilesAgentsAndWorkIntoTheStore) {
  const auto now = std::chrono::system_clock::time_point(std::chrono::hours(480'000));
  store::MemoryStore store([now] { return now; });
  const Fixtures f = LoadFixturesString(Joined({kSpecFixtures, kBase, R"(
[[work]]
agent = "base-agent"
kind = "check"
priority = 7
max_attempts = 2
)"}),
                                        "fixtures.toml");

  RunToCompletion(ApplyFixtures(store, f, /*default_max_attempts=*/5));

  const auto profiles = RunToCompletion(store.ListToolProfiles());
  ASSERT_EQ(profiles.size(), 2u);

  const auto agents = RunToCompletion(store.ListAgents());
  ASSERT_EQ(agents.size(), 2u);
  EXPECT_EQ(agents[0].agent_slug, "erp-sales");
  EXPECT_EQ(agents[0].business_link, "spindle:req-1042");
  EXPECT_EQ(agents[0].tool_profile_id, "erp-read");
  EXPECT_EQ(agents[0].max_active_leases, 1);
  EXPECT_EQ(agents[1].agent_slug, "base-agent");

  const auto work = RunToCompletion(store.ListWork(std::nullopt));
  ASSERT_EQ(work.size(), 2u);
  EXPECT_EQ(work[0].agent_id, agents[0].agent_id);
  EXPECT_EQ(work[0].kind, "sync");
  EXPECT_EQ(work[0].payload_json, R"({"full":true})");
  EXPECT_EQ(work[0].idempotency_key, "initial-sync");
  EXPECT_EQ(work[0].max_attempts, 5);
  EXPECT_EQ(work[0].state, store::WorkState::kPending);
  EXPECT_EQ(work[0].due_at, now);
  EXPECT_EQ(work[1].agent_id, agents[1].agent_id);
  EXPECT_EQ(work[1].priority, 7);
  EXPECT_EQ(work[1].max_attempts, 2);
}

TEST(ApplyFixturesTest, ExistingIdempotencyKeysAreKept) {
  const auto now = std::chrono::system_clock::time_point(std::chrono::hours(480'000));
  store::MemoryStore store([now] { return now; });
  const Fixtures f = LoadFixturesString(kSpecFixtures, "fixtures.toml");
  RunToCompletion(ApplyFixtures(store, f, 5));

  Fixtures again;
  again.work = f.work;
  again.work[0].priority = 99;
  RunToCompletion(ApplyFixtures(store, again, 5));

  const auto work = RunToCompletion(store.ListWork(std::nullopt));
  ASSERT_EQ(work.size(), 1u);
  EXPECT_EQ(work[0].priority, 0);
}

}  // namespace
}  // namespace warp::config
