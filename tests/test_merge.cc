// Merging LoRA into the weights reproduces PEFT's merge_and_unload outputs (the -merged golden cases).
#include <gtest/gtest.h>

#include "cli_run.h"
#include "temp_dir.h"
#include "deltatune/autograd.h"
#include "deltatune/delta_io.h"
#include "deltatune/merge.h"
#include "model_compare.h"

using namespace deltatune;
namespace fs = std::filesystem;

class GoldenMerged : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenMerged, MergeCommandWritesACheckpointMatchingPeft) {
  const std::string name = GetParam();
  nlohmann::json c = golden::find_case(name);
  auto expected = golden::outputs(name + "-merged");
  fs::path out = test_support::temp_dir("merge_" + name);
  auto r = cli_test::run("merge --model " + cli_test::quote(golden::model_dir(c["model"]).string()) + " --delta " +
                         cli_test::quote((golden::dir() / c["adapter"].get<std::string>()).string()) + " --out " +
                         cli_test::quote(out.string()));
  ASSERT_EQ(r.code, 0) << r.output;
  LoadOptions options;
  options.verbose = false;
  auto merged = load_pretrained(out, options);
  NoGradGuard no_grad;
  auto cmp = golden::compare(merged->forward(golden::input_of(expected)), expected);
  EXPECT_LT(cmp.max_logits, 1e-4) << name;
  EXPECT_GT(cmp.positions, 50);
  fs::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(Lora, GoldenMerged,
                         ::testing::Values("gpt2-lora-cattn", "gpt2-lora-all", "llama-lora-qv", "llama-lora-all", "bert-lora-qv"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n) if (ch == '-') ch = '_';
                           return n;
                         });

TEST(Merge, UnmergeRestoresTheBase) {
  LoadOptions options;
  options.verbose = false;
  auto model = load_pretrained(golden::model_dir("llama-mini"), options);
  std::vector<float> before = model->find_parameter("model.layers.0.self_attn.q_proj.weight")->to_floats();
  auto saved = delta::load_delta(golden::dir() / "adapters/llama-lora-qv", *model);
  delta::merge_into(*model, *saved.delta);
  std::vector<float> merged = model->find_parameter("model.layers.0.self_attn.q_proj.weight")->to_floats();
  float moved = 0, worst = 0;
  delta::unmerge_from(*model, *saved.delta);
  std::vector<float> after = model->find_parameter("model.layers.0.self_attn.q_proj.weight")->to_floats();
  for (size_t i = 0; i < before.size(); ++i) {
    moved = std::max(moved, std::fabs(merged[i] - before[i]));
    worst = std::max(worst, std::fabs(after[i] - before[i]));
  }
  EXPECT_GT(moved, 1e-4);  // merging changed the weights
  EXPECT_LT(worst, 1e-5);  // and unmerging restored them
}
