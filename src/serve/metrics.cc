#include <cstdio>
#include <sstream>

#include "deltatune/serve_metrics.h"

namespace deltatune::serve {
namespace {
std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}
const std::vector<double> kSeconds{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
const std::vector<double> kCounts{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
}  // namespace

void Histogram::observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += value;
  ++count_;
}

std::string Histogram::prometheus(const std::string& name, const std::string& help) const {
  std::ostringstream out;
  out << "# HELP " << name << ' ' << help << "\n# TYPE " << name << " histogram\n";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out << name << "_bucket{le=\"" << number(bounds_[i]) << "\"} " << cumulative << '\n';
  }
  out << name << "_bucket{le=\"+Inf\"} " << count_ << '\n';
  out << name << "_sum " << number(sum_) << '\n' << name << "_count " << count_ << '\n';
  return out.str();
}

Metrics::Metrics()
    : batch_rows_(kCounts),
      deltas_per_step_(kCounts),
      prefill_rows_(kCounts),
      ttft_(kSeconds),
      per_token_(kSeconds),
      total_(kSeconds) {}

void Metrics::request(const std::string& endpoint, int status) {
  std::lock_guard lock(mutex_);
  ++requests_[{endpoint, status}];
}
void Metrics::tokens(int64_t in, int64_t out) {
  std::lock_guard lock(mutex_);
  tokens_in_ += uint64_t(in);
  tokens_out_ += uint64_t(out);
}
void Metrics::finished(const std::string& reason) {
  std::lock_guard lock(mutex_);
  ++finished_[reason];
}
void Metrics::step(int64_t batch_rows, int64_t deltas) {
  std::lock_guard lock(mutex_);
  ++steps_;
  batch_rows_.observe(double(batch_rows));
  deltas_per_step_.observe(double(deltas));
}
void Metrics::prefill(int64_t prompts) {
  std::lock_guard lock(mutex_);
  prefill_rows_.observe(double(prompts));
}
void Metrics::time_to_first_token(double s) {
  std::lock_guard lock(mutex_);
  ttft_.observe(s);
}
void Metrics::per_output_token(double s) {
  std::lock_guard lock(mutex_);
  per_token_.observe(s);
}
void Metrics::total_latency(double s) {
  std::lock_guard lock(mutex_);
  total_.observe(s);
}

std::string Metrics::prometheus(const std::function<int64_t()>& queue_depth) const {
  const int64_t depth = queue_depth ? queue_depth() : 0;
  std::lock_guard lock(mutex_);
  std::ostringstream out;
  out << "# HELP deltatune_requests_total HTTP requests by endpoint and status.\n"
         "# TYPE deltatune_requests_total counter\n";
  for (auto& [key, n] : requests_)
    out << "deltatune_requests_total{endpoint=\"" << key.first << "\",status=\"" << key.second << "\"} " << n
        << '\n';
  out << "# HELP deltatune_completions_total Completions ended, by finish reason (cancelled: the client went "
         "away).\n# TYPE deltatune_completions_total counter\n";
  for (auto& [reason, n] : finished_)
    out << "deltatune_completions_total{finish_reason=\"" << reason << "\"} " << n << '\n';
  out << "# HELP deltatune_prompt_tokens_total Tokens read (prompts and inputs).\n"
         "# TYPE deltatune_prompt_tokens_total counter\ndeltatune_prompt_tokens_total "
      << tokens_in_ << "\n# HELP deltatune_generated_tokens_total Tokens generated.\n"
      << "# TYPE deltatune_generated_tokens_total counter\ndeltatune_generated_tokens_total " << tokens_out_
      << "\n# HELP deltatune_queue_depth Requests waiting or running.\n# TYPE deltatune_queue_depth gauge\n"
      << "deltatune_queue_depth " << depth << "\n# HELP deltatune_steps_total Scheduler steps run.\n"
      << "# TYPE deltatune_steps_total counter\ndeltatune_steps_total " << steps_ << '\n';
  out << batch_rows_.prometheus("deltatune_step_batch_rows", "Sequences decoded or prefilled per step.");
  out << deltas_per_step_.prometheus("deltatune_step_deltas", "Distinct deltas (the base counted) per step.");
  out << prefill_rows_.prometheus("deltatune_prefill_batch_rows",
                                  "Prompts prefilled together in one forward.");
  out << ttft_.prometheus("deltatune_time_to_first_token_seconds", "Time to the first generated token.");
  out << per_token_.prometheus("deltatune_time_per_output_token_seconds",
                               "Time per generated token after the first.");
  out << total_.prometheus("deltatune_request_seconds", "Total time of a completion.");
  return out.str();
}

}  // namespace deltatune::serve
