#include "deltatune/model.h"

#include "deltatune/threads.h"

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

ModelOutput TransformerModel::forward(const ModelInput& input) {
  use_num_threads_on_this_thread();
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

int64_t TransformerModel::prefix_length() const {
  int64_t n = 0;
  for (auto& h : attention_hooks)
    if (h->enabled) n += h->length();
  return n;
}

}  // namespace deltatune
