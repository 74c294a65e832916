// PEFT adapters from tests/data/golden reproduce transformers+PEFT's logits through our deltas.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "deltatune/autograd.h"
#include "deltatune/delta_io.h"
#include "deltatune/safetensors.h"
#include "model_compare.h"

using namespace deltatune;

// The golden case's base model with its PEFT adapter loaded (the head the adapter was saved with).
std::pair<std::unique_ptr<TransformerModel>, delta::SavedDelta> load_golden_adapter(const nlohmann::json& c) {
  const auto dir = golden::dir() / c["adapter"].get<std::string>();
  LoadOptions options;
  options.verbose = false;
  auto req = delta::peek_delta(dir);
  options.head = req.head;
  options.num_labels = req.num_labels;
  auto model = load_pretrained(golden::model_dir(c["model"]), options);
  auto saved = delta::load_delta(dir, *model);
  return {std::move(model), std::move(saved)};
}

class GoldenAdapter : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenAdapter, MatchesPeft) {
  const std::string name = GetParam();
  nlohmann::json c = golden::find_case(name);
  auto expected = golden::outputs(name);
  auto [model, saved] = load_golden_adapter(c);
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
                         ::testing::Values("gpt2-lora-cattn", "gpt2-lora-all", "llama-lora-qv",
                                           "llama-lora-all", "llama-dora", "bert-lora-qv"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

INSTANTIATE_TEST_SUITE_P(Methods, GoldenAdapter,
                         ::testing::Values("llama-ia3", "gpt2-prefix", "gpt2-prompt", "llama-prefix"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

// What we write in PEFT's format is what PEFT wrote: re-saving each golden adapter gives the same
// tensor keys, shapes and values, and a config whose fields PEFT's config class knows (a subset of
// the fields PEFT itself wrote) with the same values for everything that decides the computation.
class GoldenAdapterResave : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenAdapterResave, SameKeysShapesAndConfigFields) {
  const std::string name = GetParam();
  nlohmann::json c = golden::find_case(name);
  const auto dir = golden::dir() / c["adapter"].get<std::string>();
  auto [model, saved] = load_golden_adapter(c);
  const auto out = std::filesystem::temp_directory_path() /
                   ("deltatune_resave_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(out);
  delta::save_peft(out, *saved.delta, *model, saved.head);

  const auto theirs = read_safetensors(dir / "adapter_model.safetensors");
  const auto ours = read_safetensors(out / "adapter_model.safetensors");
  ASSERT_EQ(ours.tensors.size(), theirs.tensors.size()) << name;
  for (const auto& [key, t] : theirs.tensors) {
    auto it = ours.tensors.find(key);
    ASSERT_NE(it, ours.tensors.end()) << name << ": we do not write " << key;
    EXPECT_EQ(it->second.shape(), t.shape()) << key;
    std::vector<float> a = it->second.to_floats(), b = t.to_floats();
    float worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
    EXPECT_LT(worst, 1e-6) << key;
  }

  auto read_json = [](const std::filesystem::path& p) {
    std::ifstream in(p);
    return nlohmann::json::parse(in);
  };
  const nlohmann::json want = read_json(dir / "adapter_config.json"),
                       got = read_json(out / "adapter_config.json");
  for (auto& [key, value] : got.items())
    EXPECT_TRUE(want.contains(key)) << name << ": PEFT's config has no field '" << key << "'";
  for (const char* key : {"peft_type",
                          "task_type",
                          "r",
                          "lora_alpha",
                          "use_rslora",
                          "use_dora",
                          "fan_in_fan_out",
                          "bias",
                          "rank_pattern",
                          "alpha_pattern",
                          "layers_to_transform",
                          "modules_to_save",
                          "feedforward_modules",
                          "num_virtual_tokens",
                          "token_dim",
                          "num_layers",
                          "num_attention_heads",
                          "num_transformer_submodules",
                          "encoder_hidden_size",
                          "prefix_projection"}) {
    if (!want.contains(key) || want[key].is_null()) continue;
    ASSERT_TRUE(got.contains(key)) << name << ": missing " << key;
    nlohmann::json a = got[key], b = want[key];
    if (a.is_array() && b.is_array()) {  // PEFT writes target sets in no fixed order
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
    }
    EXPECT_EQ(a, b) << name << ": " << key;
  }
  auto targets = [](nlohmann::json t) {
    if (t.is_array()) std::sort(t.begin(), t.end());
    return t;
  };
  if (want.contains("target_modules") && !want["target_modules"].is_null())
    EXPECT_EQ(targets(got.value("target_modules", nlohmann::json())), targets(want["target_modules"]))
        << name;
  std::filesystem::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(All, GoldenAdapterResave,
                         ::testing::Values("gpt2-lora-cattn", "gpt2-lora-all", "llama-lora-qv",
                                           "llama-lora-all", "llama-dora", "bert-lora-qv", "bert-cls-lora",
                                           "llama-ia3", "gpt2-prefix", "gpt2-prompt", "llama-prefix"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });
