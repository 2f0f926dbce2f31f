// Test support: a small HTTP/1.1 server on 127.0.0.1 (a random port) with plain sockets, one
// thread per connection, that answers each request with what a handler scripts, so that a test
// can make it misbehave on purpose (answer slowly, close mid-response, send too much, close an
// idle keep-alive connection). It counts accepted connections and records every request.
#pragma once

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace warp::test {

using namespace std::chrono_literals;

/// One request as the server saw it; header names lower-cased.
struct Received {
  std::string method;
  std::string target;
  std::map<std::string, std::string> headers;
  std::string body;
};

/// What the server does with a request.
struct Reply {
  std::string raw;  ///< bytes to send
  std::chrono::milliseconds delay{0};
  bool close_after = false;  ///< close the connection after sending `raw`
};

inline Reply Respond(int status, std::string_view reason, std::string body,
                     std::string_view extra_headers = "") {
  return {
      fmt::format("HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: "
                  "{}\r\n{}\r\n{}",
                  status, reason, body.size(), extra_headers, body)};
}

class TestServer {
 public:
  using Handler = std::function<Reply(const Received&)>;

  explicit TestServer(Handler handler) : handler_(std::move(handler)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_fd_, 16) != 0)
      throw std::runtime_error("test server: cannot listen");
    socklen_t len = sizeof addr;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }

  ~TestServer() {
    stopping_ = true;
    acceptor_.join();
    ::close(listen_fd_);
    std::lock_guard lock(mutex_);
    for (auto& t : connections_)
      t.join();
  }

  std::string url(std::string_view path = "/dispatch") const {
    return fmt::format("http://127.0.0.1:{}{}", port_, path);
  }
  int accepted() const { return accepted_; }
  std::vector<Received> requests() const {
    std::lock_guard lock(mutex_);
    return requests_;
  }

 private:
  void AcceptLoop() {
    while (!stopping_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0)
        continue;
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0)
        continue;
      ++accepted_;
      std::lock_guard lock(mutex_);
      connections_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  /// Reads until `buffer` holds a whole request; false when the peer closed or we stop.
  bool ReadRequest(int fd, std::string& buffer, Received& out) {
    for (;;) {
      const auto end = buffer.find("\r\n\r\n");
      if (end != std::string::npos) {
        std::string head = buffer.substr(0, end);
        std::size_t length = 0;
        std::size_t pos = head.find("\r\n");
        const std::string request_line = head.substr(0, pos);
        out.method = request_line.substr(0, request_line.find(' '));
        out.target = request_line.substr(request_line.find(' ') + 1);
        out.target = out.target.substr(0, out.target.find(' '));
        while (pos != std::string::npos) {
          const auto next = head.find("\r\n", pos + 2);
          const std::string line =
              head.substr(pos + 2, next == std::string::npos ? std::string::npos : next - pos - 2);
          const auto colon = line.find(':');
          std::string name = line.substr(0, colon);
          std::transform(name.begin(), name.end(), name.begin(),
                         [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
          std::string value = line.substr(colon + 1);
          value.erase(0, value.find_first_not_of(' '));
          out.headers[name] = value;
          pos = next;
        }
        if (out.headers.contains("content-length"))
          length = std::stoul(out.headers["content-length"]);
        if (buffer.size() >= end + 4 + length) {
          out.body = buffer.substr(end + 4, length);
          buffer.erase(0, end + 4 + length);
          return true;
        }
      }
      pollfd p{fd, POLLIN, 0};
      if (stopping_)
        return false;
      if (::poll(&p, 1, 50) <= 0)
        continue;
      char chunk[4096];
      const auto n = ::read(fd, chunk, sizeof chunk);
      if (n <= 0)
        return false;
      buffer.append(chunk, static_cast<std::size_t>(n));
    }
  }

  void Serve(int fd) {
    std::string buffer;
    for (;;) {
      Received request;
      if (!ReadRequest(fd, buffer, request))
        break;
      {
        std::lock_guard lock(mutex_);
        requests_.push_back(request);
      }
      const Reply reply = handler_(request);
      const auto until = std::chrono::steady_clock::now() + reply.delay;
      while (!stopping_ && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(10ms);
      std::size_t sent = 0;
      while (sent < reply.raw.size()) {
        const auto n = ::send(fd, reply.raw.data() + sent, reply.raw.size() - sent, MSG_NOSIGNAL);
        if (n <= 0)
          break;
        sent += static_cast<std::size_t>(n);
      }
      if (reply.close_after)
        break;
    }
    ::close(fd);
  }

  Handler handler_;
  int listen_fd_ = -1;
  unsigned short port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> accepted_{0};
  std::thread acceptor_;
  mutable std::mutex mutex_;
  std::vector<std::thread> connections_;
  std::vector<Received> requests_;
};

}  // namespace warp::test
