#include "scheduler/runners/exec_runner.hpp"

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <fmt/format.h>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

extern char** environ;  // NOLINT: POSIX declares it nowhere else

namespace warp::scheduler {
namespace {

namespace asio = boost::asio;
using Status = DispatchResult::Status;
using boost::system::error_code;

/// Longer output lines are cut here, so one runaway agent cannot flood the log with one record.
constexpr std::size_t kMaxLineBytes = 4 * 1024;
constexpr std::string_view kCutMarker = " [line cut at 4 KiB]";
/// After the child is reaped, how long its output pipes may stay open. Only a process that left
/// the group (setsid) and kept them can hold them longer; the dispatch does not wait for it.
constexpr auto kOutputDrainTimeout = std::chrono::seconds(1);
/// Exit is polled at this period only when no pidfd can be had (Linux < 5.3, no descriptors left).
constexpr auto kExitPollInterval = std::chrono::milliseconds(50);

std::string ErrnoText(int error) {
  return std::generic_category().message(error);
}

/// Owns a file descriptor until Asio or the child takes it.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int Get() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset() {
    if (fd_ >= 0)
      ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

struct Pipe {
  UniqueFd read;
  UniqueFd write;
};

/// Moves `fd` to a number >= 3 (keeping close-on-exec). If warpd runs with 0..2 closed, a pipe
/// could land there, and dup2-ing the child's ends onto 0..2 would overwrite one another.
int AboveStandardFds(UniqueFd& fd) {
  if (fd.Get() > STDERR_FILENO)
    return 0;
  const int moved = ::fcntl(fd.Get(), F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
  if (moved < 0)
    return errno;
  fd = UniqueFd(moved);
  return 0;
}

/// Returns 0 or an errno value.
int MakePipe(Pipe& pipe) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return errno;
  pipe.read = UniqueFd(fds[0]);
  pipe.write = UniqueFd(fds[1]);
  if (int error = AboveStandardFds(pipe.read))
    return error;
  return AboveStandardFds(pipe.write);
}

struct SpawnedChild {
  pid_t pid = -1;
  UniqueFd stdin_write;
  UniqueFd stdin_read;  ///< kept by warpd, see ExecExecution::stdin_keepalive_
  UniqueFd stdout_read;
  UniqueFd stderr_read;
};

/// posix_spawn's attribute and file-action objects, destroyed on every path.
class SpawnSetup {
 public:
  SpawnSetup() {
    actions_ok_ = ::posix_spawn_file_actions_init(&actions_) == 0;
    attr_ok_ = ::posix_spawnattr_init(&attr_) == 0;
  }
  SpawnSetup(const SpawnSetup&) = delete;
  SpawnSetup& operator=(const SpawnSetup&) = delete;
  ~SpawnSetup() {
    if (actions_ok_)
      ::posix_spawn_file_actions_destroy(&actions_);
    if (attr_ok_)
      ::posix_spawnattr_destroy(&attr_);
  }
  bool Ok() const { return actions_ok_ && attr_ok_; }
  posix_spawn_file_actions_t* Actions() { return &actions_; }
  posix_spawnattr_t* Attr() { return &attr_; }

