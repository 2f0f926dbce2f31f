// A spdlog sink that sends each record to journald with its structured fields (SPEC section 8):
// MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, MESSAGE_ID, WARP_EVENT and the WARP_* fields.
#pragma once

#include <spdlog/sinks/sink.h>

#include <memory>
#include <string>

namespace warp::logging {

std::shared_ptr<spdlog::sinks::sink> MakeJournalSink(std::string syslog_identifier);

/// True when stderr is connected to the journal (JOURNAL_STREAM names stderr's device:inode).
bool StderrIsJournal();

}  // namespace warp::logging
