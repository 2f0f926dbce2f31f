#include "scheduler/cron.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace warp::scheduler {
namespace {

using namespace std::chrono_literals;
using std::chrono::days;
using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::sys_days;
using store::TimePoint;

// 2026-11-25 is a Wednesday.
const sys_days kWednesday{2026y / 11 / 25};

TimePoint At(sys_days day, int hour, int minute) {
  return TimePoint{day + hours{hour} + minutes{minute}};
}

/// "YYYY-MM-DD HH:MM" (with ":SS.fraction" appended when not a whole minute), or "none".
std::string Format(std::optional<TimePoint> t) {
  if (!t) {
    return "none";
  }
  const auto minute = std::chrono::floor<minutes>(*t);
  const auto day = std::chrono::floor<days>(minute);
  const std::chrono::year_month_day ymd{day};
  const std::chrono::hh_mm_ss time_of_day{minute - day};
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%04d-%02u-%02u %02d:%02d", static_cast<int>(ymd.year()),
                static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                static_cast<int>(time_of_day.hours().count()),
                static_cast<int>(time_of_day.minutes().count()));
  std::string text = buffer;
  if (*t != TimePoint{minute}) {
    text += " +" + std::to_string((*t - minute).count()) + "ns";
  }
  return text;
}

/// The first `count` occurrences strictly after `start`.
std::vector<std::string> NextN(const CronExpression& cron, TimePoint start, int count) {
  std::vector<std::string> out;
  std::optional<TimePoint> t = start;
  for (int i = 0; i < count && t; ++i) {
    t = cron.Next(*t);
    out.push_back(Format(t));
  }
  return out;
}

/// The `count` latest occurrences at or before `start`, latest first.
std::vector<std::string> PreviousN(const CronExpression& cron, TimePoint start, int count) {
  std::vector<std::string> out;
  std::optional<TimePoint> t = cron.Previous(start);
  out.push_back(Format(t));
  for (int i = 1; i < count && t; ++i) {
    t = cron.Previous(*t - minutes{1});
    out.push_back(Format(t));
  }
  return out;
}

std::vector<std::string> NextN(const char* text, TimePoint start, int count) {
  return NextN(CronExpression::Parse(text), start, count);
}

using Strings = std::vector<std::string>;

// --- Parsing: every syntax form -----------------------------------------------------------------

TEST(CronParseTest, StarMatchesEveryMinute) {
  const auto cron = CronExpression::Parse("* * * * *");
  EXPECT_EQ(NextN(cron, At(kWednesday, 10, 0), 2),
            (Strings{"2026-11-25 10:01", "2026-11-25 10:02"}));
  EXPECT_EQ(Format(cron.Previous(At(kWednesday, 10, 0) + 30s)), "2026-11-25 10:00");
}

TEST(CronParseTest, SingleNumber) {
  EXPECT_EQ(NextN("5 * * * *", At(kWednesday, 10, 0), 2),
            (Strings{"2026-11-25 10:05", "2026-11-25 11:05"}));
}

TEST(CronParseTest, Range) {
  EXPECT_EQ(
      NextN("10-12 * * * *", At(kWednesday, 10, 0), 4),
      (Strings{"2026-11-25 10:10", "2026-11-25 10:11", "2026-11-25 10:12", "2026-11-25 11:10"}));
}

TEST(CronParseTest, List) {
  EXPECT_EQ(
      NextN("1,30,45 * * * *", At(kWednesday, 10, 0), 4),
      (Strings{"2026-11-25 10:01", "2026-11-25 10:30", "2026-11-25 10:45", "2026-11-25 11:01"}));
}

TEST(CronParseTest, StarStep) {
  EXPECT_EQ(
      NextN("0 */6 * * *", At(kWednesday, 0, 0), 4),
      (Strings{"2026-11-25 06:00", "2026-11-25 12:00", "2026-11-25 18:00", "2026-11-26 00:00"}));
}

TEST(CronParseTest, RangeStep) {
  EXPECT_EQ(NextN("10-40/10 * * * *", At(kWednesday, 10, 0), 5),
            (Strings{"2026-11-25 10:10", "2026-11-25 10:20", "2026-11-25 10:30", "2026-11-25 10:40",
                     "2026-11-25 11:10"}));
}

