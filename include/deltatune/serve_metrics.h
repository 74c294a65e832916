#pragma once
// What a server counts, written as Prometheus text (GET /metrics): requests by endpoint and status,
// tokens in and out, prompts prefilled per forward, completions by finish reason (cancelled: the client went
// away), the queue depth, per step the batch size and how many deltas shared it, and latency histograms (time
// to first token, time per output token, total). Thread-safe.
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace deltatune::serve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}
  void observe(double value);
  // `name`_bucket{le=...}, `name`_sum and `name`_count lines.
  std::string prometheus(const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // the last one: above every bound
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  void request(const std::string& endpoint, int status);
  void tokens(int64_t in, int64_t out);
  void finished(const std::string& reason);       // a completion's finish_reason (or "error")
  void step(int64_t batch_rows, int64_t deltas);  // one scheduler step
  void prefill(int64_t prompts);                  // prompts prefilled in one forward
  void time_to_first_token(double seconds);
  void per_output_token(double seconds);
  void total_latency(double seconds);
  // `queue_depth` is read when the text is written.
  std::string prometheus(const std::function<int64_t()>& queue_depth) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, uint64_t> finished_;
  uint64_t tokens_in_ = 0, tokens_out_ = 0, steps_ = 0;
  Histogram batch_rows_, deltas_per_step_, prefill_rows_, ttft_, per_token_, total_;
};

}  // namespace deltatune::serve
