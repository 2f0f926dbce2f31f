#include "logging/journal_sink.hpp"

#include <spdlog/sinks/base_sink.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>

#include <cstdlib>
#include <mutex>
#include <string_view>
#include <vector>

#include "logging/log.hpp"

namespace warp::logging {
namespace {

int SyslogPriority(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug:
      return 7;
    case spdlog::level::info:
      return 6;
    case spdlog::level::warn:
      return 4;
    case spdlog::level::err:
      return 3;
    case spdlog::level::critical:
      return 2;
    default:
      return 6;
  }
}

class JournalSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit JournalSink(std::string identifier) : identifier_(std::move(identifier)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    auto record = Decode(std::string_view(msg.payload.data(), msg.payload.size()));
    std::vector<std::string> items;
    items.reserve(record.fields.size() + 4);
    items.push_back("MESSAGE=" + std::string(record.text));
    items.push_back("PRIORITY=" + std::to_string(SyslogPriority(msg.level)));
    items.push_back("SYSLOG_IDENTIFIER=" + identifier_);
    if (record.event)
      items.push_back("MESSAGE_ID=" + std::string(MessageId(*record.event)));
    for (const auto& f : record.fields) {
      items.push_back(std::string(f.name) + "=" + f.value);
    }
    std::vector<iovec> iov(items.size());
    for (std::size_t i = 0; i < items.size(); ++i) {
      iov[i].iov_base = items[i].data();
      iov[i].iov_len = items[i].size();
    }
    // A journal that cannot take the record must not take the daemon down: drop it.
    (void)sd_journal_sendv(iov.data(), static_cast<int>(iov.size()));
  }
  void flush_() override {}

 private:
  std::string identifier_;
};

}  // namespace

std::shared_ptr<spdlog::sinks::sink> MakeJournalSink(std::string syslog_identifier) {
  return std::make_shared<JournalSink>(std::move(syslog_identifier));
}

bool StderrIsJournal() {
  const char* env = std::getenv("JOURNAL_STREAM");
  if (env == nullptr)
    return false;
  struct stat st {};
  if (fstat(2, &st) != 0)
    return false;
  unsigned long long dev = 0;
  unsigned long long ino = 0;
  if (std::sscanf(env, "%llu:%llu", &dev, &ino) != 2)
    return false;
  return dev == static_cast<unsigned long long>(st.st_dev) &&
         ino == static_cast<unsigned long long>(st.st_ino);
}

}  // namespace warp::logging
