// Internal to warp_config: the TOML reading shared by the config loader and the fixtures loader.
// Source positions, ConfigError helpers, the file reader and strict, typed access to tables.
// Every error names file, line, column and the dotted key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <toml++/toml.h>

namespace warp::config::impl {

// --- source positions and errors -------------------------------------------------------------

struct Position {
  int line = 1;
  int column = 1;
};

Position PositionOf(const toml::source_region& region);

/// Document order.
bool Before(Position a, Position b);

/// Throws ConfigError.
[[noreturn]] void Fail(const std::string& file, Position at, std::string key, std::string message);

std::string Quoted(std::string_view text);

/// "a string", "an integer"... for "expected X, found Y".
std::string_view Described(toml::node_type type);

/// The whole file; errors name it with line 0, column 0.
std::string ReadFile(const std::filesystem::path& file);

/// Parses `toml`; a syntax error becomes a ConfigError without a key.
toml::table Parse(std::string_view toml, const std::string& source_name);

// --- typed access ----------------------------------------------------------------------------

/// A value as written in the file: its dotted key and where the key and the value stand.
template <typename T>
struct Located {
  T value{};
  std::string key;
  Position key_at;
  Position at;
};

/// A key that may be absent from the file.
template <typename T>
using Field = std::optional<Located<T>>;

/// Typed, strict access to one TOML table. `prefix` is the table's dotted key in errors ("" for
/// the whole file). `table` and `file` must outlive the reader.
class TableReader {
 public:
  TableReader(const toml::table& table, std::string prefix, const std::string& file)
      : table_(&table), prefix_(std::move(prefix)), file_(&file) {}

  Position at() const { return PositionOf(table_->source()); }
  const std::string& file() const { return *file_; }
  const std::string& prefix() const { return prefix_; }

  std::string KeyOf(std::string_view key) const {
    return prefix_.empty() ? std::string(key) : prefix_ + "." + std::string(key);
  }

  /// Throws at the first key (in document order) that is not in `allowed`.
  void RejectUnknownKeys(std::initializer_list<std::string_view> allowed) const;

  std::optional<TableReader> Table(std::string_view key) const;

  /// Every entry of the table `key` is itself a table (`[runner.NAME]`); in document order.
  std::vector<std::pair<std::string, TableReader>> TablesIn(std::string_view key) const;

  /// `[[key]]`: the tables of an array, named `key[0]`, `key[1]`...
  std::vector<TableReader> ArrayOfTables(std::string_view key) const;

  Field<std::string> String(std::string_view key, std::string_view expected = "a string") const;

  Field<std::string> DurationText(std::string_view key) const {
    return String(key, R"(a duration string such as "10s")");
  }

  Field<std::int64_t> Integer(std::string_view key) const;

  /// A float; an integer is accepted too.
  Field<double> Number(std::string_view key) const;

  /// An array of strings; each element is named `key[N]`.
  Field<std::vector<Located<std::string>>> StringArray(std::string_view key) const;

  /// A table whose values are all strings (`{ erpnext = "read-first" }`).
  Field<std::map<std::string, std::string>> StringTable(std::string_view key) const;

  /// A table (usually inline) converted to the text of a JSON object (a valid payload).
  Field<std::string> JsonObject(std::string_view key) const;

 private:
  using Entry = std::pair<const toml::key*, const toml::node*>;

  std::optional<Entry> Find(std::string_view key) const;

  template <typename T>
  Located<T> Locate(std::string_view key, const Entry& entry, T value) const {
    return Located<T>{std::move(value), KeyOf(key), PositionOf(entry.first->source()),
                      PositionOf(entry.second->source())};
  }

  [[noreturn]] void WrongType(std::string_view key, const toml::node& node,
                              std::string_view expected) const;

  const toml::table* table_;
  std::string prefix_;
  const std::string* file_;
};

}  // namespace warp::config::impl
