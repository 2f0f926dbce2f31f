#include "warpctl/impl/command_context.hpp"

#include <pwd.h>
#include <sysexits.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <regex>

#include "config/config.hpp"
#include "warpctl/connect.hpp"

namespace warp::warpctl::impl {

void BadData(const std::string& field, const std::string& message) {
  throw Failure(EX_DATAERR, field + ": " + message);
}

void Refused(const std::string& message) {
  throw Failure(1, message);
}

const config::Settings& Context::settings() {
  if (!settings_) {
    const std::filesystem::path path = options_.config_path.value_or(kDefaultConfigPath);
    try {
      settings_ = config::Load(path);
    } catch (const config::ConfigError& e) {
      throw Failure(EX_CONFIG, e.what());
    }
  }
  return *settings_;
}

Db& Context::db() {
  if (db_)
    return *db_;
  ConnectOptions connect{.dsn = options_.dsn.value_or(""),
                         .password = std::nullopt,
                         .connect_timeout = std::chrono::seconds(5)};
  try {
    if (has_config()) {
      const auto& s = settings();
      const std::filesystem::path path = options_.config_path.value_or(kDefaultConfigPath);
      if (!options_.dsn && s.store.backend != config::StoreBackend::kPostgres)
        throw Failure(EX_CONFIG, path.string() +
                                     ": store.backend is \"memory\": warpctl needs the "
                                     "PostgreSQL store (give --dsn)");
      connect = OptionsFromStore(s.store, path.parent_path());
      if (options_.dsn)
        connect.dsn = *options_.dsn;
    } else {
      connect.password = ResolvePassword({}, {});
    }
  } catch (const PasswordFileError& e) {
    throw Failure(EX_CONFIG, e.what());
  }
  try {
    db_ = std::make_unique<Db>(Connect(connect));
  } catch (const DatabaseUnavailable& e) {
    throw Failure(EX_UNAVAILABLE, e.what());
  }
  return *db_;
}

const std::string& Context::actor() {
  if (actor_.empty()) {
    if (const passwd* pw = ::getpwuid(::geteuid()); pw && pw->pw_name && *pw->pw_name)
      actor_ = pw->pw_name;
    else if (const char* user = std::getenv("USER"); user && *user)
      actor_ = user;
    else
      actor_ = "uid:" + std::to_string(::geteuid());
  }
  return actor_;
}

int RunCommand(const Options& options, const std::string& name, std::ostream& out,
               std::ostream& err, const std::function<int(Context&, Json&)>& body) {
  Json doc = {{"command", name}};
  int code = EX_OK;
  std::string message;
  try {
    Context ctx(options);
    code = body(ctx, doc);
    if (options.json) {
      Json done = {{"command", name}, {"ok", code == EX_OK}, {"exit_code", code}};
      for (auto& [key, value] : doc.items()) {
        if (key != "command")
          done[key] = value;
      }
      out << done.dump(2) << "\n";
    }
    return code;
  } catch (const Failure& e) {
    code = e.code();
    message = e.what();
  } catch (const DbError& e) {
    const std::string state = e.sqlstate();
    if (e.connection_lost()) {
      code = EX_UNAVAILABLE;
      message = "database unavailable: " + std::string(e.what());
    } else if (state.starts_with("22") || state.starts_with("23")) {
      code = EX_DATAERR;
      message = std::string(e.what()) +
                (e.constraint().empty() ? "" : " (constraint " + e.constraint() + ")");
    } else if (state == "P0001") {
      code = 1;
      message = e.what();
    } else {
      code = EX_SOFTWARE;
      message = "database error: " + std::string(e.what()) +
                (state.empty() ? "" : " (SQLSTATE " + state + ")");
    }
  } catch (const std::exception& e) {
    code = EX_SOFTWARE;
    message = std::string("internal error: ") + e.what();
  }
  err << "warpctl: " << message << "\n";
  if (options.json) {
    Json failed = {{"command", name}, {"ok", false}, {"exit_code", code}, {"error", message}};
    out << failed.dump(2) << "\n";
  }
  return code;
}

void Audit(Context& ctx, const std::string& event_type, const std::string& subject,
           const Json& detail) {
  ctx.db().Query(
      "INSERT INTO warp.audit_events (at, actor, event_type, subject, detail) "
      "VALUES (warp.now(), $1, $2, $3, $4::jsonb)",
      {ctx.actor(), event_type, subject, detail.dump()});
}

Table::Table(std::vector<std::string> headers) {
  rows_.push_back(std::move(headers));
}

void Table::Add(std::vector<std::string> row) {
  row.resize(rows_.front().size());
  rows_.push_back(std::move(row));
}

void Table::Print(std::ostream& out, const std::string& if_empty) const {
  if (empty()) {
    out << if_empty << "\n";
    return;
  }
  std::vector<std::size_t> width(rows_.front().size(), 0);
  for (const auto& row : rows_) {
    for (std::size_t i = 0; i < row.size(); ++i)
      width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows_) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size())
        line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ')
      line.pop_back();
    out << line << "\n";
  }
}

