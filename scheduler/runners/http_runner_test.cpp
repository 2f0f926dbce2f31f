// The http runner against a real HTTP server on 127.0.0.1 (a random port; tests/support/
// http_test_server.hpp) that misbehaves on purpose: closes mid-response, answers slowly, answers
// too much, closes an idle keep-alive connection.
#include "scheduler/runners/http_runner.hpp"

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/http_test_server.hpp"

namespace warp::scheduler {
namespace {

using namespace std::chrono_literals;
using test::Received;
using test::Reply;
using test::Respond;
using test::TestServer;
using Status = DispatchResult::Status;
using testing::HasSubstr;

config::RunnerSettings Settings(std::string url, config::Duration timeout = 5s) {
  config::RunnerSettings s;
  s.name = "hook";
  s.transport = config::Transport::kHttp;
  s.url = std::move(url);
  s.timeout = timeout;
  return s;
}

DispatchRequest Request(store::FencingToken token = 42) {
  DispatchRequest r;
  r.agent_slug = "erp-sales";
  r.work_id = 7;
  r.kind = "sync";
  r.payload_json = R"({"full":true,"n":[1,2]})";
  r.lease_id = 17;
  r.fencing_token = token;
  r.cycle_id = "default:10s:123";
  r.lease_expires_at = store::TimePoint(std::chrono::milliseconds(1'764'115'200'123));
  return r;
}

/// Runs one dispatch to its end. `on_handed_off` runs when the agent accepts (with the
/// execution, e.g. to stop it).
struct Run {
  std::optional<DispatchResult> result;
  int handed_off = 0;
};

Run Dispatch(boost::asio::io_context& io, Runner& runner, DispatchRequest request,
             std::function<void(Execution&)> on_handed_off = {}, std::chrono::seconds limit = 10s) {
  Run run;
  std::shared_ptr<Execution> execution;
  request.on_handed_off = [&] {
    ++run.handed_off;
    if (on_handed_off)
      on_handed_off(*execution);
  };
  execution = runner.Start(std::move(request), [&](DispatchResult r) {
    EXPECT_FALSE(run.result) << "on_done ran twice";
    run.result = std::move(r);
  });
  const auto deadline = std::chrono::steady_clock::now() + limit;
  io.restart();
  while (!run.result && std::chrono::steady_clock::now() < deadline) {
    io.run_one_for(20ms);
    io.restart();
  }
  EXPECT_TRUE(run.result) << "no result within the limit";
  return run;
}

class HttpRunnerTest : public testing::Test {
 protected:
  boost::asio::io_context io_;
};

TEST_F(HttpRunnerTest, PostsTheDocumentWithTheFencingTokenHeaderAndTheBearerToken) {
  TestServer server([](const Received&) { return Respond(200, "OK", R"({"outcome":"done"})"); });
  const auto token_file =
      std::filesystem::temp_directory_path() / ("warp-http-token-" + std::to_string(::getpid()));
  std::ofstream(token_file) << "s3cret-token\n";
  auto settings = Settings(server.url("/hooks/dispatch?v=1"));
  settings.headers = {{"X-Tenant", "sales"}};
  settings.bearer_token_file = token_file;
  HttpRunner runner(settings, io_.get_executor(), logging::Logger());
  std::filesystem::remove(token_file);

  const auto run = Dispatch(io_, runner, Request());
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kDone) << run.result->detail;
  EXPECT_EQ(run.handed_off, 0);

  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 1u);
  const Received& r = requests[0];
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.target, "/hooks/dispatch?v=1");
  EXPECT_EQ(r.headers.at("warp-fencing-token"), "42");
  EXPECT_EQ(r.headers.at("authorization"), "Bearer s3cret-token");
  EXPECT_EQ(r.headers.at("content-type"), "application/json");
  EXPECT_EQ(r.headers.at("x-tenant"), "sales");
  const auto doc = nlohmann::json::parse(r.body);
  EXPECT_EQ(doc["work_id"], 7);
  EXPECT_EQ(doc["kind"], "sync");
  EXPECT_EQ(doc["payload"], nlohmann::json::parse(R"({"full":true,"n":[1,2]})"));
  EXPECT_EQ(doc["agent"], "erp-sales");
  EXPECT_EQ(doc["lease_id"], 17);
  EXPECT_EQ(doc["fencing_token"], 42);
  EXPECT_EQ(doc["cycle_id"], "default:10s:123");
  EXPECT_EQ(doc["lease_expires_at"], "2025-11-26T00:00:00.123Z");
  EXPECT_THAT(doc["complete"]["sql"].get<std::string>(),
              HasSubstr("warp.complete_work(17, 42, 'done'"));
  EXPECT_THAT(doc["complete"]["warpctl"].get<std::string>(),
              HasSubstr("warpctl complete 17 42 --outcome done"));
}

