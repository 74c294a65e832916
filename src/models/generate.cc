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
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
  if (o.top_k > 0 && size_t(o.top_k) < order.size()) order.resize(size_t(o.top_k));
  std::vector<double> probs(order.size());
  const double top = logits[size_t(order[0])];
  double total = 0;
  for (size_t i = 0; i < order.size(); ++i) total += probs[i] = std::exp((logits[size_t(order[i])] - top) / o.temperature);
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

std::vector<int64_t> generate(TransformerModel& model, const std::vector<int64_t>& prompt, const GenerationOptions& o,
                              const std::function<void(int64_t)>& on_token) {
  if (model.head != HeadKind::CausalLM) throw ConfigError("generate: the model needs a causal LM head");
  if (prompt.empty()) throw Error("generate: the prompt is empty (no token ids)");
  NoGradGuard no_grad;
  Generator gen(o.seed);
  KVCache cache;
  std::vector<int64_t> out;
  std::vector<int64_t> step = prompt;
  for (int64_t i = 0; i < o.max_new_tokens; ++i) {
    ModelInput in;
    in.input_ids = Tensor::from_ints(step, {1, int64_t(step.size())});
    in.cache = &cache;
    Tensor logits = model.forward(in).logits;
    const int64_t t = logits.size(1), v = logits.size(2);
    std::vector<float> last = logits.select(0, 0).select(0, t - 1).contiguous().to_floats();
    (void)v;
    int64_t next = pick_token(last, o, gen);
    out.push_back(next);
    if (on_token) on_token(next);
    if (std::find(o.eos_ids.begin(), o.eos_ids.end(), next) != o.eos_ids.end()) break;
    step = {next};
  }
  return out;
}

}  // namespace deltatune
