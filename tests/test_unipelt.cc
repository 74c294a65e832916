// UniPELT: closed gates give the base model, gradients reach every gate, AP and APL train on
// bert-mini (and APL on gpt2-mini), save/load round trips, the gates ignore padding and can be read
// out, and merge refuses the gated LoRA. Combinations of deltas: order, training, round trip, errors.
#include <gtest/gtest.h>

#include <filesystem>

#include "delta_fixtures.h"
#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/delta_io.h"
#include "deltatune/error.h"
#include "deltatune/gates.h"
#include "deltatune/merge.h"
#include "deltatune/ops.h"
#include "deltatune/optim.h"
#include "deltatune/random.h"
#include "golden.h"
#include "temp_dir.h"

using namespace deltatune;
using nlohmann::json;
using test_support::Batch;
using test_support::logits_of;
using test_support::loss_of;
using test_support::make_batch;
using test_support::max_diff;
namespace fs = std::filesystem;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Sets every gate's weight to zero and its bias to `bias`.
void set_gates(delta::Delta& d, float bias) {
  std::map<std::string, Tensor> values;
  for (auto& [n, t] : d.parameters())
    if (n.find("_gate.") != std::string::npos)
      values[n] = ends_with(n, ".bias") ? Tensor::full(t.shape(), bias) : Tensor::zeros(t.shape());
  ASSERT_FALSE(values.empty());
  d.load_parameters(values);
}

// Random values in every zero-initialised delta tensor (LoRA B, adapter up), so each part acts.
void wake(delta::Delta& d) {
  Generator gen(99);
  std::map<std::string, Tensor> values;
  for (auto& [n, t] : d.parameters())
    if (n.find("lora_B") != std::string::npos || n.find("adapter.up") != std::string::npos)
      values[n] = Tensor::randn(t.shape(), gen, 0.05f);
  d.load_parameters(values);
}

std::vector<float> train(TransformerModel& model, delta::Delta& d, const Batch& batch, double lr,
                         int steps = 8) {
  delta::freeze_for_delta(model, {&d}, {});
  AdamW opt(delta::trainable_parameters(model, {&d}), {.lr = lr, .weight_decay = 0.0});
  std::vector<float> losses;
  for (int step = 0; step < steps; ++step) {
    Tensor loss = loss_of(model, batch);
    losses.push_back(loss.item());
    loss.backward();
    opt.step();
    opt.zero_grad();
  }
  NoGradGuard no_grad;
  losses.push_back(loss_of(model, batch).item());
  return losses;
}

json unipelt(const std::string& variant) { return {{"method", "unipelt"}, {"variant", variant}}; }

}  // namespace

TEST(UniPelt, ConfigAndParameters) {
  auto model = golden::load_model("bert-mini");
  auto d = delta::make_delta(unipelt("APL"));
  d->attach(*model);
  const int64_t layers = model->config.num_layers;
  int lora_a = 0, adapter_down = 0, prefix = 0, gates = 0;
  for (auto& [n, t] : d->parameters()) {
    lora_a += ends_with(n, "lora_A.weight");
    adapter_down += ends_with(n, "adapter.down.weight");
    prefix += n.rfind("prefix_encoder.", 0) == 0;
    gates += ends_with(n, "_gate.weight");
    if (ends_with(n, "lora_A.weight")) {
      EXPECT_EQ(t.size(0), 8);
    }
    if (ends_with(n, "adapter.down.weight")) {
      EXPECT_EQ(t.size(0), model->config.hidden_size / 16);
    }
  }
  EXPECT_EQ(lora_a, 2 * layers);    // query and value
  EXPECT_EQ(adapter_down, layers);  // pfeiffer: after the feed-forward only
  EXPECT_EQ(prefix, 5);             // the MLP reparameterisation
  EXPECT_EQ(gates, 2 * layers + layers + layers);
  const json c = d->config();
  EXPECT_EQ(c["variant"], "APL");
  EXPECT_EQ(c["prefix"]["num_virtual_tokens"], 10);
  EXPECT_EQ(c["prefix"]["projection"], true);
  EXPECT_EQ(c["lora"]["r"], 8);
  EXPECT_EQ(c["lora"]["alpha"], 8.0);  // alpha / r = 1: the gate is the scaling
  EXPECT_EQ(c["adapter"]["variant"], "pfeiffer");
  EXPECT_EQ(d->saved_config()["prefix"]["projection"], false);

  auto ap = delta::make_delta(unipelt("ap"));
  EXPECT_EQ(ap->config()["variant"], "AP");
  EXPECT_FALSE(ap->config().contains("lora"));
  EXPECT_THROW(delta::make_delta(unipelt("APX")), ConfigError);
  EXPECT_THROW(delta::make_delta(unipelt("")), ConfigError);
  EXPECT_THROW(delta::make_delta({{"method", "unipelt"}, {"lora", 3}}), ConfigError);
}

