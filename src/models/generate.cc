#include "deltatune/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "deltatune/autograd.h"
#include "deltatune/error.h"

namespace deltatune {

int64_t pick_token(const std::vector<float>& logits, const GenerationOptions& o, Generator& gen) {
  if (logits.empty()) throw Error("generate: empty logits");
  if (!o.sample || o.temperature <= 0.0f)
    return int64_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  // Candidates by descending logit; then top-k, softmax with temperature, top-p (keep the smallest
  // prefix whose mass reaches p, always at least one token), and a draw.
  std::vector<int64_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
  if (o.top_k > 0 && size_t(o.top_k) < order.size()) order.resize(size_t(o.top_k));
  std::vector<double> probs(order.size());
  const double top = logits[size_t(order[0])];
  double total = 0;
  for (size_t i = 0; i < order.size(); ++i)
    total += probs[i] = std::exp((logits[size_t(order[i])] - top) / o.temperature);
  for (double& p : probs) p /= total;
  if (o.top_p < 1.0f) {
    double mass = 0;
    size_t keep = 0;
    while (keep < probs.size() && (keep == 0 || mass < o.top_p)) mass += probs[keep++];
    probs.resize(keep);
    order.resize(keep);
    for (double& p : probs) p /= mass;
  }
  double r = gen.uniform(), acc = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    acc += probs[i];
    if (r < acc) return order[i];
  }
  return order.back();
}

namespace {
// Positions a forward pass after `cache` may still take, prefix keys counted: GPT-2's learned positions
// end at n_positions; the Llama family's rotary positions have no fixed end (-1).
int64_t positions_left(const TransformerModel& model, const KVCache& cache) {
  if (model.config.family != ArchFamily::Gpt2) return -1;
  int64_t prefix = 0;
  for (const auto& hook : model.attention_hooks)
    if (hook->enabled) prefix += hook->length();
  return model.config.max_position_embeddings - cache.length - prefix;
}

// Positions the KV cache makes room for up front: the prompt (with any virtual tokens) and the new
// tokens, within GPT-2's positions. A long generation starts at a bounded size and doubles as needed.
int64_t cache_reserve(const TransformerModel& model, int64_t prompt, int64_t max_new_tokens) {
  constexpr int64_t kMaxUpFront = 1024;
  int64_t virtual_tokens = 0;
  for (const auto& hook : model.embedding_hooks)
    if (hook->enabled) virtual_tokens += hook->length();
  int64_t want = prompt + virtual_tokens + std::min(std::max<int64_t>(max_new_tokens, 0), kMaxUpFront);
  const int64_t left = positions_left(model, KVCache{});
  return left >= 0 ? std::min(want, left) : want;
}
}  // namespace

Generation generate_with_stop(TransformerModel& model, const std::vector<int64_t>& prompt,
                              const GenerationOptions& o, const std::function<void(int64_t)>& on_token) {
  if (model.head != HeadKind::CausalLM) throw ConfigError("generate: the model needs a causal LM head");
  if (prompt.empty()) throw Error("generate: the prompt is empty (no token ids)");
  NoGradGuard no_grad;
  Generator gen(o.seed);
  KVCache cache;
  cache.reserve = cache_reserve(model, int64_t(prompt.size()), o.max_new_tokens);
  Generation result;
  std::vector<int64_t> step = prompt;
  while (int64_t(result.ids.size()) < o.max_new_tokens) {
    // A new token is only picked when it will have a position of its own after `step` is fed.
    const int64_t left = positions_left(model, cache);
    if (left >= 0 && int64_t(step.size()) >= left) {
      if (result.ids.empty())
        throw ConfigError("generate: the prompt's " + std::to_string(prompt.size()) +
                          " tokens leave none of the model's " +
                          std::to_string(model.config.max_position_embeddings) + " positions free");
      result.stop = StopReason::ContextLimit;
      break;
    }
    ModelInput in;
    in.input_ids = Tensor::from_ints(step, {1, int64_t(step.size())});
    in.cache = &cache;
    Tensor logits = model.forward(in).logits;
    const int64_t t = logits.size(1);
    std::vector<float> last = logits.select(0, 0).select(0, t - 1).contiguous().to_floats();
    int64_t next = pick_token(last, o, gen);
    result.ids.push_back(next);
    if (on_token) on_token(next);
    if (std::find(o.eos_ids.begin(), o.eos_ids.end(), next) != o.eos_ids.end()) {
      result.stop = StopReason::EndOfSequence;
      break;
    }
    step = {next};
  }
  return result;
}

std::vector<int64_t> generate(TransformerModel& model, const std::vector<int64_t>& prompt,
                              const GenerationOptions& o, const std::function<void(int64_t)>& on_token) {
  return generate_with_stop(model, prompt, o, on_token).ids;
}

}  // namespace deltatune
