// Merging LoRA into the weights reproduces PEFT's merge_and_unload outputs (the -merged golden cases).
#include <gtest/gtest.h>

#include "cli_run.h"
#include "deltatune/autograd.h"
#include "deltatune/delta_io.h"
#include "deltatune/error.h"
#include "deltatune/merge.h"
#include "deltatune/ops.h"
#include "model_compare.h"
#include "temp_dir.h"

using namespace deltatune;
namespace fs = std::filesystem;

class GoldenMerged : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenMerged, MergeCommandWritesACheckpointMatchingPeft) {
  const std::string name = GetParam();
  nlohmann::json c = golden::find_case(name);
  auto expected = golden::outputs(name + "-merged");
  fs::path out = test_support::temp_dir("merge_" + name);
  auto r =
      cli_test::run("merge --model " + cli_test::quote(golden::model_dir(c["model"]).string()) + " --delta " +
                    cli_test::quote((golden::dir() / c["adapter"].get<std::string>()).string()) + " --out " +
                    cli_test::quote(out.string()) + " --dtype float32");  // PEFT merged in float32
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
                         ::testing::Values("gpt2-lora-cattn", "gpt2-lora-all", "llama-lora-qv",
                                           "llama-lora-all", "bert-lora-qv"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

TEST(Merge, UnmergeRestoresTheBase) {
  auto model = golden::load_model("llama-mini");
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

namespace {
// Gives every parameter of an attached delta random values (so B != 0 and scales != 1).
void randomise(delta::Delta& d, uint64_t seed) {
  Generator gen(seed);
  std::map<std::string, Tensor> values;
  for (auto& [name, t] : d.parameters())
    values[name] = ops::add_scalar(Tensor::randn(t.shape(), gen, 0.2f),
                                   name.find("ia3_l") != std::string::npos ? 1.0f : 0.0f);
  d.load_parameters(values);
}

ModelInput sample_input() {
  ModelInput in;
  in.input_ids = Tensor::from_ints({101, 2023, 3185, 2001, 2307, 102, 101, 7592, 102, 0}, {2, 5});
  in.attention_mask = Tensor::from_ints({1, 1, 1, 1, 1, 1, 1, 1, 1, 0}, {2, 5});
  return in;
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  std::vector<float> x = a.contiguous().to_floats(), y = b.contiguous().to_floats();
  float m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::fabs(x[i] - y[i]));
  return m;
}
}  // namespace

// Merged weights compute what the attached delta computed; unmerge (where defined) restores the base.
class MergeEquivalence : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(MergeEquivalence, MergedEqualsAttached) {
  const auto [model_name, config] = GetParam();
  auto model = golden::load_model(model_name);
  NoGradGuard no_grad;
  ModelInput in = sample_input();
  Tensor base = model->forward(in).logits;
  auto d = delta::make_delta(nlohmann::json::parse(config));
  d->attach(*model);
  randomise(*d, 5);
  Tensor with_delta = model->forward(in).logits;
  ASSERT_GT(max_abs_diff(with_delta, base), 1e-3) << "the delta must change the outputs";
  delta::merge_into(*model, *d);
  Tensor merged = model->forward(in).logits;
  EXPECT_LT(max_abs_diff(merged, with_delta), 1e-4) << config;
  if (d->config().value("bias", std::string("none")) == "none") {
    delta::unmerge_from(*model, *d);
    EXPECT_LT(max_abs_diff(model->forward(in).logits, base), 1e-4) << config;
  } else {
    EXPECT_THROW(delta::unmerge_from(*model, *d), ConfigError);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Methods, MergeEquivalence,
    ::testing::Values(
        std::make_pair("bert-mini", R"({"method": "ia3"})"),
        std::make_pair(
            "gpt2-mini",
            R"({"method": "ia3", "targets": ["c_attn", "mlp.c_proj"], "feedforward": ["mlp.c_proj"]})"),
        std::make_pair("bert-mini",
                       R"({"method": "lora", "r": 4, "targets": ["attn.q", "attn.v"], "bias": "all"})"),
        std::make_pair("gpt2-mini",
                       R"({"method": "lora", "r": 4, "targets": ["c_attn"], "bias": "lora_only"})"),
        std::make_pair("llama-mini", R"({"method": "lora", "r": 4, "targets": ["embed", "attn.v"]})")));

TEST(Merge, GoldenIa3MergedReproducesPeft) {
  // PEFT's IA3 adapter folded into llama-mini's weights computes PEFT's outputs with the adapter.
  fs::path out = test_support::temp_dir("merge_ia3");
  auto r = cli_test::run("merge --model " + cli_test::quote(golden::model_dir("llama-mini").string()) +
                         " --delta " + cli_test::quote((golden::dir() / "adapters/llama-ia3").string()) +
                         " --out " + cli_test::quote(out.string()) +
                         " --dtype float32");  // PEFT merged in float32
  ASSERT_EQ(r.code, 0) << r.output;
  auto expected = golden::outputs("llama-ia3");
  LoadOptions options;
  options.verbose = false;
  auto merged = load_pretrained(out, options);
  NoGradGuard no_grad;
  auto cmp = golden::compare(merged->forward(golden::input_of(expected)), expected);
  EXPECT_LT(cmp.max_logits, 1e-4);
  EXPECT_GT(cmp.positions, 50);
  fs::remove_all(out);
}

TEST(Merge, UnmergeableDeltasSayWhy) {
  auto model = golden::load_model("bert-mini");
  auto d = delta::make_delta(nlohmann::json::parse(R"({"method": "adapter", "variant": "pfeiffer"})"));
  d->attach(*model);
  try {
    delta::merge_into(*model, *d);
    FAIL() << "an adapter cannot be merged";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("ia3"), std::string::npos) << e.what();  // lists what can
  }
}

TEST(Merge, LoraOnATiedEmbeddingIsRefused) {
  // bert-mini's MLM decoder is tied to the word embeddings: merging would change the head too.
  auto model = golden::load_model("bert-mini");
  auto d = delta::make_delta(nlohmann::json::parse(R"({"method": "lora", "r": 4, "targets": ["embed"]})"));
  d->attach(*model);
  randomise(*d, 3);
  try {
    delta::merge_into(*model, *d);
    FAIL() << "a tied embedding must not be merged";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("tied"), std::string::npos) << e.what();
  }
}