std::string Rfc3339(std::int64_t epoch_us, bool micros) {
  using namespace std::chrono;
  const sys_time<microseconds> at{microseconds(epoch_us)};
  const auto seconds = floor<std::chrono::seconds>(at);
  const auto days = floor<std::chrono::days>(seconds);
  const year_month_day ymd{days};
  const hh_mm_ss hms{seconds - days};
  std::string text = fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", int(ymd.year()),
                                 unsigned(ymd.month()), unsigned(ymd.day()), hms.hours().count(),
                                 hms.minutes().count(), hms.seconds().count());
  if (micros)
    text += fmt::format(".{:06}", (at - seconds).count());
  return text + "Z";
}

Json TimeJson(const std::optional<std::int64_t>& epoch_us) {
  return epoch_us ? Json(Rfc3339(*epoch_us, true)) : Json(nullptr);
}

std::string TimeText(const std::optional<std::int64_t>& epoch_us) {
  return epoch_us ? Rfc3339(*epoch_us) : "-";
}

void CheckSlug(const std::string& field, const std::string& slug) {
  static const std::regex kSlug("[a-z0-9][a-z0-9-]{0,62}");
  if (!std::regex_match(slug, kSlug))
    BadData(field, "'" + slug + "' is not a valid agent slug (^[a-z0-9][a-z0-9-]{0,62}$)");
}

Json ParseObject(const std::string& field, const std::string& text, std::size_t max_bytes) {
  if (text.size() > max_bytes)
    BadData(field, fmt::format("{} bytes, more than the limit of {}", text.size(), max_bytes));
  Json value;
  try {
    value = Json::parse(text);
  } catch (const Json::parse_error&) {
    BadData(field, "not valid JSON");
  }
  if (!value.is_object())
    BadData(field, std::string("must be a JSON object, not ") + value.type_name());
  return value;
}

std::int64_t ParseTime(Context& ctx, const std::string& field, const std::string& text) {
  static const std::regex kRfc3339(
      R"(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2}))");
  if (!std::regex_match(text, kRfc3339))
    BadData(field, "'" + text + "' is not an RFC 3339 time (e.g. 2024-01-15T09:00:00Z)");
  try {
    return ctx.db().Query("SELECT warp.epoch_us($1::timestamptz) AS us", {text}).Int(0, "us");
  } catch (const DbError& e) {
    if (e.connection_lost() || !e.sqlstate().starts_with("22"))
      throw;
    BadData(field, "'" + text + "' is not a valid time: " + e.what());
  }
}

void CheckLimit(int limit) {
  if (limit < 1 || limit > 10000)
    BadData("limit", fmt::format("{} is outside 1..10000", limit));
}

void PageEnd(Context& ctx, Json& doc, std::ostream& out, bool more, std::int64_t last_id) {
  doc["next_before"] = more ? Json(last_id) : Json(nullptr);
  if (more && !ctx.json())
    out << fmt::format("(more: warpctl ... --before {})\n", last_id);
}

}  // namespace warp::warpctl::impl
