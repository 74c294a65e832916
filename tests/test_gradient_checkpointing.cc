// Activation checkpointing (deltatune/checkpoint.h, TransformerModel::gradient_checkpointing): the
// gradients equal those of the plain backward bit for bit on every family and on methods with dropout,
// per-call hook state and trainable inputs; the forward records one node per block instead of the
// block's ops; what it cannot do (prefix tuning, a value from before the block needing a gradient) is
// a clear error.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/checkpoint.h"
#include "deltatune/delta.h"
#include "deltatune/error.h"
#include "deltatune/forward_context.h"
#include "deltatune/ops.h"
#include "golden.h"

using namespace deltatune;
using json = nlohmann::json;

namespace {

struct Run {
  std::map<std::string, std::vector<float>> grads;  // every trainable parameter's gradient
  float loss = 0;
  uint64_t forward_nodes = 0;  // recorded by the forward
};

ModelInput batch() {
  ModelInput in;
  in.input_ids = Tensor::from_ints({2, 45, 97, 311, 28, 3, 2, 61, 5, 904, 77, 3}, {2, 6});
  in.attention_mask = Tensor::from_ints({1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, {2, 6});  // one padded row
  return in;
}

// One training forward and backward of `model_name` with `delta_config` attached (seeded: the same
// dropout draws every time), with or without checkpointing.
Run train_step(const std::string& model_name, const json& delta_config, bool checkpointing) {
  auto model = golden::load_model(model_name);
  auto d = delta::make_delta(delta_config);
  d->attach(*model);
  delta::freeze_for_delta(*model, {d.get()}, {});
  model->set_training(true);
  model->gradient_checkpointing = checkpointing;
  ForwardContext call(77);
  ModelInput in = batch();
  in.context = &call;
  const uint64_t before = recorded_nodes();
  Tensor logits = model->forward(in).logits;
  Run run;
  run.forward_nodes = recorded_nodes() - before;
  Generator gen(5);
  Tensor loss = ops::sum_all(ops::mul(logits, Tensor::randn(logits.shape(), gen)));
  run.loss = loss.item();
  loss.backward();
  for (auto& [name, t] : delta::trainable_parameters(*model, {d.get()}))
    if (t.grad().defined()) {
      Tensor g = t.grad().contiguous();
      run.grads[name].assign(g.f32(), g.f32() + g.numel());
    }
  return run;
}

void expect_same_gradients(const std::string& model_name, const json& delta_config) {
  SCOPED_TRACE(model_name + " " + delta_config.dump());
  const Run plain = train_step(model_name, delta_config, false);
  const Run checkpointed = train_step(model_name, delta_config, true);
  EXPECT_EQ(checkpointed.loss, plain.loss);
  ASSERT_FALSE(plain.grads.empty());
  ASSERT_EQ(checkpointed.grads.size(), plain.grads.size());
  for (const auto& [name, g] : plain.grads) {
    auto it = checkpointed.grads.find(name);
    ASSERT_NE(it, checkpointed.grads.end()) << name << " got no gradient with checkpointing";
    ASSERT_EQ(it->second.size(), g.size());
    for (size_t i = 0; i < g.size(); ++i) ASSERT_EQ(it->second[i], g[i]) << name << "[" << i << "]";
  }
  // The forward keeps one node per block (and what lies outside the blocks) instead of every op.
  EXPECT_LT(checkpointed.forward_nodes * 3, plain.forward_nodes)
      << checkpointed.forward_nodes << " nodes against " << plain.forward_nodes;
}

}  // namespace

TEST(GradientCheckpointing, LoraWithDropoutOnEveryFamily) {
  const json lora = {{"method", "lora"},
                     {"r", 4},
                     {"alpha", 8},
                     {"dropout", 0.1},
                     {"targets", {"attn.q", "attn.v", "ffn.down"}}};
  for (const char* model : {"bert-mini", "gpt2-mini", "llama-mini"}) expect_same_gradients(model, lora);
}

TEST(GradientCheckpointing, AdaptersIa3AndPromptTuning) {
  // Parallel adapters hand a value from one linear to another inside the block (the call's context);
  // a soft prompt makes the first block's input itself need a gradient.
  expect_same_gradients("bert-mini", {{"method", "adapter"}, {"variant", "parallel"}});
  expect_same_gradients("bert-mini", {{"method", "adapter"}, {"variant", "houlsby"}});
  expect_same_gradients("llama-mini", {{"method", "ia3"}});
  expect_same_gradients("gpt2-mini", {{"method", "prompt"}, {"num_virtual_tokens", 3}});
  // UniPELT's gates read the padding mask its embedding hook left in the call's context.
  expect_same_gradients("bert-mini", {{"method", "unipelt"}, {"variant", "AL"}});
}

TEST(GradientCheckpointing, PrefixTuningIsRefusedClearly) {
  auto model = golden::load_model("gpt2-mini");
  auto d = delta::make_delta({{"method", "prefix"}, {"num_virtual_tokens", 2}});
  d->attach(*model);
  delta::freeze_for_delta(*model, {d.get()}, {});
  model->set_training(true);
  model->gradient_checkpointing = true;
  try {
    model->forward(batch());
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("prefix"), std::string::npos) << e.what();
  }
  // Evaluation does not checkpoint: nothing to refuse.
  model->set_training(false);
  EXPECT_NO_THROW(model->forward(batch()));
}

TEST(GradientCheckpointing, FunctionLevel) {
  Generator gen(3);
  Tensor w = Tensor::randn({4, 4}, gen).set_requires_grad(true);
  Tensor x0 = Tensor::randn({2, 4}, gen).set_requires_grad(true);
  const BlockFn block = [&w](const Tensor& x) { return ops::tanh(ops::matmul(x, w)); };
  auto grads = [&](bool checkpointed) {
    w.zero_grad();
    x0.zero_grad();
    Tensor h = ops::mul_scalar(x0, 2.0f);  // recorded before the block: its gradient flows on
    Tensor y = checkpointed ? checkpoint(block, block, h) : block(h);
    ops::sum_all(ops::square(y)).backward();
    Tensor gw = w.grad().contiguous(), gx = x0.grad().contiguous();
    std::vector<float> out(gw.f32(), gw.f32() + gw.numel());
    out.insert(out.end(), gx.f32(), gx.f32() + gx.numel());
    return out;
  };
  EXPECT_EQ(grads(true), grads(false));
  // Without grad mode it is the function itself, unrecorded.
  {
    NoGradGuard no_grad;
    EXPECT_FALSE(checkpoint(block, block, x0).requires_grad());
  }
  // A block that uses a value computed before it and needing a gradient (other than its input) cannot
  // be replayed alone: a clear error, not a silently missing gradient.
  Tensor outside = ops::mul_scalar(w, 3.0f);
  const BlockFn leaky = [outside](const Tensor& x) { return ops::matmul(x, outside); };
  Tensor y = checkpoint(leaky, leaky, x0);
  try {
    ops::sum_all(y).backward();
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gradient checkpointing"), std::string::npos) << e.what();
  }
}
