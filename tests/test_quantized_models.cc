// A quantised frozen base on the mini models (nn::quantize_frozen_weights, deltatune::use_quantized):
// which weights are quantised, the logits of each format against float32 (the measured error is
// printed and bounded), LoRA training on an nf4 base, and --quantize on the command line.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "deltatune/delta.h"
#include "deltatune/loading.h"
#include "deltatune/nn.h"
#include "deltatune/optim.h"
#include "deltatune/safetensors.h"
#include "golden.h"
#include "model_compare.h"
#include "small_task.h"
#include "temp_dir.h"

using namespace deltatune;

namespace {

const std::vector<QuantFormat>& kFormats = all_quant_formats();

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

// Every quantised layer's matrix, by module path.
std::map<std::string, std::shared_ptr<const QuantizedMatrix>> quantized_layers(TransformerModel& model) {
  std::map<std::string, std::shared_ptr<const QuantizedMatrix>> out;
  for (auto& [path, m] : model.named_modules())
    if (auto* linear = dynamic_cast<nn::Linear*>(m); linear && linear->quantized)
      out[path] = linear->quantized;
  return out;
}

// Both models have the same layers quantised to the same bytes, and the same logits.
void expect_same_quantised_model(TransformerModel& a, TransformerModel& b, const std::string& what) {
  const auto qa = quantized_layers(a), qb = quantized_layers(b);
  ASSERT_EQ(qa.size(), qb.size()) << what;
  EXPECT_GT(qa.size(), 0u) << what;
  for (const auto& [path, m] : qa) {
    ASSERT_TRUE(qb.count(path)) << what << ": " << path;
    const QuantizedMatrix& n = *qb.at(path);
    EXPECT_TRUE(m->rows == n.rows && m->cols == n.cols && m->data == n.data && m->scales == n.scales &&
                m->scale_codes == n.scale_codes && m->scale_absmax == n.scale_absmax &&
                m->scale_offset == n.scale_offset)
        << what << ": " << path;
  }
  EXPECT_EQ(a.forward(sample_input()).logits.to_floats(), b.forward(sample_input()).logits.to_floats())
      << what;
}

}  // namespace

// QLoRA's memory: LoadOptions::quantize stores the body's linear weights quantised as the checkpoint
// is read, never the float32 model in full. The same bytes as quantising the loaded model afterwards
// (GPT-2's [in, out] Conv1D weights included); a task head is left float, for use_quantized to take
// when it stays frozen.
TEST(QuantizedModels, QuantisingAsTheCheckpointLoadsEqualsQuantisingAfter) {
  for (const std::string name : {"bert-mini", "gpt2-mini", "llama-mini"})
    for (QuantFormat f : {QuantFormat::NF4, QuantFormat::Q8_0}) {
      const std::string what = name + " " + quant_format_name(f);
      auto after = golden::load_model(name);
      freeze(*after);
      nn::quantize_frozen_weights(*after, f);
      LoadOptions options;
      options.verbose = false;
      options.quantize = f;
      auto at_load = load_pretrained(golden::model_dir(name), options);
      for (const std::string& head : at_load->head_parameters())
        if (Tensor* t = at_load->find_parameter(head))
          EXPECT_EQ(t->dtype(), DType::F32) << what << ": " << head;
      if (name == "llama-mini") {
        // The pretrained LM head is not a task head: quantised as it loads, as use_quantized would.
        EXPECT_EQ(at_load->find_parameter("lm_head.weight"), nullptr) << "quantised";
        EXPECT_EQ(at_load->find_parameter("model.layers.0.self_attn.q_proj.weight"), nullptr) << "quantised";
      }
      freeze(*at_load);
      nn::quantize_frozen_weights(*at_load, f);  // the frozen head
      expect_same_quantised_model(*after, *at_load, what);
    }
}

// bench's models: quantised one weight at a time as they are initialised, the same as quantising the
// whole initialised model.
TEST(QuantizedModels, BuildingQuantisedEqualsQuantisingTheBuiltModel) {
  for (const std::string name : {"bert-mini", "llama-mini"}) {
    const ModelConfig config = load_model_config(golden::model_dir(name));
    const HeadKind head = head_from_architectures(config);
    auto after = build_model(config, head, 5), as_built = build_model(config, head, 5, QuantFormat::NF4);
    EXPECT_FALSE(quantized_layers(*as_built).empty()) << name;
    freeze(*after);
    freeze(*as_built);
    nn::quantize_frozen_weights(*after, QuantFormat::NF4);
    nn::quantize_frozen_weights(*as_built, QuantFormat::NF4);
    expect_same_quantised_model(*after, *as_built, name);
  }
}

