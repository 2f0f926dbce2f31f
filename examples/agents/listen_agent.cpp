// A minimal LISTEN agent for warpd's notify runner (libpq and nlohmann_json, both already
// dependencies of the project; built as build/examples/listen_agent).
//
//   listen_agent DSN [--channel warp_dispatch] [--agent SLUG] [--work-ms 500] [--max N]
//                    [--quiet 1]
//
// It LISTENs on the channel; for each notice (of --agent, when given) it reads kind and payload
// from warp.work_items when the notice was truncated (a notice over PostgreSQL's 8000-byte
// NOTIFY limit carries only ids), "works" for --work-ms, and completes through the fencing
// check: SELECT warp.complete_work(lease_id, fencing_token, outcome, detail). The verdict is
// printed; "overtaken", "released" or "unknown_lease" mean this agent was a stale holder and its
// result was refused. A payload with "fail": true completes as failed. Exits after --max
// notices (default: never).
#include <libpq-fe.h>
#include <poll.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace {

using Conn = std::unique_ptr<PGconn, decltype(&PQfinish)>;
using Result = std::unique_ptr<PGresult, decltype(&PQclear)>;

/// One parameterized statement; the first value of its first row, or "" (errors exit).
std::string Query(PGconn* conn, const char* sql, std::initializer_list<std::string> params) {
  std::vector<const char*> values;
  for (const auto& p : params)
    values.push_back(p.c_str());
  Result r(PQexecParams(conn, sql, static_cast<int>(values.size()), nullptr, values.data(), nullptr,
                        nullptr, 0),
           &PQclear);
  const auto status = PQresultStatus(r.get());
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    std::fprintf(stderr, "listen_agent: %s", PQresultErrorMessage(r.get()));
    std::exit(1);
  }
  if (PQntuples(r.get()) == 0 || PQnfields(r.get()) == 0)
    return "";
  return PQgetvalue(r.get(), 0, 0);
}

bool quiet = false;  // --quiet 1: print refusals only (benchmarks)

void Handle(PGconn* conn, const nlohmann::json& notice, int work_ms) {
  const auto work_id = notice.at("work_id").get<long long>();
  const auto lease = notice.at("lease_id").get<long long>();
  const auto token = notice.at("fencing_token").get<long long>();
  std::string kind;
  nlohmann::json payload;
  if (notice.value("truncated", false)) {
    // The fallback: the notice carried only ids; the rest is in the work item.
    kind = Query(conn, "SELECT kind FROM warp.work_items WHERE work_item_id = $1::bigint",
                 {std::to_string(work_id)});
    payload = nlohmann::json::parse(
        Query(conn, "SELECT payload::text FROM warp.work_items WHERE work_item_id = $1::bigint",
              {std::to_string(work_id)}));
  } else {
    kind = notice.at("kind").get<std::string>();
    payload = notice.at("payload");
  }
  if (!quiet) {
    std::printf("work %lld (%s) for %s: lease %lld token %lld until %s payload %.200s\n", work_id,
                kind.c_str(), notice.at("agent").get<std::string>().c_str(), lease, token,
                notice.at("lease_expires_at").get<std::string>().c_str(), payload.dump().c_str());
    std::fflush(stdout);
  }
  if (work_ms > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(work_ms));
  const bool fail = payload.is_object() && payload.value("fail", false);
  const std::string verdict =
      Query(conn, "SELECT warp.complete_work($1::bigint, $2::bigint, $3, $4::jsonb)",
            {std::to_string(lease), std::to_string(token), fail ? "failed" : "done",
             R"({"by":"listen_agent"})"});
  if (!quiet || verdict.rfind("accepted", 0) != 0) {
    std::printf("work %lld lease %lld token %lld: %s -> %s\n", work_id, lease, token,
                fail ? "failed" : "done", verdict.c_str());
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0) {
    std::fprintf(stderr,
                 "usage: listen_agent DSN [--channel C] [--agent SLUG] [--work-ms N] [--max N] "
                 "[--quiet 1]\n");
    return 64;
  }
  std::string channel = "warp_dispatch";
  std::string agent;
  int work_ms = 500;
  long max = -1;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--channel")
      channel = argv[i + 1];
    else if (key == "--agent")
      agent = argv[i + 1];
    else if (key == "--work-ms")
      work_ms = std::atoi(argv[i + 1]);
    else if (key == "--max")
      max = std::atol(argv[i + 1]);
    else if (key == "--quiet")
      quiet = std::strcmp(argv[i + 1], "0") != 0;
    else {
      std::fprintf(stderr, "listen_agent: unknown option %s\n", key.c_str());
      return 64;
    }
  }
  Conn conn(PQconnectdb(argv[1]), &PQfinish);
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    std::fprintf(stderr, "listen_agent: %s", PQerrorMessage(conn.get()));
    return 69;
  }
  // The channel is an identifier: quoted by libpq, never pasted into SQL as it is.
  std::unique_ptr<char, decltype(&PQfreemem)> quoted(
      PQescapeIdentifier(conn.get(), channel.c_str(), channel.size()), &PQfreemem);
  Query(conn.get(), ("LISTEN " + std::string(quoted.get())).c_str(), {});
  std::printf("listen_agent: listening on %s\n", channel.c_str());
  std::fflush(stdout);
  long handled = 0;
  while (max < 0 || handled < max) {
    pollfd p{PQsocket(conn.get()), POLLIN, 0};
    if (::poll(&p, 1, 1000) < 0)
      continue;
    if (PQconsumeInput(conn.get()) == 0) {
      std::fprintf(stderr, "listen_agent: %s", PQerrorMessage(conn.get()));
      return 69;
    }
    while (PGnotify* n = PQnotifies(conn.get())) {
      const auto notice = nlohmann::json::parse(n->extra, nullptr, false);
      PQfreemem(n);
      if (notice.is_discarded() || !notice.is_object())
        continue;
      if (!agent.empty() && notice.value("agent", "") != agent)
        continue;
      Handle(conn.get(), notice, work_ms);
      ++handled;
    }
  }
  return 0;
}
