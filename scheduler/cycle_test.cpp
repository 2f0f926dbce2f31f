#include "scheduler/cycle.hpp"

#include <gtest/gtest.h>

namespace warp::scheduler {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

store::TimePoint At(std::int64_t ms) {
  return store::TimePoint(milliseconds(ms));
}

TEST(SlotAt, AlignsSlotsToMultiplesOfTheIntervalSinceTheEpoch) {
  auto slot = SlotAt(At(25'500), seconds(10));
  EXPECT_EQ(slot.index, 2);
  EXPECT_EQ(slot.start, At(20'000));
  EXPECT_EQ(slot.end, At(30'000));
}

TEST(SlotAt, ASlotBoundaryBelongsToTheSlotItStarts) {
  EXPECT_EQ(SlotAt(At(30'000), seconds(10)).index, 3);
  EXPECT_EQ(SlotAt(At(29'999), seconds(10)).index, 2);
}

TEST(SlotAt, FloorsTimesBeforeTheEpoch) {
  EXPECT_EQ(SlotAt(At(-1), seconds(10)).index, -1);
  EXPECT_EQ(SlotAt(At(-10'000), seconds(10)).index, -1);
  EXPECT_EQ(SlotAt(At(-10'001), seconds(10)).index, -2);
}

TEST(CycleId, IsTheSameForEveryInstanceOfAGroupInOneSlot) {
  const auto a = SlotAt(At(1'764'000'001'000), seconds(10));
  const auto b = SlotAt(At(1'764'000'009'999), seconds(10));
  EXPECT_EQ(CycleId("default", seconds(10), a.index), CycleId("default", seconds(10), b.index));
  EXPECT_EQ(CycleId("default", seconds(10), a.index), "default/10000ms/176400000");
}

TEST(CycleId, DiffersBetweenGroupsIntervalsAndSlots) {
  EXPECT_NE(CycleId("a", seconds(10), 5), CycleId("b", seconds(10), 5));
  EXPECT_NE(CycleId("a", seconds(10), 5), CycleId("a", seconds(20), 5));
  EXPECT_NE(CycleId("a", seconds(10), 5), CycleId("a", seconds(10), 6));
}

}  // namespace
}  // namespace warp::scheduler
