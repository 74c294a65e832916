#pragma once
// Text generation for decoder models with a KV cache: greedy or sampled (temperature, top-k, top-p),
// stopping at an end-of-sequence token or a length limit.
#include <functional>
#include <vector>

#include "deltatune/model.h"

namespace deltatune {

struct GenerationOptions {
  int64_t max_new_tokens = 32;
  bool sample = false;      // false: greedy
  float temperature = 1.0f;
  int64_t top_k = 0;        // 0: no limit
  float top_p = 1.0f;       // nucleus mass kept
  uint64_t seed = 0;
  std::vector<int64_t> eos_ids;  // stop when one is produced (it is included in the output)
};

// Returns the new token ids only. on_token (optional) sees each one as it is produced.
std::vector<int64_t> generate(TransformerModel& model, const std::vector<int64_t>& prompt,
                              const GenerationOptions& options,
                              const std::function<void(int64_t)>& on_token = nullptr);

// Picks the next token from one row of logits (exposed for tests).
int64_t pick_token(const std::vector<float>& logits, const GenerationOptions& options, Generator& gen);

}  // namespace deltatune
