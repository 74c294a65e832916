#include "deltatune/model.h"

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "deltatune/threads.h"
#include "models/common.h"

namespace deltatune {

const char* head_name(HeadKind h) {
  switch (h) {
    case HeadKind::None:
      return "none";
    case HeadKind::CausalLM:
      return "causal-lm";
    case HeadKind::MaskedLM:
      return "masked-lm";
    case HeadKind::SequenceClassification:
      return "sequence-classification";
  }
  return "?";
}

namespace {
void check_row_caches(const ModelInput& in, const ModelConfig& config) {
  if (in.row_caches.empty()) return;
  if (config.family == ArchFamily::Bert)
    throw ConfigError("forward: per-row KV caches are for decoders (GPT-2, Llama), not BERT");
  if (in.cache || in.attention_mask.defined())
    throw ConfigError("forward: per-row KV caches go without a shared cache or an attention mask");
  if (in.input_ids.dim() != 2 || in.input_ids.size(0) != int64_t(in.row_caches.size()))
    throw ShapeError("forward: " + std::to_string(in.row_caches.size()) + " row caches for input_ids " +
                     shape_str(in.input_ids.shape()));
  for (const KVCache* c : in.row_caches)
    if (!c) throw ConfigError("forward: a row cache is missing");
}
}  // namespace

ModelOutput TransformerModel::forward(const ModelInput& input) {
  use_num_threads_on_this_thread();
  check_row_caches(input, config);
  // A soft prompt joins a sequence's first pass (later passes find it in the cache), which a row-cache
  // prefill does not run as such.
  const bool prefills = std::any_of(input.row_caches.begin(), input.row_caches.end(),
                                    [](const KVCache* c) { return c->length == 0; });
  for (auto& hook : embedding_hooks)
    if (hook->enabled && prefills)
      throw ConfigError(
          "forward: a soft prompt (prompt tuning) cannot join a row-cache prefill: prefill alone");
  if (input.context) {
    ForwardScope scope(*input.context);
    return run_forward(input);
  }
  // A fresh context per call; the count keeps consecutive calls' dropout different, and the first
  // call's seed is the default one.
  ForwardContext own(ForwardContext::kDefaultDropoutSeed + calls_without_context_.fetch_add(1));
  ForwardScope scope(own);
  return run_forward(input);
}

void TransformerModel::extend_attention(int64_t layer, const Tensor& hidden, Tensor& k, Tensor& v,
                                        Tensor& key_mask) {
  for (auto& h : attention_hooks)
    if (h->enabled) h->extend(layer, hidden, k, v, key_mask);
}

void TransformerModel::check_gradient_checkpointing() const {
  for (const auto& hook : attention_hooks)
    if (hook->enabled)
      throw ConfigError("gradient checkpointing does not support attention hooks (prefix tuning" +
                        (hook->owner.empty() ? std::string() : ": " + hook->owner) +
                        "): they build their keys once per call, outside the blocks");
}

Tensor TransformerModel::run_block(const ModelInput& input, const BlockFn& block, const Tensor& x) {
  if (!gradient_checkpointing || !training() || !grad_enabled() || input.cache || !input.row_caches.empty())
    return block(x);
  check_gradient_checkpointing();
  // The replay runs in a copy of the call's context as the block found it: the same dropout draws and
  // the values hooks handed each other before it (UniPELT's mask).
  return checkpoint(
      block,
      [block, at_start = ForwardContext::current()](const Tensor& in) {
        ForwardContext replayed = at_start;
        ForwardScope scope(replayed);
        return block(in);
      },
      x);
}

int64_t TransformerModel::extend_embeddings(Tensor& embeddings, Tensor& mask) {
  const int64_t before = embeddings.size(1);
  for (auto& h : embedding_hooks)
    if (h->enabled) h->extend(embeddings, mask);
  return embeddings.size(1) - before;
}

std::optional<int64_t> TransformerModel::max_input_length() const {
  if (config.family == ArchFamily::Llama) return std::nullopt;
  int64_t virtual_tokens = 0;
  for (auto& h : embedding_hooks)
    if (h->enabled) virtual_tokens += h->length();
  if (config.family == ArchFamily::Gpt2) virtual_tokens += prefix_length();
  return config.max_position_embeddings - config.position_offset - virtual_tokens;
}

Tensor TransformerModel::row_positions(const ModelInput& in, int64_t length) const {
  const int64_t prefix = prefix_length();
  std::vector<int64_t> p;
  for (const KVCache* c : in.row_caches)
    for (int64_t t = 0; t < length; ++t) p.push_back(c->length + prefix + t);
  return Tensor::from_ints(p, {int64_t(in.row_caches.size()), length});
}

Tensor TransformerModel::attend_rows(const ModelInput& in, int64_t layer, const Tensor& hidden,
                                     const Tensor& q, const Tensor& k, const Tensor& v, float scale) {
  std::vector<Tensor> rows;
  for (int64_t b = 0; b < int64_t(in.row_caches.size()); ++b) {
    // The same steps, on the same shapes, as a one-row forward with its own cache: the same numbers.
    Tensor kb = k.slice(0, b, b + 1), vb = v.slice(0, b, b + 1);
    models::use_cache(in.row_caches[size_t(b)], layer, kb, vb);
    Tensor key_mask = Tensor::ones({1, kb.size(2)});
    extend_attention(layer, hidden.slice(0, b, b + 1), kb, vb, key_mask);
    rows.push_back(ops::scaled_dot_product_attention(q.slice(0, b, b + 1), kb, vb, key_mask, true, scale));
  }
  return rows.size() == 1 ? rows[0] : ops::concat(rows, 0);
}

int64_t TransformerModel::prefix_length() const {
  int64_t n = 0;
  for (auto& h : attention_hooks)
    if (h->enabled) n += h->length();
  return n;
}

}  // namespace deltatune
