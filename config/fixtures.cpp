#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include "config/fixtures.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <system_error>

#include <toml++/toml.h>
#include <nlohmann/json.hpp>

#include "config/config.hpp"
#include "store/model.hpp"

namespace warp::config {

namespace {

struct Position {
  int line = 1;
  int column = 1;
};

Position PositionOf(const toml::source_region& region) {
  return {static_cast<int>(region.begin.line), static_cast<int>(region.begin.column)};
}

bool Before(Position a, Position b) {
  return a.line != b.line ? a.line < b.line : a.column < b.column;
}

[[noreturn]] void Fail(const std::string& file, Position at, std::string key, std::string message) {
  throw ConfigError(file, at.line, at.column, std::move(key), std::move(message));
}

std::string Quoted(std::string_view text) {
  return "\"" + std::string(text) + "\"";
}

std::string_view Described(toml::node_type type) {
  switch (type) {
    case toml::node_type::none:
      return "nothing";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
  }
  return "an unknown value";
}

/// Converts a TOML value to JSON (payloads). Dates and times become their TOML text.
nlohmann::json ToJson(const toml::node& node, const std::string& key, const std::string& file) {
  switch (node.type()) {
    case toml::node_type::table: {
      nlohmann::json object = nlohmann::json::object();
      for (auto&& [k, v] : *node.as_table()) {
        object[std::string(k.str())] = ToJson(v, key + "." + std::string(k.str()), file);
      }
      return object;
    }
    case toml::node_type::array: {
      nlohmann::json array = nlohmann::json::array();
      std::size_t index = 0;
      for (const toml::node& element : *node.as_array()) {
        array.push_back(ToJson(element, key + "[" + std::to_string(index++) + "]", file));
      }
      return array;
    }
    case toml::node_type::string:
      return node.as_string()->get();
    case toml::node_type::integer:
      return node.as_integer()->get();
    case toml::node_type::floating_point: {
      const double value = node.as_floating_point()->get();
      if (!std::isfinite(value)) {
        Fail(file, PositionOf(node.source()), key, "not representable in JSON");
      }
      return value;
    }
    case toml::node_type::boolean:
      return node.as_boolean()->get();
    case toml::node_type::date:
    case toml::node_type::time:
    case toml::node_type::date_time: {
      std::ostringstream text;
      node.visit([&text](auto&& value) { text << value; });
      return text.str();
    }
    case toml::node_type::none:
      break;
  }
  Fail(file, PositionOf(node.source()), key, "not representable in JSON");
}

/// A value as written: where it stands, for the checks that span entries.
struct Mention {
  std::string value;
  std::string key;
  Position at;
};

/// Strict access to one `[[tool_profile]]`, `[[agent]]` or `[[work]]` table, named like
/// `agent[1]` in errors (or to the whole file, named "").
class EntryReader {
 public:
  EntryReader(const toml::table& table, std::string name, const std::string& file)
      : table_(table), name_(std::move(name)), file_(file) {}

  std::string KeyOf(std::string_view key) const {
    return name_.empty() ? std::string(key) : name_ + "." + std::string(key);
  }

  /// Throws at the first key (in document order) that is not in `allowed`.
  void RejectUnknownKeys(std::initializer_list<std::string_view> allowed) const {
    const toml::key* first = nullptr;
    for (auto&& [k, v] : table_) {
      if (std::find(allowed.begin(), allowed.end(), k.str()) != allowed.end()) {
        continue;
      }
      if (first == nullptr || Before(PositionOf(k.source()), PositionOf(first->source()))) {
        first = &k;
      }
    }
    if (first != nullptr) {
      Fail(file_, PositionOf(first->source()), KeyOf(first->str()), "unknown key");
    }
  }

  /// A string that must be present and non-empty.
  Mention RequiredString(std::string_view key) const {
    const toml::node* node = table_.get(key);
    if (node == nullptr) {
      Fail(file_, PositionOf(table_.source()), KeyOf(key), "required");
    }
    Mention mention = StringAt(key, *node);
    if (mention.value.empty()) {
      Fail(file_, mention.at, mention.key, "must not be empty");
    }
    return mention;
  }

  std::optional<Mention> OptionalString(std::string_view key) const {
    const toml::node* node = table_.get(key);
    if (node == nullptr) {
      return std::nullopt;
    }
    return StringAt(key, *node);
  }

