// Forward passes of the mini models against Hugging Face transformers' outputs (tests/data/golden).
#include <gtest/gtest.h>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/model.h"
#include "model_compare.h"
#include "temp_dir.h"

using namespace deltatune;

class GoldenBase : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenBase, MatchesTransformers) {
  const std::string name = GetParam();
  auto expected = golden::outputs(name + "-base");
  auto model = golden::load_model(name);
  NoGradGuard no_grad;
  ModelOutput out = model->forward(golden::input_of(expected));
  auto c = golden::compare(out, expected);
  EXPECT_LT(c.max_logits, 1e-4) << name;
  EXPECT_LT(c.max_lse, 1e-4) << name;
  EXPECT_LT(c.max_hidden, 1e-4) << name;
  EXPECT_EQ(c.argmax_mismatch, 0) << name;
  EXPECT_GT(c.positions, 50) << name;
  std::printf("%s: max |logits| diff %.2e, logsumexp %.2e, hidden %.2e over %lld positions\n", name.c_str(),
              c.max_logits, c.max_lse, c.max_hidden, static_cast<long long>(c.positions));
}

INSTANTIATE_TEST_SUITE_P(MiniModels, GoldenBase, ::testing::Values("gpt2-mini", "bert-mini", "llama-mini"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

TEST(Models, KeepHalfPrecisionGivesSameOutputs) {
  auto expected = golden::outputs("llama-mini-base");
  LoadOptions options;
  options.verbose = false;
  options.keep_half_precision = true;
  auto model = load_pretrained(golden::model_dir("llama-mini"), options);
  EXPECT_EQ(model->find_parameter("model.norm.weight")->dtype(), DType::BF16);
  NoGradGuard no_grad;
  auto c = golden::compare(model->forward(golden::input_of(expected)), expected);
  EXPECT_LT(c.max_logits, 1e-4);
}

TEST(Models, ParameterNamesAreCheckpointKeys) {
  auto bert = golden::load_model("bert-mini");
  EXPECT_NE(bert->find_parameter("bert.encoder.layer.0.attention.self.query.weight"), nullptr);
  EXPECT_NE(bert->find_parameter("cls.predictions.bias"), nullptr);
  auto gpt2 = golden::load_model("gpt2-mini");
  Tensor* c_attn = gpt2->find_parameter("transformer.h.0.attn.c_attn.weight");
  ASSERT_NE(c_attn, nullptr);
  EXPECT_EQ(c_attn->shape(), (Shape{256, 768}));  // Conv1D: [in, out]
}

TEST(Models, ClassificationHeadIsInitialisedAndReported) {
  LoadOptions options;
  options.verbose = false;
  options.head = HeadKind::SequenceClassification;
  options.num_labels = 3;
  LoadReport report;
  auto model = load_pretrained(golden::model_dir("bert-mini"), options, &report);
  EXPECT_EQ(report.initialized.size(), 4u);  // pooler dense weight/bias, classifier weight/bias
  EXPECT_FALSE(report.unexpected.empty());   // the MLM head is unused
  ModelInput in;
  in.input_ids = Tensor::from_ints({2, 141, 3}, {1, 3});
  NoGradGuard no_grad;
  auto out = model->forward(in);
  EXPECT_EQ(out.logits.shape(), (Shape{1, 3}));
}

TEST(Models, DecoderClassificationUsesLastRealToken) {
  LoadOptions options;
  options.verbose = false;
  options.head = HeadKind::SequenceClassification;
  options.num_labels = 2;
  auto model = load_pretrained(golden::model_dir("gpt2-mini"), options);
  NoGradGuard no_grad;
  ModelInput a, b;
  a.input_ids = Tensor::from_ints({574, 2716, 3046}, {1, 3});
  b.input_ids = Tensor::from_ints({574, 2716, 3046, 0, 0}, {1, 5});
  b.attention_mask = Tensor::from_ints({1, 1, 1, 0, 0}, {1, 5});
  auto la = model->forward(a).logits.to_floats(), lb = model->forward(b).logits.to_floats();
  for (size_t i = 0; i < la.size(); ++i) EXPECT_NEAR(la[i], lb[i], 1e-5);
}

TEST(Models, KvCacheGivesTheSameLogitsAsAFullPass) {
  for (const char* name : {"gpt2-mini", "llama-mini"}) {
    auto model = golden::load_model(name);
    NoGradGuard no_grad;
    std::vector<int64_t> ids{35, 399, 501, 364, 742, 1373};
    ModelInput full;
    full.input_ids = Tensor::from_ints(ids, {1, 6});
    auto want = model->forward(full).logits;
    KVCache cache;
    ModelInput first;
    first.input_ids = Tensor::from_ints({35, 399, 501, 364}, {1, 4});
    first.cache = &cache;
    model->forward(first);
    ModelInput rest;
    rest.input_ids = Tensor::from_ints({742, 1373}, {1, 2});
    rest.cache = &cache;
    auto got = model->forward(rest).logits;
    auto w = want.slice(1, 4, 6).contiguous().to_floats(), g = got.to_floats();
    ASSERT_EQ(w.size(), g.size());
    float worst = 0;
    for (size_t i = 0; i < w.size(); ++i) worst = std::max(worst, std::fabs(w[i] - g[i]));
    EXPECT_LT(worst, 1e-4) << name;
  }
}

TEST(Models, MissingWeightsAreAnError) {
  auto dir = test_support::temp_dir("missing_weights");
  std::filesystem::copy_file(golden::model_dir("gpt2-mini") / "config.json", dir / "config.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto tensors = load_checkpoint_tensors(golden::model_dir("gpt2-mini"));
  tensors.erase("transformer.h.1.attn.c_attn.weight");
  write_safetensors(dir / "model.safetensors", tensors);
  LoadOptions options;
  options.verbose = false;
  try {
    load_pretrained(dir, options);
    FAIL() << "expected an error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("transformer.h.1.attn.c_attn.weight"), std::string::npos)
        << e.what();
  }
  std::filesystem::remove_all(dir);
}
