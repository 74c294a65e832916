// A quantised frozen base on the mini models (nn::quantize_frozen_weights, deltatune::use_quantized):
// which weights are quantised, the logits of each format against float32 (the measured error is
// printed and bounded), LoRA training on an nf4 base, and --quantize on the command line.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "cli_run.h"
#include "deltatune/delta.h"
#include "deltatune/loading.h"
#include "deltatune/nn.h"
#include "deltatune/optim.h"
#include "golden.h"
#include "model_compare.h"
#include "small_task.h"
#include "temp_dir.h"

using namespace deltatune;

namespace {

const QuantFormat kFormats[] = {QuantFormat::NF4, QuantFormat::Int8, QuantFormat::Q8_0, QuantFormat::Q4_0,
                                QuantFormat::NF4DoubleQuant};

void freeze(TransformerModel& model) {
  for (auto& [name, t] : model.named_parameters()) t->set_requires_grad(false);
}

ModelInput sample_input() {
  ModelInput input;
  input.input_ids = Tensor::from_ints({2, 45, 97, 311, 28, 3, 2, 61, 5, 904, 77, 3}, {2, 6});
  return input;
}

// max |logit - float32 logit| / max |float32 logit| of the model with its frozen weights in `format`.
double relative_logit_error(const std::string& model_name, QuantFormat format, int64_t& quantised) {
  auto reference = golden::load_model(model_name), model = golden::load_model(model_name);
  freeze(*model);
  quantised = nn::quantize_frozen_weights(*model, format);
  const double error = golden::relative_max_error(model->forward(sample_input()).logits,
                                                  reference->forward(sample_input()).logits);
  return error;
}

// Bounds 1.5 to 3 times the error measured on these inputs (printed by the test; 8 bits: 0.008 to
// 0.015, 4 bits: 0.10 to 0.19), so a format quantised the wrong way (a scale off, nibbles swapped: an
// error near 1) fails by far.
double bound(QuantFormat f) {
  switch (f) {
    case QuantFormat::Int8:
    case QuantFormat::Q8_0:
      return 0.03;
    case QuantFormat::NF4:
    case QuantFormat::NF4DoubleQuant:
    case QuantFormat::Q4_0:
      return 0.3;
  }
  return 0;
}

}  // namespace

TEST(QuantizedModels, LlamaQuantisesEveryLinearAndTheUntiedHead) {
  auto model = golden::load_model("llama-mini");
  freeze(*model);
  int64_t linears = 0;
  for (auto& [name, m] : model->named_modules()) linears += dynamic_cast<nn::Linear*>(m) != nullptr;
  EXPECT_EQ(nn::quantize_frozen_weights(*model, QuantFormat::NF4), linears);
  auto* head = dynamic_cast<nn::Linear*>(model->find_module("lm_head"));
  ASSERT_NE(head, nullptr);
  EXPECT_TRUE(head->quantized);
  EXPECT_FALSE(head->weight().defined());  // the float32 copy is gone
  EXPECT_EQ(model->find_parameter("lm_head.weight"), nullptr);
  EXPECT_EQ(model->find_parameter("model.norm.weight")->dtype(), DType::F32);
}

TEST(QuantizedModels, TrainedAndTiedWeightsStayFloat) {
  auto model = golden::load_model("bert-mini");  // its MLM decoder is tied to the word embeddings
  freeze(*model);
  const int64_t changed = nn::quantize_frozen_weights(*model, QuantFormat::Int8,
                                                      {"bert.encoder.layer.0.attention.self.query.weight"});
  auto* query = dynamic_cast<nn::Linear*>(model->find_module("bert.encoder.layer.0.attention.self.query"));
  ASSERT_NE(query, nullptr);
  EXPECT_FALSE(query->quantized);
  EXPECT_GT(changed, 0);
  EXPECT_EQ(model->input_embeddings().dtype(), DType::F32);
}

TEST(QuantizedModels, LogitsStayCloseToFloat32) {
  for (const std::string name : {"bert-mini", "llama-mini"})
    for (QuantFormat f : kFormats) {
      int64_t quantised = 0;
      const double error = relative_logit_error(name, f, quantised);
      std::printf("%s %s: %lld matrices, max logit error %.4f of the largest logit\n", name.c_str(),
                  quant_format_name(f), static_cast<long long>(quantised), error);
      EXPECT_GT(quantised, 0);
      EXPECT_LT(error, bound(f)) << name << " " << quant_format_name(f);
      EXPECT_GT(error, 0.0) << name << " " << quant_format_name(f) << ": nothing was quantised";
    }
}

// QLoRA's recipe: LoRA on every attention projection over an nf4 base; the loss on a fixed batch falls
// and only the LoRA factors learn.
TEST(QuantizedModels, LoraTrainsOnAnNf4Base) {
  auto model = golden::load_model("llama-mini");
  auto lora =
      delta::make_delta({{"method", "lora"}, {"r", 8}, {"alpha", 16}, {"targets", {"attn.q", "attn.v"}}});
  lora->attach(*model);
  delta::freeze_for_delta(*model, {lora.get()}, {});
  EXPECT_GT(nn::quantize_frozen_weights(*model, QuantFormat::NF4), 0);
  model->set_training(true);
  AdamW opt(delta::trainable_parameters(*model, {lora.get()}), {.lr = 1e-2, .weight_decay = 0.0});
  ModelInput input = sample_input();
  const Tensor ids = input.input_ids;
  auto loss_of = [&] {
    Tensor logits = model->forward(input).logits;  // [2, 6, V]: predict token t + 1 from t
    const int64_t v = logits.size(-1);
    Tensor pred = ops::reshape(logits.slice(1, 0, 5), {-1, v});
    Tensor target = ops::reshape(ids.slice(1, 1, 6).contiguous(), {-1});
    return ops::cross_entropy(pred, target);
  };
  const float first = loss_of().item();
  for (int step = 0; step < 12; ++step) {
    Tensor loss = loss_of();
    loss.backward();
    opt.step();
    opt.zero_grad();
  }
  const float last = loss_of().item();
  std::printf("LoRA on nf4 llama-mini: loss %.4f -> %.4f in 12 steps\n", first, last);
  EXPECT_LT(last, 0.7f * first);
}

TEST(QuantizedModels, CommandLineQuantize) {
  const std::filesystem::path tmp = test_support::temp_dir("quantize_cli");
  const std::string model = golden::model_dir("bert-mini").string();
  const auto task = test_support::write_sentiment_subset(tmp / "task", 48, 16, 16);
  const std::string run = (tmp / "run").string();
  auto r = cli_test::run("train --model " + model + " --data " + task.string() +
                         " --method lora --epochs 1 --quiet --threads 2 --quantize nf4 --out " + run);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("stored in nf4"), std::string::npos) << r.output;
  r = cli_test::run("eval --model " + model + " --delta " + run + "/delta --data " + task.string() +
                    " --threads 2 --quantize q8_0");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("accuracy"), std::string::npos) << r.output;
  r = cli_test::run("predict --model " + model + " --delta " + run + "/delta --input " +
                    (task / "test.jsonl").string() + " --threads 2 --quantize int8");
  EXPECT_EQ(r.code, 0) << r.output;
  r = cli_test::run("generate --model " + golden::model_dir("llama-mini").string() +
                    " --prompt hello --max-new-tokens 4 --threads 2 --quantize q4_0");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("stored in q4_0"), std::string::npos) << r.output;
  r = cli_test::run("eval --model " + model + " --delta " + run + "/delta --data " + task.string() +
                    " --quantize q3");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("nf4, int8, q8_0, q4_0"), std::string::npos) << r.output;
  std::filesystem::remove_all(tmp);
}
