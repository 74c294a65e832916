#pragma once
// The real `deltatune serve` as a child process on a free loopback port, for end-to-end tests: started
// with --port 0, its port read from the line it prints, stopped with a signal (its exit code returned),
// killed if a test leaves it running. Every wait is bounded.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace test_support {

class ServeProcess {
 public:
  // args: what follows `deltatune serve` (--port 0 is added). Empty port(): it did not start (see log()).
  explicit ServeProcess(const std::vector<std::string>& args, int start_seconds = 120) {
    int out[2];
    if (pipe(out) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], 1);
      dup2(out[1], 2);
      close(out[0]);
      std::vector<std::string> all{DELTATUNE_BINARY, "serve", "--port", "0"};
      all.insert(all.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out[1]);
    fd_ = out[0];
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(start_seconds);
    while (port_ == 0 && std::chrono::steady_clock::now() < deadline) {
      if (!read_some(200)) break;
      const std::string text = log();
      const auto at = text.find("listening on http://127.0.0.1:");
      if (at != std::string::npos) {
        const auto end = text.find('\n', at);
        if (end != std::string::npos) port_ = std::stoi(text.substr(at + 30, end - at - 30));
      }
    }
    // Keep draining its output so that it never blocks on a full pipe.
    drainer_ = std::thread([this] {
      while (read_some(200)) {
      }
    });
  }
  ~ServeProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (drainer_.joinable()) drainer_.join();
    if (fd_ >= 0) close(fd_);
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string log() const {
    std::lock_guard lock(mutex_);
    return log_;
  }

  // Sends `signal` and waits (bounded) for the exit; the exit code, or -1 when it had to be killed.
  int stop(int signal = SIGTERM, int seconds = 60) {
    kill(pid_, signal);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    int status = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }

  // Resident memory of the server, in kB (from /proc).
  long rss_kb() const {
    std::ifstream status("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(status, line))
      if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return -1;
  }

 private:
  bool read_some(int timeout_ms) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) < 0) return false;
    if (!(p.revents & (POLLIN | POLLHUP))) return true;
    char buf[4096];
    const ssize_t n = read(fd_, buf, sizeof buf);
    if (n <= 0) return false;
    std::lock_guard lock(mutex_);
    log_.append(buf, size_t(n));
    return true;
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  int port_ = 0;
  bool exited_ = false;
  mutable std::mutex mutex_;
  std::string log_;
  std::thread drainer_;
};

}  // namespace test_support