// A closed gate (bias -> -inf) switches its part off: with every gate closed the model is the base,
// even with every part holding non-zero weights. (GPT-2 without the prefix: a decoder's positions
// start after a prefix whatever its gate.)
TEST(UniPelt, ClosedGatesGiveTheBase) {
  for (auto [name, variant] : {std::pair{"bert-mini", "APL"}, std::pair{"gpt2-mini", "AL"}}) {
    SCOPED_TRACE(name);
    auto model = golden::load_model(name);
    const Batch batch = make_batch(*model);
    const Tensor base = logits_of(*model, batch.input);
    auto d = delta::make_delta(unipelt(variant));
    d->attach(*model);
    wake(*d);
    EXPECT_GT(max_diff(logits_of(*model, batch.input), base), 1e-4f) << "the parts do nothing";
    set_gates(*d, -1e4f);
    EXPECT_LT(max_diff(logits_of(*model, batch.input), base), 1e-4f);
    // Opening the gates again changes the output; switching the delta off gives the base.
    set_gates(*d, 2.0f);
    EXPECT_GT(max_diff(logits_of(*model, batch.input), base), 1e-4f);
    d->set_enabled(false);
    EXPECT_LT(max_diff(logits_of(*model, batch.input), base), 1e-4f);
    d->set_enabled(true);
    d->detach();
    EXPECT_LT(max_diff(logits_of(*model, batch.input), base), 1e-4f);
  }
}

TEST(UniPelt, GradientsReachEveryGate) {
  auto model = golden::load_model("bert-mini");
  const Batch batch = make_batch(*model);
  auto d = delta::make_delta(unipelt("APL"));
  d->attach(*model);
  wake(*d);
  delta::freeze_for_delta(*model, {d.get()}, {});
  loss_of(*model, batch).backward();
  int checked = 0;
  for (auto& [n, t] : d->parameters()) {
    if (n.find("_gate.") == std::string::npos) continue;
    Tensor g = t.grad();
    ASSERT_TRUE(g.defined()) << n;
    float norm = 0;
    for (float v : g.to_floats()) norm += v * v;
    EXPECT_GT(norm, 0.0f) << n;
    ++checked;
  }
  EXPECT_EQ(checked, 2 * 4 * model->config.num_layers);
}

// A gate averages over real tokens only: a padded row gives what the row alone gives.
TEST(UniPelt, GatesIgnorePadding) {
  auto model = golden::load_model("bert-mini");
  const Batch batch = make_batch(*model);
  auto d = delta::make_delta(unipelt("APL"));
  d->attach(*model);
  wake(*d);
  const Tensor both = logits_of(*model, batch.input);
  ModelInput alone;
  alone.input_ids = batch.input.input_ids.slice(0, 1, 2).slice(1, 0, 7).contiguous();
  const Tensor single = logits_of(*model, alone);
  EXPECT_LT(max_diff(both.slice(0, 1, 2).slice(1, 0, 7).contiguous(), single), 1e-4f);
}

