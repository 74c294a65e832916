#pragma once
// Text generation for decoder models with a KV cache: greedy or sampled (temperature, top-k, top-p),
// stopping at an end-of-sequence token or a length limit.
#include <functional>
#include <vector>

#include "deltatune/model.h"

namespace deltatune {

struct GenerationOptions {
  int64_t max_new_tokens = 32;
  bool sample = false;  // false: greedy
  float temperature = 1.0f;
  int64_t top_k = 0;   // 0: no limit
  float top_p = 1.0f;  // nucleus mass kept
  uint64_t seed = 0;
  std::vector<int64_t> eos_ids;  // stop when one is produced (it is included in the output)
};

// Why generation ended.
enum class StopReason {
  MaxNewTokens,   // options.max_new_tokens were produced
  EndOfSequence,  // one of options.eos_ids was produced
  ContextLimit,   // the sequence filled the model's positions (GPT-2's n_positions)
};

struct Generation {
  std::vector<int64_t> ids;  // the new token ids only
  StopReason stop = StopReason::MaxNewTokens;
};

// Generates until max_new_tokens, an end-of-sequence token or the model's context limit (prompt and
// new tokens together never take more positions than the model has). on_token (optional) sees each
// new id as it is produced. A prompt that leaves no position free is a ConfigError.
Generation generate_with_stop(TransformerModel& model, const std::vector<int64_t>& prompt,
                              const GenerationOptions& options,
                              const std::function<void(int64_t)>& on_token = nullptr);

// The same, returning the new token ids only.
std::vector<int64_t> generate(TransformerModel& model, const std::vector<int64_t>& prompt,
                              const GenerationOptions& options,
                              const std::function<void(int64_t)>& on_token = nullptr);

// Picks the next token from one row of logits (exposed for tests).
int64_t pick_token(const std::vector<float>& logits, const GenerationOptions& options, Generator& gen);

}  // namespace deltatune