 private:
  posix_spawn_file_actions_t actions_;
  posix_spawnattr_t attr_;
  bool actions_ok_ = false;
  bool attr_ok_ = false;
};

/// Starts `command` with exactly `environment`. Returns 0 or an errno value (ENOENT for a
/// missing binary: glibc reports exec failures through posix_spawn's result).
int Spawn(std::vector<std::string> command, std::vector<std::string> environment,
          SpawnedChild& child) {
  Pipe in;
  Pipe out;
  Pipe err;
  if (int error = MakePipe(in))
    return error;
  if (int error = MakePipe(out))
    return error;
  if (int error = MakePipe(err))
    return error;

  SpawnSetup setup;
  if (!setup.Ok())
    return ENOMEM;
  sigset_t no_signals;
  sigset_t all_signals;
  ::sigemptyset(&no_signals);
  ::sigfillset(&all_signals);
  // Ignored signals survive exec: without SETSIGDEF the agent would inherit warpd's ignored
  // SIGPIPE (and whatever else it ignores). SETPGROUP with 0 makes the child a group leader,
  // so Stop and the timeout reach its own children too.
  const short flags = POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  int error = ::posix_spawnattr_setflags(setup.Attr(), flags);
  if (!error)
    error = ::posix_spawnattr_setpgroup(setup.Attr(), 0);
  if (!error)
    error = ::posix_spawnattr_setsigmask(setup.Attr(), &no_signals);
  if (!error)
    error = ::posix_spawnattr_setsigdefault(setup.Attr(), &all_signals);
  if (!error)
    error = ::posix_spawn_file_actions_adddup2(setup.Actions(), in.read.Get(), 0);
  if (!error)
    error = ::posix_spawn_file_actions_adddup2(setup.Actions(), out.write.Get(), 1);
  if (!error)
    error = ::posix_spawn_file_actions_adddup2(setup.Actions(), err.write.Get(), 2);
  // Our descriptors are close-on-exec already; this also covers any a library opened without it.
  if (!error)
    error = ::posix_spawn_file_actions_addclosefrom_np(setup.Actions(), 3);
  if (error)
    return error;

  std::vector<char*> argv;
  for (auto& arg : command)
    argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (auto& entry : environment)
    envp.push_back(entry.data());
  envp.push_back(nullptr);

  pid_t pid = -1;
  if (command.front().find('/') == std::string::npos) {
    error = ::posix_spawnp(&pid, argv[0], setup.Actions(), setup.Attr(), argv.data(), envp.data());
  } else {
    error = ::posix_spawn(&pid, argv[0], setup.Actions(), setup.Attr(), argv.data(), envp.data());
  }
  if (error)
    return error;

  child.pid = pid;
  child.stdin_write = std::move(in.write);
  child.stdin_read = std::move(in.read);
  child.stdout_read = std::move(out.read);
  child.stderr_read = std::move(err.read);
  return 0;  // the child's ends (in.read aside) close here
}

std::string Rfc3339Utc(store::TimePoint at) {
  // Whole seconds, rounded down: an agent must never believe its lease lasts longer than it does.
  const std::time_t seconds =
      std::chrono::system_clock::to_time_t(std::chrono::floor<std::chrono::seconds>(at));
  std::tm utc{};
  ::gmtime_r(&seconds, &utc);
  std::array<char, 32> text{};
  const std::size_t n = std::strftime(text.data(), text.size(), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return std::string(text.data(), n);
}

std::vector<std::string> ChildEnvironment(const DispatchRequest& request) {
  std::vector<std::string> environment;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const std::string_view variable(*entry);
    const auto name = variable.substr(0, variable.find('='));
    if (name.size() == variable.size())
      continue;
    if (std::find(kExecInheritedEnvironment.begin(), kExecInheritedEnvironment.end(), name) !=
        kExecInheritedEnvironment.end()) {
      environment.emplace_back(variable);
    }
  }
  environment.push_back("WARP_AGENT=" + request.agent_slug);
  environment.push_back(fmt::format("WARP_WORK_ID={}", request.work_id));
  environment.push_back("WARP_WORK_KIND=" + request.kind);
  environment.push_back(fmt::format("WARP_LEASE_ID={}", request.lease_id));
  environment.push_back(fmt::format("WARP_FENCING_TOKEN={}", request.fencing_token));
  environment.push_back("WARP_CYCLE_ID=" + request.cycle_id);
  environment.push_back("WARP_LEASE_EXPIRES_AT=" + Rfc3339Utc(request.lease_expires_at));
  return environment;
}

std::string SignalName(int signal) {
  if (const char* abbrev = ::sigabbrev_np(signal))
    return fmt::format("SIG{}", abbrev);
  return fmt::format("signal {}", signal);
}

/// One child process, from spawn to the posted completion. Every asynchronous operation holds
/// a shared_ptr to it, so it lives until the last of them has run.
class ExecExecution final : public Execution, public std::enable_shared_from_this<ExecExecution> {
 public:
  ExecExecution(std::shared_ptr<const config::RunnerSettings> settings,
                asio::any_io_executor executor, logging::Logger log, DispatchRequest request,
                Runner::OnDone on_done)
      : settings_(std::move(settings)),
        executor_(executor),
        log_(std::move(log)),
        request_(std::move(request)),
        on_done_(std::move(on_done)),
        fields_{.cycle_id = request_.cycle_id,
                .agent = request_.agent_slug,
                .lease_id = request_.lease_id,
                .fencing_token = request_.fencing_token,
                .work_id = request_.work_id},
        pidfd_(executor),
        stdin_(executor),
        stdout_(executor, false),
        stderr_(executor, true),
        timeout_timer_(executor),
        kill_timer_(executor),
        drain_timer_(executor),
        poll_timer_(executor) {}

