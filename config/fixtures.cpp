#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include "config/fixtures.hpp"

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <toml++/toml.h>

#include "config/impl/toml_reader.hpp"
#include "store/model.hpp"

namespace warp::config {

namespace {

// The TOML reading shared with the config loader. An entry (`[[agent]]`...) is a TableReader
// named like `agent[1]`; the whole file is one named "".
using impl::Fail;
using impl::Field;
using impl::Located;
using impl::Quoted;
using impl::TableReader;

/// A value as written: where it stands, for the checks that span entries.
using Mention = Located<std::string>;

/// A string that must be present and non-empty.
Mention RequiredString(const TableReader& entry, std::string_view key) {
  auto field = entry.String(key);
  if (!field) {
    Fail(entry.file(), entry.at(), entry.KeyOf(key), "required");
  }
  if (field->value.empty()) {
    Fail(entry.file(), field->at, field->key, "must not be empty");
  }
  return std::move(*field);
}

/// An integer within [min, INT_MAX], or `fallback` when absent.
int IntegerOr(const TableReader& entry, std::string_view key, int fallback, std::int64_t min) {
  const auto field = entry.Integer(key);
  if (!field) {
    return fallback;
  }
  if (field->value < min) {
    Fail(entry.file(), field->at, field->key, "must be at least " + std::to_string(min));
  }
  if (field->value > std::numeric_limits<int>::max()) {
    Fail(entry.file(), field->at, field->key,
         "must be at most " + std::to_string(std::numeric_limits<int>::max()));
  }
  return static_cast<int>(field->value);
}

/// The strings of an array; none when absent.
std::vector<std::string> StringsOf(const TableReader& entry, std::string_view key) {
  std::vector<std::string> out;
  if (const auto field = entry.StringArray(key)) {
    for (const auto& element : field->value) {
      out.push_back(element.value);
    }
  }
  return out;
}

template <typename T>
T ValueOr(Field<T> field, std::type_identity_t<T> fallback) {
  return field ? std::move(field->value) : std::move(fallback);
}

/// Remembers the first place each value was used; a second use is an error.
class UniqueValues {
 public:
  UniqueValues(const std::string& file, std::string what) : file_(file), what_(std::move(what)) {}

  void Add(const Mention& mention) {
    const auto [it, inserted] = first_line_.emplace(mention.value, mention.at.line);
    if (!inserted) {
      Fail(file_, mention.at, mention.key,
           "duplicate " + what_ + " " + Quoted(mention.value) + " (first on line " +
               std::to_string(it->second) + ")");
    }
  }
  bool Contains(const std::string& value) const { return first_line_.contains(value); }

