// Pool and Lease of store/postgres/connection.hpp.
//
// The pool's state lives in a PoolCore shared by the Pool, every Lease and every Acquire in
// flight, so that a Lease or a suspended Acquire never outlives what it points into.
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <list>

#include "store/postgres/connection.hpp"

namespace warp::store::postgres {
namespace impl {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using Kind = StoreError::Kind;

struct PoolCore {
  struct Slot {
    std::unique_ptr<Connection> connection;
    bool leased = false;
  };

  /// An Acquire waiting in line. Lives in the waiting coroutine's frame; the queue holds a
  /// pointer to it until Return hands it a slot (or the waiter gives up and unlinks itself).
  struct Waiter {
    explicit Waiter(const asio::any_io_executor& executor) : timer(executor) {}
    asio::steady_timer timer;  ///< expires at the caller's deadline; cancelled to wake it
    std::optional<std::size_t> slot;
    bool queued = false;
  };

  PoolCore(asio::any_io_executor executor_in, PoolSettings settings_in, logging::Logger log_in)
      : executor(std::move(executor_in)), settings(std::move(settings_in)), log(std::move(log_in)) {
    settings.size = std::max<std::size_t>(settings.size, 1);
    slots.resize(settings.size);
    for (auto& slot : slots)
      slot.connection = std::make_unique<Connection>(executor);
  }

  asio::any_io_executor executor;
  PoolSettings settings;
  logging::Logger log;
  std::vector<Slot> slots;
  std::list<Waiter*> waiters;
  /// Connections given back while an operation was still in flight on them (their coroutine
  /// is being torn down): kept alive until the pool goes, never reused.
  std::vector<std::unique_ptr<Connection>> retired;
  bool closed = false;

  // Reconnection backoff, shared by all slots so that N connections do not multiply the load
  // on a struggling server.
  Duration backoff{0};
  Clock::time_point next_attempt{};
  Clock::time_point last_failure{};

  PoolStats counters;  // connects, failed_connects, broken_returned, outage

  // Failure logging: at most every kLogEvery while the message stays the same.
  static constexpr Duration kLogEvery{std::chrono::seconds(30)};
  Clock::time_point last_logged{};
  std::string last_logged_error;

  Task<Lease> Acquire(std::shared_ptr<PoolCore> self, Duration timeout);
  Task<std::size_t> TakeSlot(Clock::time_point deadline, Duration timeout);
  Task<void> Open(std::size_t slot, Clock::time_point deadline, Duration timeout);

  std::optional<std::size_t> FreeSlot() const;
  void Return(std::size_t slot) noexcept;
  void Shutdown() noexcept;
  void OnConnected();
  void OnConnectFailed(const std::string& error, Clock::time_point started);
  StoreError NoConnection(Duration timeout) const;
  PoolStats Stats() const;
};

namespace {
/// Gives a slot back unless dismissed (the acquire succeeded and a Lease owns it).
class SlotScope {
 public:
  SlotScope(PoolCore& core, std::size_t slot) : core_(core), slot_(slot) {}
  ~SlotScope() {
    if (armed_)
      core_.Return(slot_);
  }
  SlotScope(const SlotScope&) = delete;
  SlotScope& operator=(const SlotScope&) = delete;
  void Dismiss() { armed_ = false; }

 private:
  PoolCore& core_;
  std::size_t slot_;
  bool armed_ = true;
};

/// Takes a waiter out of the queue, or gives back a slot handed to it but never taken, when
/// the waiting coroutine ends for whatever reason (timeout, pool closed, frame destroyed).
class WaiterScope {
 public:
  WaiterScope(PoolCore& core, PoolCore::Waiter& waiter) : core_(core), waiter_(waiter) {
    core_.waiters.push_back(&waiter_);
    waiter_.queued = true;
    position_ = std::prev(core_.waiters.end());
  }
  ~WaiterScope() {
    if (waiter_.queued)
      core_.waiters.erase(position_);
    else if (waiter_.slot && !taken_)
      core_.Return(*waiter_.slot);
  }
  WaiterScope(const WaiterScope&) = delete;
  WaiterScope& operator=(const WaiterScope&) = delete;
  void Taken() { taken_ = true; }

 private:
  PoolCore& core_;
  PoolCore::Waiter& waiter_;
  std::list<PoolCore::Waiter*>::iterator position_;
  bool taken_ = false;
};

std::int64_t MsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(to - from).count();
}
}  // namespace

std::optional<std::size_t> PoolCore::FreeSlot() const {
  std::optional<std::size_t> unopened;
  for (std::size_t i = 0; i < slots.size(); ++i) {
    if (slots[i].leased)
      continue;
    if (slots[i].connection->connected())
      return i;
    if (!unopened)
      unopened = i;
  }
  return unopened;
}

Task<Lease> PoolCore::Acquire(std::shared_ptr<PoolCore> self, Duration timeout) {
  if (closed)
    throw StoreError(Kind::kUnavailable, "postgres: the connection pool is closed");
  const auto deadline = Clock::now() + timeout;
  const std::size_t slot = co_await TakeSlot(deadline, timeout);
  SlotScope scope(*this, slot);
  if (!slots[slot].connection->connected())
    co_await Open(slot, deadline, timeout);
  scope.Dismiss();
  co_return Lease(std::move(self), slot, slots[slot].connection.get());
}

Task<std::size_t> PoolCore::TakeSlot(Clock::time_point deadline, Duration timeout) {
  // Fairness: a free slot goes to the caller only when nobody is waiting already.
  if (waiters.empty()) {
    if (const auto free = FreeSlot()) {
      slots[*free].leased = true;
      co_return *free;
    }
  }
  Waiter waiter(executor);
  waiter.timer.expires_at(deadline);
  WaiterScope scope(*this, waiter);
  boost::system::error_code ec;
  co_await waiter.timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  // A slot handed over counts even if the deadline fired in the same instant.
  if (waiter.slot) {
    scope.Taken();
    co_return *waiter.slot;
  }
  if (closed)
    throw StoreError(Kind::kUnavailable, "postgres: the connection pool is closed");
  throw NoConnection(timeout);
}

Task<void> PoolCore::Open(std::size_t slot, Clock::time_point deadline, Duration timeout) {
  Connection& connection = *slots[slot].connection;
  for (;;) {
    if (Clock::now() < next_attempt) {
      // Backing off. When the backoff outlasts the caller's deadline, fail now.
      if (next_attempt >= deadline)
        throw NoConnection(timeout);
      asio::steady_timer pause(executor, next_attempt);
      boost::system::error_code ec;
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (closed)
        throw StoreError(Kind::kUnavailable, "postgres: the connection pool is closed");
    }
    const auto started = Clock::now();
    if (started >= deadline)
      throw NoConnection(timeout);
    const auto remaining = std::chrono::duration_cast<Duration>(deadline - started);
    const Duration attempt_timeout = std::min(settings.connect_timeout, remaining);
    std::string error;
    bool invalid = false;
    try {
      co_await connection.Connect(settings.conninfo, settings.password, attempt_timeout);
      if (!settings.session_setup.empty())
        co_await connection.ExecuteScript(settings.session_setup, attempt_timeout);
    } catch (const StoreError& e) {
      error = e.what();
      invalid = e.kind() == Kind::kInvalid;
    }
    if (error.empty()) {
      OnConnected();
      co_return;
    }
    connection.Close();
    if (!invalid && attempt_timeout < settings.connect_timeout && Clock::now() >= deadline) {
      // The caller's deadline, not connect_timeout, cut this attempt short: that says nothing
      // about the server, so it neither counts as a failure nor pushes the next attempt back.
      // Otherwise a caller that waited out the backoff would get only the sliver of its
      // deadline left after it, time out, renew the backoff, and the pool would never connect.
      throw NoConnection(timeout);
    }
    OnConnectFailed(error, started);
    if (invalid)  // a malformed conninfo: retrying cannot help
      throw StoreError(Kind::kInvalid, error);
    if (closed)
      throw StoreError(Kind::kUnavailable, "postgres: the connection pool is closed");
  }
}

void PoolCore::OnConnected() {
  ++counters.connects;
  if (counters.outage) {
    const auto& outage = *counters.outage;
    log.Info(logging::Event::kStoreError, {},
             "postgres reachable again after {}ms and {} failed connect(s)",
             MsBetween(outage.since, Clock::now()), outage.failed_connects);
  }
  counters.outage.reset();
  backoff = Duration(0);
  next_attempt = {};
  last_logged_error.clear();
}

void PoolCore::OnConnectFailed(const std::string& error, Clock::time_point started) {
  const auto now = Clock::now();
  ++counters.failed_connects;
  if (!counters.outage)
    counters.outage = PoolOutage{now, std::chrono::system_clock::now(), 0, {}};
  auto& outage = *counters.outage;
  ++outage.failed_connects;
  outage.last_error = error;
  // Attempts that overlapped (several slots connecting at once) grow the backoff once.
  if (backoff == Duration(0))
    backoff = settings.backoff_initial;
  else if (started >= last_failure)
    backoff = std::min(backoff * 2, settings.backoff_max);
  last_failure = now;
  next_attempt = std::max(next_attempt, now + backoff);
  if (error != last_logged_error || now - last_logged >= kLogEvery) {
    log.Warn(logging::Event::kStoreError, {},
             "postgres connect failed ({} failed connect(s) in {}ms); next attempt in {}ms: {}",
             outage.failed_connects, MsBetween(outage.since, now), backoff.count(), error);
    last_logged = now;
    last_logged_error = error;
  }
}

StoreError PoolCore::NoConnection(Duration timeout) const {
  if (counters.outage)
    return StoreError(Kind::kUnavailable,
                      fmt::format("postgres unreachable: no connection within {}ms; last error: {}",
                                  timeout.count(), counters.outage->last_error));
  return StoreError(Kind::kUnavailable,
                    fmt::format("postgres: no free connection within {}ms ({} in the pool)",
                                timeout.count(), slots.size()));
}

void PoolCore::Return(std::size_t index) noexcept {
  Slot& slot = slots[index];
  Connection& connection = *slot.connection;
  if (connection.busy()) {
    // The holder's coroutine is being destroyed with an operation suspended inside this
    // connection; that operation's frame still refers to it. Retire it, use a fresh one.
    try {
      connection.Close();
      retired.push_back(std::move(slot.connection));
      slot.connection = std::make_unique<Connection>(executor);
    } catch (...) {
      // Out of memory: keep the connection; it is closed and will be reopened.
    }
  } else if (connection.broken()) {
    ++counters.broken_returned;
    log.Warn(logging::Event::kStoreError, {},
             "postgres connection returned broken; it is reopened on a later acquire");
  } else if (connection.in_transaction()) {
    // A holder that failed between BEGIN and COMMIT: closing makes the server roll back.
    log.Warn(logging::Event::kStoreError, {},
             "postgres connection returned inside a transaction; closing it (rolled back)");
    connection.Close();
  }
  if (closed) {
    slot.connection->Close();
    slot.leased = false;
    return;
  }
  if (!waiters.empty()) {
    Waiter* waiter = waiters.front();
    waiters.pop_front();
    waiter->queued = false;
    waiter->slot = index;  // stays leased: it passes straight to the waiter
    waiter->timer.cancel();
    return;
  }
  slot.leased = false;
}

void PoolCore::Shutdown() noexcept {
  closed = true;
  for (Waiter* waiter : waiters) {
    waiter->queued = false;
    waiter->timer.cancel();
  }
  waiters.clear();
  for (auto& slot : slots) {
    if (!slot.leased)
      slot.connection->Close();
  }
}

PoolStats PoolCore::Stats() const {
  PoolStats stats = counters;
  stats.size = slots.size();
  stats.idle_connected = 0;
  stats.leased = 0;
  for (const auto& slot : slots) {
    if (slot.leased)
      ++stats.leased;
    else if (slot.connection->connected())
      ++stats.idle_connected;
  }
  stats.waiting = waiters.size();
  return stats;
}

}  // namespace impl

