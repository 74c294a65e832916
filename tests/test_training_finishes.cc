// Training that finishes (issue 12): every method ends with the weights of its best dev evaluation when
// that was not the last one; prompt tuning trains causal and masked LMs, and its result generates;
// one effective max length (the model's positions less the virtual tokens that take positions) is
// trained with, recorded, and reused by eval and predict.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "cli_run.h"
#include "temp_dir.h"
#include "deltatune/data.h"
#include "deltatune/delta.h"
#include "deltatune/threads.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"

namespace fs = std::filesystem;
using namespace deltatune;

namespace {

const fs::path kAssets = fs::path(DELTATUNE_ASSETS);
const fs::path kBert = kAssets / "models" / "bert-mini";

// --- the best weights are restored, for every method ---

// 16 sentiment reviews to train on, and the same reviews with their labels swapped as dev: training
// raises the dev loss, so the first evaluation is the best one and later updates move away from it.
struct RiggedData {
  data::EncodedDataset train, dev;
};

const RiggedData& rigged_data() {
  static const RiggedData d = [] {
    auto examples = data::read_examples(kAssets / "tasks" / "sentiment" / "train.jsonl", {});
    examples.resize(16);
    data::LabelMap labels = data::LabelMap::from_examples(examples);
    data::assign_labels(examples, labels);
    auto tok = Tokenizer::load(kBert);
    RiggedData out;
    out.train = data::encode(examples, *tok, 32);
    out.dev = out.train;
    for (auto& e : out.dev.examples) e.label = 1 - e.label;
    return out;
  }();
  return d;
}

struct MethodCase {
  std::string name;        // the test's name
  nlohmann::json config;   // a delta config, or null for "full" / "head"
  double lr = 1e-2;
};
void PrintTo(const MethodCase& c, std::ostream* os) { *os << c.name; }

std::vector<MethodCase> method_cases() {
  return {
      {"lora", {{"method", "lora"}, {"r", 4}}},
      {"ia3", {{"method", "ia3"}}},
      {"prefix", {{"method", "prefix"}, {"num_virtual_tokens", 4}}},
      {"prefix_projection",
       {{"method", "prefix"}, {"num_virtual_tokens", 4}, {"projection", true}, {"encoder_hidden_size", 16}}},
      {"prompt", {{"method", "prompt"}, {"num_virtual_tokens", 4}}},
      {"adapter", {{"method", "adapter"}, {"bottleneck", 8}}},
      {"bitfit", {{"method", "bitfit"}}},
      {"ln", {{"method", "ln"}}},
      {"last_layers", {{"method", "last-layers"}, {"k", 1}}, 1e-3},
      {"compacter", {{"method", "compacter"}}},
      {"compacter_pp", {{"method", "compacter++"}, {"rank", 2}}},
      {"lowrank_adapter", {{"method", "lowrank_adapter"}}},
      {"diff_pruning", {{"method", "diff_pruning"}, {"target_sparsity", 0.5}, {"targets", {"attn.q", "attn.v"}}}},
      {"mask", {{"method", "mask"}, {"targets", {"ffn.up"}}}},
      {"unipelt", {{"method", "unipelt"}, {"variant", "APL"}}, 1e-3},
      {"combination",
       {{"method", "combination"},
        {"deltas",
         {{{"method", "lora"}, {"r", 2}},
          {{"method", "prefix"}, {"num_virtual_tokens", 2}},
          {{"method", "diff_pruning"}, {"targets", {"attn.o"}}},
          {{"method", "mask"}, {"targets", {"ffn.down"}}}}}}},
      {"full", nullptr, 1e-3},
      {"head", nullptr},
  };
}

using Snapshot = std::vector<std::vector<float>>;

Snapshot snapshot(const train::TrainTarget& target) {
  Snapshot out;
  for (auto& [_, t] : target.parameters()) out.push_back(t.to_floats());
  return out;
}

class BestWeights : public ::testing::TestWithParam<MethodCase> {
 protected:
  void SetUp() override { set_num_threads(2); }
};

}  // namespace

TEST(BestWeightsCases, CoverEveryMethod) {
  std::set<std::string> covered;
  for (const auto& c : method_cases()) covered.insert(c.config.is_null() ? c.name : c.config["method"].get<std::string>());
  for (const auto& m : delta::supported_methods()) EXPECT_TRUE(covered.count(m)) << m << " has no case";
  EXPECT_TRUE(covered.count("full") && covered.count("head"));
}

TEST_P(BestWeights, RestoredWeightsAreThoseOfTheBestEvaluation) {
  const MethodCase& c = GetParam();
  LoadOptions load;
  load.head = HeadKind::SequenceClassification;
  load.num_labels = 2;
  load.seed = 7;
  load.verbose = false;
  auto model = load_pretrained(kBert, load);
  std::unique_ptr<delta::Delta> delta;
  train::TrainTarget target;
  if (c.name == "full") {
    target = train::TrainTarget::full(*model);
  } else if (c.name == "head") {
    target = train::TrainTarget::head_only(*model);
  } else {
    delta = delta::make_delta(c.config);
    delta->seed = 7;
    delta->attach(*model);
    target = train::TrainTarget::with_deltas(*model, {delta.get()}, delta->method());
  }

  train::TrainOptions o;
  o.max_steps = 4;
  o.batch_size = 8;
  o.eval_every = 1;
  o.warmup_ratio = 0;
  o.lr = c.lr;
  o.metric = "loss";
  o.run_dir = test_support::temp_dir("best_" + c.name);
  o.progress = false;
  std::map<int64_t, Snapshot> at_step;  // the weights each evaluation saw (it runs before on_step)
  o.on_step = [&](int64_t step) {
    at_step[step] = snapshot(target);
    return true;
  };
  train::Trainer trainer(target, o);
  const train::TrainResult result = trainer.train(rigged_data().train, &rigged_data().dev);

  ASSERT_EQ(result.steps, 4);
  ASSERT_GE(result.best_step, 1);
  ASSERT_LT(result.best_step, result.steps) << "the rigged dev set should make an early evaluation the best";
  ASSERT_NE(at_step[result.best_step], at_step[result.steps]) << "the weights did not move after the best";
  EXPECT_EQ(snapshot(target), at_step[result.best_step]);
  // What the run then saves, and its dev loss, are those of the best evaluation too.
  const nlohmann::json again = train::evaluate(*model, rigged_data().dev);
  EXPECT_DOUBLE_EQ(again["loss"].get<double>(), result.best_dev["loss"].get<double>());
}

INSTANTIATE_TEST_SUITE_P(EveryMethod, BestWeights, ::testing::ValuesIn(method_cases()),
                         [](const ::testing::TestParamInfo<MethodCase>& info) { return info.param.name; });
