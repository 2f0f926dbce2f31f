#include "logging/log.hpp"

#include "logging/journal_sink.hpp"

#include <fmt/chrono.h>
#include <spdlog/sinks/base_sink.h>

#include <array>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>

namespace warp::logging {
namespace {

// Record separator between text and fields, unit separator between fields.
constexpr char kRecordSep = '\x1e';
constexpr char kUnitSep = '\x1f';

struct EventInfo {
  std::string_view name;
  std::string_view message_id;
};

constexpr std::array<EventInfo, 29> kEvents{{
    {"general", "b3997f9c9b864790acc823d38e7cedce"},
    {"daemon_started", "0ad4d2776ab942218547de6c38c60bf6"},
    {"daemon_stopping", "af391d191f994137a5fca77fb9055ec5"},
    {"daemon_stopped", "ec9bf13e92594f4e88290d6423c7147e"},
    {"config_reloaded", "5a8448285e214ae49f1bbabf933641ab"},
    {"config_rejected", "802140a3664a4d30a33a79f54a5e53bf"},
    {"cycle_completed", "43483965e88349c1a045cffeb85bfaef"},
    {"cycle_skipped", "eb9aafd20fef425198d9d76d567eaa6f"},
    {"cycle_failed", "b7ea92c1427e443d920ed0d01377ce47"},
    {"cycle_overrun", "295a7986ea4e40debfbe0c6bac994194"},
    {"lease_acquired", "70151fa7b340408fb99cc2a4634fb67e"},
    {"lease_lost", "6685ca4cb6574693bc43fdd2d0e16931"},
    {"lease_released", "c2e003515c1547f69d963849a916e64f"},
    {"dispatch_started", "2cf1f741281745bebe7ee2abdfee432f"},
    {"dispatch_finished", "a487589bb6fd40bf845d5ef32798cd91"},
    {"dispatch_failed", "4648ac24bb98492084c3759e3bfdc7e9"},
    {"work_dead", "08aa6e4e19164ff4b4deac1448bbc15f"},
    {"completion_rejected", "9753b47c3fbf45128ad9e50dbd179d12"},
    {"runner_output", "5eb5ee388cab448fba651d680eff3fa9"},
    {"observation", "da272f1116594b9b9d8681fcb260ed03"},
    {"store_error", "6b93e1f6c39141e18b385ec1ea2e57b1"},
    {"store_unreachable", "61423c084d0d4644b0a525d40b6e481d"},
    {"store_reachable", "21ebc9aa19234ef6a971b773ba3405d7"},
    {"loop_lagging", "a6f55a7df2b4428db1f112e44abf98b5"},
    {"loop_on_time", "9d471c5575d44958adae98b7d0d6ed14"},
    {"observation_opened", "1a583cd1608d4870888b4b242087c9c9"},
    {"observation_escalated", "89e7abf6784d4543b1620f1345e6dd3d"},
    {"observation_resolved", "ae665186fcc440049990f14f98b02c27"},
    {"watchdog_pass_failed", "d538bc7603754e949bede8563ae900cc"},
}};

// Order of the encoded fields after WARP_EVENT.
constexpr std::array<std::string_view, 8> kFieldNames{
    "WARP_CYCLE_ID", "WARP_RUN_ID",           "WARP_AGENT",   "WARP_LEASE_ID", "WARP_FENCING_TOKEN",
    "WARP_WORK_ID",  "WARP_OBSERVATION_KIND", "WARP_SEVERITY"};

void AppendField(std::string& out, std::string_view name, std::string_view value) {
  out += kUnitSep;
  out += name;
  out += '=';
  for (char c : value)
    out += (c == kUnitSep || c == kRecordSep) ? ' ' : c;
}

std::string_view ShortName(std::string_view field) {
  // WARP_CYCLE_ID -> cycle_id (text and JSON output use the short, lower-case form).
  return field.substr(5);
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string Timestamp(const spdlog::details::log_msg& msg) {
  auto since = msg.time.time_since_epoch();
  auto secs = std::chrono::duration_cast<std::chrono::seconds>(since);
  auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since - secs).count();
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03}Z", std::chrono::sys_seconds(secs), millis);
}

/// Renders records as text or JSON lines into a callback.
class RenderSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  using Out = std::function<void(const std::string&)>;
  RenderSink(Format format, Out out) : format_(format), out_(std::move(out)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    auto record = Decode(std::string_view(msg.payload.data(), msg.payload.size()));
    std::string line;
    const auto level = spdlog::level::to_string_view(msg.level);
    if (format_ == Format::kJson) {
      nlohmann::json j;
      j["ts"] = Timestamp(msg);
      j["level"] = std::string_view(level.data(), level.size());
      j["event"] = EventName(record.event.value_or(Event::kGeneral));
      j["message"] = record.text;
      for (const auto& f : record.fields) {
        if (f.name == "WARP_EVENT")
          continue;
        j[Lower(ShortName(f.name))] = f.value;
      }
      line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    } else {
      line = fmt::format("{} {:<5} {}", Timestamp(msg),
                         std::string_view(level.data(), level.size()), record.text);
      bool first = true;
      for (const auto& f : record.fields) {
        if (f.name == "WARP_EVENT")
          continue;
        line += first ? "  [" : " ";
        first = false;
        line += Lower(ShortName(f.name));
        line += '=';
        line += f.value;
      }
      if (!first)
        line += ']';
    }
    line += '\n';
    out_(line);
  }
  void flush_() override {}

