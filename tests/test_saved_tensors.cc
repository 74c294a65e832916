// Saved tensors and their cheap rebuilding (autograd.h, SavedTensor): an activation's or a norm's
// output that a later rule saves is freed after the forward and rebuilt in the backward. The
// gradients equal those of a backward that kept every saved tensor, bit for bit, on every family,
// in full fine-tuning and under LoRA with dropout; the forward keeps less; the rebuilt copy is made
// once for all the rules that saved it.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/forward_context.h"
#include "deltatune/memory_stats.h"
#include "deltatune/ops.h"
#include "golden.h"

using namespace deltatune;
using json = nlohmann::json;

namespace {

// Turns rebuilding on or off for a scope (the default is on).
class RebuildScope {
 public:
  explicit RebuildScope(bool on) : previous_(rebuild_saved_activations()) {
    set_rebuild_saved_activations(on);
  }
  ~RebuildScope() { set_rebuild_saved_activations(previous_); }

 private:
  bool previous_;
};

struct Run {
  std::map<std::string, std::vector<float>> grads;
  float loss = 0;
  size_t kept_after_forward = 0;  // tensor bytes the forward left alive (its saved tensors, mostly)
};

// One seeded training forward and backward; `delta_config` null means full fine-tuning.
Run train_step(const std::string& model_name, const json& delta_config, bool rebuild) {
  RebuildScope scope(rebuild);
  auto model = golden::load_model(model_name);
  std::unique_ptr<delta::Delta> d;
  std::vector<std::pair<std::string, Tensor>> learning;  // handles: they share the parameters
  if (delta_config.is_null()) {
    for (auto& [name, t] : model->named_parameters()) learning.emplace_back(name, t->set_requires_grad(true));
  } else {
    d = delta::make_delta(delta_config);
    d->attach(*model);
    delta::freeze_for_delta(*model, {d.get()}, {});
  }
  model->set_training(true);
  ForwardContext call(77);
  ModelInput in;
  in.input_ids = Tensor::from_ints({2, 45, 97, 311, 28, 3, 2, 61, 5, 904, 77, 3}, {2, 6});
  in.attention_mask = Tensor::from_ints({1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, {2, 6});
  in.context = &call;
  const size_t before = tensor_memory().live_bytes;
  Tensor logits = model->forward(in).logits;
  Run run;
  run.kept_after_forward = tensor_memory().live_bytes - before;
  Generator gen(5);
  Tensor loss = ops::sum_all(ops::mul(logits, Tensor::randn(logits.shape(), gen)));
  run.loss = loss.item();
  loss.backward();
  if (d)
    for (auto& [name, t] : delta::trainable_parameters(*model, {d.get()})) learning.emplace_back(name, t);
  for (auto& [name, t] : learning)
    if (t.grad().defined()) {
      Tensor g = t.grad().contiguous();
      run.grads[name].assign(g.f32(), g.f32() + g.numel());
    }
  return run;
}

// The gradients with rebuilding equal those without, bit for bit; returns (kept with, kept without).
std::pair<size_t, size_t> expect_same_gradients(const std::string& model_name, const json& delta_config) {
  SCOPED_TRACE(model_name + " " + delta_config.dump());
  const Run kept = train_step(model_name, delta_config, false);
  const Run rebuilt = train_step(model_name, delta_config, true);
  EXPECT_EQ(rebuilt.loss, kept.loss);
  EXPECT_FALSE(kept.grads.empty());
  EXPECT_EQ(rebuilt.grads.size(), kept.grads.size());
  for (const auto& [name, g] : kept.grads) {
    auto it = rebuilt.grads.find(name);
    if (it == rebuilt.grads.end()) {
      ADD_FAILURE() << name << " got no gradient with rebuilding";
      continue;
    }
    EXPECT_EQ(it->second, g) << name;
  }
  return {rebuilt.kept_after_forward, kept.kept_after_forward};
}

}  // namespace

TEST(SavedTensors, FullFineTuningKeepsLessAndGetsTheSameGradients) {
  for (const char* model : {"bert-mini", "gpt2-mini", "llama-mini"}) {
    const auto [with, without] = expect_same_gradients(model, json());
    // Every block's FFN activation output and norm outputs are rebuilt, not kept.
    EXPECT_LT(with, without) << model;
  }
}

TEST(SavedTensors, DeltasWithDropoutGetTheSameGradients) {
  expect_same_gradients("bert-mini", {{"method", "lora"},
                                      {"r", 4},
                                      {"alpha", 8},
                                      {"dropout", 0.1},
                                      {"targets", {"attn.q", "attn.v", "ffn.down"}}});
  // LoRA on every linear of llama: its A products save the norms' outputs and the gated activation.
  const auto [with, without] = expect_same_gradients(
      "llama-mini",
      {{"method", "lora"},
       {"r", 4},
       {"alpha", 8},
       {"targets", {"attn.q", "attn.k", "attn.v", "attn.o", "ffn.up", "ffn.gate", "ffn.down"}}});
  EXPECT_LT(with, without);
  expect_same_gradients("llama-mini", {{"method", "ia3"}});
  expect_same_gradients("bert-mini", {{"method", "unipelt"}, {"variant", "APL"}});
}

namespace {

// Three linears save one GELU output for their weight gradients: float32, and under --bf16's
// precision (the BF16 kernel, which takes x rounded: rounded once for the three as well).
void expect_one_rebuild_for_three_savers(ops::MatmulPrecision precision) {
  SCOPED_TRACE(precision == ops::MatmulPrecision::Bf16 ? "bf16" : "float32");
  const ops::MatmulPrecision previous = ops::matmul_precision();
  ops::set_matmul_precision(precision);
  Generator gen(11);
  Tensor x = Tensor::randn({64, 64}, gen);
  Tensor w1 = Tensor::randn({128, 64}, gen).set_requires_grad(true);
  std::vector<Tensor> heads;
  for (int i = 0; i < 3; ++i) heads.push_back(Tensor::randn({64, 128}, gen).set_requires_grad(true));

  using Result = std::pair<size_t, std::vector<std::vector<float>>>;
  auto step = [&](bool rebuild, int* computed) -> Result {
    RebuildScope scope(rebuild);
    for (Tensor& t : heads) t.zero_grad();
    w1.zero_grad();
    const size_t before = tensor_memory().live_bytes;
    Tensor h = ops::gelu(ops::linear(x, w1));
    // Count the rebuilds: the recipe gelu set, wrapped.
    if (rebuild) {
      if (!h.impl()->rebuild) return {};
      auto inner = h.impl()->rebuild->compute;
      h.impl()->rebuild->compute = [inner, computed] {
        ++*computed;
        return inner();
      };
    }
    Tensor loss;
    for (Tensor& head : heads) {
      Tensor term = ops::sum_all(ops::linear(h, head));
      loss = loss.defined() ? ops::add(loss, term) : term;
    }
    h = Tensor();
    const size_t kept = tensor_memory().live_bytes - before;
    loss.backward();
    std::vector<std::vector<float>> grads;
    for (Tensor* t : {&w1, &heads[0], &heads[1], &heads[2]}) {
      Tensor g = t->grad().contiguous();
      grads.emplace_back(g.f32(), g.f32() + g.numel());
    }
    return {kept, grads};
  };
  int computed = 0;
  const auto [kept_without, grads_without] = step(false, &computed);
  const auto [kept_with, grads_with] = step(true, &computed);
  ops::set_matmul_precision(previous);
  ASSERT_FALSE(grads_with.empty()) << "gelu marked no rebuild";
  EXPECT_EQ(grads_with, grads_without);
  EXPECT_EQ(computed, 1) << "the three savers share one rebuilt copy";
  // h (64 x 128 floats) is no longer kept; its input (gelu's own saved tensor) is kept either way.
  // (Under bf16 the heads keep their rounded weights for the input's gradient, with or without.)
  EXPECT_EQ(kept_without - kept_with, size_t(64 * 128 * 4));
}

}  // namespace

TEST(SavedTensors, AnActivationSavedByALinearIsFreedAndRebuiltOnce) {
  expect_one_rebuild_for_three_savers(ops::MatmulPrecision::Exact);
  expect_one_rebuild_for_three_savers(ops::MatmulPrecision::Bf16);  // float32 where the CPU lacks BF16
}

TEST(SavedTensors, OffOrWithoutRecordingNothingIsMarked) {
  Generator gen(2);
  Tensor a = Tensor::randn({4, 4}, gen).set_requires_grad(true);
  {
    RebuildScope scope(false);
    EXPECT_EQ(ops::gelu(a).impl()->rebuild, nullptr);
  }
  EXPECT_NE(ops::gelu(a).impl()->rebuild, nullptr);
  EXPECT_NE(ops::layer_norm(a, Tensor(), Tensor(), 1e-5f).impl()->rebuild, nullptr);
  NoGradGuard no_grad;
  EXPECT_EQ(ops::gelu(a).impl()->rebuild, nullptr);
}
