// What a delta's training step computes: frozen weights never get a gradient buffer, and nothing
// below the lowest layer a delta touches is put on the tape (so backward never runs there).
#include <gtest/gtest.h>

#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/ops.h"
#include "golden.h"

using namespace deltatune;

namespace {
struct StepCount {
  uint64_t nodes = 0;        // recorded by one forward
  int64_t frozen_grads = 0;  // frozen model tensors holding a gradient after backward
  int64_t delta_grads = 0;   // delta tensors holding one
  int64_t delta_tensors = 0;
};

StepCount lora_step(const std::string& model_name, int64_t layer) {
  auto model = golden::load_model(model_name);
  model->set_training(true);
  auto d = delta::make_delta(
      {{"method", "lora"}, {"r", 4}, {"targets", {"attn.q", "attn.v"}}, {"layers", {layer}}});
  d->attach(*model);
  delta::freeze_for_delta(*model, {d.get()}, {});
  ModelInput in;
  in.input_ids = Tensor::from_ints({5, 17, 42, 99, 7, 3, 11, 23}, {2, 4});
  StepCount c;
  const uint64_t before = recorded_nodes();
  Tensor loss = ops::mean_all(ops::square(model->forward(in).logits));
  c.nodes = recorded_nodes() - before;
  loss.backward();
  for (auto& [name, t] : model->named_parameters())
    if (t->grad().defined()) ++c.frozen_grads;
  for (auto& [name, t] : d->parameters()) {
    ++c.delta_tensors;
    if (t.grad().defined()) ++c.delta_grads;
  }
  return c;
}
}  // namespace

class BackwardScope : public ::testing::TestWithParam<std::string> {};

TEST_P(BackwardScope, OnlyTheDeltasLayersAndAboveAreRecorded) {
  const std::string name = GetParam();
  StepCount bottom = lora_step(name, 0), upper = lora_step(name, 3);  // the minis have 4 layers
  // Every layer above the delta is on the tape with it, so LoRA in layer 0 records all four layers and
  // LoRA in layer 3 only the last: well under half as many nodes.
  EXPECT_GT(upper.nodes, 0u);
  EXPECT_LT(upper.nodes * 2, bottom.nodes) << name << ": " << upper.nodes << " vs " << bottom.nodes;
  // Frozen weights get no gradient buffer; every delta tensor does (A and B of q and v, or of GPT-2's
  // fused c_attn).
  EXPECT_EQ(bottom.frozen_grads, 0) << name;
  EXPECT_EQ(upper.frozen_grads, 0) << name;
  EXPECT_GE(bottom.delta_tensors, 2) << name;
  EXPECT_EQ(bottom.delta_grads, bottom.delta_tensors) << name;
  EXPECT_EQ(upper.delta_grads, upper.delta_tensors) << name;
}

INSTANTIATE_TEST_SUITE_P(Minis, BackwardScope, ::testing::Values("bert-mini", "gpt2-mini", "llama-mini"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });
