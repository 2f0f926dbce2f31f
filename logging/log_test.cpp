#include "logging/log.hpp"

#include <gtest/gtest.h>

#include <spdlog/async.h>
#include <spdlog/sinks/base_sink.h>

#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

namespace warp::logging {
namespace {

TEST(Logger, TextRecordsShowTheMessageAndTheFieldsThatApply) {
  auto lines = std::make_shared<std::vector<std::string>>();
  auto log = MakeCaptureLogger(lines, Format::kText);
  log.Info(Event::kDispatchStarted, {.agent = "erp-sales", .lease_id = 7, .work_id = 42},
           "dispatching work {}", 42);
  ASSERT_EQ(lines->size(), 1u);
  const auto& line = lines->front();
  EXPECT_NE(line.find("info  dispatching work 42  [agent=erp-sales lease_id=7 work_id=42]"),
            std::string::npos)
      << line;
  EXPECT_EQ(line.find("cycle_id"), std::string::npos) << "empty fields are omitted";
}

TEST(Logger, JsonRecordsAreOneObjectPerLineWithEventAndFields) {
  auto lines = std::make_shared<std::vector<std::string>>();
  auto log = MakeCaptureLogger(lines, Format::kJson);
  log.Warn(Event::kLeaseLost, {.cycle_id = "default/10000ms/5", .fencing_token = 9},
           "lease {} lost", 3);
  ASSERT_EQ(lines->size(), 1u);
  auto j = nlohmann::json::parse(lines->front());
  EXPECT_EQ(j["level"], "warning");
  EXPECT_EQ(j["event"], "lease_lost");
  EXPECT_EQ(j["message"], "lease 3 lost");
  EXPECT_EQ(j["cycle_id"], "default/10000ms/5");
  EXPECT_EQ(j["fencing_token"], "9");
  EXPECT_FALSE(j.contains("agent"));
  EXPECT_EQ(lines->front().back(), '\n');
  EXPECT_EQ(lines->front().find('\n'), lines->front().size() - 1);
}

TEST(Logger, FieldsSurviveTheRoundTripThroughTheRecordPayload) {
  auto lines = std::make_shared<std::vector<std::string>>();
  auto log = MakeCaptureLogger(lines, Format::kText);
  // Decode what Logger writes, as the journald sink does.
  log.Info(Event::kObservation, {.observation_kind = "cycle_missed", .severity = "critical"},
           "text with a \x1e separator inside");
  EXPECT_NE(lines->front().find("text with a   separator inside"), std::string::npos)
      << "separators in the text cannot forge fields";
  EXPECT_NE(lines->front().find("observation_kind=cycle_missed severity=critical"),
            std::string::npos);
}

/// Keeps each record's raw payload, as a sink on the far side of a queue sees it.
class PayloadSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::vector<std::string> payloads;

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    payloads.emplace_back(msg.payload.data(), msg.payload.size());
  }
  void flush_() override {}
};

TEST(Logger, FieldsTravelWithEachRecordThroughAnAsynchronousLogger) {
  // The fields are part of the record, not thread-local or logger state: records formatted on
  // two threads and written later by spdlog's worker thread keep their own fields.
  auto sink = std::make_shared<PayloadSink>();
  {
    auto pool = std::make_shared<spdlog::details::thread_pool>(64, 1);
    auto async = std::make_shared<spdlog::async_logger>("async", sink, pool,
                                                        spdlog::async_overflow_policy::block);
    Logger log(async);
    auto write = [&log](std::int64_t first) {
      for (std::int64_t id = first; id < first + 500; ++id) {
        log.Info(Event::kDispatchStarted, {.agent = "agent-" + std::to_string(id), .work_id = id},
                 "work {}", id);
      }
    };
    std::thread other(write, 1000);
    write(0);
    other.join();
    log.Flush();
  }  // the pool's worker drains the queue before it ends
  ASSERT_EQ(sink->payloads.size(), 1000u);
  std::set<std::int64_t> seen;
  for (const auto& payload : sink->payloads) {
    const auto record = Decode(payload);
    ASSERT_EQ(record.event, Event::kDispatchStarted);
    const std::string text(record.text);
    const std::int64_t id = std::stoll(text.substr(5));
    std::string agent, work;
    for (const auto& f : record.fields) {
      if (f.name == "WARP_AGENT")
        agent = f.value;
      if (f.name == "WARP_WORK_ID")
        work = f.value;
    }
    EXPECT_EQ(agent, "agent-" + std::to_string(id)) << payload;
    EXPECT_EQ(work, std::to_string(id)) << payload;
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 1000u);
}

TEST(Decode, SplitsTextEventAndFields) {
  std::string payload = "hello\x1eWARP_EVENT=cycle_completed\x1fWARP_CYCLE_ID=c1\x1fWARP_RUN_ID=4";
  auto r = Decode(payload);
  EXPECT_EQ(r.text, "hello");
  ASSERT_TRUE(r.event.has_value());
  EXPECT_EQ(*r.event, Event::kCycleCompleted);
  ASSERT_EQ(r.fields.size(), 3u);
  EXPECT_EQ(r.fields[1].name, "WARP_CYCLE_ID");
  EXPECT_EQ(r.fields[1].value, "c1");
}

TEST(Decode, APlainPayloadHasNoFields) {
  auto r = Decode("just text");
  EXPECT_EQ(r.text, "just text");
  EXPECT_FALSE(r.event.has_value());
  EXPECT_TRUE(r.fields.empty());
}

TEST(MessageId, EveryEventHasADistinct128BitId) {
  std::set<std::string_view> ids;
  for (int e = 0; e <= static_cast<int>(Event::kLoopOnTime); ++e) {
    auto id = MessageId(static_cast<Event>(e));
    EXPECT_EQ(id.size(), 32u);
    EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string_view::npos);
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), static_cast<std::size_t>(Event::kLoopOnTime) + 1);
}

}  // namespace
}  // namespace warp::logging
