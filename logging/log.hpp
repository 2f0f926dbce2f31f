// Structured logging for warpd: every record carries an event type and the WARP_* fields of
// SPEC section 8, whatever sink renders it (text on stderr, JSON lines, later journald).
//
// The fields travel inside the spdlog record's payload (after a record separator) so they
// survive asynchronous logging and any spdlog sink; the sinks of this library split them off
// again. Sinks that do not know the encoding print it raw, which stays readable.
#pragma once

#include <fmt/format.h>
#include <spdlog/logger.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace warp::logging {

/// Event types. Each has a stable name (WARP_EVENT) and a stable 128-bit MESSAGE_ID.
enum class Event {
  kGeneral,
  kDaemonStarted,
  kDaemonStopping,
  kDaemonStopped,
  kConfigReloaded,
  kConfigRejected,
  kCycleCompleted,
  kCycleSkipped,
  kCycleFailed,
  kCycleOverrun,
  kLeaseAcquired,
  kLeaseLost,
  kLeaseReleased,
  kDispatchStarted,
  kDispatchFinished,
  kDispatchFailed,
  kWorkDead,
  kCompletionRejected,
  kRunnerOutput,
  kObservation,
  kStoreError,
  kStoreUnreachable,  ///< the store stopped answering: the start of an outage (once)
  kStoreReachable,    ///< the store answers again: the end of an outage (once)
  kLoopLagging,  ///< event-loop timers fire past the bound: systemd watchdog pings withheld (once)
  kLoopOnTime,   ///< event-loop timers are on time again: pings resume (once)
  kObservationOpened,     ///< a watchdog observation appeared
  kObservationEscalated,  ///< an open watchdog observation became more severe
  kObservationResolved,   ///< a watchdog observation's condition cleared
  kWatchdogPassFailed,    ///< a watchdog pass failed (once per run of failures), or recovered
};

std::string_view EventName(Event e);
/// 32 lower-case hex digits (journald MESSAGE_ID).
std::string_view MessageId(Event e);

/// The structured fields a record may carry; empty ones are omitted.
struct Fields {
  std::string cycle_id;
  std::optional<std::int64_t> run_id;
  std::string agent;
  std::optional<std::int64_t> lease_id;
  std::optional<std::int64_t> fencing_token;
  std::optional<std::int64_t> work_id;
  std::string observation_kind;
  std::string severity;
};

/// One decoded field: journald name (WARP_AGENT...) and value.
struct Field {
  std::string_view name;
  std::string value;
};

/// Splits a payload written by Logger into its text and its fields (in a fixed order, starting
/// with WARP_EVENT). A payload without fields yields the text and no fields.
struct DecodedRecord {
  std::string_view text;
  std::optional<Event> event;
  std::vector<Field> fields;
};
DecodedRecord Decode(std::string_view payload);

enum class Format { kText, kJson, kJournal };

/// A cheap, copyable handle over a spdlog logger. Not a singleton: components receive one.
class Logger {
 public:
  Logger() = default;
  explicit Logger(std::shared_ptr<spdlog::logger> logger) : logger_(std::move(logger)) {}

  template <typename... Args>
  void Log(spdlog::level::level_enum level, Event event, const Fields& fields,
           fmt::format_string<Args...> format, Args&&... args) const {
    if (!logger_ || !logger_->should_log(level))
      return;
    Write(level, event, fields, fmt::format(format, std::forward<Args>(args)...));
  }
  template <typename... Args>
  void Info(Event event, const Fields& fields, fmt::format_string<Args...> format,
            Args&&... args) const {
    Log(spdlog::level::info, event, fields, format, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void Warn(Event event, const Fields& fields, fmt::format_string<Args...> format,
            Args&&... args) const {
    Log(spdlog::level::warn, event, fields, format, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void Error(Event event, const Fields& fields, fmt::format_string<Args...> format,
             Args&&... args) const {
    Log(spdlog::level::err, event, fields, format, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void Debug(Event event, const Fields& fields, fmt::format_string<Args...> format,
             Args&&... args) const {
    Log(spdlog::level::debug, event, fields, format, std::forward<Args>(args)...);
  }

  spdlog::logger* raw() const { return logger_.get(); }
  void Flush() const {
    if (logger_)
      logger_->flush();
  }

 private:
  void Write(spdlog::level::level_enum level, Event event, const Fields& fields,
             std::string text) const;
  std::shared_ptr<spdlog::logger> logger_;
};

/// A logger writing to stderr in `format`, or straight to journald for kJournal.
Logger MakeStderrLogger(Format format, spdlog::level::level_enum level);
/// A logger that appends rendered lines to `lines` (tests).
Logger MakeCaptureLogger(std::shared_ptr<std::vector<std::string>> lines, Format format);

std::optional<spdlog::level::level_enum> ParseLevel(std::string_view name);

}  // namespace warp::logging