// A saved tensor for a layer quantised at load (a head or layer a delta trained, PEFT's
// modules_to_save) replaces it whole: the layer becomes float again, with the stored shape.
TEST(QuantizedModels, AWeightQuantisedAtLoadCanBeReplacedWhole) {
  LoadOptions options;
  options.verbose = false;
  options.quantize = QuantFormat::NF4;
  auto model = load_pretrained(golden::model_dir("gpt2-mini"), options);
  const std::string name = "transformer.h.0.attn.c_attn.weight";  // a Conv1D: stored [in, out]
  auto* layer = dynamic_cast<nn::Linear*>(model->find_module("transformer.h.0.attn.c_attn"));
  ASSERT_NE(layer, nullptr);
  ASSERT_TRUE(layer->quantized);
  Tensor* w = nn::unquantize_for_replacement(*model, name);
  ASSERT_NE(w, nullptr);
  EXPECT_FALSE(layer->quantized);
  EXPECT_EQ(w->shape(), (Shape{layer->in_features, layer->out_features}));
  EXPECT_EQ(model->find_parameter(name), w);
  EXPECT_EQ(nn::unquantize_for_replacement(*model, name), nullptr);  // float now
  EXPECT_EQ(nn::unquantize_for_replacement(*model, "transformer.ln_f.weight"), nullptr);
}

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

// QLoRA's promise on the main job: `make demo` (LoRA on bert-mini, the whole sentiment task) over an nf4
// base reaches the float32 base's test accuracy within 0.04 (measured: 0.7650 against 0.7867).
TEST(QuantizedModels, QloraReachesTheDemosFloatAccuracy) {
  const std::filesystem::path tmp = test_support::temp_dir("qlora_demo");
  const std::filesystem::path assets(DELTATUNE_ASSETS);
  auto test_accuracy = [&](const std::string& quantize) {  // "" for the float32 base
    const std::filesystem::path run = tmp / (quantize.empty() ? "float32" : quantize);
    auto r = cli_test::run("train --model " + (assets / "models" / "bert-mini").string() + " --data " +
                           (assets / "tasks" / "sentiment").string() + " --method lora --quiet --threads 2" +
                           (quantize.empty() ? "" : " --quantize " + quantize) + " --out " + run.string());
    EXPECT_EQ(r.code, 0) << r.output;
    std::ifstream in(run / "summary.json");
    return nlohmann::json::parse(in).at("test").at("accuracy").get<double>();
  };
  const double float32 = test_accuracy(""), nf4 = test_accuracy("nf4");
  std::printf("demo test accuracy: float32 %.4f, nf4 %.4f\n", float32, nf4);
  EXPECT_GT(float32, 0.75);
  EXPECT_GT(nf4, float32 - 0.04);
  std::filesystem::remove_all(tmp);
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
  // last-layers trains the last block's weights: they stay float (the rest quantised) and are saved.
  const std::string layers_run = (tmp / "layers").string();
  r = cli_test::run("train --model " + model + " --data " + task.string() +
                    " --method last-layers --epochs 1 --quiet --threads 2 --quantize nf4 --out " +
                    layers_run);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("stored in nf4"), std::string::npos) << r.output;
  int trained_linear_weights = 0;
  for (const auto& [key, t] : read_safetensors(layers_run + "/delta/delta.safetensors").tensors)
    trained_linear_weights += key.ends_with("attention.self.query.weight");
  EXPECT_EQ(trained_linear_weights, 1) << "the last block's query weight trained and saved";
  r = cli_test::run("eval --model " + model + " --delta " + layers_run + "/delta --data " + task.string() +
                    " --threads 2 --quantize nf4");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("accuracy"), std::string::npos) << r.output;
  r = cli_test::run("eval --model " + model + " --delta " + run + "/delta --data " + task.string() +
                    " --quantize q3");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("nf4, int8, q8_0, q4_0"), std::string::npos) << r.output;
  std::filesystem::remove_all(tmp);
}
