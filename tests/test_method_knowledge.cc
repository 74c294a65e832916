// What a delta method knows lives in the method (Delta's virtual functions and its registration,
// deltatune/delta_method.h). For every registered method the answers agree with what happens:
// can_merge with whether merging works (and keeps the outputs), a PEFT mapping with a save/load round
// trip in PEFT's format (a clear refusal without one), supports_mixed_batch with what a mixed batch
// accepts, the default learning rate with the method table's. And a toy method written entirely in
// this file (one class, one registration) is made by name, attached, saved and loaded back, in both
// formats, and shares mixed batches: one file is enough to add a method.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "delta_fixtures.h"
#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/delta_io.h"
#include "deltatune/delta_method.h"
#include "deltatune/error.h"
#include "deltatune/merge.h"
#include "deltatune/method_presets.h"
#include "deltatune/mixed_batch.h"
#include "golden.h"
#include "temp_dir.h"

using namespace deltatune;
using nlohmann::json;
using test_support::copy_into;
using test_support::logits_of;
using test_support::max_diff;
using test_support::moved_delta;
namespace fs = std::filesystem;

// ---- the toy method: a learned scale of each target layer's output rows ----
namespace toy {

struct ScaleHook : nn::LinearHook {
  Tensor scale;  // [out]
  Tensor post(nn::Linear&, const Tensor&, const Tensor& y) override { return ops::mul(y, scale); }
};

class RowScale : public delta::Delta {
 public:
  explicit RowScale(const json& c) : config_(c) {
    spec_ = delta::TargetSpec::from_json(c.value("targets", json{"attn.o"}));
    shareable_ = c.value("shareable", true);
  }
  std::string method() const override { return "toy_row_scale"; }
  void attach(TransformerModel& model) override {
    for (const auto& path : delta::resolve_targets(model, spec_)) {
      auto* layer = static_cast<nn::Linear*>(model.find_module(path));
      auto hook = std::make_shared<ScaleHook>();
      hook->owner = name;
      hook->scale = Tensor::ones({layer->out_features});
      layer->hooks.push_back(hook);
      hooks_.emplace_back(layer, hook);
      paths_.push_back(path);
    }
  }
  void detach() override {
    for (auto& entry : hooks_) {  // a plain reference: clang 14 cannot capture structured bindings
      auto* hook = entry.second.get();
      std::erase_if(entry.first->hooks, [hook](const auto& h) { return h.get() == hook; });
    }
    hooks_.clear();
    paths_.clear();
  }
  void set_enabled(bool on) override {
    for (auto& [_, hook] : hooks_) hook->enabled = on;
  }
  std::vector<std::pair<std::string, Tensor>> parameters() override {
    std::vector<std::pair<std::string, Tensor>> out;
    for (size_t i = 0; i < hooks_.size(); ++i)
      out.emplace_back(paths_[i] + ".row_scale", hooks_[i].second->scale);
    return out;
  }
  json config() const override {
    json c = config_;
    c["method"] = method();
    c["targets"] = spec_.names_json();
    return c;
  }
  std::vector<std::string> attached_modules() const override { return paths_; }

  // What the method knows of itself.
  json peft_config(TransformerModel&) override {
    return {
        {"peft_type", "TOY_ROW_SCALE"}, {"target_modules", spec_.names_json()}, {"shareable", shareable_}};
  }
  bool supports_mixed_batch() const override { return shareable_; }
  int attach_stage() const override { return 5; }

 private:
  json config_;
  delta::TargetSpec spec_;
  bool shareable_ = true;
  std::vector<std::string> paths_;
  std::vector<std::pair<nn::Linear*, std::shared_ptr<ScaleHook>>> hooks_;
};

json from_peft(const json& p, const std::string&) {
  return {{"method", "toy_row_scale"}, {"targets", p["target_modules"]}, {"shareable", p["shareable"]}};
}

const delta::MethodRegistration registration({.name = "toy_row_scale",
                                              .make =
                                                  [](const json& c) { return std::make_unique<RowScale>(c); },
                                              .description = "a learned scale of each output row",
                                              .peft_type = "TOY_ROW_SCALE",
                                              .from_peft = from_peft,
                                              .default_lr = 3e-3});

}  // namespace toy

namespace {

ModelInput make_input(const TransformerModel& model, int64_t B = 3, int64_t T = 8) {
  Generator gen(5);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < B * T; ++i)
    ids.push_back(5 + int64_t(gen.below(uint64_t(std::min<int64_t>(model.config.vocab_size, 1000) - 5))));
  ModelInput in;
  in.input_ids = Tensor::from_ints(ids, {B, T});
  in.attention_mask = Tensor::ones({B, T});
  return in;
}

// The config each method is checked with: what `train --method NAME` attaches (a combination of LoRA
// and IA3 for `combination`, whose preset lists no members).
json config_of(const delta::DeltaMethod& m) {
  if (m.name == "combination")
    return {{"method", "combination"},
            {"deltas", json::array({json{{"method", "lora"}}, json{{"method", "ia3"}}})}};
  return m.train_config.is_null() ? json{{"method", m.name}} : m.train_config;
}

json read_json(const fs::path& file) {
  std::ifstream in(file);
  return json::parse(in);
}

// What a mixed batch says of a delta of this config: "" when accepted, else its refusal.
std::string mixed_batch_verdict(TransformerModel& model, const delta::Delta& d) {
  serve::MixedBatch mixed(model);
  try {
    mixed.add("x", delta::make_delta(d.config()));
    return "";
  } catch (const ConfigError& e) {
    return e.what();
  }
}

void check_method(const delta::DeltaMethod& m) {
  SCOPED_TRACE(m.name);
  const json config = config_of(m);
  auto model = golden::load_model("bert-mini");
  const ModelInput input = make_input(*model);
  const Tensor base = logits_of(*model, input);
  auto d = moved_delta(*model, config, 17);
  const Tensor with_delta = logits_of(*model, input);
  // (Prompt tuning lengthens the output by its virtual tokens.)
  if (with_delta.shape() == base.shape())
    EXPECT_GT(max_diff(with_delta, base), 1e-5f) << "the moved delta changes nothing";
  EXPECT_EQ(d->method(), m.name);
  EXPECT_GE(d->attach_stage(), 1);
  EXPECT_LE(d->attach_stage(), 7);

  // Learning rate: the registration's, the delta's and the method table's (what train uses) agree.
  EXPECT_EQ(d->default_learning_rate(), m.default_lr);
  EXPECT_EQ(method_preset(m.name).lr, m.default_lr);

  // Merging: it works and keeps the outputs exactly when the method says it can.
  {
    auto fresh = golden::load_model("bert-mini");
    auto copy = copy_into(*fresh, *d);
    if (d->can_merge()) {
      ASSERT_NO_THROW(delta::merge_into(*fresh, *copy));
      EXPECT_LT(max_diff(logits_of(*fresh, input), with_delta), 1e-4f)
          << "merged weights differ from the delta";
    } else {
      EXPECT_THROW(delta::merge_into(*fresh, *copy), ConfigError);
    }
  }

  // PEFT: a round trip through PEFT's format for methods with a peft_type, a clear refusal otherwise.
  const fs::path dir = test_support::temp_dir("knowledge_" + m.name);
  if (!m.peft_type.empty()) {
    delta::save_peft(dir, *d, *model);
    EXPECT_EQ(read_json(dir / "adapter_config.json")["peft_type"], m.peft_type);
    auto fresh = golden::load_model("bert-mini");
    delta::SavedDelta saved = delta::load_delta(dir, *fresh);
    EXPECT_EQ(saved.method, m.name);
    EXPECT_LT(max_diff(logits_of(*fresh, input), with_delta), 1e-5f) << "PEFT round trip changed the delta";
  } else {
    try {
      delta::save_peft(dir, *d, *model);
      ADD_FAILURE() << "saved in PEFT's format without a PEFT equivalent";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("no PEFT equivalent"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("LORA"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dir / "adapter_config.json"));
  }
  fs::remove_all(dir);

  // Mixed batches: accepted exactly when the method says so; a refusal of a built-in method has a
  // reason the mixed batch sees for itself (hooks, model tensors), never just the declaration.
  {
    auto fresh = golden::load_model("bert-mini");
    const std::string verdict = mixed_batch_verdict(*fresh, *d);
    EXPECT_EQ(verdict.empty(), d->supports_mixed_batch()) << verdict;
    if (!verdict.empty()) {
      EXPECT_NE(verdict.find("cannot share a batch"), std::string::npos) << verdict;
      EXPECT_EQ(verdict.find("does not support mixed batches"), std::string::npos) << verdict;
    }
    EXPECT_LT(max_diff(logits_of(*fresh, input), base), 1e-5f) << "a mixed batch left the model changed";
  }
}

}  // namespace