  ExecExecution(const ExecExecution&) = delete;
  ExecExecution& operator=(const ExecExecution&) = delete;

  ~ExecExecution() override {
    // Reached with a live child only when the io_context was destroyed with our operations
    // still pending (a hard stop). Leave no agent behind and no zombie.
    if (pid_ > 0 && !exited_) {
      ::kill(-pid_, SIGKILL);
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
    }
  }

  void Begin();
  void Stop(std::string reason) override;

 private:
  enum class Ending { kNatural, kTimedOut, kStopped };
  enum class ExitState {
    kRunning,
    kZombie,  ///< exited, not yet reaped: pid and process group id are still ours
    kGone,    ///< reaped by someone else (SIGCHLD ignored, waitpid(-1) elsewhere)
  };

  struct Output {
    Output(const asio::any_io_executor& executor, bool is_stderr)
        : descriptor(executor), is_stderr(is_stderr) {}
    asio::posix::stream_descriptor descriptor;
    std::array<char, 4096> buffer{};
    std::string line;   ///< the line being assembled, at most kMaxLineBytes
    bool cut = false;   ///< the current line was cut; drop the rest of it
    bool open = false;  ///< a read is pending or about to be
    bool is_stderr;
  };

  bool Adopt(asio::posix::stream_descriptor& descriptor, UniqueFd& fd);
  void WriteStdin();
  void Read(Output& out);
  void OnRead(Output& out, const error_code& ec, std::size_t n);
  void Consume(Output& out, std::string_view bytes);
  void EmitLine(Output& out, bool was_cut);
  void WaitForExit();
  void OnExitSignalled(const error_code& ec);
  ExitState Peek() const;
  void Reap(ExitState state);
  void OnTimeout();
  void Terminate();
  void MaybeFinish();
  DispatchResult Outcome() const;
  void Finish(DispatchResult result);

  std::shared_ptr<const config::RunnerSettings> settings_;
  asio::any_io_executor executor_;
  logging::Logger log_;
  const DispatchRequest request_;  // payload_json is the buffer of the pending stdin write
  Runner::OnDone on_done_;
  const logging::Fields fields_;

  pid_t pid_ = -1;
  asio::posix::stream_descriptor pidfd_;
  asio::posix::stream_descriptor stdin_;
  // The read end of the child's stdin, held until the payload is written: with a reader left,
  // a write to the pipe can never raise SIGPIPE or fail with EPIPE when the agent exits or
  // closes stdin without reading. The write just stays pending until Reap cancels it.
  UniqueFd stdin_keepalive_;
  Output stdout_;
  Output stderr_;
  asio::steady_timer timeout_timer_;
  asio::steady_timer kill_timer_;
  asio::steady_timer drain_timer_;
  asio::steady_timer poll_timer_;