 private:
  const std::string& file_;
  std::string what_;
  std::map<std::string, int> first_line_;
};

store::ToolProfile ReadToolProfile(const TableReader& entry, UniqueValues& ids) {
  entry.RejectUnknownKeys({"id", "capabilities", "operations", "system_overlays"});
  const Mention id = RequiredString(entry, "id");
  ids.Add(id);
  store::ToolProfile profile;
  profile.tool_profile_id = id.value;
  profile.capabilities = StringsOf(entry, "capabilities");
  profile.operations = StringsOf(entry, "operations");
  profile.system_overlays = ValueOr(entry.StringTable("system_overlays"), {});
  return profile;
}

store::NewAgent ReadAgent(const TableReader& entry, const std::string& file, UniqueValues& slugs,
                          std::vector<Mention>& tool_profile_mentions) {
  entry.RejectUnknownKeys({"slug", "display_name", "domain", "tool_profile", "runner",
                           "business_link", "max_active", "lifecycle", "labels"});
  store::NewAgent agent;
  const Mention slug = RequiredString(entry, "slug");
  if (!store::IsValidSlug(slug.value)) {
    Fail(file, slug.at, slug.key,
         "must match ^[a-z0-9][a-z0-9-]{0,62}$ (found " + Quoted(slug.value) + ")");
  }
  slugs.Add(slug);
  agent.agent_slug = slug.value;
  agent.display_name = RequiredString(entry, "display_name").value;
  agent.domain_id = RequiredString(entry, "domain").value;
  const Mention tool_profile = RequiredString(entry, "tool_profile");
  tool_profile_mentions.push_back(tool_profile);
  agent.tool_profile_id = tool_profile.value;
  agent.runner = RequiredString(entry, "runner").value;
  // The seed's guardrail: no persistent agent without its registration request.
  agent.business_link = RequiredString(entry, "business_link").value;
  agent.max_active_leases = IntegerOr(entry, "max_active", 0, 1);
  if (const auto lifecycle = entry.String("lifecycle")) {
    const auto parsed = store::ParseLifecycle(lifecycle->value);
    if (!parsed) {
      Fail(file, lifecycle->at, lifecycle->key,
           "must be one of active, paused, retired (found " + Quoted(lifecycle->value) + ")");
    }
    agent.lifecycle = *parsed;
  }
  agent.labels = ValueOr(entry.StringTable("labels"), {});
  return agent;
}

store::NewWork ReadWork(const TableReader& entry, const std::string& file, UniqueValues& keys,
                        std::vector<Mention>& agent_mentions) {
  entry.RejectUnknownKeys({"agent", "kind", "payload", "priority", "key", "max_attempts"});
  store::NewWork work;
  const Mention agent = RequiredString(entry, "agent");
  agent_mentions.push_back(agent);
  work.agent_slug = agent.value;
  work.kind = RequiredString(entry, "kind").value;
  work.payload_json = ValueOr(entry.JsonObject("payload"), "{}");
  work.priority = IntegerOr(entry, "priority", 0, std::numeric_limits<int>::min());
  if (const auto key = entry.String("key")) {
    if (key->value.empty()) {
      Fail(file, key->at, key->key, "must not be empty");
    }
    keys.Add(*key);
    work.idempotency_key = key->value;
  }
  work.max_attempts = IntegerOr(entry, "max_attempts", 0, 1);
  return work;
}

}  // namespace

Fixtures LoadFixtures(const std::filesystem::path& file) {
  return LoadFixturesString(impl::ReadFile(file), file.string());
}

Fixtures LoadFixturesString(std::string_view toml, const std::string& source_name) {
  const toml::table root = impl::Parse(toml, source_name);
  const TableReader document(root, "", source_name);
  document.RejectUnknownKeys({"tool_profile", "agent", "work"});

  Fixtures fixtures;
  UniqueValues profile_ids(source_name, "tool profile id");
  UniqueValues agent_slugs(source_name, "agent slug");
  UniqueValues work_keys(source_name, "work key");
  std::vector<Mention> tool_profile_mentions;
  std::vector<Mention> agent_mentions;
  for (const auto& entry : document.ArrayOfTables("tool_profile")) {
    fixtures.tool_profiles.push_back(ReadToolProfile(entry, profile_ids));
  }
  for (const auto& entry : document.ArrayOfTables("agent")) {
    fixtures.agents.push_back(ReadAgent(entry, source_name, agent_slugs, tool_profile_mentions));
  }
  for (const auto& entry : document.ArrayOfTables("work")) {
    fixtures.work.push_back(ReadWork(entry, source_name, work_keys, agent_mentions));
  }

  // References are checked once everything is read: the file may name a profile or an agent
  // before declaring it.
  for (const auto& mention : tool_profile_mentions) {
    if (!profile_ids.Contains(mention.value)) {
      Fail(source_name, mention.at, mention.key,
           "unknown tool profile " + Quoted(mention.value) + " (no [[tool_profile]] has this id)");
    }
  }
  for (const auto& mention : agent_mentions) {
    if (!agent_slugs.Contains(mention.value)) {
      Fail(source_name, mention.at, mention.key,
           "unknown agent " + Quoted(mention.value) + " (no [[agent]] has this slug)");
    }
  }
  return fixtures;
}

store::Task<void> ApplyFixtures(store::Store& store, const Fixtures& fixtures,
                                int default_max_attempts) {
  for (const auto& profile : fixtures.tool_profiles) {
    co_await store.PutToolProfile(profile);
  }
  for (const auto& agent : fixtures.agents) {
    co_await store.RegisterAgent(agent);
  }
  for (const auto& work : fixtures.work) {
    co_await store.EnqueueWork(work, default_max_attempts);
  }
}

}  // namespace warp::config