// --- Lease ----------------------------------------------------------------------------

Lease::Lease() noexcept = default;

Lease::Lease(std::shared_ptr<impl::PoolCore> core, std::size_t slot,
             Connection* connection) noexcept
    : core_(std::move(core)), slot_(slot), connection_(connection) {}

Lease::~Lease() {
  Release();
}

Lease::Lease(Lease&& other) noexcept
    : core_(std::move(other.core_)),
      slot_(other.slot_),
      connection_(std::exchange(other.connection_, nullptr)) {}

Lease& Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Release();
    core_ = std::move(other.core_);
    slot_ = other.slot_;
    connection_ = std::exchange(other.connection_, nullptr);
  }
  return *this;
}

void Lease::Release() noexcept {
  if (connection_ == nullptr)
    return;
  connection_ = nullptr;
  auto core = std::move(core_);
  core->Return(slot_);
}

// --- Pool -----------------------------------------------------------------------------

Pool::Pool(boost::asio::any_io_executor executor, PoolSettings settings, logging::Logger log)
    : core_(std::make_shared<impl::PoolCore>(std::move(executor), std::move(settings),
                                             std::move(log))) {}

Pool::~Pool() {
  core_->Shutdown();
}

Task<Lease> Pool::Acquire() {
  return core_->Acquire(core_, core_->settings.acquire_timeout);
}

Task<Lease> Pool::Acquire(Duration timeout) {
  return core_->Acquire(core_, timeout);
}

PoolStats Pool::stats() const {
  return core_->Stats();
}

const PoolSettings& Pool::settings() const noexcept {
  return core_->settings;
}

}  // namespace warp::store::postgres
