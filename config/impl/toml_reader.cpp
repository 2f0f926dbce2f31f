#include "config/impl/toml_reader.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <sstream>
#include <system_error>

#include <nlohmann/json.hpp>

#include "config/config.hpp"
#include "store/model.hpp"

namespace warp::config::impl {

namespace {

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

}  // namespace

// --- source positions and errors -------------------------------------------------------------

Position PositionOf(const toml::source_region& region) {
  return {static_cast<int>(region.begin.line), static_cast<int>(region.begin.column)};
}

bool Before(Position a, Position b) {
  return a.line != b.line ? a.line < b.line : a.column < b.column;
}

void Fail(const std::string& file, Position at, std::string key, std::string message) {
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

toml::table Parse(std::string_view toml, const std::string& source_name) {
  try {
    return toml::parse(toml, std::string_view(source_name));
  } catch (const toml::parse_error& e) {
    Fail(source_name, PositionOf(e.source()), "", std::string(e.description()));
  }
}

// --- typed access ----------------------------------------------------------------------------

void TableReader::RejectUnknownKeys(std::initializer_list<std::string_view> allowed) const {
  const toml::key* first = nullptr;
  for (auto&& [k, v] : *table_) {
    if (std::find(allowed.begin(), allowed.end(), k.str()) != allowed.end()) {
      continue;
    }
    if (first == nullptr || Before(PositionOf(k.source()), PositionOf(first->source()))) {
      first = &k;
    }
  }
  if (first != nullptr) {
    Fail(file(), PositionOf(first->source()), KeyOf(first->str()), "unknown key");
  }
}

std::optional<TableReader> TableReader::Table(std::string_view key) const {
  const toml::node* node = table_->get(key);
  if (node == nullptr) {
    return std::nullopt;
  }
  if (!node->is_table()) {
    WrongType(key, *node, "a table");
  }
  return TableReader(*node->as_table(), KeyOf(key), file());
}

std::vector<std::pair<std::string, TableReader>> TableReader::TablesIn(std::string_view key) const {
  std::vector<std::pair<std::string, TableReader>> out;
  const auto outer = Table(key);
  if (!outer) {
    return out;
  }
  for (auto&& [k, v] : *outer->table_) {
    const std::string name(k.str());
    if (!v.is_table()) {
      outer->WrongType(name, v, "a table");
    }
    out.emplace_back(name, TableReader(*v.as_table(), outer->KeyOf(name), file()));
  }
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return Before(a.second.at(), b.second.at());
  });
  return out;
}

std::vector<TableReader> TableReader::ArrayOfTables(std::string_view key) const {
  std::vector<TableReader> out;
  const toml::node* node = table_->get(key);
  if (node == nullptr) {
    return out;
  }
  if (!node->is_array()) {
    WrongType(key, *node, "an array of tables ([[" + std::string(key) + "]])");
  }
  for (const toml::node& element : *node->as_array()) {
    const std::string name = KeyOf(key) + "[" + std::to_string(out.size()) + "]";
    if (!element.is_table()) {
      Fail(file(), PositionOf(element.source()), name,
           "expected a table, found " + std::string(Described(element.type())));
    }
    out.emplace_back(*element.as_table(), name, file());
  }
  return out;
}

Field<std::string> TableReader::String(std::string_view key, std::string_view expected) const {
  const auto entry = Find(key);
  if (!entry) {
    return std::nullopt;
  }
  const auto* value = entry->second->as_string();
  if (value == nullptr) {
    WrongType(key, *entry->second, expected);
  }
  return Locate(key, *entry, std::string(value->get()));
}

Field<std::int64_t> TableReader::Integer(std::string_view key) const {
  const auto entry = Find(key);
  if (!entry) {
    return std::nullopt;
  }
  const auto* value = entry->second->as_integer();
  if (value == nullptr) {
    WrongType(key, *entry->second, "an integer");
  }
  return Locate(key, *entry, value->get());
}

Field<double> TableReader::Number(std::string_view key) const {
  const auto entry = Find(key);
  if (!entry) {
    return std::nullopt;
  }
  if (const auto* integer = entry->second->as_integer()) {
    return Locate(key, *entry, static_cast<double>(integer->get()));
  }
  const auto* value = entry->second->as_floating_point();
  if (value == nullptr) {
    WrongType(key, *entry->second, "a number");
  }
  return Locate(key, *entry, value->get());
}

Field<std::vector<Located<std::string>>> TableReader::StringArray(std::string_view key) const {
  const auto entry = Find(key);
  if (!entry) {
    return std::nullopt;
  }
  const auto* array = entry->second->as_array();
  if (array == nullptr) {
    WrongType(key, *entry->second, "an array of strings");
  }
  std::vector<Located<std::string>> values;
  for (const toml::node& element : *array) {
    Located<std::string> value;
    value.key = KeyOf(key) + "[" + std::to_string(values.size()) + "]";
    value.key_at = PositionOf(entry->first->source());
    value.at = PositionOf(element.source());
    const auto* text = element.as_string();
    if (text == nullptr) {
      Fail(file(), value.at, value.key,
           "expected a string, found " + std::string(Described(element.type())));
    }
    value.value = text->get();
    values.push_back(std::move(value));
  }
  return Locate(key, *entry, std::move(values));
}

Field<std::map<std::string, std::string>> TableReader::StringTable(std::string_view key) const {
  const auto entry = Find(key);
  if (!entry) {
    return std::nullopt;
  }
  const auto* table = entry->second->as_table();
  if (table == nullptr) {
    WrongType(key, *entry->second, "a table of strings");
  }
  std::map<std::string, std::string> values;
  for (auto&& [k, v] : *table) {
    if (!v.is_string()) {
      Fail(file(), PositionOf(v.source()), KeyOf(key) + "." + std::string(k.str()),
           "expected a string, found " + std::string(Described(v.type())));
    }
    values.emplace(std::string(k.str()), v.as_string()->get());
  }
  return Locate(key, *entry, std::move(values));
}

Field<std::string> TableReader::JsonObject(std::string_view key) const {
  const auto entry = Find(key);
  if (!entry) {
    return std::nullopt;
  }
  if (!entry->second->is_table()) {
    WrongType(key, *entry->second, "a table");
  }
  const std::string json = ToJson(*entry->second, KeyOf(key), file()).dump();
  auto field = Locate(key, *entry, json);
  if (const std::string problem = store::PayloadProblem(json); !problem.empty()) {
    Fail(file(), field.at, field.key, problem);
  }
  return field;
}

std::optional<TableReader::Entry> TableReader::Find(std::string_view key) const {
  const auto it = table_->find(key);
  if (it == table_->end()) {
    return std::nullopt;
  }
  return Entry{&(*it).first, &(*it).second};
}

void TableReader::WrongType(std::string_view key, const toml::node& node,
                            std::string_view expected) const {
  Fail(file(), PositionOf(node.source()), KeyOf(key),
       "expected " + std::string(expected) + ", found " + std::string(Described(node.type())));
}

}  // namespace warp::config::impl
