// The only translation unit that includes Beast and Asio's SSL: they are header-heavy.
#include "scheduler/runners/http_runner.hpp"

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace warp::scheduler {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using SteadyClock = std::chrono::steady_clock;
using Status = DispatchResult::Status;
using logging::Event;

/// The parts of an http:// or https:// URL a request needs.
struct Url {
  bool tls = false;
  std::string host;         ///< without brackets for IPv6
  std::string port;         ///< digits; 80 / 443 by default
  std::string host_header;  ///< the authority as written
  std::string target;       ///< path and query; "/" at least
  std::string pool_key;     ///< scheme://host:port
};

Url ParseUrl(const std::string& text) {
  Url url;
  std::string_view rest(text);
  if (rest.starts_with("https://")) {
    url.tls = true;
    rest.remove_prefix(8);
  } else if (rest.starts_with("http://")) {
    rest.remove_prefix(7);
  } else {
    throw std::invalid_argument("not an http:// or https:// URL: " + text);
  }
  // Control characters and spaces would reach the request line and the Host header.
  if (std::any_of(text.begin(), text.end(),
                  [](char c) { return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f; })) {
    throw std::invalid_argument("a URL must not contain spaces or control characters");
  }
  const auto end = rest.find_first_of("/?#");
  const std::string_view authority = rest.substr(0, end);
  std::string_view target = end == std::string_view::npos ? "" : rest.substr(end);
  if (const auto hash = target.find('#'); hash != std::string_view::npos)
    target = target.substr(0, hash);
  url.target =
      target.empty() || target.front() != '/' ? "/" + std::string(target) : std::string(target);
  if (authority.find('@') != std::string_view::npos)
    throw std::invalid_argument("user information in a URL is not supported: " + text);
  std::string_view host = authority;
  std::string_view port;
  if (authority.starts_with('[')) {
    const auto close = authority.find(']');
    if (close == std::string_view::npos)
      throw std::invalid_argument("unterminated IPv6 address in URL: " + text);
    host = authority.substr(1, close - 1);
    const auto after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':')
        throw std::invalid_argument("bad authority in URL: " + text);
      port = after.substr(1);
    }
  } else if (const auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  if (host.empty())
    throw std::invalid_argument("URL names no host: " + text);
  if (port.empty())
    port = url.tls ? "443" : "80";
  if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos ||
      std::stoi(std::string(port)) > 65535)
    throw std::invalid_argument("bad port in URL: " + text);
  url.host = host;
  url.port = port;
  url.host_header = authority;
  url.pool_key = fmt::format("{}://{}:{}", url.tls ? "https" : "http", url.host, url.port);
  return url;
}

/// The token of `file`, trailing white space removed. Throws std::runtime_error.
std::string ReadBearerToken(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in)
    throw std::runtime_error("cannot read bearer_token_file " + file.string());
  std::ostringstream text;
  text << in.rdbuf();
  std::string token = text.str();
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back())) != 0)
    token.pop_back();
  if (token.empty())
    throw std::runtime_error("bearer_token_file " + file.string() + " is empty");
  if (token.find_first_of("\r\n") != std::string::npos)
    throw std::runtime_error("bearer_token_file " + file.string() + " holds more than one line");
  return token;
}

/// RFC 3339, UTC, milliseconds rounded down: an agent must never believe its lease lasts longer
/// than it does.
std::string Rfc3339Utc(store::TimePoint at) {
  const auto ms = std::chrono::floor<std::chrono::milliseconds>(at);
  const std::time_t seconds =
      std::chrono::system_clock::to_time_t(std::chrono::floor<std::chrono::seconds>(ms));
  std::tm utc{};
  ::gmtime_r(&seconds, &utc);
  std::array<char, 32> text{};
  const std::size_t n = std::strftime(text.data(), text.size(), "%Y-%m-%dT%H:%M:%S", &utc);
  return fmt::format("{}.{:03d}Z", std::string_view(text.data(), n),
                     (ms.time_since_epoch() % std::chrono::seconds(1)).count());
}