  Ending ending_ = Ending::kNatural;
  std::string stop_reason_;
  bool exited_ = false;       ///< reaped
  bool status_known_ = true;  ///< false: someone else reaped the child
  int wait_status_ = 0;
  bool finished_ = false;  ///< on_done is posted
};

void ExecExecution::Begin() {
  const auto& command = settings_->command;
  if (command.empty()) {
    Finish({Status::kTransportError, fmt::format("runner '{}' has no command", settings_->name)});
    return;
  }
  SpawnedChild child;
  if (int error = Spawn(command, ChildEnvironment(request_), child); error != 0) {
    Finish({Status::kTransportError,
            fmt::format("cannot run {}: {}", command.front(), ErrnoText(error))});
    return;
  }
  pid_ = child.pid;
  stdin_keepalive_ = std::move(child.stdin_read);
  log_.Debug(logging::Event::kGeneral, fields_, "runner '{}' started {} as pid {}", settings_->name,
             command.front(), pid_);

  if (!Adopt(stdin_, child.stdin_write) || !Adopt(stdout_.descriptor, child.stdout_read) ||
      !Adopt(stderr_.descriptor, child.stderr_read)) {
    // The reactor refused a descriptor (out of memory or epoll watches): we cannot talk to
    // the agent, so it must not run unobserved.
    ::kill(-pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    exited_ = true;
    Finish({Status::kTransportError,
            fmt::format("cannot watch the pipes of {}", settings_->command.front())});
    return;
  }
  stdout_.open = true;
  stderr_.open = true;

  // The pidfd is created before anything can reap the child, so it names our child even if
  // the child has already exited (it is a zombie until Reap).
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
  if (pidfd.Get() < 0) {
    log_.Warn(logging::Event::kGeneral, fields_,
              "pidfd_open for pid {} failed: {}; polling for its exit every {}ms", pid_,
              ErrnoText(errno), kExitPollInterval.count());
  } else if (!Adopt(pidfd_, pidfd)) {
    log_.Warn(logging::Event::kGeneral, fields_,
              "cannot watch the pidfd of pid {}; polling for its exit every {}ms", pid_,
              kExitPollInterval.count());
  }

  WriteStdin();
  Read(stdout_);
  Read(stderr_);
  WaitForExit();
  if (settings_->timeout > config::Duration::zero()) {
    timeout_timer_.expires_after(settings_->timeout);
    timeout_timer_.async_wait([self = shared_from_this()](const error_code& ec) {
      if (!ec)
        self->OnTimeout();
    });
  }
}

bool ExecExecution::Adopt(asio::posix::stream_descriptor& descriptor, UniqueFd& fd) {
  error_code ec;
  descriptor.assign(fd.Get(), ec);
  if (ec)
    return false;
  fd.Release();
  return true;
}

void ExecExecution::WriteStdin() {
  if (request_.payload_json.empty()) {
    error_code ignored;
    stdin_.close(ignored);
    stdin_keepalive_.Reset();
    return;
  }
  asio::async_write(
      stdin_, asio::buffer(request_.payload_json),
      [self = shared_from_this()](const error_code& ec, std::size_t) {
        // An agent that stops reading is not an error of ours; its exit status
        // tells how it went. EPIPE cannot happen while we keep a reader, but is
        // harmless all the same.
        if (ec && ec != asio::error::operation_aborted && ec != asio::error::broken_pipe) {
          self->log_.Debug(logging::Event::kGeneral, self->fields_,
                           "writing the payload to pid {} failed: {}", self->pid_, ec.message());
        }
        error_code ignored;
        self->stdin_.close(ignored);  // EOF: the payload is complete
        self->stdin_keepalive_.Reset();
      });
}

void ExecExecution::Read(Output& out) {
  out.descriptor.async_read_some(
      asio::buffer(out.buffer),
      [self = shared_from_this(), out = &out](const error_code& ec, std::size_t n) {
        self->OnRead(*out, ec, n);
      });
}

void ExecExecution::OnRead(Output& out, const error_code& ec, std::size_t n) {
  Consume(out, std::string_view(out.buffer.data(), n));
  // EOF, an error, or the drain timeout closed the pipe: this stream is finished.
  if (ec || !out.descriptor.is_open()) {
    if (!out.cut && !out.line.empty())
      EmitLine(out, false);
    out.open = false;
    error_code ignored;
    out.descriptor.close(ignored);
    MaybeFinish();
    return;
  }
  Read(out);
}

void ExecExecution::Consume(Output& out, std::string_view bytes) {
  while (!bytes.empty()) {
    const auto newline = bytes.find('\n');
    const auto piece = bytes.substr(0, newline);
    if (!out.cut) {
      const std::size_t room = kMaxLineBytes - out.line.size();
      if (piece.size() > room) {
        out.line.append(piece.substr(0, room));
        EmitLine(out, true);
        out.cut = true;
      } else {
        out.line.append(piece);
      }
    }
    if (newline == std::string_view::npos)
      return;
    if (!out.cut)
      EmitLine(out, false);
    out.cut = false;
    bytes.remove_prefix(newline + 1);
  }
}

void ExecExecution::EmitLine(Output& out, bool was_cut) {
  std::string_view line = out.line;
  if (!was_cut && !line.empty() && line.back() == '\r')
    line.remove_suffix(1);
  if (!line.empty()) {
    const std::string_view marker = was_cut ? kCutMarker : std::string_view{};
    if (out.is_stderr) {
      log_.Warn(logging::Event::kRunnerOutput, fields_, "stderr: {}{}", line, marker);
    } else {
      log_.Info(logging::Event::kRunnerOutput, fields_, "stdout: {}{}", line, marker);
    }
  }
  out.line.clear();
}

void ExecExecution::WaitForExit() {
  auto self = shared_from_this();
  if (pidfd_.is_open()) {
    pidfd_.async_wait(asio::posix::stream_descriptor::wait_read,
                      [self](const error_code& ec) { self->OnExitSignalled(ec); });
  } else {
    poll_timer_.expires_after(kExitPollInterval);
    poll_timer_.async_wait([self](const error_code& ec) { self->OnExitSignalled(ec); });
  }
}

void ExecExecution::OnExitSignalled(const error_code& ec) {
  if (exited_ || ec == asio::error::operation_aborted)
    return;
  if (const auto state = Peek(); state != ExitState::kRunning) {
    Reap(state);
    return;
  }
  // Readiness without an exit, or an error: the reactor watches the pidfd edge-triggered, so
  // waiting on it again might never wake up. Poll instead.
  error_code ignored;
  pidfd_.close(ignored);
  WaitForExit();
}

ExecExecution::ExitState ExecExecution::Peek() const {
  siginfo_t info{};
  int result = 0;
  do {
    // WNOWAIT: look without reaping, so the zombie keeps holding the pid.
    result = ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT);
  } while (result != 0 && errno == EINTR);
  if (result != 0)
    return ExitState::kGone;
  return info.si_pid == 0 ? ExitState::kRunning : ExitState::kZombie;
}

void ExecExecution::Reap(ExitState state) {
  if (state == ExitState::kZombie) {
    // The zombie still holds the pid, so the group id cannot have been reused and this
    // reaches only what the agent left behind in its group.
    ::kill(-pid_, SIGKILL);
  }
  int status = 0;
  pid_t reaped = -1;
  do {
    reaped = ::waitpid(pid_, &status, WNOHANG);
  } while (reaped < 0 && errno == EINTR);
  exited_ = true;
  status_known_ = reaped == pid_;
  wait_status_ = status;

  timeout_timer_.cancel();
  kill_timer_.cancel();
  poll_timer_.cancel();
  error_code ignored;
  pidfd_.close(ignored);
  stdin_.close(ignored);  // cancels a write the agent never read
  stdin_keepalive_.Reset();

  if (stdout_.open || stderr_.open) {
    // Usually the pipes reach EOF right away (the group is dead); this bounds the wait for a
    // process that escaped the group with them.
    drain_timer_.expires_after(kOutputDrainTimeout);
    drain_timer_.async_wait([self = shared_from_this()](const error_code& ec) {
      if (ec)
        return;
      error_code ignored;
      self->stdout_.descriptor.close(ignored);
      self->stderr_.descriptor.close(ignored);
    });
  }
  MaybeFinish();
}

void ExecExecution::OnTimeout() {
  if (exited_ || ending_ != Ending::kNatural)
    return;
  ending_ = Ending::kTimedOut;
  Terminate();
}

void ExecExecution::Stop(std::string reason) {
  if (finished_ || exited_ || pid_ <= 0 || ending_ != Ending::kNatural)
    return;
  if (Peek() != ExitState::kRunning)
    return;  // the work finished first; the exit watcher reports it
  ending_ = Ending::kStopped;
  stop_reason_ = std::move(reason);
  Terminate();
}

void ExecExecution::Terminate() {
  // Not yet reaped, so -pid_ is still our group (see Reap).
  ::kill(-pid_, SIGTERM);
  // A stopped process would hold the SIGTERM pending until continued.
  ::kill(-pid_, SIGCONT);
  kill_timer_.expires_after(settings_->kill_grace);
  kill_timer_.async_wait([self = shared_from_this()](const error_code& ec) {
    if (ec || self->exited_)
      return;
    ::kill(-self->pid_, SIGKILL);
  });
}

void ExecExecution::MaybeFinish() {
  if (finished_ || !exited_ || stdout_.open || stderr_.open)
    return;
  drain_timer_.cancel();
  Finish(Outcome());
}

DispatchResult ExecExecution::Outcome() const {
  std::string how;
  if (!status_known_) {
    how = "exit status unknown: the process was reaped elsewhere";
  } else if (WIFEXITED(wait_status_)) {
    how = fmt::format("exit status {}", WEXITSTATUS(wait_status_));
  } else if (WIFSIGNALED(wait_status_)) {
    how = "killed by " + SignalName(WTERMSIG(wait_status_));
  } else {
    how = fmt::format("wait status {:#x}", wait_status_);
  }
  switch (ending_) {
    case Ending::kTimedOut:
      return {Status::kTimedOut,
              fmt::format("timed out after {}ms ({})", settings_->timeout.count(), how)};
    case Ending::kStopped:
      return {Status::kStopped, fmt::format("{} ({})", stop_reason_, how)};
    case Ending::kNatural:
      break;
  }
  const bool success = status_known_ && WIFEXITED(wait_status_) && WEXITSTATUS(wait_status_) == 0;
  return {success ? Status::kDone : Status::kFailed, std::move(how)};
}

void ExecExecution::Finish(DispatchResult result) {
  finished_ = true;
  // Posted: Finish may run inside Start (spawn failure), and on_done must not.
  asio::post(executor_, [on_done = std::move(on_done_), result = std::move(result)]() mutable {
    on_done(std::move(result));
  });
}

}  // namespace

ExecRunner::ExecRunner(config::RunnerSettings settings, boost::asio::any_io_executor executor,
                       logging::Logger log)
    : settings_(std::make_shared<const config::RunnerSettings>(std::move(settings))),
      executor_(std::move(executor)),
      log_(std::move(log)) {}

std::shared_ptr<Execution> ExecRunner::Start(DispatchRequest request, OnDone on_done) {
  auto execution = std::make_shared<ExecExecution>(settings_, executor_, log_, std::move(request),
                                                   std::move(on_done));
  execution->Begin();
  return execution;
}

}  // namespace warp::scheduler
