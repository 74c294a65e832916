// The golden training trajectory (../shared/golden manifest `training`, copied to tests/data/golden):
// 10 AdamW steps of LoRA (r=8, alpha=16 on GPT-2's c_attn, fan_in_fan_out) on gpt2-mini from PEFT's
// initial adapter, one fixed batch of four texts, dropout 0, mean next-token cross-entropy over the
// real tokens. Our Trainer must reproduce each step's loss and PEFT's final adapter within 1e-4.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "deltatune/data.h"
#include "deltatune/delta_io.h"
#include "deltatune/safetensors.h"
#include "deltatune/trainer.h"
#include "golden.h"
#include "temp_dir.h"

using namespace deltatune;

namespace {

struct Trajectory {
  nlohmann::json spec = golden::manifest()["training"];
  std::unique_ptr<TransformerModel> model;
  delta::SavedDelta lora;
  train::TrainResult result;

  explicit Trajectory(int64_t steps) {
    LoadOptions load;
    load.head = HeadKind::CausalLM;
    load.verbose = false;
    model = load_pretrained(golden::model_dir(spec["model"]), load);
    lora = delta::load_delta(golden::dir() / spec["adapter_init"].get<std::string>(), *model);

    // The fixture's token ids as they are (the batch of four texts, padded on the right by the batcher).
    data::EncodedDataset batch;
    for (const auto& ids : spec["ids"]) {
      data::EncodedExample e;
      e.ids = ids.get<std::vector<int64_t>>();
      e.type_ids.assign(e.ids.size(), 0);
      batch.examples.push_back(e);
    }

    const nlohmann::json& opt = spec["optimizer"];
    train::TrainOptions options;
    options.run_dir = test_support::temp_dir("training_golden");
    options.lr = opt["lr"];
    options.weight_decay = opt["weight_decay"];
    options.schedule = "constant";
    options.warmup_ratio = 0;
    options.max_grad_norm = 0;  // torch's loop did not clip
    options.batch_size = int64_t(batch.size());
    options.max_steps = steps;
    options.epochs = steps;
    options.metric = "loss";
    options.progress = false;
    train::Trainer trainer(train::TrainTarget::with_deltas(*model, {lora.delta.get()}, "lora"), options);
    result = trainer.train(batch, nullptr);
  }
};

TEST(TrainingGolden, FixtureDescribesWhatWeReplay) {
  const nlohmann::json spec = golden::manifest()["training"];
  const nlohmann::json& opt = spec["optimizer"];
  ASSERT_EQ(opt["type"], "AdamW");
  // The Trainer's AdamW uses torch's defaults for these; a fixture with others would need them passed.
  EXPECT_DOUBLE_EQ(opt["betas"][0].get<double>(), 0.9);
  EXPECT_DOUBLE_EQ(opt["betas"][1].get<double>(), 0.999);
  EXPECT_DOUBLE_EQ(opt["eps"].get<double>(), 1e-8);
  EXPECT_EQ(spec["losses"].size(), spec["steps"].get<size_t>());
}

// How far `trained`'s parameters are from the PEFT adapter in `reference_dir`, key by key (every key
// must be on both sides).
struct AdapterDistance {
  double worst = 0;
  size_t over_1e4 = 0, total = 0;
};

AdapterDistance distance(delta::Delta& trained, const nlohmann::json& spec,
                         const std::string& reference_dir) {
  LoadOptions load;
  load.head = HeadKind::CausalLM;
  load.verbose = false;
  auto base = load_pretrained(golden::model_dir(spec["model"]), load);
  auto reference = delta::load_delta(golden::dir() / reference_dir, *base);
  std::map<std::string, Tensor> expected;
  for (auto& [name, t] : reference.delta->parameters()) expected[name] = t.contiguous();
  const auto ours_all = trained.parameters();
  EXPECT_EQ(ours_all.size(), expected.size());
  AdapterDistance d;
  for (const auto& [name, t] : ours_all) {
    if (!expected.count(name)) {
      ADD_FAILURE() << "PEFT's adapter has no " << name;
      return {INFINITY, 1, 1};
    }
    const std::vector<float> ours = t.contiguous().to_floats(), theirs = expected[name].to_floats();
    if (ours.size() != theirs.size()) {
      ADD_FAILURE() << name << ": " << ours.size() << " vs " << theirs.size() << " values";
      return {INFINITY, 1, 1};
    }
    for (size_t j = 0; j < ours.size(); ++j) {
      const double diff = std::fabs(double(ours[j]) - double(theirs[j]));
      d.worst = std::max(d.worst, diff);
      d.over_1e4 += diff > 1e-4;
    }
    d.total += ours.size();
  }
  return d;
}

// Ten AdamW steps at lr 1e-2 amplify float32 rounding: replaying the fixture in PyTorch itself
// (scripts/replay_golden_training.py) ends 2.5e-4 from PEFT's adapter in float64 and 2.5e-3 in
// float32 (torch 1.13, losses within 6e-5). So the losses are held to 2e-4 and the adapter to 1e-4 on
// 99.5% of its entries and 1e-2 on all of them; the step-short run below fails both by far.
TEST(TrainingGolden, EveryStepLossAndTheFinalAdapterMatchPeft) {
  Trajectory run(10);
  const std::vector<double> expected = run.spec["losses"];
  ASSERT_EQ(run.result.losses.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i)
    EXPECT_NEAR(run.result.losses[i], expected[i], 2e-4) << "step " << i + 1;
  EXPECT_NEAR(run.result.losses[0], expected[0], 1e-5);  // before any update: the forward pass alone
  const AdapterDistance d = distance(*run.lora.delta, run.spec, run.spec["adapter_final"]);
  EXPECT_EQ(d.total, size_t(4 * (8 * 256 + 768 * 8)));  // A and B of the four c_attn layers
  EXPECT_LT(d.worst, 1e-2);
  EXPECT_LT(double(d.over_1e4), 0.005 * double(d.total)) << d.over_1e4 << " of " << d.total << " entries";
  double loss_worst = 0;
  for (size_t i = 0; i < expected.size(); ++i)
    loss_worst = std::max(loss_worst, std::fabs(run.result.losses[i] - expected[i]));
  std::printf(
      "golden trajectory: worst loss diff %.2e, step-1 %.2e; adapter worst %.2e, %zu of %zu entries over "
      "1e-4\n",
      loss_worst, std::fabs(run.result.losses[0] - expected[0]), d.worst, d.over_1e4, d.total);
}

// The comparison can fail: one step short of the trajectory leaves the adapter visibly apart.
TEST(TrainingGolden, OneStepShortDoesNotMatch) {
  Trajectory run(9);
  EXPECT_EQ(run.result.losses.size(), 9u);
  const AdapterDistance d = distance(*run.lora.delta, run.spec, run.spec["adapter_final"]);
  EXPECT_GT(d.worst, 1e-2);
  EXPECT_GT(double(d.over_1e4), 0.5 * double(d.total));
}

}  // namespace
