// Aligned cycle slots and deterministic cycle ids (SPEC section 4).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "store/model.hpp"

namespace warp::scheduler {

/// Slot k covers [k * interval, (k + 1) * interval) of epoch time (database time).
struct Slot {
  std::int64_t index = 0;
  store::TimePoint start;
  store::TimePoint end;
};

/// The slot containing `now`. `interval` must be positive.
Slot SlotAt(store::TimePoint now, store::Duration interval);

/// `GROUP/INTERVALms/K`: every instance of a group names the same slot identically, and a
/// changed interval never collides with the old slots.
std::string CycleId(std::string_view group, store::Duration interval, std::int64_t index);

}  // namespace warp::scheduler
