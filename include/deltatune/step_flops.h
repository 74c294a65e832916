#pragma once
// The useful work of one step, in floating-point operations: the analytic count MFU figures divide by
// time (`deltatune bench`). Only matrix products count (2 per multiply-add); element-wise ops,
// norms, softmax, gathers and the optimizer do not. Counted:
//   - forward: every linear of every block (q, k, v, o; up, gate, down), attention's Q K^T and P V over
//     the full T x T scores (causal masks included, the usual MFU convention), the LoRA products x A and
//     (x A) B, and the head (BERT: pooler and classifier on the first token; causal LMs: the LM head on
//     the B (T-1) positions that predict a next token);
//   - training backward: for each product, the input gradient where that input needs one and the
//     weight gradient where the weight learns. Frozen weights (the base under LoRA) get no
//     weight-gradient product; the first block's input needs no gradient under LoRA (the embeddings are
//     frozen), so its q/k/v products there get none either. Attention's backward counts dP = dO V^T and
//     dQ, dK, dV where needed, not the fused kernel's recomputed scores.
#include <cstdint>
#include <string>
#include <vector>

#include "deltatune/hf_config.h"
#include "deltatune/model.h"

namespace deltatune {

enum class StepKind { Forward, FullTraining, LoraTraining };

struct StepShape {
  StepKind kind = StepKind::Forward;
  HeadKind head = HeadKind::SequenceClassification;  // SequenceClassification or CausalLM
  int64_t batch = 1, seq = 1;
  std::vector<std::string> lora_targets;  // roles: attn.q, attn.k, attn.v, attn.o, ffn.up, ffn.gate, ffn.down
  int64_t lora_rank = 8;
};

// Floating-point operations of one step of `config` on `shape` (see above for what counts).
double step_flops(const ModelConfig& config, const StepShape& shape);

}  // namespace deltatune
