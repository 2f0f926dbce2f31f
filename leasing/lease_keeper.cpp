#include "leasing/lease_keeper.hpp"

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <vector>

namespace warp::leasing {

using Clock = std::chrono::steady_clock;

LeaseKeeper::LeaseKeeper(boost::asio::any_io_executor executor, store::Store& store,
                         config::LeasingSettings settings, logging::Logger log)
    : executor_(executor),
      store_(store),
      settings_(settings),
      log_(std::move(log)),
      timer_(executor),
      deadline_timer_(executor) {}

void LeaseKeeper::Start() {
  if (running_)
    return;
  running_ = true;
  boost::asio::co_spawn(executor_, Loop(), boost::asio::detached);
}

void LeaseKeeper::Stop() {
  running_ = false;
  timer_.cancel();
  deadline_timer_.cancel();
  armed_for_ = Clock::time_point::max();
}

void LeaseKeeper::UpdateSettings(config::LeasingSettings settings) {
  settings_ = settings;
}

void LeaseKeeper::Hold(const store::Lease& lease, std::string agent_slug, OnLost on_lost) {
  // The lease was granted for ttl from acquisition; count locally from now, which is later than
  // the store's acquisition instant, minus a margin for the round trip that granted it.
  const auto deadline = Clock::now() + settings_.ttl - settings_.renew_every / 2;
  held_[lease.lease_id] = Held{
      {lease.lease_id, lease.fencing_token}, std::move(agent_slug), std::move(on_lost), deadline};
  // O(1) per lease: a cycle may hand over tens of thousands. The timer only moves earlier.
  if (deadline < armed_for_)
    ArmAt(deadline);
}

void LeaseKeeper::Forget(store::LeaseId lease) {
  held_.erase(lease);
}

void LeaseKeeper::MarkHandedOff(store::LeaseId lease) {
  if (auto it = held_.find(lease); it != held_.end())
    it->second.handed_off = true;
}

void LeaseKeeper::ArmDeadline() {
  if (!running_ || held_.empty())
    return;
  auto earliest = Clock::time_point::max();
  for (const auto& [id, h] : held_)
    earliest = std::min(earliest, h.local_deadline);
  if (earliest != armed_for_)
    ArmAt(earliest);
}

void LeaseKeeper::ArmAt(Clock::time_point at) {
  if (!running_)
    return;
  armed_for_ = at;
  deadline_timer_.expires_at(at);  // cancels the previous wait
  deadline_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec)  // cancelled: re-armed, stopped, or the keeper is going away; `this` may be gone
      return;
    armed_for_ = Clock::time_point::max();
    LoseOverdue();
  });
}

void LeaseKeeper::LoseOverdue() {
  const auto now = Clock::now();
  std::vector<store::LeaseId> overdue;
  for (const auto& [id, h] : held_) {
    if (h.local_deadline <= now)
      overdue.push_back(id);
  }
  for (auto id : overdue)
    Lose(id, "no renewal was confirmed before its local deadline");
  ArmDeadline();
}

void LeaseKeeper::Lose(store::LeaseId id, const std::string& reason) {
  auto it = held_.find(id);
  if (it == held_.end())
    return;
  Held held = std::move(it->second);
  held_.erase(it);
  if (held.handed_off) {
    log_.Info(logging::Event::kLeaseReleased,
              {.agent = held.agent_slug, .lease_id = id, .fencing_token = held.ref.fencing_token},
              "lease {} of agent {} ended after the hand-off ({}): the agent completed the work, "
              "or it expires and the work is retried",
              id, held.agent_slug, reason);
  } else {
    log_.Warn(logging::Event::kLeaseLost,
              {.agent = held.agent_slug, .lease_id = id, .fencing_token = held.ref.fencing_token},
              "lease {} of agent {} lost: {}; stopping its work", id, held.agent_slug, reason);
  }
  if (held.on_lost)
    held.on_lost(reason);
}

store::Task<void> LeaseKeeper::RenewAll() {
  if (held_.empty())
    co_return;
  std::vector<store::LeaseRef> refs;
  refs.reserve(held_.size());
  for (const auto& [id, h] : held_)
    refs.push_back(h.ref);
  for (std::size_t from = 0; from < refs.size(); from += kRenewChunk) {
    const auto to = std::min(refs.size(), from + kRenewChunk);
    std::vector<store::LeaseRef> chunk(refs.begin() + static_cast<std::ptrdiff_t>(from),
                                       refs.begin() + static_cast<std::ptrdiff_t>(to));
    co_await RenewChunk(std::move(chunk));
  }
  ArmDeadline();
}

store::Task<void> LeaseKeeper::RenewChunk(std::vector<store::LeaseRef> refs) {
  const auto sent_at = Clock::now();
  const auto ttl = settings_.ttl;
  std::vector<std::optional<store::TimePoint>> renewed;
  std::string failure;
  try {
    renewed = co_await store_.RenewLeases(refs, ttl);
  } catch (const store::StoreError& e) {
    failure = e.what();
  }
  if (!failure.empty()) {
    log_.Warn(logging::Event::kStoreError, {}, "renewing {} lease(s) failed: {}", refs.size(),
              failure);
    // Give up the leases whose local deadline comes before the next renewal can land.
    const auto horizon = Clock::now() + settings_.renew_every / 2;
    for (const auto& ref : refs) {
      auto it = held_.find(ref.lease_id);
      if (it != held_.end() && it->second.local_deadline <= horizon)
        Lose(ref.lease_id, "could not be renewed before it expires (" + failure + ")");
    }
    co_return;
  }
  for (std::size_t i = 0; i < refs.size(); ++i) {
    const auto id = refs[i].lease_id;
    auto it = held_.find(id);
    if (it == held_.end())
      continue;  // forgotten while the renewal was in flight
    if (renewed.at(i)) {
      it->second.local_deadline = sent_at + ttl - settings_.renew_every / 2;
    } else {
      Lose(id, "renewal refused: the lease expired or was released");
    }
  }
}

boost::asio::awaitable<void> LeaseKeeper::Loop() {
  auto next = Clock::now() + settings_.renew_every;
  while (running_) {
    timer_.expires_at(next);
    boost::system::error_code ec;
    co_await timer_.async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ec));
    if (!running_)
      break;
    // Absolute schedule: ticks don't drift with the time a renewal takes.
    next += settings_.renew_every;
    if (next < Clock::now())
      next = Clock::now() + settings_.renew_every;
    try {
      co_await RenewAll();
    } catch (const std::exception& e) {
      log_.Error(logging::Event::kStoreError, {}, "lease renewal round failed: {}", e.what());
    }
  }
}

}  // namespace warp::leasing