 private:
  Format format_;
  Out out_;
};

}  // namespace

std::string_view EventName(Event e) {
  return kEvents.at(static_cast<std::size_t>(e)).name;
}
std::string_view MessageId(Event e) {
  return kEvents.at(static_cast<std::size_t>(e)).message_id;
}

void Logger::Write(spdlog::level::level_enum level, Event event, const Fields& f,
                   std::string text) const {
  for (char& c : text) {
    if (c == kRecordSep || c == kUnitSep)
      c = ' ';
  }
  text += kRecordSep;
  text += "WARP_EVENT=";
  text += EventName(event);
  auto opt = [&](std::string_view name, const std::optional<std::int64_t>& v) {
    if (v)
      AppendField(text, name, std::to_string(*v));
  };
  auto str = [&](std::string_view name, const std::string& v) {
    if (!v.empty())
      AppendField(text, name, v);
  };
  str(kFieldNames[0], f.cycle_id);
  opt(kFieldNames[1], f.run_id);
  str(kFieldNames[2], f.agent);
  opt(kFieldNames[3], f.lease_id);
  opt(kFieldNames[4], f.fencing_token);
  opt(kFieldNames[5], f.work_id);
  str(kFieldNames[6], f.observation_kind);
  str(kFieldNames[7], f.severity);
  logger_->log(level, std::string_view(text));
}

DecodedRecord Decode(std::string_view payload) {
  DecodedRecord r;
  auto sep = payload.find(kRecordSep);
  r.text = payload.substr(0, sep);
  if (sep == std::string_view::npos)
    return r;
  std::string_view rest = payload.substr(sep + 1);
  while (!rest.empty()) {
    auto end = rest.find(kUnitSep);
    std::string_view item = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
    auto eq = item.find('=');
    if (eq == std::string_view::npos)
      continue;
    std::string_view name = item.substr(0, eq);
    std::string_view value = item.substr(eq + 1);
    if (name == "WARP_EVENT") {
      for (std::size_t i = 0; i < kEvents.size(); ++i) {
        if (kEvents[i].name == value)
          r.event = static_cast<Event>(i);
      }
      r.fields.push_back({"WARP_EVENT", std::string(value)});
      continue;
    }
    for (auto known : kFieldNames) {
      if (known == name)
        r.fields.push_back({known, std::string(value)});
    }
  }
  return r;
}

Logger MakeStderrLogger(Format format, spdlog::level::level_enum level) {
  std::shared_ptr<spdlog::sinks::sink> sink;
  if (format == Format::kJournal) {
    sink = MakeJournalSink("warpd");
  } else {
    sink = std::make_shared<RenderSink>(
        format, [](const std::string& line) { std::fwrite(line.data(), 1, line.size(), stderr); });
  }
  auto logger = std::make_shared<spdlog::logger>("warpd", std::move(sink));
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);
  return Logger(std::move(logger));
}

Logger MakeCaptureLogger(std::shared_ptr<std::vector<std::string>> lines, Format format) {
  auto sink = std::make_shared<RenderSink>(
      format, [lines](const std::string& line) { lines->push_back(line); });
  auto logger = std::make_shared<spdlog::logger>("capture", std::move(sink));
  logger->set_level(spdlog::level::trace);
  return Logger(std::move(logger));
}

std::optional<spdlog::level::level_enum> ParseLevel(std::string_view name) {
  static constexpr std::array<std::pair<std::string_view, spdlog::level::level_enum>, 6> kLevels{{
      {"trace", spdlog::level::trace},
      {"debug", spdlog::level::debug},
      {"info", spdlog::level::info},
      {"warn", spdlog::level::warn},
      {"error", spdlog::level::err},
      {"critical", spdlog::level::critical},
  }};
  for (const auto& [n, l] : kLevels) {
    if (n == name)
      return l;
  }
  return std::nullopt;
}

}  // namespace warp::logging
