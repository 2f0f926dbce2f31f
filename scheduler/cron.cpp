#include "scheduler/cron.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <string>
#include <system_error>
#include <vector>

namespace warp::scheduler {

namespace {

using Minutes = std::chrono::sys_time<std::chrono::minutes>;

/// How far Next() and Previous() look before giving up (std::chrono::years is 365.2425 days).
constexpr std::chrono::minutes kHorizon =
    std::chrono::floor<std::chrono::minutes>(std::chrono::years{5});

constexpr std::array<std::string_view, 12> kMonthNames = {"jan", "feb", "mar", "apr", "may", "jun",
                                                          "jul", "aug", "sep", "oct", "nov", "dec"};
constexpr std::array<std::string_view, 7> kWeekdayNames = {"sun", "mon", "tue", "wed",
                                                           "thu", "fri", "sat"};

struct FieldSpec {
  std::string_view name;
  int min;
  int max;       ///< largest value accepted in the text (7 for day-of-week)
  int star_max;  ///< end of `*` and of `a/n` (6 for day-of-week: Sunday is 0)
  const std::array<std::string_view, 12>* month_names;
  const std::array<std::string_view, 7>* weekday_names;
};

constexpr FieldSpec kMinuteSpec{"minute", 0, 59, 59, nullptr, nullptr};
constexpr FieldSpec kHourSpec{"hour", 0, 23, 23, nullptr, nullptr};
constexpr FieldSpec kDayOfMonthSpec{"day-of-month", 1, 31, 31, nullptr, nullptr};
constexpr FieldSpec kMonthSpec{"month", 1, 12, 12, &kMonthNames, nullptr};
constexpr FieldSpec kDayOfWeekSpec{"day-of-week", 0, 7, 6, nullptr, &kWeekdayNames};

using FieldBits = std::bitset<64>;

[[noreturn]] void Fail(const FieldSpec& spec, std::string_view token, std::string_view problem) {
  std::string message(spec.name);
  message += " field '";
  message += token;
  message += "': ";
  message += problem;
  throw std::invalid_argument(message);
}

bool AllDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == y;
         });
}

template <std::size_t N>
std::optional<int> LookUpName(std::string_view s, const std::array<std::string_view, N>& names,
                              int first_value) {
  for (std::size_t i = 0; i < N; ++i) {
    if (EqualsIgnoreCase(s, names[i])) {
      return first_value + static_cast<int>(i);
    }
  }
  return std::nullopt;
}

/// One value of a field: a number within the field's range or, for month and day-of-week, a name.
int ParseValue(const FieldSpec& spec, std::string_view element, std::string_view s) {
  if (AllDigits(s)) {
    int value = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (ec != std::errc{} || end != s.data() + s.size() || value < spec.min || value > spec.max) {
      Fail(spec, element,
           "value out of range " + std::to_string(spec.min) + "-" + std::to_string(spec.max));
    }
    return value;
  }
  if (spec.month_names != nullptr) {
    if (auto value = LookUpName(s, *spec.month_names, 1)) {
      return *value;
    }
  }
  if (spec.weekday_names != nullptr) {
    if (auto value = LookUpName(s, *spec.weekday_names, 0)) {
      return *value;
    }
  }
  const bool has_names = spec.month_names != nullptr || spec.weekday_names != nullptr;
  Fail(spec, element, has_names ? "not a number or name" : "not a number");
}

int ParseStep(const FieldSpec& spec, std::string_view element, std::string_view s) {
  if (s.empty()) {
    Fail(spec, element, "missing step");
  }
  if (!AllDigits(s)) {
    Fail(spec, element, "step is not a number");
  }
  int step = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), step);
  if (ec != std::errc{} || end != s.data() + s.size()) {
    Fail(spec, element, "step too large");
  }
  if (step < 1) {
    Fail(spec, element, "step must be >= 1");
  }
  return step;
}