TEST_F(HttpRunnerTest, AnUnreadableBearerTokenFileFailsTheRunnerWithoutItsContent) {
  auto settings = Settings("http://127.0.0.1:1/");
  settings.bearer_token_file = "/nonexistent/warp-token";
  try {
    MakeRunner(settings, io_.get_executor(), logging::Logger());
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("runner 'hook'"));
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/warp-token"));
  }
}

TEST_F(HttpRunnerTest, OutcomeFailedInTheBodyFailsWithRetryAndTheAgentsDetail) {
  TestServer server([](const Received&) {
    return Respond(200, "OK", R"({"outcome":"failed","detail":"erp down"})");
  });
  HttpRunner runner(Settings(server.url()), io_.get_executor(), logging::Logger());
  const auto run = Dispatch(io_, runner, Request());
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kFailed);
  EXPECT_TRUE(run.result->retry);
  EXPECT_EQ(run.result->detail, "erp down");
}

TEST_F(HttpRunnerTest, A2xxWithoutOutcomeHandsTheWorkOffAndStaysOpenUntilStopped) {
  TestServer server([](const Received&) { return Respond(202, "Accepted", ""); });
  HttpRunner runner(Settings(server.url()), io_.get_executor(), logging::Logger());
  const auto started = std::chrono::steady_clock::now();
  // The lease ends (the agent completed): the scheduler stops the execution. Until then it
  // stays open, reporting nothing.
  boost::asio::steady_timer lease_ends(io_);
  const auto run = Dispatch(io_, runner, Request(), [&](Execution& execution) {
    lease_ends.expires_after(200ms);
    lease_ends.async_wait([&execution](const boost::system::error_code& ec) {
      if (!ec)
        execution.Stop("renewal refused: the lease expired or was released");
    });
  });
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.handed_off, 1);
  EXPECT_EQ(run.result->status, Status::kStopped);
  EXPECT_TRUE(run.result->handed_off);
  EXPECT_GE(std::chrono::steady_clock::now() - started, 200ms);
}

TEST_F(HttpRunnerTest, AnAcceptedDispatchNotCompletedWithinTheTimeoutTimesOutWithRetry) {
  TestServer server([](const Received&) { return Respond(200, "OK", R"({"queued":true})"); });
  HttpRunner runner(Settings(server.url(), 300ms), io_.get_executor(), logging::Logger());
  const auto run = Dispatch(io_, runner, Request());
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.handed_off, 1);
  EXPECT_EQ(run.result->status, Status::kTimedOut);
  EXPECT_TRUE(run.result->handed_off);
  EXPECT_TRUE(run.result->retry);
  EXPECT_THAT(run.result->detail, HasSubstr("accepted by the agent but not completed"));
}

TEST_F(HttpRunnerTest, A4xxFailsWithoutRetryAndNamesTheStatus) {
  TestServer server([](const Received&) { return Respond(404, "Not Found", "{}"); });
  HttpRunner runner(Settings(server.url()), io_.get_executor(), logging::Logger());
  const auto run = Dispatch(io_, runner, Request());
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kFailed);
  EXPECT_FALSE(run.result->retry);
  EXPECT_THAT(run.result->detail, HasSubstr("HTTP 404"));
}

TEST_F(HttpRunnerTest, A5xxFailsWithRetry) {
  TestServer server([](const Received&) { return Respond(503, "Service Unavailable", ""); });
  HttpRunner runner(Settings(server.url()), io_.get_executor(), logging::Logger());
  const auto run = Dispatch(io_, runner, Request());
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kFailed);
  EXPECT_TRUE(run.result->retry);
  EXPECT_THAT(run.result->detail, HasSubstr("HTTP 503"));
}

TEST_F(HttpRunnerTest, ARedirectIsNotFollowedAndFailsWithoutRetry) {
  TestServer server([](const Received&) {
    return Respond(307, "Temporary Redirect", "", "Location: http://127.0.0.1:1/elsewhere\r\n");
  });
  HttpRunner runner(Settings(server.url()), io_.get_executor(), logging::Logger());
  const auto run = Dispatch(io_, runner, Request());
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kFailed);
  EXPECT_FALSE(run.result->retry);
  EXPECT_THAT(run.result->detail, HasSubstr("redirects are not followed"));
  EXPECT_EQ(server.requests().size(), 1u);
}

TEST_F(HttpRunnerTest, ASlowServerTimesOutWithRetry) {
  TestServer server([](const Received&) {
    Reply r = Respond(200, "OK", R"({"outcome":"done"})");
    r.delay = 2s;
    return r;
  });
  HttpRunner runner(Settings(server.url(), 200ms), io_.get_executor(), logging::Logger());
  const auto started = std::chrono::steady_clock::now();
  const auto run = Dispatch(io_, runner, Request());
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kTimedOut);
  EXPECT_TRUE(run.result->retry);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 1500ms);
}

TEST_F(HttpRunnerTest, NoListenerIsATransportErrorWithRetry) {
  std::string url;
  {
    TestServer gone([](const Received&) { return Reply{}; });
    url = gone.url();
  }  // the port is closed now
  HttpRunner runner(Settings(url), io_.get_executor(), logging::Logger());
  const auto run = Dispatch(io_, runner, Request());
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kTransportError);
  EXPECT_TRUE(run.result->retry);
  EXPECT_THAT(run.result->detail, HasSubstr("cannot connect"));
}

TEST_F(HttpRunnerTest, AServerThatClosesMidResponseFailsWithRetry) {
  TestServer server([](const Received&) {
    return Reply{"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"outcome\":", 0ms, true};
  });
  HttpRunner runner(Settings(server.url()), io_.get_executor(), logging::Logger());
  const auto run = Dispatch(io_, runner, Request());
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kFailed);
  EXPECT_TRUE(run.result->retry);
  EXPECT_THAT(run.result->detail, HasSubstr("mid-response"));
}

TEST_F(HttpRunnerTest, AnOversizedBodyFailsWithoutRetry) {
  TestServer server(
      [](const Received&) { return Respond(200, "OK", std::string(kHttpBodyLimit + 1, 'x')); });
  HttpRunner runner(Settings(server.url()), io_.get_executor(), logging::Logger());
  const auto run = Dispatch(io_, runner, Request());
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kFailed);
  EXPECT_FALSE(run.result->retry);
  EXPECT_THAT(run.result->detail, HasSubstr("exceeds"));
}

TEST_F(HttpRunnerTest, AnOversizedChunkedBodyFailsWithoutRetry) {
  TestServer server([](const Received&) {
    std::string raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    const std::string chunk(16 * 1024, 'x');
    for (int i = 0; i < 5; ++i)
      raw += fmt::format("{:x}\r\n{}\r\n", chunk.size(), chunk);
    raw += "0\r\n\r\n";
    return Reply{raw};
  });
  HttpRunner runner(Settings(server.url()), io_.get_executor(), logging::Logger());
  const auto run = Dispatch(io_, runner, Request());
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kFailed);
  EXPECT_FALSE(run.result->retry);
  EXPECT_THAT(run.result->detail, HasSubstr("exceeds"));
}

TEST_F(HttpRunnerTest, KeepAliveConnectionsAreReused) {
  TestServer server([](const Received&) { return Respond(200, "OK", R"({"outcome":"done"})"); });
  HttpRunner runner(Settings(server.url()), io_.get_executor(), logging::Logger());
  for (int i = 0; i < 5; ++i) {
    const auto run = Dispatch(io_, runner, Request(100 + i));
    ASSERT_TRUE(run.result);
    EXPECT_EQ(run.result->status, Status::kDone) << run.result->detail;
  }
  EXPECT_EQ(server.requests().size(), 5u);
  EXPECT_EQ(server.accepted(), 1);
  EXPECT_EQ(runner.connections_opened(), 1u);
}