TEST(CronParseTest, StartStepRunsToTheFieldMaximum) {
  EXPECT_EQ(NextN("50/5 * * * *", At(kWednesday, 10, 0), 3),
            (Strings{"2026-11-25 10:50", "2026-11-25 10:55", "2026-11-25 11:50"}));
}

TEST(CronParseTest, StepLargerThanTheFieldKeepsOnlyTheStart) {
  EXPECT_EQ(NextN("*/90 * * * *", At(kWednesday, 10, 0), 2),
            (Strings{"2026-11-25 11:00", "2026-11-25 12:00"}));
}

TEST(CronParseTest, MixedList) {
  EXPECT_EQ(NextN("0-5/5,20,*/30 * * * *", At(kWednesday, 10, 0), 5),
            (Strings{"2026-11-25 10:05", "2026-11-25 10:20", "2026-11-25 10:30", "2026-11-25 11:00",
                     "2026-11-25 11:05"}));
}

TEST(CronParseTest, NamesAreCaseInsensitive) {
  const auto lower = CronExpression::Parse("0 0 * jan,mar mon");
  const auto mixed = CronExpression::Parse("0 0 * JAN,Mar MoN");
  const auto numeric = CronExpression::Parse("0 0 * 1,3 1");
  const TimePoint start = At(kWednesday, 0, 0);
  const Strings expected{"2027-01-04 00:00", "2027-01-11 00:00", "2027-01-18 00:00",
                         "2027-01-25 00:00", "2027-03-01 00:00"};
  EXPECT_EQ(NextN(lower, start, 5), expected);
  EXPECT_EQ(NextN(mixed, start, 5), expected);
  EXPECT_EQ(NextN(numeric, start, 5), expected);
}

TEST(CronParseTest, NameRanges) {
  EXPECT_EQ(NextN("0 0 1 OCT-dec *", At(kWednesday, 0, 0), 3),
            (Strings{"2026-12-01 00:00", "2027-10-01 00:00", "2027-11-01 00:00"}));
  EXPECT_EQ(NextN("0 9 * * tue-THU", At(kWednesday, 12, 0), 3),
            (Strings{"2026-11-26 09:00", "2026-12-01 09:00", "2026-12-02 09:00"}));
}

TEST(CronParseTest, LeadingZerosAndExtraWhitespace) {
  const auto cron = CronExpression::Parse("  05\t03   *  *  * \n");
  EXPECT_EQ(Format(cron.Next(At(kWednesday, 0, 0))), "2026-11-25 03:05");
  EXPECT_EQ(cron.text(), "  05\t03   *  *  * \n");
}

TEST(CronParseTest, TextIsKept) {
  EXPECT_EQ(CronExpression::Parse("*/15 * * * *").text(), "*/15 * * * *");
}

// --- Parsing: errors ----------------------------------------------------------------------------

struct ErrorCase {
  const char* text;
  const char* message;
};

class CronErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(CronErrorTest, ThrowsInvalidArgumentNamingFieldAndToken) {
  const ErrorCase& c = GetParam();
  try {
    CronExpression::Parse(c.text);
    FAIL() << "expected std::invalid_argument for '" << c.text << "'";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), c.message) << "for '" << c.text << "'";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Errors, CronErrorTest,
    ::testing::Values(
        // field count
        ErrorCase{"", "expected 5 fields, got 0"}, ErrorCase{"   ", "expected 5 fields, got 0"},
        ErrorCase{"* * * *", "expected 5 fields, got 4"},
        ErrorCase{"* * * * * *", "expected 5 fields, got 6"},
        ErrorCase{"0 0 * * * root", "expected 5 fields, got 6"},
        // out of range, per field
        ErrorCase{"61 * * * *", "minute field '61': value out of range 0-59"},
        ErrorCase{"60 * * * *", "minute field '60': value out of range 0-59"},
        ErrorCase{"* 24 * * *", "hour field '24': value out of range 0-23"},
        ErrorCase{"* * 0 * *", "day-of-month field '0': value out of range 1-31"},
        ErrorCase{"* * 32 * *", "day-of-month field '32': value out of range 1-31"},
        ErrorCase{"* * * 0 *", "month field '0': value out of range 1-12"},
        ErrorCase{"* * * 13 *", "month field '13': value out of range 1-12"},
        ErrorCase{"* * * * 8", "day-of-week field '8': value out of range 0-7"},
        ErrorCase{"1-99 * * * *", "minute field '1-99': value out of range 0-59"},
        ErrorCase{"99999999999999999999 * * * *",
                  "minute field '99999999999999999999': value out of range 0-59"},
        // steps
        ErrorCase{"* */0 * * *", "hour field '*/0': step must be >= 1"},
        ErrorCase{"1-5/0 * * * *", "minute field '1-5/0': step must be >= 1"},
        ErrorCase{"*/ * * * *", "minute field '*/': missing step"},
        ErrorCase{"*/x * * * *", "minute field '*/x': step is not a number"},
        ErrorCase{"*/-1 * * * *", "minute field '*/-1': step is not a number"},
        ErrorCase{"*/2/3 * * * *", "minute field '*/2/3': more than one '/'"},
        ErrorCase{"/5 * * * *", "minute field '/5': missing value before '/'"},
        ErrorCase{"*/99999999999999999999 * * * *",
                  "minute field '*/99999999999999999999': step too large"},
        // not a number / name
        ErrorCase{"* * * foo *", "month field 'foo': not a number or name"},
        ErrorCase{"* * * * funday", "day-of-week field 'funday': not a number or name"},
        ErrorCase{"* * * * monday", "day-of-week field 'monday': not a number or name"},
        ErrorCase{"* * * mon *", "month field 'mon': not a number or name"},
        ErrorCase{"* * * * jan", "day-of-week field 'jan': not a number or name"},
        ErrorCase{"mon * * * *", "minute field 'mon': not a number"},
        ErrorCase{"* * jan * *", "day-of-month field 'jan': not a number"},
        ErrorCase{"? * * * *", "minute field '?': not a number"},
        // trailing junk
        ErrorCase{"5x * * * *", "minute field '5x': not a number"},
        ErrorCase{"1.5 * * * *", "minute field '1.5': not a number"},
        ErrorCase{"+5 * * * *", "minute field '+5': not a number"},
        ErrorCase{"* * * janx *", "month field 'janx': not a number or name"},
        ErrorCase{"*x * * * *", "minute field '*x': not a number"},
        // empty list elements
        ErrorCase{"1,,2 * * * *", "minute field '1,,2': empty list element"},
        ErrorCase{"1, * * * *", "minute field '1,': empty list element"},
        ErrorCase{"* ,1 * * *", "hour field ',1': empty list element"},
        ErrorCase{"* * * * ,", "day-of-week field ',': empty list element"},
        // ranges
        ErrorCase{"5-3 * * * *", "minute field '5-3': range is reversed (start after end)"},
        ErrorCase{"* * * dec-jan *", "month field 'dec-jan': range is reversed (start after end)"},
        ErrorCase{"* * * * sat-sun",
                  "day-of-week field 'sat-sun': range is reversed (start after end)"},
        ErrorCase{"5- * * * *", "minute field '5-': incomplete range"},
        ErrorCase{"-5 * * * *", "minute field '-5': incomplete range"},
        ErrorCase{"1-2-3 * * * *", "minute field '1-2-3': more than one '-'"},
        ErrorCase{"*-5 * * * *", "minute field '*-5': not a number"}));

TEST(CronParseTest, ErrorsAreInvalidArgument) {
  EXPECT_THROW(CronExpression::Parse("61 * * * *"), std::invalid_argument);
  EXPECT_NO_THROW(CronExpression::Parse("59 23 31 12 7"));
  EXPECT_NO_THROW(CronExpression::Parse("0 0 1 1 0"));
}

// --- Next / Previous ----------------------------------------------------------------------------

TEST(CronNextTest, EveryFifteenMinutes) {
  const auto cron = CronExpression::Parse("*/15 * * * *");
  EXPECT_EQ(
      NextN(cron, At(kWednesday, 10, 7), 4),
      (Strings{"2026-11-25 10:15", "2026-11-25 10:30", "2026-11-25 10:45", "2026-11-25 11:00"}));
  EXPECT_EQ(PreviousN(cron, At(kWednesday, 0, 7), 3),
            (Strings{"2026-11-25 00:00", "2026-11-24 23:45", "2026-11-24 23:30"}));
  // Next is strictly after, even when t is inside a matching minute.
  EXPECT_EQ(Format(cron.Next(At(kWednesday, 10, 15))), "2026-11-25 10:30");
  EXPECT_EQ(Format(cron.Next(At(kWednesday, 10, 15) + 30s)), "2026-11-25 10:30");
  EXPECT_EQ(Format(cron.Next(At(kWednesday, 10, 14) + 59s + 999ms)), "2026-11-25 10:15");
}

