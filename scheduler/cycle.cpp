#include "scheduler/cycle.hpp"

#include <fmt/format.h>

namespace warp::scheduler {

Slot SlotAt(store::TimePoint now, store::Duration interval) {
  const auto since_epoch = std::chrono::duration_cast<store::Duration>(now.time_since_epoch());
  std::int64_t k = since_epoch.count() / interval.count();
  if (since_epoch.count() < 0 && since_epoch.count() % interval.count() != 0)
    --k;  // floor
  Slot slot;
  slot.index = k;
  slot.start = store::TimePoint(interval * k);
  slot.end = slot.start + interval;
  return slot;
}

std::string CycleId(std::string_view group, store::Duration interval, std::int64_t index) {
  return fmt::format("{}/{}ms/{}", group, interval.count(), index);
}

}  // namespace warp::scheduler