/// One list element: `*`, `a`, `a-b`, each optionally followed by `/n`.
void ParseElement(const FieldSpec& spec, std::string_view element, FieldBits& bits) {
  std::string_view base = element;
  std::optional<int> step;
  if (const auto slash = element.find('/'); slash != std::string_view::npos) {
    base = element.substr(0, slash);
    const std::string_view step_text = element.substr(slash + 1);
    if (step_text.find('/') != std::string_view::npos) {
      Fail(spec, element, "more than one '/'");
    }
    step = ParseStep(spec, element, step_text);
  }
  if (base.empty()) {
    Fail(spec, element, "missing value before '/'");
  }

  int first = 0;
  int last = 0;
  if (base == "*") {
    first = spec.min;
    last = spec.star_max;
  } else if (const auto dash = base.find('-'); dash != std::string_view::npos) {
    const std::string_view low = base.substr(0, dash);
    const std::string_view high = base.substr(dash + 1);
    if (low.empty() || high.empty()) {
      Fail(spec, element, "incomplete range");
    }
    if (high.find('-') != std::string_view::npos) {
      Fail(spec, element, "more than one '-'");
    }
    first = ParseValue(spec, element, low);
    last = ParseValue(spec, element, high);
    if (first > last) {
      Fail(spec, element, "range is reversed (start after end)");
    }
  } else {
    first = ParseValue(spec, element, base);
    // `a/n` runs from a to the end of the field; a lone `a` is just a.
    last = step ? std::max(first, spec.star_max) : first;
  }

  const int increment = step.value_or(1);
  for (int v = first; v <= last; v += increment) {
    bits.set(static_cast<std::size_t>(v));
  }
}

FieldBits ParseField(const FieldSpec& spec, std::string_view field) {
  FieldBits bits;
  std::size_t begin = 0;
  while (true) {
    const std::size_t comma = field.find(',', begin);
    const std::string_view element = field.substr(
        begin, comma == std::string_view::npos ? std::string_view::npos : comma - begin);
    if (element.empty()) {
      Fail(spec, field, "empty list element");
    }
    ParseElement(spec, element, bits);
    if (comma == std::string_view::npos) {
      break;
    }
    begin = comma + 1;
  }
  return bits;
}

template <std::size_t N>
std::bitset<N> Narrow(const FieldBits& bits) {
  std::bitset<N> out;
  for (std::size_t i = 0; i < N; ++i) {
    out[i] = bits[i];
  }
  return out;
}

std::vector<std::string_view> SplitWhitespace(std::string_view text) {
  std::vector<std::string_view> fields;
  std::size_t i = 0;
  const auto is_space = [&](std::size_t k) {
    return std::isspace(static_cast<unsigned char>(text[k])) != 0;
  };
  while (i < text.size()) {
    while (i < text.size() && is_space(i))
      ++i;
    const std::size_t start = i;
    while (i < text.size() && !is_space(i))
      ++i;
    if (i > start) {
      fields.push_back(text.substr(start, i - start));
    }
  }
  return fields;
}

/// First set bit at index >= from, or -1.
template <std::size_t N>
int FirstAtOrAfter(const std::bitset<N>& bits, int from) {
  for (int i = std::max(from, 0); i < static_cast<int>(N); ++i) {
    if (bits[static_cast<std::size_t>(i)]) {
      return i;
    }
  }
  return -1;
}

/// Last set bit at index <= from, or -1.
template <std::size_t N>
int LastAtOrBefore(const std::bitset<N>& bits, int from) {
  for (int i = std::min(from, static_cast<int>(N) - 1); i >= 0; --i) {
    if (bits[static_cast<std::size_t>(i)]) {
      return i;
    }
  }
  return -1;
}

/// The day-of-month / day-of-week test (the month is checked separately). With both fields
/// restricted either may match (Vixie cron); otherwise both must match.
bool DayMatches(std::chrono::sys_days day, const std::chrono::year_month_day& ymd,
                const std::bitset<32>& days_of_month, const std::bitset<7>& days_of_week,
                bool both_restricted) {
  const bool dom_ok = days_of_month[static_cast<unsigned>(ymd.day())];
  const bool dow_ok = days_of_week[std::chrono::weekday{day}.c_encoding()];
  return both_restricted ? (dom_ok || dow_ok) : (dom_ok && dow_ok);
}

/// The minutes that a TimePoint can represent, so results never overflow on conversion back.
Minutes EarliestRepresentable() {
  return std::chrono::ceil<std::chrono::minutes>(store::TimePoint::min());
}
Minutes LatestRepresentable() {
  return std::chrono::floor<std::chrono::minutes>(store::TimePoint::max());
}

store::TimePoint ToTimePoint(Minutes m) {
  return std::chrono::time_point_cast<store::TimePoint::duration>(m);
}

}  // namespace