  /// An integer within [min, INT_MAX], or `fallback` when absent.
  int Integer(std::string_view key, int fallback, std::int64_t min) const {
    const toml::node* node = table_.get(key);
    if (node == nullptr) {
      return fallback;
    }
    const auto* value = node->as_integer();
    if (value == nullptr) {
      WrongType(key, *node, "an integer");
    }
    if (value->get() < min) {
      Fail(file_, PositionOf(node->source()), KeyOf(key),
           "must be at least " + std::to_string(min));
    }
    if (value->get() > std::numeric_limits<int>::max()) {
      Fail(file_, PositionOf(node->source()), KeyOf(key),
           "must be at most " + std::to_string(std::numeric_limits<int>::max()));
    }
    return static_cast<int>(value->get());
  }

  std::vector<std::string> StringArray(std::string_view key) const {
    std::vector<std::string> out;
    const toml::node* node = table_.get(key);
    if (node == nullptr) {
      return out;
    }
    if (!node->is_array()) {
      WrongType(key, *node, "an array of strings");
    }
    for (const toml::node& element : *node->as_array()) {
      const std::string element_key = KeyOf(key) + "[" + std::to_string(out.size()) + "]";
      if (!element.is_string()) {
        Fail(file_, PositionOf(element.source()), element_key,
             "expected a string, found " + std::string(Described(element.type())));
      }
      out.push_back(element.as_string()->get());
    }
    return out;
  }

  /// A table whose values are all strings (`{ erpnext = "read-first" }`).
  std::map<std::string, std::string> StringTable(std::string_view key) const {
    std::map<std::string, std::string> out;
    const toml::node* node = table_.get(key);
    if (node == nullptr) {
      return out;
    }
    if (!node->is_table()) {
      WrongType(key, *node, "a table of strings");
    }
    for (auto&& [k, v] : *node->as_table()) {
      if (!v.is_string()) {
        Fail(file_, PositionOf(v.source()), KeyOf(key) + "." + std::string(k.str()),
             "expected a string, found " + std::string(Described(v.type())));
      }
      out.emplace(std::string(k.str()), v.as_string()->get());
    }
    return out;
  }

  /// A table converted to the text of a JSON object; "{}" when absent.
  std::string JsonObject(std::string_view key) const {
    const toml::node* node = table_.get(key);
    if (node == nullptr) {
      return "{}";
    }
    if (!node->is_table()) {
      WrongType(key, *node, "a table");
    }
    std::string json = ToJson(*node, KeyOf(key), file_).dump();
    if (const std::string problem = store::PayloadProblem(json); !problem.empty()) {
      Fail(file_, PositionOf(node->source()), KeyOf(key), problem);
    }
    return json;
  }

 private:
  Mention StringAt(std::string_view key, const toml::node& node) const {
    if (!node.is_string()) {
      WrongType(key, node, "a string");
    }
    return {node.as_string()->get(), KeyOf(key), PositionOf(node.source())};
  }

  [[noreturn]] void WrongType(std::string_view key, const toml::node& node,
                              std::string_view expected) const {
    Fail(file_, PositionOf(node.source()), KeyOf(key),
         "expected " + std::string(expected) + ", found " + std::string(Described(node.type())));
  }

