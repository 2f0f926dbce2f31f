#include "watchdog/rules.hpp"

#include <algorithm>

namespace warp::watchdog {

bool IsKnownRule(std::string_view name) {
  return std::find(kRuleNames.begin(), kRuleNames.end(), name) != kRuleNames.end();
}

}  // namespace warp::watchdog