std::string Shortened(std::string text, std::size_t limit = 512) {
  if (text.size() > limit) {
    text.resize(limit);
    text += "...";
  }
  for (auto& c : text) {
    if (c == '\n' || c == '\r')
      c = ' ';
  }
  return text;
}

/// One connection: plain or TLS. Not thread-safe.
struct Connection {
  std::optional<beast::tcp_stream> plain;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls;
  beast::flat_buffer buffer;
  SteadyClock::time_point idle_since;

  beast::tcp_stream& lowest() { return tls ? beast::get_lowest_layer(*tls) : *plain; }
  void Close() {
    beast::error_code ignored;
    lowest().socket().shutdown(tcp::socket::shutdown_both, ignored);
    lowest().close();
  }
};

/// What an exchange ended with: a final result, or acceptance (the agent completes it).
struct ExchangeOutcome {
  DispatchResult result;
  bool accepted = false;
};

/// The result of a complete response.
ExchangeOutcome Classify(unsigned status, std::string_view reason, const std::string& body,
                         std::string_view location) {
  const std::string status_text = fmt::format("HTTP {} {}", status, reason);
  if (status >= 200 && status < 300) {
    const auto json = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded() || !json.is_object() || !json.contains("outcome"))
      return {{Status::kDone, status_text + ", accepted", true}, true};
    const auto& outcome = json["outcome"];
    std::string detail;
    if (json.contains("detail")) {
      const auto& d = json["detail"];
      detail = Shortened(d.is_string() ? d.get<std::string>() : d.dump());
    }
    if (outcome == "done")
      return {{Status::kDone, detail.empty() ? status_text + ", outcome done" : detail, true}};
    if (outcome == "failed") {
      return {{Status::kFailed, detail.empty() ? status_text + ", outcome failed" : detail, true}};
    }
    if (outcome == "accepted")
      return {{Status::kDone, status_text + ", accepted", true}, true};
    return {{Status::kFailed,
             fmt::format("{} with an unknown outcome {} (done, failed or accepted)", status_text,
                         Shortened(outcome.dump(), 64)),
             false}};
  }
  if (status >= 300 && status < 400) {
    return {{Status::kFailed,
             fmt::format("{}: redirects are not followed{}", status_text,
                         location.empty()
                             ? ""
                             : fmt::format(" (to {})", Shortened(std::string(location), 200))),
             false}};
  }
  if (status >= 400 && status < 500)
    return {{Status::kFailed, status_text, false}};
  return {{Status::kFailed, status_text, true}};
}

}  // namespace

std::string HttpDispatchDocument(const DispatchRequest& r) {
  nlohmann::json payload = nlohmann::json::parse(r.payload_json, nullptr, false);
  if (payload.is_discarded())
    payload = r.payload_json;  // the store only holds JSON objects; never fail a dispatch here
  const nlohmann::json document = {
      {"work_id", r.work_id},
      {"kind", r.kind},
      {"payload", std::move(payload)},
      {"agent", r.agent_slug},
      {"lease_id", r.lease_id},
      {"fencing_token", r.fencing_token},
      {"cycle_id", r.cycle_id},
      {"lease_expires_at", Rfc3339Utc(r.lease_expires_at)},
      {"complete",
       {{"outcomes", {"done", "failed"}},
        {"sql", fmt::format("SELECT warp.complete_work({}, {}, 'done', '{{}}'::jsonb)", r.lease_id,
                            r.fencing_token)},
        {"warpctl",
         fmt::format("warpctl complete {} {} --outcome done", r.lease_id, r.fencing_token)},
        {"response", R"(or answer this request with {"outcome":"done"} or {"outcome":"failed"})"},
        {"note",
         "a 2xx response without an outcome accepts the work: complete it before the lease "
         "expires (warpd renews it up to the runner's timeout); a completion by a stale "
         "holder is refused"}}}};
  return document.dump();
}