TEST(UniPelt, TrainsOnBertMini) {
  for (const char* variant : {"AP", "APL"}) {
    SCOPED_TRACE(variant);
    auto model = golden::load_model("bert-mini");
    const Batch batch = make_batch(*model);
    auto d = delta::make_delta(unipelt(variant));
    d->attach(*model);
    auto losses = train(*model, *d, batch, 5e-3);
    EXPECT_LT(losses.back(), losses.front() - 0.05f) << json(losses).dump();
  }
}

TEST(UniPelt, TrainsOnGpt2Mini) {
  auto model = golden::load_model("gpt2-mini");
  const Batch batch = make_batch(*model);
  auto d = delta::make_delta(unipelt("APL"));
  d->attach(*model);
  auto losses = train(*model, *d, batch, 5e-3);
  EXPECT_LT(losses.back(), losses.front() - 0.05f) << json(losses).dump();
}

TEST(UniPelt, SaveLoadAndMerge) {
  auto model = golden::load_model("bert-mini");
  const Batch batch = make_batch(*model);
  auto d = delta::make_delta(unipelt("APL"));
  d->attach(*model);
  train(*model, *d, batch, 5e-3, 3);
  const Tensor trained = logits_of(*model, batch.input);
  fs::path dir = test_support::temp_dir("unipelt_save");
  delta::save_delta(dir, *d, *model);
  {
    auto fresh = golden::load_model("bert-mini");
    testing::internal::CaptureStderr();
    auto saved = delta::load_delta(dir, *fresh);
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_EQ(err.find("other base weights"), std::string::npos) << err;
    EXPECT_EQ(saved.delta->method(), "unipelt");
    EXPECT_LT(max_diff(logits_of(*fresh, batch.input), trained), 1e-5f);
    try {
      delta::merge_into(*fresh, *saved.delta);
      ADD_FAILURE() << "merge accepted a gated LoRA";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("gate"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(delta::save_peft(dir / "peft", *d, *model), Error);
  fs::remove_all(dir);
}

TEST(UniPelt, DumpGates) {
  auto model = golden::load_model("bert-mini");
  const Batch batch = make_batch(*model);
  auto d = delta::make_delta(unipelt("APL"));
  d->attach(*model);
  EXPECT_TRUE(delta::has_gates(*d));
  delta::record_gates(*d, true);
  logits_of(*model, batch.input);
  logits_of(*model, batch.input);
  delta::record_gates(*d, false);
  logits_of(*model, batch.input);  // not recorded
  auto gates = delta::gate_means(*d);
  ASSERT_EQ(int64_t(gates.size()), 4 * model->config.num_layers);
  for (auto& g : gates) {
    EXPECT_EQ(g.examples, 4);
    EXPECT_GT(g.mean, 0.0);
    EXPECT_LT(g.mean, 1.0);
  }
  EXPECT_EQ(gates[0].layer, 0);
  const json j = delta::gates_json(gates);
  EXPECT_EQ(j["layers"].size(), size_t(model->config.num_layers));
  EXPECT_TRUE(j["layers"][0].contains("adapter"));
  EXPECT_TRUE(j["layers"][0].contains("prefix"));
  EXPECT_TRUE(j["layers"][0].contains("lora.query"));
  EXPECT_TRUE(j["layers"][0].contains("lora.value"));
  const std::string table = delta::gates_table(gates);
  EXPECT_NE(table.find("lora.value"), std::string::npos) << table;
  EXPECT_NE(table.find("mean"), std::string::npos) << table;
  // Closed gates read as zero.
  set_gates(*d, -1e4f);
  delta::record_gates(*d, true);
  logits_of(*model, batch.input);
  for (auto& g : delta::gate_means(*d)) EXPECT_EQ(g.mean, 0.0);
}

// --- combinations ---

TEST(Combination, OrderTrainRoundTrip) {
  auto model = golden::load_model("bert-mini");
  const Batch batch = make_batch(*model);
  const Tensor base = logits_of(*model, batch.input);
  // Listed out of order: attached bitfit, prompt, adapter.
  json config = {{"method", "combination"},
                 {"deltas",
                  {{{"method", "adapter"}, {"variant", "pfeiffer"}},
                   {{"method", "prompt"}, {"num_virtual_tokens", 3}},
                   {{"method", "bitfit"}}}}};
  auto d = delta::make_delta(config);
  EXPECT_EQ(d->method(), "combination");
  const json c = d->config();
  ASSERT_EQ(c["deltas"].size(), 3u);
  EXPECT_EQ(c["deltas"][0]["method"], "bitfit");
  EXPECT_EQ(c["deltas"][1]["method"], "prompt");
  EXPECT_EQ(c["deltas"][2]["method"], "adapter");
  d->attach(*model);
  std::set<std::string> kinds;
  for (auto& [n, _] : d->parameters()) {
    if (n.find("adapter.") != std::string::npos)
      kinds.insert("adapter");
    else if (n.find("prompt") != std::string::npos || n.find("embedding") != std::string::npos)
      kinds.insert("prompt");
    else if (ends_with(n, ".bias"))
      kinds.insert("bitfit");
  }
  EXPECT_EQ(kinds.size(), 3u);
  auto losses = train(*model, *d, batch, 1e-2);
  EXPECT_LT(losses.back(), losses.front() - 0.05f) << json(losses).dump();
  const Tensor trained = logits_of(*model, batch.input);

  fs::path dir = test_support::temp_dir("combination_save");
  delta::save_delta(dir, *d, *model);
  {
    auto fresh = golden::load_model("bert-mini");
    testing::internal::CaptureStderr();
    auto saved = delta::load_delta(dir, *fresh);
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_EQ(err.find("other base weights"), std::string::npos) << err;
    EXPECT_EQ(saved.delta->method(), "combination");
    EXPECT_LT(max_diff(logits_of(*fresh, batch.input), trained), 1e-5f);
  }
  fs::remove_all(dir);
  d->detach();
  EXPECT_LT(max_diff(logits_of(*model, batch.input), base), 1e-5f);
}

// A bare list is a combination; LoRA then IA3 on the same layer, in the documented order.
TEST(Combination, ListFormAndSameLayerOrder) {
  auto model = golden::load_model("bert-mini");
  const Batch batch = make_batch(*model);
  json list = {{{"method", "ia3"}, {"targets", {"attn.v"}}}, {{"method", "lora"}, {"r", 2}}};
  auto d = delta::make_delta(list);
  EXPECT_EQ(d->config()["deltas"][0]["method"], "lora");
  d->attach(*model);
  auto losses = train(*model, *d, batch, 1e-2, 6);
  EXPECT_LT(losses.back(), losses.front() - 0.05f) << json(losses).dump();
  // With UniPELT as a member too.
  auto model2 = golden::load_model("bert-mini");
  auto d2 =
      delta::make_delta({{"method", "combination"}, {"deltas", {unipelt("AP"), {{"method", "bitfit"}}}}});
  d2->attach(*model2);
  EXPECT_TRUE(delta::has_gates(*d2));
}

TEST(Combination, Errors) {
  EXPECT_THROW(delta::make_delta({{"method", "combination"}}), ConfigError);
  EXPECT_THROW(delta::make_delta({{"method", "combination"}, {"deltas", json::array()}}), ConfigError);
  try {
    delta::make_delta({{"method", "combination"}, {"deltas", {{{"method", "nope"}}}}});
    ADD_FAILURE();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("deltas[0]"), std::string::npos) << e.what();
  }
  // Two members training the same tensors.
  auto model = golden::load_model("bert-mini");
  auto d = delta::make_delta(
      {{"method", "combination"}, {"deltas", {{{"method", "bitfit"}}, {{"method", "ln"}}}}});
  EXPECT_THROW(d->attach(*model), ConfigError);
  const Batch batch = make_batch(*model);
  auto fresh = golden::load_model("bert-mini");
  EXPECT_LT(max_diff(logits_of(*model, batch.input), logits_of(*fresh, batch.input)), 1e-6f)
      << "a failed attach left hooks";
}

// A member that saves a sparse form (diff pruning) and adds a penalty: the combination forwards both.
TEST(Combination, SparseMemberRoundTrip) {
  auto model = golden::load_model("bert-mini");
  const Batch batch = make_batch(*model);
  auto d = delta::make_delta(
      json::array({{{"method", "diff_pruning"}, {"targets", {"attn.o"}}}, {{"method", "lora"}, {"r", 2}}}));
  d->attach(*model);
  model->set_training(true);  // the L0 penalty counts while training
  EXPECT_TRUE(d->regularizer().defined());
  model->set_training(false);
  train(*model, *d, batch, 1e-2, 3);
  const Tensor trained = logits_of(*model, batch.input);
  fs::path dir = test_support::temp_dir("combination_sparse");
  delta::save_delta(dir, *d, *model);
  auto fresh = golden::load_model("bert-mini");
  auto saved = delta::load_delta(dir, *fresh);
  EXPECT_LT(max_diff(logits_of(*fresh, batch.input), trained), 1e-5f);
  fs::remove_all(dir);
}

// A combination computes exactly what its members compute when attached one by one in the documented
// order (bitfit, prompt, lora, ia3, adapters), with the same parameter values. (Prefix and prompt
// tuning cannot share a combination: both are PEFT's prompt_embeddings.)
TEST(Combination, EqualsMembersAttachedInOrder) {
  const json members = {{{"method", "adapter"}, {"variant", "houlsby"}},
                        {{"method", "ia3"}, {"targets", {"attn.v", "ffn.down"}}},
                        {{"method", "lora"}, {"r", 4}, {"targets", {"attn.q", "attn.v"}}},
                        {{"method", "prompt"}, {"num_virtual_tokens", 2}},
                        {{"method", "bitfit"}}};
  auto model = golden::load_model("bert-mini");
  const Batch batch = make_batch(*model);
  auto combo = delta::make_delta({{"method", "combination"}, {"deltas", members}});
  combo->attach(*model);
  // Random values everywhere (LoRA's B and the adapters' up-projections start at zero).
  Generator gen(11);
  std::map<std::string, Tensor> values;
  for (auto& [n, t] : combo->parameters())
    values[n] = ops::add(t, Tensor::randn(t.shape(), gen, 0.05f)).detach();
  combo->load_parameters(values);
  const Tensor combined = logits_of(*model, batch.input);

  auto separate = golden::load_model("bert-mini");
  std::vector<std::unique_ptr<delta::Delta>> ds;
  const json order = combo->config()["deltas"];  // the documented order
  ASSERT_EQ(order.size(), members.size());
  for (const auto& m : order) {
    ds.push_back(delta::make_delta(m));
    ds.back()->name = "member" + std::to_string(ds.size());
    ds.back()->attach(*separate);
    std::map<std::string, Tensor> mine;
    for (auto& [n, _] : ds.back()->parameters()) mine[n] = values.at(n);
    ds.back()->load_parameters(mine);
  }
  EXPECT_LT(max_diff(logits_of(*separate, batch.input), combined), 1e-5f);
  // And the members matter: the base differs.
  const Tensor base = logits_of(*golden::load_model("bert-mini"), batch.input);
  EXPECT_GT(max_diff(base, combined.slice(1, 2, combined.size(1)).contiguous()),
            1e-3f);  // past the 2 prompt positions
}
