#pragma once
// Training progress for people (a status line on stderr: ProgressBar, driven by the default event
// sink train::stderr_progress) and for programs (RUN_DIR/log.jsonl, one JSON object per line: every
// training update and every evaluation).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace deltatune::train_detail {

class RunLog {
 public:
  explicit RunLog(std::filesystem::path file);
  ~RunLog();
  RunLog(const RunLog&) = delete;
  RunLog& operator=(const RunLog&) = delete;
  void write(const nlohmann::json& entry);  // flushed at once: a crash loses nothing logged
  // Drops entries after `step` (a resumed run re-logs the updates it replays).
  static void truncate_after(const std::filesystem::path& file, int64_t step);

 private:
  std::filesystem::path file_;
  std::FILE* out_ = nullptr;
};

// On a terminal the status line is redrawn in place (\r); otherwise (logs, CI) a line is printed
// every `every` updates, so files do not fill with carriage returns.
class ProgressBar {
 public:
  ProgressBar(int64_t total_steps, int64_t first_step, bool enabled, int64_t every);
  void update(int64_t step, double epoch, double loss, double lr, double tokens_per_s);
  // A line that stays (evaluation results), printed above the status line.
  void message(const std::string& line);
  void finish();

 private:
  void clear();
  std::string status(int64_t step, double epoch, double loss, double lr, double tokens_per_s) const;

  int64_t total_, first_step_, every_;
  bool enabled_, tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

std::string format_duration(double seconds);  // "1:02:03", "4:05"

}  // namespace deltatune::train_detail
