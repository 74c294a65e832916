// Losses the trainer optimises: class cross-entropy, and next-token cross-entropy for causal LMs.
#include "deltatune/ops.h"
#include "deltatune/trainer.h"

namespace deltatune::train {

namespace {

// Positions a delta prepended to the input (prompt tuning's virtual tokens): the logits are longer
// than the batch's tokens by that much.
int64_t virtual_positions(const Tensor& logits, const data::Batch& batch, const char* who) {
  const int64_t B = batch.input_ids.size(0), T = batch.input_ids.size(1);
  if (logits.dim() != 3 || logits.size(0) != B || logits.size(1) < T)
    throw ShapeError(std::string(who) + ": logits " + shape_str(logits.shape()) + " do not fit input_ids " +
                     shape_str(batch.input_ids.shape()));
  return logits.size(1) - T;
}

}  // namespace

Tensor causal_lm_loss(const Tensor& logits, const data::Batch& batch, int64_t* counted) {
  if (logits.dim() != 3)
    throw ShapeError("causal_lm_loss: logits must be [B, T, V], got " + shape_str(logits.shape()));
  const int64_t P = virtual_positions(logits, batch, "causal_lm_loss");
  const int64_t B = logits.size(0), T = batch.input_ids.size(1), V = logits.size(2);
  // Each token is predicted from the position before it. Virtual tokens predict nothing, but the last
  // of them predicts the first real token, as in PEFT (its labels are the input's, after -100s for
  // the virtual tokens). Without them, the first token has nothing before it.
  const int64_t first = P > 0 ? 0 : 1;
  if (T - first < 1) throw ShapeError("causal_lm_loss: a causal LM needs at least two tokens per row");
  // Predictions of padding and of a prompt are ignored (-100).
  const std::vector<int64_t> ids = batch.input_ids.to_ints(), mask = batch.attention_mask.to_ints();
  const int64_t N = T - first;
  std::vector<int64_t> targets(size_t(B * N));
  int64_t n = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = first; t < T; ++t) {
      const int64_t from = size_t(b) < batch.loss_from.size() ? batch.loss_from[size_t(b)] : 0;
      const bool real = mask[size_t(b * T + t)] != 0 && t >= from;
      targets[size_t(b * N + t - first)] = real ? ids[size_t(b * T + t)] : -100;
      n += real;
    }
  if (counted) *counted = n;
  // Token t is predicted at logit position P + t - 1.
  Tensor predictions = ops::reshape(logits.slice(1, P + first - 1, P + T - 1), {B * N, V});
  return ops::cross_entropy(predictions, Tensor::from_ints(targets, {B * N}), -100);
}

Tensor masked_lm_loss(const Tensor& logits, const data::Batch& batch, int64_t* counted) {
  if (!batch.lm_targets.defined()) throw ConfigError("masked_lm_loss: the batch was not masked");
  // Virtual tokens (a prompt) come first and are never masked: only the real positions count.
  const int64_t P = virtual_positions(logits, batch, "masked_lm_loss");
  const Tensor real = P > 0 ? logits.slice(1, P, logits.size(1)) : logits;
  if (real.size(0) * real.size(1) != batch.lm_targets.numel())
    throw ShapeError("masked_lm_loss: logits " + shape_str(logits.shape()) + " do not fit the targets " +
                     shape_str(batch.lm_targets.shape()));
  if (counted) {
    *counted = 0;
    for (int64_t t : batch.lm_targets.to_ints()) *counted += t != -100;
  }
  const int64_t V = real.size(2);
  return ops::cross_entropy(ops::reshape(real, {real.size(0) * real.size(1), V}),
                            ops::reshape(batch.lm_targets, {batch.lm_targets.numel()}), -100);
}

Tensor training_loss(const TransformerModel& model, const Tensor& logits, const data::Batch& batch,
                     int64_t* counted) {
  if (model.head == HeadKind::CausalLM) return causal_lm_loss(logits, batch, counted);
  if (model.head == HeadKind::MaskedLM) return masked_lm_loss(logits, batch, counted);
  if (!batch.labels.defined()) throw ConfigError("training a classifier needs labelled examples");
  if (counted) *counted = batch.size();
  return ops::cross_entropy(logits, batch.labels);
}

}  // namespace deltatune::train