TEST_F(HttpRunnerTest, ConcurrentDispatchesOpenOneConnectionEach) {
  TestServer server([](const Received&) {
    Reply r = Respond(200, "OK", R"({"outcome":"done"})");
    r.delay = 100ms;
    return r;
  });
  HttpRunner runner(Settings(server.url()), io_.get_executor(), logging::Logger());
  int done = 0;
  std::vector<std::shared_ptr<Execution>> executions;
  for (int i = 0; i < 3; ++i) {
    executions.push_back(runner.Start(Request(200 + i), [&](DispatchResult r) {
      EXPECT_EQ(r.status, Status::kDone) << r.detail;
      ++done;
    }));
  }
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (done < 3 && std::chrono::steady_clock::now() < deadline) {
    io_.run_one_for(20ms);
    io_.restart();
  }
  EXPECT_EQ(done, 3);
  EXPECT_EQ(server.accepted(), 3);
  // Pooled afterwards: the next dispatch reuses one of them.
  const auto run = Dispatch(io_, runner, Request(300));
  EXPECT_EQ(server.accepted(), 3);
}

TEST_F(HttpRunnerTest, ConcurrentDispatchesBeyondTheConnectionBoundWaitForAConnection) {
  TestServer server([](const Received&) {
    Reply r = Respond(200, "OK", R"({"outcome":"done"})");
    r.delay = 20ms;
    return r;
  });
  HttpRunner runner(Settings(server.url()), io_.get_executor(), logging::Logger());
  const int n = static_cast<int>(kHttpConnectionsPerHost) + 16;
  int done = 0;
  std::vector<std::shared_ptr<Execution>> executions;
  for (int i = 0; i < n; ++i) {
    executions.push_back(runner.Start(Request(500 + i), [&](DispatchResult r) {
      EXPECT_EQ(r.status, Status::kDone) << r.detail;
      ++done;
    }));
  }
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  std::size_t most_open = 0;
  while (done < n && std::chrono::steady_clock::now() < deadline) {
    io_.run_one_for(5ms);
    io_.restart();
    most_open = std::max(most_open, runner.connections_open());
  }
  EXPECT_EQ(done, n);
  EXPECT_EQ(server.requests().size(), static_cast<std::size_t>(n));
  EXPECT_EQ(most_open, kHttpConnectionsPerHost);
  // The waiting dispatches reused returned connections rather than opening one each.
  EXPECT_LT(server.accepted(), n);
}

TEST_F(HttpRunnerTest, AnIdleConnectionTheServerClosedIsReplacedAndTheRequestSentOnce) {
  // The server announces keep-alive but closes each connection after its response.
  TestServer server([](const Received&) {
    Reply r = Respond(200, "OK", R"({"outcome":"done"})");
    r.close_after = true;
    return r;
  });
  HttpRunner runner(Settings(server.url()), io_.get_executor(), logging::Logger());
  for (int i = 0; i < 2; ++i) {
    const auto run = Dispatch(io_, runner, Request(400 + i));
    ASSERT_TRUE(run.result);
    EXPECT_EQ(run.result->status, Status::kDone) << run.result->detail;
    std::this_thread::sleep_for(50ms);  // let the close reach us
  }
  EXPECT_EQ(server.requests().size(), 2u);
  EXPECT_EQ(server.accepted(), 2);
}

TEST_F(HttpRunnerTest, StopDuringTheExchangeReportsStopped) {
  TestServer server([](const Received&) {
    Reply r = Respond(200, "OK", R"({"outcome":"done"})");
    r.delay = 3s;
    return r;
  });
  HttpRunner runner(Settings(server.url()), io_.get_executor(), logging::Logger());
  std::optional<DispatchResult> result;
  auto execution = runner.Start(Request(), [&](DispatchResult r) { result = std::move(r); });
  boost::asio::steady_timer stop(io_, 100ms);
  stop.async_wait([&](const boost::system::error_code&) { execution->Stop("lease lost: test"); });
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!result && std::chrono::steady_clock::now() < deadline) {
    io_.run_one_for(20ms);
    io_.restart();
  }
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, Status::kStopped);
  EXPECT_FALSE(result->handed_off);
  EXPECT_THAT(result->detail, HasSubstr("lease lost: test"));
}