TEST(MethodKnowledge, EveryMethodAnswersConsistently) {
  ASSERT_GE(delta::delta_methods().size(), 15u);
  for (const auto& m : delta::delta_methods())
    if (m.name != "toy_row_scale") check_method(m);
}

TEST(MethodKnowledge, TheRegistryAgreesWithMakeDeltaAndTheMethodTable) {
  std::vector<std::string> names;
  for (const auto& m : delta::delta_methods()) names.push_back(m.name);
  EXPECT_EQ(names, delta::supported_methods());
  for (const char* peft : {"LORA", "IA3", "PREFIX_TUNING", "PROMPT_TUNING"}) {
    const delta::DeltaMethod* m = delta::find_peft_method(peft);
    ASSERT_NE(m, nullptr) << peft;
    EXPECT_NE(delta::supported_peft_types().find(peft), std::string::npos);
  }
  EXPECT_EQ(delta::find_peft_method("VERA"), nullptr);
  // Registering a name twice is refused.
  const auto none = [](const json&) -> std::unique_ptr<delta::Delta> { return nullptr; };
  EXPECT_THROW(delta::register_method({.name = "lora", .make = none}), Error);
  EXPECT_THROW(delta::register_method({.name = "lora2",
                                       .make = none,
                                       .description = "a second LORA",
                                       .peft_type = "LORA",
                                       .from_peft = toy::from_peft}),
               Error);
}

TEST(MethodKnowledge, ATestFilesOwnMethodIsMadeByNameSavedAndLoaded) {
  // The method table and make_delta know it.
  EXPECT_EQ(method_preset("toy_row_scale").lr, 3e-3);
  EXPECT_EQ(method_preset("toy_row_scale").delta_config, json({{"method", "toy_row_scale"}}));
  auto model = golden::load_model("bert-mini");
  const ModelInput input = make_input(*model);
  auto d = moved_delta(*model, {{"method", "toy_row_scale"}, {"targets", {"attn.o", "ffn.down"}}}, 17);
  EXPECT_EQ(d->parameters().size(), 2u * size_t(model->config.num_layers));
  EXPECT_EQ(d->default_learning_rate(), 3e-3);
  const Tensor with_delta = logits_of(*model, input);

  for (const bool peft : {false, true}) {
    SCOPED_TRACE(peft ? "PEFT's format" : "our format");
    const fs::path dir = test_support::temp_dir(std::string("knowledge_toy_") + (peft ? "peft" : "ours"));
    if (peft)
      delta::save_peft(dir, *d, *model);
    else
      delta::save_delta(dir, *d, *model);
    auto fresh = golden::load_model("bert-mini");
    delta::SavedDelta saved = delta::load_delta(dir, *fresh);
    ASSERT_TRUE(saved.delta);
    EXPECT_EQ(saved.method, "toy_row_scale");
    EXPECT_EQ(saved.delta->attached_modules(), d->attached_modules());
    EXPECT_LT(max_diff(logits_of(*fresh, input), with_delta), 1e-6f);
    fs::remove_all(dir);
  }

  // It cannot be merged (the default), and shares a mixed batch only when it says it can: a toy that
  // says it cannot is refused for that alone, though it only hooks linear layers.
  EXPECT_FALSE(d->can_merge());
  EXPECT_THROW(delta::merge_into(*model, *d), ConfigError);
  {
    auto fresh = golden::load_model("bert-mini");
    EXPECT_EQ(mixed_batch_verdict(*fresh, *d), "");
    auto unshared = delta::make_delta({{"method", "toy_row_scale"}, {"shareable", false}});
    const std::string verdict = mixed_batch_verdict(*fresh, *unshared);
    EXPECT_NE(verdict.find("does not support mixed batches"), std::string::npos) << verdict;
  }
  // In a combination it attaches at its stage, after a LoRA whatever the listed order.
  auto combo = delta::make_delta(json::array({json{{"method", "toy_row_scale"}}, json{{"method", "lora"}}}));
  EXPECT_EQ(combo->config()["deltas"][0]["method"], "lora");
  EXPECT_EQ(combo->config()["deltas"][1]["method"], "toy_row_scale");
}
