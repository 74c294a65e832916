#include "train/progress.h"

#include <unistd.h>

#include <cmath>
#include <fstream>
#include <optional>
#include <vector>

#include "deltatune/error.h"
#include "deltatune/train_events.h"
#include "train/files.h"

namespace fs = std::filesystem;

namespace deltatune::train_detail {

RunLog::RunLog(fs::path file) : file_(std::move(file)) {
  out_ = std::fopen(file_.c_str(), "a");
  if (!out_) throw IoError(file_.string() + ": cannot open the log for writing");
}

RunLog::~RunLog() {
  if (out_) std::fclose(out_);
}

void RunLog::write(const nlohmann::json& entry) {
  const std::string line = entry.dump() + "\n";
  std::fwrite(line.data(), 1, line.size(), out_);
  std::fflush(out_);
}

void RunLog::truncate_after(const fs::path& file, int64_t step) {
  if (!fs::exists(file)) return;
  std::ifstream in(file);
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      nlohmann::json j = nlohmann::json::parse(line);
      if (j.value("step", int64_t(0)) > step) continue;
    } catch (const nlohmann::json::exception&) {
      continue;  // a line cut short by a crash
    }
    kept += line + "\n";
  }
  write_file_atomic(file, kept);
}

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e7) return "?";
  const int64_t s = int64_t(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(s / 3600), (long long)(s / 60 % 60),
                  (long long)(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", (long long)(s / 60), (long long)(s % 60));
  return buf;
}

ProgressBar::ProgressBar(int64_t total_steps, int64_t first_step, bool enabled, int64_t every)
    : total_(total_steps),
      first_step_(first_step),
      every_(every > 0 ? every : std::max<int64_t>(1, total_steps / 20)),
      enabled_(enabled),
      tty_(enabled && isatty(fileno(stderr))),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

std::string ProgressBar::status(int64_t step, double epoch, double loss, double lr,
                                double tokens_per_s) const {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t done = step - first_step_;
  const double eta = done > 0 ? elapsed / double(done) * double(total_ - step) : -1;
  char buf[256];
  std::snprintf(buf, sizeof buf, "step %lld/%lld  epoch %.2f  loss %.4f  lr %.2e  %.0f tok/s  ETA %s",
                (long long)step, (long long)total_, epoch, loss, lr, tokens_per_s,
                format_duration(eta).c_str());
  return buf;
}

void ProgressBar::update(int64_t step, double epoch, double loss, double lr, double tokens_per_s) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (tty_) {
    // Redrawing every update of a fast run would spend more time on the terminal than on training.
    if (step != total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    const std::string line = status(step, epoch, loss, lr, tokens_per_s);
    std::fprintf(stderr, "\r%s\033[K", line.c_str());
    std::fflush(stderr);
    drawn_ = true;
    last_draw_ = now;
  } else if (step % every_ == 0 || step == total_) {
    std::fprintf(stderr, "%s\n", status(step, epoch, loss, lr, tokens_per_s).c_str());
  }
}

void ProgressBar::clear() {
  if (drawn_) {
    std::fprintf(stderr, "\r\033[K");
    drawn_ = false;
  }
}

void ProgressBar::message(const std::string& line) {
  if (!enabled_) return;
  clear();
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (!enabled_) return;
  if (drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

namespace {

double number_or_nan(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : std::nan("");
}

// The command line's view of a run: the progress bar and a line per evaluation.
class StderrProgress final : public train::TrainEvents {
 public:
  StderrProgress(bool bar, int64_t log_every) : enabled_(bar), log_every_(log_every) {}

  void on_start(const train::StartEvent& e) override {
    bar_.emplace(e.total_steps, e.first_step, enabled_, log_every_);
  }
  void on_update(const train::UpdateEvent& e) override {
    if (bar_) bar_->update(e.step, e.epoch, e.loss, e.lr, e.tokens_per_s);
  }
  void on_eval(const train::EvalEvent& e) override {
    if (!bar_) return;
    const nlohmann::json& m = e.metrics;
    const char* mark = e.is_best ? "  (best)" : e.early_stopping ? "  (early stopping)" : "";
    char line[256];
    if (m.contains("perplexity"))  // a language model
      std::snprintf(line, sizeof line, "dev @ step %lld: loss %.4f  perplexity %.3f%s", (long long)e.step,
                    number_or_nan(m, "loss"), number_or_nan(m, "perplexity"), mark);
    else
      std::snprintf(line, sizeof line, "dev @ step %lld: loss %.4f  accuracy %.4f  macro_f1 %.4f%s",
                    (long long)e.step, number_or_nan(m, "loss"), number_or_nan(m, "accuracy"),
                    number_or_nan(m, "macro_f1"), mark);
    bar_->message(line);
  }
  // Warnings reach the user even with the bar off (--quiet), above the status line when one is drawn.
  void on_warning(const std::string& text) override {
    if (bar_ && enabled_) return bar_->message(text);
    std::fprintf(stderr, "%s\n", text.c_str());
  }
  void on_diverged(int64_t, const std::string&) override {
    if (bar_) bar_->finish();
  }
  void on_end(const train::TrainResult&) override {
    if (bar_) bar_->finish();
  }

 private:
  bool enabled_;
  int64_t log_every_;
  std::optional<ProgressBar> bar_;
};

}  // namespace

}  // namespace deltatune::train_detail

namespace deltatune::train {

std::shared_ptr<TrainEvents> stderr_progress(bool bar, int64_t log_every) {
  return std::make_shared<train_detail::StderrProgress>(bar, log_every);
}

}  // namespace deltatune::train
