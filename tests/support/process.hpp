// Test support: temporary directories, files, and warpd child processes with captured output.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace warp::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "warpd-test-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr)
      throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

inline void WriteFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

inline std::string ReadFile(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// A warpd child process whose stdout and stderr go to files in `dir`.
class Warpd {
 public:
  Warpd(const fs::path& dir, std::vector<std::string> args, const std::string& name = "warpd")
      : out_(dir / (name + ".stdout.log")), err_(dir / (name + ".stderr.log")) {
    std::vector<std::string> argv{WARPD_PATH};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv)
      cargv.push_back(a.data());
    cargv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int rc = posix_spawn(&pid_, WARPD_PATH, &fa, nullptr, cargv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
      throw std::runtime_error("cannot start warpd");
  }
  ~Warpd() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  void Signal(int signo) { kill(pid_, signo); }

  /// The child's pid, or -1 once it has been reaped.
  pid_t pid() const { return pid_; }
  /// Freezes the process (SIGSTOP) until Cont(); its own children keep running. Both do
  /// nothing once the process has been reaped.
  void Stop() {
    if (pid_ > 0)
      kill(pid_, SIGSTOP);
  }
  void Cont() {
    if (pid_ > 0)
      kill(pid_, SIGCONT);
  }
  /// SIGKILLs the process and reaps it; returns at once if it has already been reaped.
  void Kill() {
    if (pid_ <= 0)
      return;
    kill(pid_, SIGKILL);
    while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }
  /// True while the process has not exited (a stopped process is running). Reaps it if it has.
  bool Running() {
    if (pid_ <= 0)
      return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      return false;
    }
    return true;
  }
  /// After Running() returned false: the exit status, or minus the signal that ended it.
  int ExitStatus() const { return exit_status_; }
  const fs::path& ErrPath() const { return err_; }

  /// Waits for the exit; returns the exit status, or -1 on timeout / death by signal.
  int Wait(std::chrono::milliseconds limit = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(20ms);
    }
    return -1;
  }

  /// Waits until stderr contains `text` (counting from `from`); returns the position after it.
  bool WaitForLog(const std::string& text, std::chrono::milliseconds limit = 15s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      if (Err().find(text) != std::string::npos)
        return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }

  std::string Out() const { return ReadFile(out_); }
  std::string Err() const { return ReadFile(err_); }

 private:
  fs::path out_;
  fs::path err_;
  pid_t pid_ = -1;
  int exit_status_ = 0;
};

}  // namespace warp::test