  const toml::table& table_;
  std::string name_;
  const std::string& file_;
};

/// The tables of `[[key]]` at the top level, named `key[0]`, `key[1]`...
std::vector<EntryReader> EntriesOf(const toml::table& root, std::string_view key,
                                   const std::string& file) {
  std::vector<EntryReader> out;
  const toml::node* node = root.get(key);
  if (node == nullptr) {
    return out;
  }
  if (!node->is_array()) {
    Fail(file, PositionOf(node->source()), std::string(key),
         "expected an array of tables ([[" + std::string(key) + "]]), found " +
             std::string(Described(node->type())));
  }
  for (const toml::node& element : *node->as_array()) {
    std::string name = std::string(key) + "[" + std::to_string(out.size()) + "]";
    if (!element.is_table()) {
      Fail(file, PositionOf(element.source()), name,
           "expected a table, found " + std::string(Described(element.type())));
    }
    out.emplace_back(*element.as_table(), std::move(name), file);
  }
  return out;
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

store::ToolProfile ReadToolProfile(const EntryReader& entry, UniqueValues& ids) {
  entry.RejectUnknownKeys({"id", "capabilities", "operations", "system_overlays"});
  const Mention id = entry.RequiredString("id");
  ids.Add(id);
  store::ToolProfile profile;
  profile.tool_profile_id = id.value;
  profile.capabilities = entry.StringArray("capabilities");
  profile.operations = entry.StringArray("operations");
  profile.system_overlays = entry.StringTable("system_overlays");
  return profile;
}

store::NewAgent ReadAgent(const EntryReader& entry, const std::string& file, UniqueValues& slugs,
                          std::vector<Mention>& tool_profile_mentions) {
  entry.RejectUnknownKeys({"slug", "display_name", "domain", "tool_profile", "runner",
                           "business_link", "max_active", "lifecycle", "labels"});
  store::NewAgent agent;
  const Mention slug = entry.RequiredString("slug");
  if (!store::IsValidSlug(slug.value)) {
    Fail(file, slug.at, slug.key,
         "must match ^[a-z0-9][a-z0-9-]{0,62}$ (found " + Quoted(slug.value) + ")");
  }
  slugs.Add(slug);
  agent.agent_slug = slug.value;
  agent.display_name = entry.RequiredString("display_name").value;
  agent.domain_id = entry.RequiredString("domain").value;
  const Mention tool_profile = entry.RequiredString("tool_profile");
  tool_profile_mentions.push_back(tool_profile);
  agent.tool_profile_id = tool_profile.value;
  agent.runner = entry.RequiredString("runner").value;
  // The seed's guardrail: no persistent agent without its registration request.
  agent.business_link = entry.RequiredString("business_link").value;
  agent.max_active_leases = entry.Integer("max_active", 0, 1);
  if (const auto lifecycle = entry.OptionalString("lifecycle")) {
    const auto parsed = store::ParseLifecycle(lifecycle->value);
    if (!parsed) {
      Fail(file, lifecycle->at, lifecycle->key,
           "must be one of active, paused, retired (found " + Quoted(lifecycle->value) + ")");
    }
    agent.lifecycle = *parsed;
  }
  agent.labels = entry.StringTable("labels");
  return agent;
}

store::NewWork ReadWork(const EntryReader& entry, const std::string& file, UniqueValues& keys,
                        std::vector<Mention>& agent_mentions) {
  entry.RejectUnknownKeys({"agent", "kind", "payload", "priority", "key", "max_attempts"});
  store::NewWork work;
  const Mention agent = entry.RequiredString("agent");
  agent_mentions.push_back(agent);
  work.agent_slug = agent.value;
  work.kind = entry.RequiredString("kind").value;
  work.payload_json = entry.JsonObject("payload");
  work.priority = entry.Integer("priority", 0, std::numeric_limits<int>::min());
  if (const auto key = entry.OptionalString("key")) {
    if (key->value.empty()) {
      Fail(file, key->at, key->key, "must not be empty");
    }
    keys.Add(*key);
    work.idempotency_key = key->value;
  }
  work.max_attempts = entry.Integer("max_attempts", 0, 1);
  return work;
}

/// The whole file; errors name it with line 0, column 0.
std::string ReadFile(const std::filesystem::path& file) {
  const auto fail = [&file](int error) {
    Fail(file.string(), {0, 0}, "", "cannot read: " + std::system_category().message(error));
  };
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fail(errno);
  }
  std::string text;
  std::array<char, 64 * 1024> buffer;
  for (;;) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n == 0) {
      break;
    }
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      const int error = errno;
      ::close(fd);
      fail(error);
    }
    text.append(buffer.data(), static_cast<std::size_t>(n));
  }
  ::close(fd);
  return text;
}

}  // namespace

Fixtures LoadFixtures(const std::filesystem::path& file) {
  return LoadFixturesString(ReadFile(file), file.string());
}

Fixtures LoadFixturesString(std::string_view toml, const std::string& source_name) {
  toml::table root;
  try {
    root = toml::parse(toml, std::string_view(source_name));
  } catch (const toml::parse_error& e) {
    Fail(source_name, PositionOf(e.source()), "", std::string(e.description()));
  }
  EntryReader(root, "", source_name).RejectUnknownKeys({"tool_profile", "agent", "work"});

  Fixtures fixtures;
  UniqueValues profile_ids(source_name, "tool profile id");
  UniqueValues agent_slugs(source_name, "agent slug");
  UniqueValues work_keys(source_name, "work key");
  std::vector<Mention> tool_profile_mentions;
  std::vector<Mention> agent_mentions;
  for (const auto& entry : EntriesOf(root, "tool_profile", source_name)) {
    fixtures.tool_profiles.push_back(ReadToolProfile(entry, profile_ids));
  }
  for (const auto& entry : EntriesOf(root, "agent", source_name)) {
    fixtures.agents.push_back(ReadAgent(entry, source_name, agent_slugs, tool_profile_mentions));
  }
  for (const auto& entry : EntriesOf(root, "work", source_name)) {
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
