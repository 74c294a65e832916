#pragma once
// Runs the real `deltatune` binary and captures its output and exit code.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace cli_test {

struct Result {
  int code = -1;
  std::string output;  // stdout and stderr together
};

// `env_prefix` goes before the binary (e.g. "env -u VAR NAME=value").
inline Result run_with_env(const std::string& env_prefix, const std::string& args) {
  Result r;
  std::string command = env_prefix + " " + std::string(DELTATUNE_BINARY) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

inline Result run(const std::string& args) { return run_with_env("", args); }

inline std::string quote(const std::string& s) { return "'" + s + "'"; }

}  // namespace cli_test
