// The fixtures file of SPEC section 9: tool profiles, agents and work loaded into a store at
// start (memory backend), strictly validated like the config.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "store/store.hpp"

namespace warp::config {

struct Fixtures {
  std::vector<store::ToolProfile> tool_profiles;
  std::vector<store::NewAgent> agents;
  std::vector<store::NewWork> work;
};

/// Throws ConfigError (file:line:column: key: what) for unknown keys, wrong types, bad slugs,
/// a missing business_link, payloads that are not objects, agents naming an unknown tool
/// profile, work naming an unknown agent, duplicate slugs or ids.
Fixtures LoadFixtures(const std::filesystem::path& file);
Fixtures LoadFixturesString(std::string_view toml, const std::string& source_name);

/// Writes the fixtures into `store` (profiles, then agents, then work; existing idempotency keys
/// are kept as they are). `store` and `fixtures` must outlive the task. Store failures propagate
/// as StoreError (an agent slug that already exists is kConflict).
store::Task<void> ApplyFixtures(store::Store& store, const Fixtures& fixtures,
                                int default_max_attempts);

}  // namespace warp::config
