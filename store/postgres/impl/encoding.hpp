// How the PostgreSQL store's statements carry time (private to store/postgres/*.cpp): instants
// travel as microseconds since the epoch (exact both ways), durations as milliseconds, and the
// SQL converts them with the WARP_US / WARP_TS / WARP_MS fragments. A file that uses the
// fragments #undefs them after its statements.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "store/model.hpp"

#define WARP_US(column) "(extract(epoch FROM " column ") * 1000000)::bigint"
#define WARP_TS(param) "('epoch'::timestamptz + " param "::bigint * interval '1 microsecond')"
#define WARP_MS(param) "(" param "::bigint * interval '1 millisecond')"

namespace warp::store::postgres::encoding {

inline std::string Us(TimePoint t) {
  return std::to_string(
      std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count());
}
inline TimePoint FromUs(std::int64_t us) {
  return TimePoint(std::chrono::microseconds(us));
}
inline std::string Ms(Duration d) {
  return std::to_string(d.count());
}

}  // namespace warp::store::postgres::encoding