struct HttpRunner::Shared {
  config::RunnerSettings settings;
  Url url;
  asio::any_io_executor executor;
  logging::Logger log;
  std::string authorization;  ///< "Bearer ..." or empty; never logged
  std::unique_ptr<ssl::context> tls_context;
  std::map<std::string, std::vector<std::unique_ptr<Connection>>> idle;
  std::uint64_t opened = 0;
  /// Connections open or being opened (idle ones included), at most kHttpConnectionsPerHost.
  std::size_t open = 0;
  /// Exchanges waiting for a connection; each returns false when it no longer waits.
  std::deque<std::function<bool()>> waiters;

  /// A counted connection was closed (or its connect failed): one waiter may open another.
  void Release() {
    --open;
    WakeOne();
  }

  /// Wakes the first waiter that still waits (it takes an idle connection or opens one).
  void WakeOne() {
    while (!waiters.empty()) {
      auto wake = std::move(waiters.front());
      waiters.pop_front();
      if (wake())
        return;
    }
  }

  /// A pooled connection young enough to reuse, or null.
  /// Stale ones are closed; their slots beyond the one the caller may use wake waiters.
  std::unique_ptr<Connection> TakeIdle() {
    auto& pool = idle[url.pool_key];
    std::unique_ptr<Connection> fresh;
    std::size_t closed = 0;
    while (!pool.empty() && !fresh) {
      auto conn = std::move(pool.back());
      pool.pop_back();
      if (SteadyClock::now() - conn->idle_since < kHttpIdleFor) {
        fresh = std::move(conn);
      } else {
        conn->Close();
        --open;
        ++closed;
      }
    }
    // Without a fresh connection the caller opens one in a freed slot; the others are spare.
    for (std::size_t spare = fresh ? closed : (closed > 0 ? closed - 1 : 0); spare > 0; --spare)
      WakeOne();
    return fresh;
  }

  void GiveBack(std::unique_ptr<Connection> conn) {
    auto& pool = idle[url.pool_key];
    conn->idle_since = SteadyClock::now();
    pool.push_back(std::move(conn));
    // Beyond kHttpIdlePerHost only while exchanges wait for a connection: they take these.
    if (pool.size() > kHttpIdlePerHost && waiters.empty()) {
      pool.front()->Close();
      pool.erase(pool.begin());
      --open;
    }
    WakeOne();
  }
};

namespace {

class HttpExecution final : public Execution, public std::enable_shared_from_this<HttpExecution> {
 public:
  HttpExecution(std::shared_ptr<HttpRunner::Shared> shared, DispatchRequest request,
                Runner::OnDone on_done)
      : shared_(std::move(shared)),
        request_(std::move(request)),
        on_done_(std::move(on_done)),
        resolver_(shared_->executor),
        wait_timer_(shared_->executor),
        deadline_timer_(shared_->executor),
        deadline_(SteadyClock::now() + shared_->settings.timeout) {}

  void Begin() {
    auto self = shared_from_this();
    deadline_timer_.expires_at(deadline_);
    deadline_timer_.async_wait([self](const boost::system::error_code& ec) {
      if (!ec)
        self->OnDeadline();
    });
    asio::co_spawn(shared_->executor, Run(self), asio::detached);
  }

  void Stop(std::string reason) override {
    if (finished_ || stopped_)
      return;
    stopped_ = true;
    stop_reason_ = std::move(reason);
    Abort();
  }

 private:
  logging::Fields Fields() const {
    return {.cycle_id = request_.cycle_id,
            .agent = request_.agent_slug,
            .lease_id = request_.lease_id,
            .fencing_token = request_.fencing_token,
            .work_id = request_.work_id};
  }

  void OnDeadline() {
    if (finished_)
      return;
    timed_out_ = true;
    Abort();
  }

  /// Ends whatever the execution waits for: the exchange's I/O, or the wait after hand-off.
  void Abort() {
    resolver_.cancel();
    wait_timer_.cancel();
    if (conn_)
      conn_->Close();
    if (handed_off_)
      deadline_timer_.cancel();
  }