CronExpression CronExpression::Parse(std::string_view text) {
  const std::vector<std::string_view> fields = SplitWhitespace(text);
  if (fields.size() != 5) {
    throw std::invalid_argument("expected 5 fields, got " + std::to_string(fields.size()));
  }
  CronExpression cron;
  cron.text_ = std::string(text);
  cron.minutes_ = Narrow<60>(ParseField(kMinuteSpec, fields[0]));
  cron.hours_ = Narrow<24>(ParseField(kHourSpec, fields[1]));
  cron.days_of_month_ = Narrow<32>(ParseField(kDayOfMonthSpec, fields[2]));
  cron.months_ = Narrow<13>(ParseField(kMonthSpec, fields[3]));
  FieldBits dow = ParseField(kDayOfWeekSpec, fields[4]);
  if (dow[7]) {
    dow.set(0);  // 7 is another name for Sunday
  }
  cron.days_of_week_ = Narrow<7>(dow);
  // As in Vixie cron, a field that starts with `*` (`*`, `*/2`) does not restrict the day.
  cron.dom_restricted_ = fields[2].front() != '*';
  cron.dow_restricted_ = fields[4].front() != '*';
  return cron;
}

std::optional<store::TimePoint> CronExpression::Next(store::TimePoint t) const {
  using namespace std::chrono;
  const Minutes base = floor<minutes>(t);
  if (base >= LatestRepresentable()) {
    return std::nullopt;
  }
  const Minutes start = base + minutes{1};
  const Minutes limit = std::min(base + kHorizon, LatestRepresentable());
  const sys_days start_day = floor<days>(start);

  for (sys_days day = start_day; day <= limit;) {
    const year_month_day ymd{day};
    if (!months_[static_cast<unsigned>(ymd.month())]) {
      day = sys_days{ymd.year() / ymd.month() / 1 + months{1}};  // skip the rest of the month
      continue;
    }
    if (DayMatches(day, ymd, days_of_month_, days_of_week_, dom_restricted_ && dow_restricted_)) {
      int from_hour = 0;
      int from_minute = 0;
      if (day == start_day) {
        const hh_mm_ss time_of_day{start - day};
        from_hour = static_cast<int>(time_of_day.hours().count());
        from_minute = static_cast<int>(time_of_day.minutes().count());
      }
      int hour = FirstAtOrAfter(hours_, from_hour);
      int minute = -1;
      if (hour == from_hour) {
        minute = FirstAtOrAfter(minutes_, from_minute);
        if (minute < 0) {
          hour = FirstAtOrAfter(hours_, from_hour + 1);
        }
      }
      if (hour >= 0) {
        if (minute < 0) {
          minute = FirstAtOrAfter(minutes_, 0);
        }
        const Minutes found = day + hours{hour} + minutes{minute};
        if (found > limit) {
          return std::nullopt;
        }
        return ToTimePoint(found);
      }
    }
    day += days{1};
  }
  return std::nullopt;
}

std::optional<store::TimePoint> CronExpression::Previous(store::TimePoint t) const {
  using namespace std::chrono;
  const Minutes start = floor<minutes>(t);
  if (start < EarliestRepresentable()) {
    return std::nullopt;
  }
  const Minutes limit = std::max(start - kHorizon, EarliestRepresentable());
  const sys_days start_day = floor<days>(start);
  const sys_days limit_day = floor<days>(limit);

  for (sys_days day = start_day; day >= limit_day;) {
    const year_month_day ymd{day};
    if (!months_[static_cast<unsigned>(ymd.month())]) {
      day = sys_days{ymd.year() / ymd.month() / 1} - days{1};  // skip to the previous month's end
      continue;
    }
    if (DayMatches(day, ymd, days_of_month_, days_of_week_, dom_restricted_ && dow_restricted_)) {
      int from_hour = 23;
      int from_minute = 59;
      if (day == start_day) {
        const hh_mm_ss time_of_day{start - day};
        from_hour = static_cast<int>(time_of_day.hours().count());
        from_minute = static_cast<int>(time_of_day.minutes().count());
      }
      int hour = LastAtOrBefore(hours_, from_hour);
      int minute = -1;
      if (hour == from_hour) {
        minute = LastAtOrBefore(minutes_, from_minute);
        if (minute < 0) {
          hour = LastAtOrBefore(hours_, from_hour - 1);
        }
      }
      if (hour >= 0) {
        if (minute < 0) {
          minute = LastAtOrBefore(minutes_, 59);
        }
        const Minutes found = day + hours{hour} + minutes{minute};
        if (found < limit) {
          return std::nullopt;
        }
        return ToTimePoint(found);
      }
    }
    day -= days{1};
  }
  return std::nullopt;
}

}  // namespace warp::scheduler
