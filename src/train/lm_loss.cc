// Losses the trainer optimises: class cross-entropy, and next-token cross-entropy for causal LMs.
#include "deltatune/ops.h"
#include "deltatune/trainer.h"

namespace deltatune::train {

Tensor causal_lm_loss(const Tensor& logits, const data::Batch& batch, int64_t* counted) {
  if (logits.dim() != 3)
    throw ShapeError("causal_lm_loss: logits must be [B, T, V], got " + shape_str(logits.shape()));
  const int64_t B = logits.size(0), T = logits.size(1), V = logits.size(2);
  if (batch.input_ids.shape() != Shape{B, T})
    throw ShapeError("causal_lm_loss: logits " + shape_str(logits.shape()) + " do not fit input_ids " +
                     shape_str(batch.input_ids.shape()));
  if (T < 2) throw ShapeError("causal_lm_loss: a causal LM needs at least two tokens per row");
  // Position t predicts token t + 1; predictions of padding and of a prompt are ignored (-100).
  const std::vector<int64_t> ids = batch.input_ids.to_ints(), mask = batch.attention_mask.to_ints();
  std::vector<int64_t> targets(size_t(B * (T - 1)));
  int64_t n = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T; ++t) {
      const int64_t from = size_t(b) < batch.loss_from.size() ? batch.loss_from[size_t(b)] : 0;
      const bool real = mask[size_t(b * T + t + 1)] != 0 && t + 1 >= from;
      targets[size_t(b * (T - 1) + t)] = real ? ids[size_t(b * T + t + 1)] : -100;
      n += real;
    }
  if (counted) *counted = n;
  Tensor predictions = ops::reshape(logits.slice(1, 0, T - 1), {B * (T - 1), V});
  return ops::cross_entropy(predictions, Tensor::from_ints(targets, {B * (T - 1)}), -100);
}

Tensor masked_lm_loss(const Tensor& logits, const data::Batch& batch, int64_t* counted) {
  if (!batch.lm_targets.defined()) throw ConfigError("masked_lm_loss: the batch was not masked");
  if (logits.dim() != 3 || logits.size(0) * logits.size(1) != batch.lm_targets.numel())
    throw ShapeError("masked_lm_loss: logits " + shape_str(logits.shape()) + " do not fit the targets " +
                     shape_str(batch.lm_targets.shape()));
  if (counted) {
    *counted = 0;
    for (int64_t t : batch.lm_targets.to_ints()) *counted += t != -100;
  }
  const int64_t V = logits.size(2);
  return ops::cross_entropy(ops::reshape(logits, {logits.size(0) * logits.size(1), V}),
                            ops::reshape(batch.lm_targets, {batch.lm_targets.numel()}), -100);
}

Tensor training_loss(const TransformerModel& model, const Tensor& logits, const data::Batch& batch) {
  if (model.head == HeadKind::CausalLM) return causal_lm_loss(logits, batch);
  if (model.head == HeadKind::MaskedLM) return masked_lm_loss(logits, batch);
  if (!batch.labels.defined()) throw ConfigError("training a classifier needs labelled examples");
  return ops::cross_entropy(logits, batch.labels);
}

}  // namespace deltatune::train