/// `openssl s_server` with a self-signed certificate for 127.0.0.1, in a child process.
class TlsServer {
 public:
  TlsServer() {
    dir_ = std::filesystem::temp_directory_path() / ("warp-tls-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    const std::string generate =
        "openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -addext "
        "subjectAltName=IP:127.0.0.1 -days 1 -keyout " +
        (dir_ / "key.pem").string() + " -out " + cert() + " >/dev/null 2>&1";
    if (std::system(generate.c_str()) != 0)
      throw std::runtime_error("cannot generate a certificate with openssl");
    {
      TestServer probe([](const Received&) { return Reply{}; });  // a free port, then closed
      port_ = std::stoi(probe.url("").substr(std::string("http://127.0.0.1:").size()));
    }
    pid_ = ::fork();
    if (pid_ == 0) {
      const std::string port = std::to_string(port_);
      const std::string key = (dir_ / "key.pem").string();
      const std::string cert_file = cert();
      ::freopen("/dev/null", "w", stdout);
      ::freopen("/dev/null", "w", stderr);
      ::execlp("openssl", "openssl", "s_server", "-accept", port.c_str(), "-cert",
               cert_file.c_str(), "-key", key.c_str(), "-www", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    // Ready when it accepts a connection.
    for (int i = 0; i < 100; ++i) {
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<unsigned short>(port_));
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      const bool up = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
      ::close(fd);
      if (up)
        return;
      std::this_thread::sleep_for(50ms);
    }
    throw std::runtime_error("openssl s_server did not start");
  }
  ~TlsServer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
    std::filesystem::remove_all(dir_);
  }
  std::string url() const { return fmt::format("https://127.0.0.1:{}/dispatch", port_); }
  std::string cert() const { return (dir_ / "cert.pem").string(); }

 private:
  std::filesystem::path dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

bool HaveOpenssl() {
  return std::system("command -v openssl >/dev/null 2>&1") == 0;
}

TEST_F(HttpRunnerTest, HttpsRefusesACertificateTheSystemStoreDoesNotTrust) {
  if (!HaveOpenssl())
    GTEST_SKIP() << "no openssl command";
  TlsServer server;
  HttpRunner runner(Settings(server.url()), io_.get_executor(), logging::Logger());
  const auto run = Dispatch(io_, runner, Request());
  ASSERT_TRUE(run.result);
  EXPECT_EQ(run.result->status, Status::kTransportError);
  EXPECT_TRUE(run.result->retry);
  EXPECT_THAT(run.result->detail, HasSubstr("certificate verify failed"));
}

TEST_F(HttpRunnerTest, HttpsCompletesTheHandshakeWithATrustedCertificate) {
  if (!HaveOpenssl())
    GTEST_SKIP() << "no openssl command";
  TlsServer server;
  // OpenSSL's default verify paths honour SSL_CERT_FILE: the "system store" is this cert.
  ::setenv("SSL_CERT_FILE", server.cert().c_str(), 1);
  HttpRunner runner(Settings(server.url(), 1s), io_.get_executor(), logging::Logger());
  ::unsetenv("SSL_CERT_FILE");
  const auto run = Dispatch(io_, runner, Request());
  ASSERT_TRUE(run.result);
  // s_server -www answers GET only: the POST reaches it over a verified connection (counted
  // once the handshake succeeded) and gets no useful response (closed or timed out).
  EXPECT_NE(run.result->status, Status::kTransportError) << run.result->detail;
  EXPECT_THAT(run.result->detail, testing::Not(HasSubstr("cannot connect")));
  EXPECT_EQ(runner.connections_opened(), 1u);
}

TEST(HttpDispatchDocumentTest, CarriesEveryFieldOfTheDispatch) {
  const auto doc = nlohmann::json::parse(HttpDispatchDocument(Request(9)));
  for (const char* key : {"work_id", "kind", "payload", "agent", "lease_id", "fencing_token",
                          "cycle_id", "lease_expires_at", "complete"})
    EXPECT_TRUE(doc.contains(key)) << key;
  EXPECT_EQ(doc["fencing_token"], 9);
}

}  // namespace
}  // namespace warp::scheduler
