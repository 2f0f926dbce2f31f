#include "store/observation.hpp"

#include <array>
#include <utility>

namespace warp::store {
namespace {

template <typename Enum, std::size_t N>
std::string_view NameOf(const std::array<std::pair<Enum, std::string_view>, N>& names, Enum v) {
  for (const auto& [e, name] : names) {
    if (e == v)
      return name;
  }
  return "?";
}

template <typename Enum, std::size_t N>
std::optional<Enum> Parse(const std::array<std::pair<Enum, std::string_view>, N>& names,
                          std::string_view s) {
  for (const auto& [e, name] : names) {
    if (name == s)
      return e;
  }
  return std::nullopt;
}

constexpr std::array<std::pair<Severity, std::string_view>, 3> kSeverities{{
    {Severity::kInfo, "info"},
    {Severity::kWarning, "warning"},
    {Severity::kCritical, "critical"},
}};

constexpr std::array<std::pair<WorkspaceLifecycle, std::string_view>, 3> kWorkspaceLifecycles{{
    {WorkspaceLifecycle::kActive, "active"},
    {WorkspaceLifecycle::kArchived, "archived"},
    {WorkspaceLifecycle::kDeleted, "deleted"},
}};

constexpr std::array<std::pair<ReviewStatus, std::string_view>, 4> kReviewStatuses{{
    {ReviewStatus::kProposed, "proposed"},
    {ReviewStatus::kInReview, "in_review"},
    {ReviewStatus::kApproved, "approved"},
    {ReviewStatus::kRejected, "rejected"},
}};

constexpr std::array<std::pair<ObservationChange::Kind, std::string_view>, 4> kChanges{{
    {ObservationChange::Kind::kOpened, "opened"},
    {ObservationChange::Kind::kPersisted, "persisted"},
    {ObservationChange::Kind::kEscalated, "escalated"},
    {ObservationChange::Kind::kResolved, "resolved"},
}};

}  // namespace

std::string_view ToString(Severity v) {
  return NameOf(kSeverities, v);
}
std::string_view ToString(WorkspaceLifecycle v) {
  return NameOf(kWorkspaceLifecycles, v);
}
std::string_view ToString(ReviewStatus v) {
  return NameOf(kReviewStatuses, v);
}
std::string_view ToString(ObservationChange::Kind v) {
  return NameOf(kChanges, v);
}
std::optional<Severity> ParseSeverity(std::string_view s) {
  return Parse(kSeverities, s);
}
std::optional<WorkspaceLifecycle> ParseWorkspaceLifecycle(std::string_view s) {
  return Parse(kWorkspaceLifecycles, s);
}
std::optional<ReviewStatus> ParseReviewStatus(std::string_view s) {
  return Parse(kReviewStatuses, s);
}

}  // namespace warp::store