  void Finish(DispatchResult result) {
    if (finished_)
      return;
    finished_ = true;
    deadline_timer_.cancel();
    auto on_done = std::move(on_done_);
    on_done(std::move(result));
  }

  static asio::awaitable<void> Run(std::shared_ptr<HttpExecution> self) {
    ExchangeOutcome outcome;
    try {
      outcome = co_await self->Exchange();
    } catch (const std::exception& e) {
      outcome = {{Status::kTransportError, std::string("http runner: ") + e.what(), true}};
    }
    if (self->finished_)
      co_return;
    if (!outcome.accepted) {
      self->Finish(self->Interrupted().value_or(std::move(outcome.result)));
      co_return;
    }
    if (auto interrupted = self->Interrupted()) {
      self->Finish(std::move(*interrupted));
      co_return;
    }
    // Accepted: the agent completes the work itself. Keep the execution open (the lease keeper
    // renews its lease) until the lease ends (Stop) or the runner's timeout.
    self->handed_off_ = true;
    self->shared_->log.Debug(Event::kDispatchStarted, self->Fields(),
                             "work {} accepted by {} ({}); the agent completes it",
                             self->request_.work_id, self->shared_->url.pool_key,
                             outcome.result.detail);
    if (self->request_.on_handed_off)
      self->request_.on_handed_off();
    while (!self->stopped_ && !self->timed_out_ && !self->finished_) {
      boost::system::error_code ec;
      self->deadline_timer_.expires_at(self->deadline_);
      co_await self->deadline_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (!ec)
        self->timed_out_ = true;
    }
    if (self->stopped_) {
      self->Finish({Status::kStopped, "after hand-off: " + self->stop_reason_, true, true});
    } else {
      self->Finish({Status::kTimedOut,
                    fmt::format("accepted by the agent but not completed within {}ms",
                                self->shared_->settings.timeout.count()),
                    true, true});
    }
  }

  /// The result when Stop or the deadline cut the exchange short.
  std::optional<DispatchResult> Interrupted() const {
    if (stopped_)
      return DispatchResult{Status::kStopped, "stopped: " + stop_reason_, true};
    if (timed_out_) {
      return DispatchResult{
          Status::kTimedOut,
          fmt::format("no response within {}ms", shared_->settings.timeout.count()), true};
    }
    return std::nullopt;
  }

  http::request<http::string_body> MakeRequest() const {
    const Url& url = shared_->url;
    http::request<http::string_body> req{http::verb::post, url.target, 11};
    req.set(http::field::host, url.host_header);
    req.set(http::field::user_agent, "warpd/" WARP_VERSION);
    req.set(http::field::content_type, "application/json");
    req.set(http::field::accept, "application/json");
    req.set("Warp-Fencing-Token", std::to_string(request_.fencing_token));
    if (!shared_->authorization.empty())
      req.set(http::field::authorization, shared_->authorization);
    for (const auto& [name, value] : shared_->settings.headers)
      req.set(name, value);
    req.keep_alive(true);
    req.body() = HttpDispatchDocument(request_);
    req.prepare_payload();
    return req;
  }

