#include "deltatune/model.h"

namespace deltatune {

const char* head_name(HeadKind h) {
  switch (h) {
    case HeadKind::None: return "none";
    case HeadKind::CausalLM: return "causal-lm";
    case HeadKind::MaskedLM: return "masked-lm";
    case HeadKind::SequenceClassification: return "sequence-classification";
  }
  return "?";
}

void TransformerModel::extend_attention(int64_t layer, const Tensor& hidden, Tensor& k, Tensor& v, Tensor& key_mask) {
  for (auto& h : attention_hooks)
    if (h->enabled) h->extend(layer, hidden, k, v, key_mask);
}

int64_t TransformerModel::extend_embeddings(Tensor& embeddings, Tensor& mask) {
  const int64_t before = embeddings.size(1);
  for (auto& h : embedding_hooks)
    if (h->enabled) h->extend(embeddings, mask);
  return embeddings.size(1) - before;
}

int64_t TransformerModel::prefix_length() const {
  int64_t n = 0;
  for (auto& h : attention_hooks)
    if (h->enabled) n += h->length();
  return n;
}

}  // namespace deltatune
