// 5-field cron expressions (minute hour day-of-month month day-of-week), evaluated in UTC.
#pragma once

#include <bitset>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "store/model.hpp"

namespace warp::scheduler {

/// Supports `*`, numbers, ranges `a-b`, lists `a,b`, steps `*/n` and `a-b/n`, month and weekday
/// names (jan..dec, sun..sat, case-insensitive), and 7 for Sunday. As in Vixie cron, when both
/// day-of-month and day-of-week are restricted, a day matches if either matches.
class CronExpression {
 public:
  /// Throws std::invalid_argument whose what() names the offending field and token, e.g.
  /// "minute field '61': value out of range 0-59".
  static CronExpression Parse(std::string_view text);

  /// The latest matching minute at or before `t`; nullopt if none within 5 years.
  std::optional<store::TimePoint> Previous(store::TimePoint t) const;
  /// The first matching minute strictly after `t`; nullopt if none within 5 years.
  std::optional<store::TimePoint> Next(store::TimePoint t) const;

  const std::string& text() const { return text_; }

 private:
  std::string text_;
  std::bitset<60> minutes_;
  std::bitset<24> hours_;
  std::bitset<32> days_of_month_;  // 1..31
  std::bitset<13> months_;         // 1..12
  std::bitset<7> days_of_week_;    // 0..6, Sunday = 0
  bool dom_restricted_ = false;
  bool dow_restricted_ = false;
};

}  // namespace warp::scheduler