  /// A new connection to the URL's host, or null with `error` set.
  asio::awaitable<std::unique_ptr<Connection>> Connect(std::string& error) {
    const Url& url = shared_->url;
    boost::system::error_code ec;
    auto endpoints = co_await resolver_.async_resolve(
        url.host, url.port, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      error = fmt::format("cannot resolve {}: {}", url.host, ec.message());
      co_return nullptr;
    }
    auto conn = std::make_unique<Connection>();
    if (url.tls) {
      conn->tls.emplace(shared_->executor, *shared_->tls_context);
    } else {
      conn->plain.emplace(shared_->executor);
    }
    conn_ = conn.get();  // Abort() closes it from now on
    co_await conn->lowest().async_connect(endpoints, asio::redirect_error(asio::use_awaitable, ec));
    if (!ec && url.tls) {
      auto& tls = *conn->tls;
      // SNI (a host name only: RFC 6066 forbids address literals), and the name the
      // certificate must carry.
      boost::system::error_code not_an_address;
      (void)asio::ip::make_address(url.host, not_an_address);
      if (not_an_address &&
          ::SSL_set_tlsext_host_name(tls.native_handle(), url.host.c_str()) != 1) {
        ec = boost::system::error_code(static_cast<int>(::ERR_get_error()),
                                       asio::error::get_ssl_category());
      } else {
        tls.set_verify_callback(ssl::host_name_verification(url.host));
        co_await tls.async_handshake(ssl::stream_base::client,
                                     asio::redirect_error(asio::use_awaitable, ec));
      }
    }
    conn_ = nullptr;
    if (ec) {
      error = fmt::format("cannot connect to {}: {}", url.pool_key, ec.message());
      co_return nullptr;
    }
    ++shared_->opened;
    co_return conn;
  }

  template <typename Stream>
  asio::awaitable<ExchangeOutcome> Transact(Stream& stream, Connection& conn,
                                            http::request<http::string_body>& req, bool reused,
                                            bool& resend, bool& reusable) {
    boost::system::error_code ec;
    co_await http::async_write(stream, req, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      resend = reused;
      co_return ExchangeOutcome{{Status::kTransportError,
                                 fmt::format("cannot send the request: {}", ec.message()), true}};
    }
    http::response_parser<http::string_body> parser;
    parser.body_limit(kHttpBodyLimit);
    co_await http::async_read_header(stream, conn.buffer, parser,
                                     asio::redirect_error(asio::use_awaitable, ec));
    if (ec == http::error::body_limit) {  // a Content-Length above the limit
      co_return ExchangeOutcome{{Status::kFailed,
                                 fmt::format("HTTP {}: response body exceeds {} bytes",
                                             parser.get().result_int(), kHttpBodyLimit),
                                 false}};
    }
    if (ec) {
      // A reused connection the server closed while it was idle: nothing was processed.
      resend = reused && !parser.got_some() &&
               (ec == http::error::end_of_stream || ec == asio::error::eof ||
                ec == asio::error::connection_reset || ec == asio::error::broken_pipe);
      co_return ExchangeOutcome{
          {Status::kFailed, fmt::format("connection broke before the response: {}", ec.message()),
           true}};
    }
    co_await http::async_read(stream, conn.buffer, parser,
                              asio::redirect_error(asio::use_awaitable, ec));
    const auto& res = parser.get();
    if (ec == http::error::body_limit) {
      co_return ExchangeOutcome{
          {Status::kFailed,
           fmt::format("HTTP {}: response body exceeds {} bytes", res.result_int(), kHttpBodyLimit),
           false}};
    }
    if (ec) {
      co_return ExchangeOutcome{{Status::kFailed,
                                 fmt::format("HTTP {}: connection broke mid-response: {}",
                                             res.result_int(), ec.message()),
                                 true}};
    }
    reusable = res.keep_alive();
    const auto location = res.find(http::field::location);
    const auto reason = res.reason();
    std::string_view moved_to;
    if (location != res.end())
      moved_to = std::string_view(location->value().data(), location->value().size());
    co_return Classify(res.result_int(), std::string_view(reason.data(), reason.size()), res.body(),
                       moved_to);
  }

  asio::awaitable<void> WaitForConnection() {
    std::weak_ptr<HttpExecution> weak = shared_from_this();
    auto waiting = std::make_shared<bool>(true);
    shared_->waiters.push_back([weak, waiting] {
      auto self = weak.lock();
      if (!self || !*waiting)
        return false;
      self->wait_timer_.cancel();
      return true;
    });
    wait_timer_.expires_at(SteadyClock::time_point::max());
    boost::system::error_code ec;
    co_await wait_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    *waiting = false;
  }

