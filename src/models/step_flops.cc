// The analytic FLOP count of a step (step_flops.h): walks the blocks as the models run them, tracking
// which activations need a gradient, as the autograd does (a product's input gradient is computed only
// where its input requires one, its weight gradient only where the weight learns).
#include "deltatune/step_flops.h"

#include <algorithm>

namespace deltatune {
namespace {

class FlopCounter {
 public:
  explicit FlopCounter(const StepShape& shape) : shape_(shape), train_(shape.kind != StepKind::Forward) {}

  bool lora_on(const std::string& role) const {
    const auto& t = shape_.lora_targets;
    return shape_.kind == StepKind::LoraTraining && std::find(t.begin(), t.end(), role) != t.end();
  }
  bool full() const { return shape_.kind == StepKind::FullTraining; }

  // y[rows, out] = x[rows, in] W^T (+ LoRA's (x A) B); returns whether y needs a gradient.
  bool linear(int64_t rows, int64_t in, int64_t out, bool input_grad, bool weight_learns, bool lora) {
    const double base = double(rows) * double(in) * double(out);  // multiply-adds
    const double r = double(shape_.lora_rank), n = double(rows);
    add(base + (lora ? n * r * (in + out) : 0.0));
    if (train_) {
      if (input_grad) add(base);
      if (weight_learns) add(base);
      // LoRA: d(xA) = dY B^T, dB = (xA)^T dY, dA = x^T d(xA), and dx += d(xA) A^T where x needs it.
      if (lora) add(n * r * out * 2 + n * in * r + (input_grad ? n * r * in : 0.0));
    }
    return input_grad || weight_learns || lora;
  }

  // softmax(Q K^T) V with `heads` query heads of `dim`; returns whether the output needs a gradient.
  bool attention(int64_t heads, int64_t dim, bool q_grad, bool k_grad, bool v_grad) {
    const double one = double(shape_.batch) * double(heads) * double(shape_.seq) * double(shape_.seq) * dim;
    add(2 * one);  // Q K^T, P V
    if (train_) {
      if (q_grad || k_grad) add(one);  // dP = dO V^T
      if (v_grad) add(one);            // dV = P^T dO
      if (q_grad) add(one);            // dQ = dS K
      if (k_grad) add(one);            // dK = dS^T Q
    }
    return q_grad || k_grad || v_grad;
  }

  double flops() const { return 2.0 * multiply_adds_; }

 private:
  void add(double multiply_adds) { multiply_adds_ += multiply_adds; }

  const StepShape& shape_;
  const bool train_;
  double multiply_adds_ = 0.0;
};

}  // namespace

double step_flops(const ModelConfig& c, const StepShape& s) {
  FlopCounter count(s);
  const bool full = count.full();
  const int64_t n = s.batch * s.seq, h = c.hidden_size, f = c.intermediate_size;
  const int64_t q_out = c.num_heads * c.head_dim, kv_out = c.num_kv_heads * c.head_dim;
  bool x_grad = full;  // the block's input: under LoRA the frozen embeddings give it no gradient
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    bool q_grad, k_grad, v_grad;
    if (c.family == ArchFamily::Gpt2) {  // q, k and v fused in c_attn: one product, one LoRA
      const bool lora = count.lora_on("attn.q") || count.lora_on("attn.k") || count.lora_on("attn.v");
      q_grad = k_grad = v_grad = count.linear(n, h, q_out + 2 * kv_out, x_grad, full, lora);
    } else {
      q_grad = count.linear(n, h, q_out, x_grad, full, count.lora_on("attn.q"));
      k_grad = count.linear(n, h, kv_out, x_grad, full, count.lora_on("attn.k"));
      v_grad = count.linear(n, h, kv_out, x_grad, full, count.lora_on("attn.v"));
    }
    const bool a_grad = count.attention(c.num_heads, c.head_dim, q_grad, k_grad, v_grad);
    const bool o_grad = count.linear(n, q_out, h, a_grad, full, count.lora_on("attn.o"));
    const bool h_grad = x_grad || o_grad;  // the residual sum
    bool mid_grad = count.linear(n, h, f, h_grad, full, count.lora_on("ffn.up"));
    if (c.family == ArchFamily::Llama)
      mid_grad = count.linear(n, h, f, h_grad, full, count.lora_on("ffn.gate")) || mid_grad;
    x_grad = count.linear(n, f, h, mid_grad, full, count.lora_on("ffn.down")) || h_grad;
  }
  if (s.head == HeadKind::CausalLM) {
    count.linear(s.batch * (s.seq - 1), h, c.vocab_size, x_grad, full, false);
  } else {  // a classifier on one position per sequence, learning under LoRA too (as bench's)
    bool in_grad = x_grad;
    if (c.family == ArchFamily::Bert) in_grad = count.linear(s.batch, h, h, x_grad, full, false);  // pooler
    count.linear(s.batch, h, c.num_labels, in_grad, s.kind != StepKind::Forward, false);
  }
  return count.flops();
}

}  // namespace deltatune
