#include "serve/sequence.h"

#include <algorithm>

namespace deltatune::serve {
namespace {
const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD: a character whose bytes are not all decoded yet
}

Sequence::Sequence(std::shared_ptr<DeltaEntry> entry, const Tokenizer& tokenizer, std::vector<int64_t> prompt,
                   GenerationOptions options, std::vector<std::string> stop)
    : entry(std::move(entry)),
      prompt(std::move(prompt)),
      options(std::move(options)),
      generator(this->options.seed),
      tokenizer_(tokenizer),
      stop_(std::move(stop)) {
  for (auto& s : stop_) hold_back_ = std::max(hold_back_, s.empty() ? 0 : s.size() - 1);
}

bool Sequence::add_token(int64_t id) {
  if (ids.empty()) first_token = Clock::now();
  ids.push_back(id);
  std::string text = tokenizer_.decode_continuation(prompt, ids);
  size_t cut = std::string::npos;
  for (auto& s : stop_)
    if (!s.empty()) cut = std::min(cut, text.find(s));
  if (cut != std::string::npos) {
    text.resize(cut);
    publish(text, true, "stop");
    return true;
  }
  const auto& eos = options.eos_ids;
  if (std::find(eos.begin(), eos.end(), id) != eos.end()) {
    publish(text, true, "stop");
    return true;
  }
  if (int64_t(ids.size()) >= options.max_new_tokens) {
    publish(text, true, "length");
    return true;
  }
  publish(text, false, "");
  return false;
}

void Sequence::finish(const std::string& reason) {
  publish(tokenizer_.decode_continuation(prompt, ids), true, reason);
}

void Sequence::fail(std::exception_ptr error) {
  std::lock_guard lock(mutex_);
  finished_ = true;
  done_ = true;
  error_ = error;
  changed_.notify_all();
}

void Sequence::publish(const std::string& text, bool done, const std::string& reason) {
  std::lock_guard lock(mutex_);
  size_t settled = text.size();
  if (!done) {
    settled = text.size() > hold_back_ ? text.size() - hold_back_ : 0;
    while (settled > 0 && settled < text.size() && (uint8_t(text[settled]) & 0xC0) == 0x80) --settled;
    if (text.substr(0, settled).ends_with(kReplacement)) settled -= kReplacement.size();
  }
  // Released text only grows: a later decoding that rewrites it (rare) keeps what was sent.
  if (settled > released_.size() && text.compare(0, released_.size(), released_) == 0)
    released_ = text.substr(0, settled);
  if (done) {
    finished_ = true;
    done_ = true;
    finish_reason_ = reason;
    final_text_ = text;
  }
  changed_.notify_all();
}

bool Sequence::take(std::string& text, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return done_ || released_.size() > taken_; });
  text += released_.substr(taken_);
  taken_ = released_.size();
  return done_;  // a finished sequence's text is all released
}

bool Sequence::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] { return done_; });
}

std::string Sequence::end_reason() {
  std::lock_guard lock(mutex_);
  return error_ ? "error" : finish_reason_;
}

Completion Sequence::result() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return done_; });
  if (error_) std::rethrow_exception(error_);
  Completion c;
  c.text = final_text_;
  c.ids = ids;
  c.finish_reason = finish_reason_;
  c.prompt_tokens = int64_t(prompt.size());
  return c;
}

}  // namespace deltatune::serve
