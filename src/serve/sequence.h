#pragma once
// One completion as the scheduler runs it (deltatune/serve.h): its prompt, its own KV cache and
// generator, the text so far. The scheduler thread adds tokens; the waiting HTTP thread takes the
// text released so far. Text that could still turn into a stop string, or a character whose bytes are
// not all there yet, is held back until it is settled.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "deltatune/serve.h"
#include "deltatune/tokenizer.h"
#include "serve/model_groups.h"

namespace deltatune::serve {

using Clock = std::chrono::steady_clock;

class Sequence : public PendingCompletion {
 public:
  Sequence(std::shared_ptr<DeltaEntry> entry, const Tokenizer& tokenizer, std::vector<int64_t> prompt,
           GenerationOptions options, std::vector<std::string> stop);

  // --- the scheduler's side
  // Records a produced token; true when it ends the sequence (end of sequence, stop string, length).
  bool add_token(int64_t id);
  void finish(const std::string& reason);  // "length", "cancelled"
  void fail(std::exception_ptr error);     // result() throws it
  bool finished() const { return finished_; }

  const std::shared_ptr<DeltaEntry> entry;
  const std::vector<int64_t> prompt;
  const GenerationOptions options;
  std::unique_ptr<KVCache> cache;  // freed the moment the sequence ends
  Generator generator;
  std::vector<int64_t> ids;
  const Clock::time_point submitted = Clock::now();
  Clock::time_point first_token{};
  std::atomic<bool> cancelled{false};

  // --- the waiter's side (PendingCompletion)
  bool take(std::string& text, std::chrono::milliseconds timeout) override;
  bool wait(std::chrono::milliseconds timeout) override;
  Completion result() override;
  // How it ended, for the metrics: "stop", "length", "cancelled", or "error".
  std::string end_reason();
  void cancel() override { cancelled = true; }
  int64_t prompt_tokens() const override { return int64_t(prompt.size()); }

 private:
  void publish(const std::string& text, bool done, const std::string& reason);

  const Tokenizer& tokenizer_;
  const std::vector<std::string> stop_;
  size_t hold_back_ = 0;  // bytes a stop string could still need
  bool finished_ = false;

  std::mutex mutex_;
  std::condition_variable changed_;
  std::string released_;  // text the waiter may take (only ever grows)
  std::string final_text_;
  size_t taken_ = 0;
  bool done_ = false;
  std::string finish_reason_;
  std::exception_ptr error_;
};

}  // namespace deltatune::serve