TEST(CronNextTest, Hourly) {
  const auto cron = CronExpression::Parse("0 * * * *");
  EXPECT_EQ(NextN(cron, At(kWednesday, 22, 30), 3),
            (Strings{"2026-11-25 23:00", "2026-11-26 00:00", "2026-11-26 01:00"}));
  EXPECT_EQ(Format(cron.Previous(At(kWednesday, 0, 30))), "2026-11-25 00:00");
  EXPECT_EQ(Format(cron.Previous(At(kWednesday, 0, 0) - 1ns)), "2026-11-24 23:00");
}

TEST(CronNextTest, DailyAtThreeThirty) {
  const auto cron = CronExpression::Parse("30 3 * * *");
  EXPECT_EQ(Format(cron.Next(At(kWednesday, 3, 29) + 59s)), "2026-11-25 03:30");
  EXPECT_EQ(Format(cron.Next(At(kWednesday, 3, 30))), "2026-11-26 03:30");
  EXPECT_EQ(Format(cron.Next(At(kWednesday, 23, 59))), "2026-11-26 03:30");
  EXPECT_EQ(Format(cron.Previous(At(kWednesday, 3, 29))), "2026-11-24 03:30");
  EXPECT_EQ(Format(cron.Previous(At(kWednesday, 12, 0))), "2026-11-25 03:30");
}

TEST(CronNextTest, PreviousAtAnExactMatchReturnsTheSameMinute) {
  const auto cron = CronExpression::Parse("30 3 * * *");
  const TimePoint exact = At(kWednesday, 3, 30);
  EXPECT_EQ(cron.Previous(exact), exact);
  // Seconds are truncated: the minute 03:30 still counts.
  EXPECT_EQ(cron.Previous(exact + 59s + 999ms), exact);
  EXPECT_EQ(cron.Previous(exact + 1ns), exact);
}

TEST(CronNextTest, WeekdaysOnly) {
  const auto cron = CronExpression::Parse("0 9 * * 1-5");
  const auto named = CronExpression::Parse("0 9 * * mon-fri");
  const sys_days friday = kWednesday + days{2};
  const sys_days sunday = kWednesday + days{4};
  const Strings expected{"2026-11-30 09:00", "2026-12-01 09:00", "2026-12-02 09:00"};
  EXPECT_EQ(NextN(cron, At(friday, 9, 0), 3), expected);
  EXPECT_EQ(NextN(named, At(friday, 9, 0), 3), expected);
  EXPECT_EQ(PreviousN(cron, At(sunday, 12, 0), 3),
            (Strings{"2026-11-27 09:00", "2026-11-26 09:00", "2026-11-25 09:00"}));
}

TEST(CronNextTest, SundayIsZeroAndSeven) {
  const TimePoint start = At(kWednesday, 0, 0);
  const Strings expected{"2026-11-29 12:00", "2026-12-06 12:00"};
  EXPECT_EQ(NextN("0 12 * * 0", start, 2), expected);
  EXPECT_EQ(NextN("0 12 * * 7", start, 2), expected);
  EXPECT_EQ(NextN("0 12 * * sun", start, 2), expected);
  EXPECT_EQ(NextN("0 12 * * SUN,7,0", start, 2), expected);
  EXPECT_EQ(NextN("0 12 * * 5-7", start, 4), (Strings{"2026-11-27 12:00", "2026-11-28 12:00",
                                                      "2026-11-29 12:00", "2026-12-04 12:00"}));
  EXPECT_EQ(NextN("0 12 * * 0-7", start, 2), (Strings{"2026-11-25 12:00", "2026-11-26 12:00"}));
}

TEST(CronNextTest, DayOfWeekStepsStayWithinTheWeek) {
  // `*` and `a/n` end at 6 (Saturday), so 7 is not an extra Sunday: 1/2 is Mon, Wed, Fri.
  EXPECT_EQ(
      NextN("0 0 * * 1/2", At(kWednesday, 12, 0), 4),
      (Strings{"2026-11-27 00:00", "2026-11-30 00:00", "2026-12-02 00:00", "2026-12-04 00:00"}));
  EXPECT_EQ(NextN("0 0 * * */3", At(kWednesday, 12, 0), 3),
            (Strings{"2026-11-28 00:00", "2026-11-29 00:00", "2026-12-02 00:00"}));
}

