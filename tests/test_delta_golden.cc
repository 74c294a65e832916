// PEFT adapters from tests/data/golden reproduce transformers+PEFT's logits through our deltas.
#include <gtest/gtest.h>

#include "deltatune/autograd.h"
#include "deltatune/delta_io.h"
#include "model_compare.h"

using namespace deltatune;

class GoldenAdapter : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenAdapter, MatchesPeft) {
  const std::string name = GetParam();
  nlohmann::json c = golden::find_case(name);
  auto expected = golden::outputs(name);
  const auto dir = golden::dir() / c["adapter"].get<std::string>();
  LoadOptions options;
  options.verbose = false;
  auto req = delta::peek_delta(dir);
  options.head = req.head;
  options.num_labels = req.num_labels;
  auto model = load_pretrained(golden::model_dir(c["model"]), options);
  auto saved = delta::load_delta(dir, *model);
  EXPECT_EQ(saved.format, "peft");
  NoGradGuard no_grad;
  auto out = model->forward(golden::input_of(expected));
  auto cmp = golden::compare(out, expected, model->head == HeadKind::SequenceClassification);
  EXPECT_LT(cmp.max_logits, 1e-4) << name;
  EXPECT_GT(cmp.positions, 0);
  if (model->head != HeadKind::SequenceClassification) {
    EXPECT_LT(cmp.max_lse, 1e-4) << name;
    EXPECT_EQ(cmp.argmax_mismatch, 0) << name;
  }
  std::printf("%s: max |logits| diff %.2e\n", name.c_str(), cmp.max_logits);
  // Switched off, the model is the base again.
  saved.delta->set_enabled(false);
  auto base = golden::outputs(c["model"].get<std::string>() + "-base");
  if (model->head != HeadKind::SequenceClassification) {
    auto off = golden::compare(model->forward(golden::input_of(base)), base);
    EXPECT_LT(off.max_logits, 1e-4) << name << " (disabled)";
  }
}

INSTANTIATE_TEST_SUITE_P(Lora, GoldenAdapter,
                         ::testing::Values("gpt2-lora-cattn", "gpt2-lora-all", "llama-lora-qv", "llama-lora-all",
                                           "llama-dora", "bert-lora-qv"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n) if (ch == '-') ch = '_';
                           return n;
                         });

INSTANTIATE_TEST_SUITE_P(Methods, GoldenAdapter,
                         ::testing::Values("llama-ia3", "gpt2-prefix", "gpt2-prompt", "llama-prefix"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n) if (ch == '-') ch = '_';
                           return n;
                         });