  asio::awaitable<ExchangeOutcome> Exchange() {
    auto req = MakeRequest();
    for (int attempt = 0;; ++attempt) {
      std::unique_ptr<Connection> conn;
      bool reused = false;
      bool waited = false;
      for (;;) {
        if (stopped_ || timed_out_) {
          // A wake-up this exchange received but no longer uses goes to the next waiter.
          if (waited)
            shared_->WakeOne();
          co_return ExchangeOutcome{};  // Interrupted() tells which
        }
        conn = shared_->TakeIdle();
        reused = conn != nullptr;
        if (conn || shared_->open < kHttpConnectionsPerHost)
          break;
        // At the bound: wait until a connection is returned or closed (or Stop / deadline).
        co_await WaitForConnection();
        waited = true;
      }
      if (!conn) {
        ++shared_->open;  // reserved before connecting, so concurrent connects stay bounded
        std::string error;
        conn = co_await Connect(error);
        if (!conn) {
          shared_->Release();
          co_return ExchangeOutcome{{Status::kTransportError, error, true}};
        }
      }
      if (stopped_ || timed_out_) {
        conn->Close();
        shared_->Release();
        co_return ExchangeOutcome{};
      }
      conn_ = conn.get();
      bool resend = false;
      bool reusable = false;
      ExchangeOutcome outcome;
      if (conn->tls) {
        outcome = co_await Transact(*conn->tls, *conn, req, reused, resend, reusable);
      } else {
        outcome = co_await Transact(*conn->plain, *conn, req, reused, resend, reusable);
      }
      conn_ = nullptr;
      if (reusable && !stopped_ && !timed_out_) {
        shared_->GiveBack(std::move(conn));
      } else {
        conn->Close();
        shared_->Release();
      }
      if (resend && attempt == 0 && !stopped_ && !timed_out_) {
        shared_->log.Debug(Event::kGeneral, Fields(),
                           "idle connection to {} was closed by the server; sending again",
                           shared_->url.pool_key);
        continue;
      }
      co_return outcome;
    }
  }

  std::shared_ptr<HttpRunner::Shared> shared_;
  DispatchRequest request_;
  Runner::OnDone on_done_;
  tcp::resolver resolver_;
  asio::steady_timer wait_timer_;      // waiting for a connection at the per-host bound
  asio::steady_timer deadline_timer_;  // the exchange's deadline, then the hand-off's wait
  SteadyClock::time_point deadline_;
  Connection* conn_ = nullptr;  // the connection in use, for Abort()
  std::string stop_reason_;
  bool stopped_ = false;
  bool timed_out_ = false;
  bool handed_off_ = false;
  bool finished_ = false;
};

}  // namespace

HttpRunner::HttpRunner(config::RunnerSettings settings, asio::any_io_executor executor,
                       logging::Logger log)
    : shared_(std::make_shared<Shared>()) {
  shared_->url = ParseUrl(settings.url);
  if (!settings.bearer_token_file.empty())
    shared_->authorization = "Bearer " + ReadBearerToken(settings.bearer_token_file);
  if (shared_->url.tls) {
    shared_->tls_context = std::make_unique<ssl::context>(ssl::context::tls_client);
    shared_->tls_context->set_default_verify_paths();
    shared_->tls_context->set_verify_mode(ssl::verify_peer);
  }
  shared_->settings = std::move(settings);
  shared_->executor = std::move(executor);
  shared_->log = std::move(log);
}

HttpRunner::~HttpRunner() = default;

std::shared_ptr<Execution> HttpRunner::Start(DispatchRequest request, OnDone on_done) {
  auto execution = std::make_shared<HttpExecution>(shared_, std::move(request), std::move(on_done));
  execution->Begin();  // the coroutine starts on a later turn of the loop, never inside Start
  return execution;
}

std::uint64_t HttpRunner::connections_opened() const {
  return shared_->opened;
}

std::size_t HttpRunner::connections_open() const {
  return shared_->open;
}

}  // namespace warp::scheduler