TEST(CronNextTest, MonthNames) {
  EXPECT_EQ(NextN("0 0 1 jan,jul *", At(kWednesday, 0, 0), 3),
            (Strings{"2027-01-01 00:00", "2027-07-01 00:00", "2028-01-01 00:00"}));
  EXPECT_EQ(Format(CronExpression::Parse("15 10 * Nov *").Previous(At(kWednesday, 0, 0))),
            "2026-11-24 10:15");
  EXPECT_EQ(Format(CronExpression::Parse("0 0 * feb *").Previous(At(kWednesday, 0, 0))),
            "2026-02-28 00:00");
}

TEST(CronNextTest, DayOfMonthOrDayOfWeekWhenBothRestricted) {
  // The 1st of the month or any Monday.
  const auto cron = CronExpression::Parse("0 0 1 * mon");
  EXPECT_EQ(
      NextN(cron, At(kWednesday, 0, 0), 4),
      (Strings{"2026-11-30 00:00", "2026-12-01 00:00", "2026-12-07 00:00", "2026-12-14 00:00"}));
  EXPECT_EQ(PreviousN(cron, At(kWednesday, 0, 0), 3),
            (Strings{"2026-11-23 00:00", "2026-11-16 00:00", "2026-11-09 00:00"}));
  EXPECT_EQ(Format(cron.Previous(At(kWednesday - days{20}, 0, 0))), "2026-11-02 00:00");
  EXPECT_EQ(Format(cron.Previous(At(kWednesday - days{24}, 12, 0))), "2026-11-01 00:00");
}

TEST(CronNextTest, OnlyOneDayFieldRestrictedMeansThatFieldAlone) {
  EXPECT_EQ(NextN("0 0 1 * *", At(kWednesday, 0, 0), 2),
            (Strings{"2026-12-01 00:00", "2027-01-01 00:00"}));
  EXPECT_EQ(NextN("0 0 * * mon", At(kWednesday, 0, 0), 2),
            (Strings{"2026-11-30 00:00", "2026-12-07 00:00"}));
}

TEST(CronNextTest, StarStepDoesNotCountAsRestrictedDay) {
  // As in Vixie cron a field starting with `*` is unrestricted, so both must match here:
  // Mondays that fall on an odd day of the month.
  EXPECT_EQ(NextN("0 0 */2 * mon", At(kWednesday, 0, 0), 3),
            (Strings{"2026-12-07 00:00", "2026-12-21 00:00", "2027-01-11 00:00"}));
  // Whereas a range is a restriction: the 1st-2nd, or any Monday.
  EXPECT_EQ(NextN("0 0 1-2 * mon", At(kWednesday, 0, 0), 3),
            (Strings{"2026-11-30 00:00", "2026-12-01 00:00", "2026-12-02 00:00"}));
}

TEST(CronNextTest, LeapDay) {
  const auto cron = CronExpression::Parse("0 0 29 2 *");
  EXPECT_EQ(NextN(cron, At(kWednesday, 0, 0), 3),
            (Strings{"2028-02-29 00:00", "2032-02-29 00:00", "2036-02-29 00:00"}));
  EXPECT_EQ(Format(cron.Previous(At(kWednesday, 0, 0))), "2024-02-29 00:00");
  EXPECT_EQ(Format(cron.Previous(At(sys_days{2028y / 2 / 29}, 0, 0))), "2028-02-29 00:00");
  EXPECT_EQ(Format(cron.Previous(At(sys_days{2028y / 2 / 29}, 0, 0) - 1ns)), "2024-02-29 00:00");
}

TEST(CronNextTest, LeapDaySearchesAreFast) {
  const auto cron = CronExpression::Parse("0 0 29 2 *");
  const auto never = CronExpression::Parse("0 0 30 2 *");
  const auto begin = std::chrono::steady_clock::now();
  for (int i = 0; i < 2000; ++i) {
    const TimePoint t = At(kWednesday + days{i}, 0, 0);
    ASSERT_TRUE(cron.Previous(t).has_value());
    ASSERT_TRUE(cron.Next(t).has_value());
    ASSERT_FALSE(never.Previous(t).has_value());
  }
  // Minute-by-minute iteration would need ~2.6 million steps per call; day skipping needs a few
  // hundred. The bound is loose so that sanitizer builds pass too.
  EXPECT_LT(std::chrono::steady_clock::now() - begin, 5s);
}

