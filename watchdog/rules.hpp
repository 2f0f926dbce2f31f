// The watchdog's rule names (SPEC section 7). `watchdog.disabled_rules` must name these.
#pragma once

#include <array>
#include <string_view>

namespace warp::watchdog {

inline constexpr std::array<std::string_view, 15> kRuleNames{"lease_expired_unreleased",
                                                             "cycle_abandoned",
                                                             "cycle_overrun",
                                                             "cycle_missed",
                                                             "work_backlog_age",
                                                             "dispatch_failure_streak",
                                                             "agent_unresponsive",
                                                             "instance_stale",
                                                             "store_unreachable",
                                                             "store_latency",
                                                             "clock_skew",
                                                             "late_completion",
                                                             "workspace_retention_overdue",
                                                             "learning_proposal_review_stale",
                                                             "agent_tool_profile_missing"};

bool IsKnownRule(std::string_view name);

}  // namespace warp::watchdog
