// The journal message catalog (units/warpd.catalog) documents every event warpd logs: one entry
// per MESSAGE_ID with a subject, the defining project and a body saying what to do. The units
// themselves are checked by systemd-analyze in the system test (tests/systemd/).
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "logging/log.hpp"

namespace {

using warp::logging::Event;

struct Entry {
  std::map<std::string, std::string> headers;
  std::string body;
};

/// Parses the catalog format of journalctl(1): "-- ID" starts an entry, "Key: value" headers up
/// to the first empty line, then the body.
std::map<std::string, Entry> ParseCatalog(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << "cannot read " << path;
  std::map<std::string, Entry> entries;
  Entry* current = nullptr;
  bool in_body = false;
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("-- ")) {
      const std::string id = line.substr(3);
      EXPECT_FALSE(entries.contains(id)) << "duplicate catalog entry " << id;
      current = &entries[id];
      in_body = false;
    } else if (current == nullptr || line.starts_with('#')) {
      continue;
    } else if (!in_body && line.empty()) {
      in_body = true;
    } else if (!in_body) {
      const auto colon = line.find(": ");
      EXPECT_NE(colon, std::string::npos) << "not a header: " << line;
      if (colon != std::string::npos)
        current->headers[line.substr(0, colon)] = line.substr(colon + 2);
    } else {
      current->body += line + "\n";
    }
  }
  return entries;
}

TEST(CatalogTest, EveryEventHasAnEntryWithSubjectAndWhatToDo) {
  const auto entries = ParseCatalog(WARP_CATALOG_PATH);
  int events = 0;
  for (int e = 0; e <= static_cast<int>(Event::kWatchdogPassFailed); ++e) {
    const auto event = static_cast<Event>(e);
    ++events;
    const std::string id(warp::logging::MessageId(event));
    SCOPED_TRACE(std::string(warp::logging::EventName(event)) + " " + id);
    ASSERT_TRUE(entries.contains(id));
    const auto& entry = entries.at(id);
    ASSERT_TRUE(entry.headers.contains("Subject"));
    EXPECT_FALSE(entry.headers.at("Subject").empty());
    ASSERT_TRUE(entry.headers.contains("Defined-By"));
    EXPECT_EQ(entry.headers.at("Defined-By"), "warp");
    EXPECT_GE(entry.body.size(), 60u) << "a body says what happened and what to do";
  }
  EXPECT_EQ(entries.size(), static_cast<std::size_t>(events)) << "an entry no event uses";
}

TEST(CatalogTest, MessageIdsAre128BitLowerCaseHex) {
  for (int e = 0; e <= static_cast<int>(Event::kWatchdogPassFailed); ++e) {
    const std::string_view id = warp::logging::MessageId(static_cast<Event>(e));
    EXPECT_EQ(id.size(), 32u);
    EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string_view::npos) << id;
  }
}

}  // namespace