TEST(CronNextTest, ImpossibleDatesReturnNullopt) {
  for (const char* text : {"0 0 30 2 *", "0 0 31 2 *", "0 0 31 4 *", "* * 31 jun,sep,nov *"}) {
    const auto cron = CronExpression::Parse(text);
    EXPECT_EQ(cron.Next(At(kWednesday, 0, 0)), std::nullopt) << text;
    EXPECT_EQ(cron.Previous(At(kWednesday, 0, 0)), std::nullopt) << text;
  }
}

TEST(CronNextTest, FiveYearHorizon) {
  // 2100 is not a leap year: after 2096-02-29 the next leap day is 2104-02-29, eight years on.
  const auto cron = CronExpression::Parse("0 0 29 2 *");
  EXPECT_EQ(cron.Next(At(sys_days{2097y / 3 / 1}, 0, 0)), std::nullopt);
  EXPECT_EQ(cron.Previous(At(sys_days{2103y / 3 / 1}, 0, 0)), std::nullopt);
  EXPECT_EQ(Format(cron.Next(At(sys_days{2099y / 3 / 1}, 0, 0))), "2104-02-29 00:00");
  EXPECT_EQ(Format(cron.Previous(At(sys_days{2101y / 2 / 1}, 0, 0))), "2096-02-29 00:00");
}

TEST(CronNextTest, YearEndBoundaries) {
  const sys_days new_years_eve{2026y / 12 / 31};
  const sys_days new_year{2027y / 1 / 1};

  const auto last_minute = CronExpression::Parse("59 23 31 12 *");
  EXPECT_EQ(Format(last_minute.Next(At(new_years_eve, 23, 58))), "2026-12-31 23:59");
  EXPECT_EQ(Format(last_minute.Next(At(new_years_eve, 23, 59))), "2027-12-31 23:59");
  EXPECT_EQ(Format(last_minute.Previous(At(new_year, 0, 0))), "2026-12-31 23:59");

  const auto first_minute = CronExpression::Parse("0 0 1 1 *");
  EXPECT_EQ(Format(first_minute.Next(At(new_years_eve, 23, 59) + 59s)), "2027-01-01 00:00");
  EXPECT_EQ(Format(first_minute.Previous(At(new_year, 0, 0))), "2027-01-01 00:00");
  EXPECT_EQ(Format(first_minute.Previous(At(new_years_eve, 23, 59))), "2026-01-01 00:00");

  const auto quarter = CronExpression::Parse("*/15 * * * *");
  EXPECT_EQ(Format(quarter.Next(At(new_years_eve, 23, 50))), "2027-01-01 00:00");
  EXPECT_EQ(Format(quarter.Previous(At(new_year, 0, 5))), "2027-01-01 00:00");
  EXPECT_EQ(Format(quarter.Previous(At(new_year, 0, 0) - 1ns)), "2026-12-31 23:45");

  EXPECT_EQ(Format(CronExpression::Parse("45 23 * * *").Previous(At(new_year, 0, 10))),
            "2026-12-31 23:45");
  EXPECT_EQ(Format(CronExpression::Parse("0 0 * dec *").Next(At(new_years_eve, 0, 0))),
            "2027-12-01 00:00");
}

TEST(CronNextTest, BeforeTheEpoch) {
  const auto cron = CronExpression::Parse("30 3 * * *");
  EXPECT_EQ(Format(cron.Previous(At(sys_days{1969y / 12 / 31}, 12, 0))), "1969-12-31 03:30");
  EXPECT_EQ(Format(cron.Next(At(sys_days{1969y / 12 / 31}, 12, 0))), "1970-01-01 03:30");
}

TEST(CronNextTest, ExtremeTimePointsDoNotOverflow) {
  const auto cron = CronExpression::Parse("* * * * *");
  EXPECT_EQ(cron.Next(TimePoint::max()), std::nullopt);
  EXPECT_EQ(cron.Previous(TimePoint::min()), std::nullopt);
  const auto next = cron.Next(TimePoint::max() - 2min);
  ASSERT_TRUE(next.has_value());
  EXPECT_LE(*next, TimePoint::max());
  const auto previous = cron.Previous(TimePoint::min() + 2min);
  ASSERT_TRUE(previous.has_value());
  EXPECT_GE(*previous, TimePoint::min());
}

}  // namespace
}  // namespace warp::scheduler
