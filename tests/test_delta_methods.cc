// Every delta method on the mini models: identity at init where the method starts as one, the loss
// falls over a few AdamW steps, switching off gives the base back, and saving (our format and PEFT's)
// then loading into a fresh model gives identical logits. Plus the config errors users meet.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "delta/adapter_projection.h"
#include "delta/peft_config.h"
#include "delta_fixtures.h"
#include "deltatune/autograd.h"
#include "deltatune/data.h"
#include "deltatune/delta.h"
#include "deltatune/delta_io.h"
#include "deltatune/error.h"
#include "deltatune/generate.h"
#include "deltatune/merge.h"
#include "deltatune/optim.h"
#include "deltatune/safetensors.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"
#include "golden.h"
#include "temp_dir.h"

using namespace deltatune;
using test_support::Batch;
using test_support::logits_of;
using test_support::loss_of;
using test_support::make_batch;
using test_support::max_diff;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) { return test_support::temp_dir("methods_" + name); }

struct Case {
  std::string model;
  nlohmann::json config;
  bool identity = true;  // the attached delta starts as the identity
  bool peft = false;     // PEFT's format round trip too
  double lr = 1e-2;
};

void run_case(const Case& c) {
  SCOPED_TRACE(c.model + " " + c.config.dump());
  auto model = golden::load_model(c.model);
  const Batch batch = make_batch(*model);
  const Tensor base = logits_of(*model, batch);
  // A base weight, to check it is never trained.
  const std::string probe = model->layers_path() + ".0";
  std::vector<float> probe_before;
  for (auto& [n, t] : model->named_parameters())
    if (n.rfind(probe, 0) == 0 && n.find("weight") != std::string::npos && t->dim() == 2) {
      probe_before = t->to_floats();
      break;
    }

  auto delta = delta::make_delta(c.config);
  delta->attach(*model);
  ASSERT_FALSE(delta->parameters().empty());
  if (c.identity) EXPECT_LT(max_diff(logits_of(*model, batch), base), 1e-5f) << "not the identity at init";

  // Training moves only the delta, and the loss falls.
  auto [trainable, total] = delta::freeze_for_delta(*model, {delta.get()}, {});
  EXPECT_GT(trainable, 0);
  EXPECT_LT(trainable, total);
  AdamW opt(delta::trainable_parameters(*model, {delta.get()}), {.lr = c.lr, .weight_decay = 0.0});
  std::vector<float> losses;
  for (int step = 0; step < 6; ++step) {
    Tensor loss = loss_of(*model, batch);
    losses.push_back(loss.item());
    loss.backward();
    opt.step();
    opt.zero_grad();
  }
  {
    NoGradGuard no_grad;
    losses.push_back(loss_of(*model, batch).item());
  }
  std::printf("[ losses   ] %s %s: %.4f -> %.4f\n", c.model.c_str(),
              c.config["method"].get<std::string>().c_str(), losses.front(), losses.back());
  EXPECT_LT(losses.back(), losses.front() - 0.05f)
      << "the loss did not fall: " << nlohmann::json(losses).dump();
  const Tensor trained = logits_of(*model, batch);
  if (trained.shape() == base.shape())
    EXPECT_GT(max_diff(trained, base), 1e-4f) << "training changed nothing";

  // Switched off, or detached: the base again (prompt tuning changes the length, so compare when it can).
  delta->set_enabled(false);
  if (c.config["method"] != "prompt")
    EXPECT_LT(max_diff(logits_of(*model, batch), base), 1e-5f) << "disabled";
  delta->set_enabled(true);
  EXPECT_LT(max_diff(logits_of(*model, batch), trained), 1e-6f) << "re-enabled";
  for (auto& [n, t] : model->named_parameters())
    if (n.rfind(probe, 0) == 0 && n.find("weight") != std::string::npos && t->dim() == 2) {
      bool own = false;
      for (auto& [dn, _] : delta->parameters()) own = own || dn == n;
      if (!own) EXPECT_EQ(t->to_floats(), probe_before) << n << " changed";
      break;
    }

  // Saved alone and loaded into a fresh model: the same logits.
  const std::string tag = c.model + "_" + c.config["method"].get<std::string>();
  fs::path ours = temp_dir(tag + "_ours");
  delta::save_delta(ours, *delta, *model);
  {
    auto fresh = golden::load_model(c.model);
    testing::internal::CaptureStderr();
    auto saved = delta::load_delta(ours, *fresh);
    std::string err = testing::internal::GetCapturedStderr();
    EXPECT_EQ(err.find("other base weights"), std::string::npos) << err;
    EXPECT_EQ(saved.format, "deltatune");
    EXPECT_LT(max_diff(logits_of(*fresh, batch), trained), 1e-6f) << "our format round trip";
  }
  if (c.peft) {
    fs::path peft = temp_dir(tag + "_peft");
    delta::save_peft(peft, *delta, *model);
    EXPECT_TRUE(fs::exists(peft / "adapter_config.json"));
    auto fresh = golden::load_model(c.model);
    auto saved = delta::load_delta(peft, *fresh);
    EXPECT_EQ(saved.format, "peft");
    EXPECT_EQ(saved.delta->method(), delta->method());
    EXPECT_LT(max_diff(logits_of(*fresh, batch), trained), 1e-6f) << "PEFT format round trip";
    fs::remove_all(peft);
  }
  fs::remove_all(ours);

  // Detached, the model is the base again and has its own tensors back.
  delta->detach();
  EXPECT_LT(max_diff(logits_of(*model, batch), base), 1e-5f) << "detached";
}

using nlohmann::json;
}  // namespace

TEST(DeltaMethods, LoraBert) {
  run_case({"bert-mini", {{"method", "lora"}, {"r", 4}, {"alpha", 8}}, true, true});
}
TEST(DeltaMethods, LoraGpt2) {
  run_case({"gpt2-mini", {{"method", "lora"}, {"r", 4}, {"targets", {"attn.q", "ffn.down"}}}, true, true});
}

// LoRA on embedding tables (PEFT's lora_embedding_A/B), alone and with linear targets.
TEST(DeltaMethods, LoraEmbeddingsBert) {
  run_case({"bert-mini", {{"method", "lora"}, {"r", 4}, {"targets", {"embed", "attn.q"}}}, true, true});
}
TEST(DeltaMethods, LoraEmbeddingsGpt2) {
  run_case({"gpt2-mini", {{"method", "lora"}, {"r", 4}, {"targets", {"wte"}}}, true, true});
}
// PEFT's bias options: the adapted layers' biases, or every bias, trained beside the factors.
TEST(DeltaMethods, LoraBiasLoraOnlyBert) {
  run_case({"bert-mini", {{"method", "lora"}, {"r", 4}, {"bias", "lora_only"}}, true, true});
}
TEST(DeltaMethods, LoraBiasAllGpt2) {
  run_case({"gpt2-mini", {{"method", "lora"}, {"r", 4}, {"bias", "all"}}, true, true});
}

TEST(DeltaMethods, DoraBert) {
  run_case({"bert-mini", {{"method", "lora"}, {"r", 4}, {"dora", true}}, true, true});
}
TEST(DeltaMethods, DoraLlama) {
  run_case({"llama-mini", {{"method", "lora"}, {"r", 4}, {"dora", true}, {"rslora", true}}, true, true});
}

TEST(DeltaMethods, Ia3Bert) { run_case({"bert-mini", {{"method", "ia3"}}, true, true}); }
TEST(DeltaMethods, Ia3Llama) { run_case({"llama-mini", {{"method", "ia3"}}, true, true}); }
TEST(DeltaMethods, Ia3Gpt2) { run_case({"gpt2-mini", {{"method", "ia3"}}, true, true}); }

TEST(DeltaMethods, PrefixGpt2) {
  run_case({"gpt2-mini", {{"method", "prefix"}, {"num_virtual_tokens", 5}}, false, true});
}
TEST(DeltaMethods, PrefixLlama) {
  run_case({"llama-mini", {{"method", "prefix"}, {"num_virtual_tokens", 4}}, false, true});
}
// PEFT's N(0, 1) prefix moves BERT's post-norm attention slowly: a larger step.
TEST(DeltaMethods, PrefixBert) {
  run_case({"bert-mini", {{"method", "prefix"}, {"num_virtual_tokens", 4}}, false, false, 1e-1});
}
// The MLP reparameterisation trains, then saves collapsed: PEFT's plain prompt_embeddings.
TEST(DeltaMethods, PrefixProjection) {
  run_case(
      {"llama-mini",
       {{"method", "prefix"}, {"num_virtual_tokens", 3}, {"projection", true}, {"encoder_hidden_size", 32}},
       false,
       true});
}

TEST(DeltaMethods, PromptGpt2) {
  run_case({"gpt2-mini", {{"method", "prompt"}, {"num_virtual_tokens", 4}}, false, true});
}
TEST(DeltaMethods, PromptBert) {
  run_case({"bert-mini", {{"method", "prompt"}, {"num_virtual_tokens", 4}, {"init", "vocab"}}, false, true});
}

TEST(DeltaMethods, BitFitBert) { run_case({"bert-mini", {{"method", "bitfit"}}, true, false}); }
TEST(DeltaMethods, BitFitLlama) { run_case({"llama-mini", {{"method", "bitfit"}}, true, false}); }
TEST(DeltaMethods, LnTuningBert) { run_case({"bert-mini", {{"method", "ln"}}, true, false}); }
TEST(DeltaMethods, LnTuningLlama) {
  run_case({"llama-mini", {{"method", "ln"}, {"targets", {"ln"}}}, true, false});
}
TEST(DeltaMethods, LastLayersBert) {
  run_case({"bert-mini", {{"method", "last-layers"}, {"k", 1}}, true, false});
}
TEST(DeltaMethods, LastLayersGpt2) {
  run_case({"gpt2-mini", {{"method", "last-layers"}, {"k", 2}}, true, false});
}

TEST(DeltaMethods, AdapterHoulsbyBert) {
  run_case({"bert-mini", {{"method", "adapter"}, {"variant", "houlsby"}, {"bottleneck", 16}}, true, false});
}
TEST(DeltaMethods, AdapterPfeifferGpt2) {
  run_case(
      {"gpt2-mini", {{"method", "adapter"}, {"variant", "pfeiffer"}, {"reduction_factor", 8}}, true, false});
}
TEST(DeltaMethods, AdapterParallelLlama) {
  run_case({"llama-mini",
            {{"method", "adapter"}, {"variant", "parallel"}, {"bottleneck", 8}, {"activation", "gelu"}},
            true,
            false});
}
TEST(DeltaMethods, AdapterHoulsbyGpt2) {
  run_case({"gpt2-mini", {{"method", "adapter"}, {"variant", "houlsby"}, {"bottleneck", 16}}, true, false});
}
TEST(DeltaMethods, AdapterPfeifferBert) {
  run_case({"bert-mini", {{"method", "adapter"}, {"variant", "pfeiffer"}, {"bottleneck", 16}}, true, false});
}
TEST(DeltaMethods, CompacterGpt2) { run_case({"gpt2-mini", {{"method", "compacter"}}, true, false}); }
TEST(DeltaMethods, CompacterPlusPlusBert) {
  run_case({"bert-mini", {{"method", "compacter++"}, {"rank", 2}}, true, false});
}
TEST(DeltaMethods, CompacterBert) { run_case({"bert-mini", {{"method", "compacter"}}, true, false}); }
TEST(DeltaMethods, CompacterPlusPlusLlama) {
  run_case({"llama-mini", {{"method", "compacter++"}, {"phm_dim", 8}, {"rank", 2}}, true, false});
}
TEST(DeltaMethods, LowRankAdapterBert) {
  run_case({"bert-mini", {{"method", "lowrank_adapter"}}, true, false});
}
TEST(DeltaMethods, LowRankAdapterGpt2) {
  run_case({"gpt2-mini", {{"method", "lowrank_adapter"}, {"rank", 2}, {"bottleneck", 16}}, true, false});
}
TEST(DeltaMethods, DiffPruningBert) {
  run_case({"bert-mini",
            {{"method", "diff_pruning"}, {"target_sparsity", 0.5}, {"targets", {"attn.q", "attn.v"}}},
            true,
            false});
}
TEST(DeltaMethods, DiffPruningGpt2) {
  run_case({"gpt2-mini", {{"method", "diff_pruning"}, {"target_sparsity", 0.9}}, true, false});
}
TEST(DeltaMethods, MaskBert) {
  run_case({"bert-mini", {{"method", "mask"}, {"targets", {"ffn.up"}}}, true, false});
}
TEST(DeltaMethods, MaskLlama) { run_case({"llama-mini", {{"method", "mask"}}, true, false}); }
TEST(DeltaMethods, AdapterParallelBert) {
  run_case({"bert-mini", {{"method", "adapter"}, {"variant", "parallel"}, {"bottleneck", 8}}, true, false});
}

// --- details ---

TEST(DeltaMethods, Ia3ShapesFollowPeft) {
  auto model = golden::load_model("llama-mini");
  auto d = delta::make_delta({{"method", "ia3"}});
  d->attach(*model);
  std::map<std::string, Shape> shapes;
  for (auto& [n, t] : d->parameters()) shapes[n] = t.shape();
  EXPECT_EQ(shapes.at("model.layers.0.self_attn.k_proj.ia3_l"), (Shape{128, 1}));
  EXPECT_EQ(shapes.at("model.layers.0.self_attn.v_proj.ia3_l"), (Shape{128, 1}));
  EXPECT_EQ(shapes.at("model.layers.0.mlp.down_proj.ia3_l"), (Shape{1, 704}));
  EXPECT_EQ(shapes.size(), 12u);
  // The PEFT config names exactly these modules.
  json p = delta::to_peft_config(*d, *model);
  EXPECT_EQ(p["peft_type"], "IA3");
  EXPECT_EQ(p["target_modules"], json({"down_proj", "k_proj", "v_proj"}));
  EXPECT_EQ(p["feedforward_modules"], json({"down_proj"}));
}

TEST(DeltaMethods, Ia3PeftNamesAreUnambiguous) {
  // GPT-2 has c_proj in attention and MLP: the PEFT config must not name both.
  auto model = golden::load_model("gpt2-mini");
  auto d = delta::make_delta({{"method", "ia3"}, {"targets", {"ffn.down"}}, {"feedforward", {"ffn.down"}}});
  d->attach(*model);
  json p = delta::to_peft_config(*d, *model);
  EXPECT_EQ(p["target_modules"], json({"mlp.c_proj"}));
  EXPECT_EQ(p["feedforward_modules"], json({"mlp.c_proj"}));  // a subset of target_modules, as PEFT requires
  EXPECT_EQ(p["fan_in_fan_out"], true);
}

TEST(DeltaMethods, PrefixLayoutFollowsPeft) {
  // Row p of prompt_embeddings holds, per layer l, the key in column block 2l and the value in 2l+1,
  // each block Hkv heads of D. A prefix whose only nonzero is layer 1's value for head 1 changes
  // nothing in layer 0.
  auto model = golden::load_model("llama-mini");
  auto d = delta::make_delta({{"method", "prefix"}, {"num_virtual_tokens", 2}});
  d->attach(*model);
  auto params = d->parameters();
  ASSERT_EQ(params.size(), 1u);
  EXPECT_EQ(params[0].first, "prompt_embeddings");
  EXPECT_EQ(params[0].second.shape(), (Shape{2, 4 * 2 * 2 * 64}));
  json p = delta::to_peft_config(*d, *model);
  EXPECT_EQ(p["token_dim"], 128);
  EXPECT_EQ(p["num_attention_heads"], 2);
  EXPECT_EQ(p["num_layers"], 4);
}

TEST(DeltaMethods, PromptInitFromTokens) {
  auto model = golden::load_model("gpt2-mini");
  auto d = delta::make_delta(
      {{"method", "prompt"}, {"num_virtual_tokens", 5}, {"init", "text"}, {"init_ids", {11, 22}}});
  d->attach(*model);
  Tensor prompt = d->parameters()[0].second;
  ASSERT_EQ(prompt.shape(), (Shape{5, 256}));
  const int64_t want[] = {11, 22, 11, 22, 11};  // repeated to the length, as PEFT does
  for (int64_t i = 0; i < 5; ++i)
    EXPECT_EQ(prompt.select(0, i).to_floats(),
              model->input_embeddings().select(0, want[i]).float32().to_floats());
  // With the model's tokenizer.
  auto t = delta::make_delta({{"method", "prompt"},
                              {"num_virtual_tokens", 3},
                              {"init", "text"},
                              {"init_text", "the whale"},
                              {"tokenizer", golden::model_dir("gpt2-mini").string()}});
  t->attach(*model);
  EXPECT_EQ(t->parameters()[0].second.shape(), (Shape{3, 256}));
}

TEST(DeltaMethods, BitFitAddsAndRemovesBiases) {
  auto model = golden::load_model("llama-mini");
  const auto before = model->named_parameters().size();
  auto d = delta::make_delta({{"method", "bitfit"}, {"targets", {"attn.q", "attn.v"}}});
  d->attach(*model);
  EXPECT_EQ(d->parameters().size(), 8u);
  EXPECT_NE(model->find_parameter("model.layers.0.self_attn.q_proj.bias"), nullptr);
  EXPECT_EQ(model->named_parameters().size(), before + 8);
  d->detach();
  EXPECT_EQ(model->find_parameter("model.layers.0.self_attn.q_proj.bias"), nullptr);
  EXPECT_EQ(model->named_parameters().size(), before);
}

TEST(DeltaMethods, SpecificationDeltasTrainModelTensors) {
  auto model = golden::load_model("bert-mini");
  auto d = delta::make_delta({{"method", "ln"}});
  d->attach(*model);
  for (auto& [n, t] : d->parameters()) {
    Tensor* p = model->find_parameter(n);
    ASSERT_NE(p, nullptr) << n;
    EXPECT_TRUE(p->same(t)) << n;
  }
  auto [trainable, total] = delta::freeze_for_delta(*model, {d.get()}, {});
  EXPECT_EQ(total, model->parameter_count());
  auto named = delta::trainable_parameters(*model, {d.get()});
  EXPECT_EQ(named.size(), d->parameters().size());  // listed once each
}

// A PHM projection's weight is the sum of Kronecker products of its rules and factor products:
// W[a*p + i, b*q + j] = sum_k A_k[a, b] * (L_k R_k)[i, j], rebuilt here by hand.
TEST(DeltaMethods, PhmProjectionIsASumOfKroneckerProducts) {
  Generator gen(3);
  const int64_t n = 4, out = 8, in = 12;
  delta::Projection proj = delta::make_projection({delta::ProjectionKind::Phm, 2, n}, out, in, false, gen);
  const Tensor W = proj.materialise().contiguous();
  ASSERT_EQ(W.shape(), (Shape{out, in}));
  const int64_t p = out / n, q = in / n, r = 2;
  const auto a = proj.rule.to_floats(), l = proj.left.to_floats(), rr = proj.right.to_floats(),
             w = W.to_floats();
  float worst = 0;
  for (int64_t ai = 0; ai < n; ++ai)
    for (int64_t i = 0; i < p; ++i)
      for (int64_t bi = 0; bi < n; ++bi)
        for (int64_t j = 0; j < q; ++j) {
          double expected = 0;
          for (int64_t k = 0; k < n; ++k) {
            double bij = 0;
            for (int64_t t = 0; t < r; ++t)
              bij += double(l[size_t((k * p + i) * r + t)]) * rr[size_t((k * r + t) * q + j)];
            expected += double(a[size_t((k * n + ai) * n + bi)]) * bij;
          }
          worst = std::max(worst, float(std::fabs(expected - w[size_t((ai * p + i) * in + bi * q + j)])));
        }
  EXPECT_LT(worst, 1e-6f);
  // The low-rank projection is L R; a zero-output projection is exactly zero.
  delta::Projection low = delta::make_projection({delta::ProjectionKind::LowRank, 3, n}, out, in, true, gen);
  for (float v : low.materialise().contiguous().to_floats()) EXPECT_EQ(v, 0.0f);
  EXPECT_EQ(low.left.shape(), (Shape{out, 3}));
  EXPECT_THROW(delta::make_projection({delta::ProjectionKind::Phm, 1, 5}, out, in, false, gen), ConfigError);
}

// Compacter: rules shared by every adapter, far fewer parameters than a dense adapter of the same size.
TEST(DeltaMethods, CompacterSharesRulesAndIsSmall) {
  auto model = golden::load_model("bert-mini");
  auto dense = delta::make_delta({{"method", "adapter"}, {"reduction_factor", 32}});
  dense->attach(*model);
  int64_t dense_count = 0, phm_count = 0, rules = 0;
  for (auto& [_, t] : dense->parameters()) dense_count += t.numel();
  dense->detach();
  auto phm = delta::make_delta({{"method", "compacter"}});
  phm->attach(*model);
  for (auto& [n, t] : phm->parameters()) {
    phm_count += t.numel();
    rules += n.find("phm_rule") != std::string::npos;
  }
  EXPECT_EQ(rules, 2);  // one for all down-projections, one for all up-projections
  EXPECT_LT(phm_count * 4, dense_count);
  const nlohmann::json cfg = phm->config();
  EXPECT_EQ(cfg["projection"], "phm");
  EXPECT_EQ(cfg["phm_dim"], 4);
  EXPECT_EQ(cfg["variant"], "houlsby");
  EXPECT_THROW(
      delta::make_delta({{"method", "compacter"}, {"phm_dim", 3}})->attach(*golden::load_model("bert-mini")),
      ConfigError);
  EXPECT_THROW(delta::make_delta({{"method", "adapter"}, {"projection", "fancy"}}), ConfigError);
}

// Diff pruning: stochastic gates while training, an L0 penalty that reaches the gates, and a save
// that holds only the projected difference's non-zero entries.
TEST(DeltaMethods, DiffPruningGatesPenaltyAndSparseSave) {
  auto model = golden::load_model("bert-mini");
  const Batch batch = make_batch(*model);
  auto d =
      delta::make_delta({{"method", "diff_pruning"}, {"target_sparsity", 0.95}, {"targets", {"attn.q"}}});
  d->attach(*model);
  delta::freeze_for_delta(*model, {d.get()}, {});
  EXPECT_FALSE(d->regularizer().defined());  // evaluation: no penalty
  model->set_training(true);
  Tensor penalty = d->regularizer();
  ASSERT_TRUE(penalty.defined());
  EXPECT_GT(penalty.item(), 0.0f);
  penalty.backward();
  for (auto& [n, t] : d->parameters())
    if (n.find("log_alpha") != std::string::npos) {
      ASSERT_TRUE(t.grad().defined()) << n;
      for (float g : t.grad().to_floats()) EXPECT_GT(g, 0.0f);  // the penalty pushes every gate shut
    }
  // Train a few steps so the difference is not zero, then save.
  AdamW opt(delta::trainable_parameters(*model, {d.get()}), {.lr = 1e-2, .weight_decay = 0.0});
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    Tensor loss = ops::add(loss_of(*model, batch), d->regularizer());
    loss.backward();
    opt.step();
  }
  Tensor a = model->forward(batch.input).logits, b = model->forward(batch.input).logits;
  EXPECT_GT(max_diff(a.detach(), b.detach()), 0.0f) << "training samples fresh gates each forward";
  model->set_training(false);
  const Tensor trained = logits_of(*model, batch);
  fs::path dir = temp_dir("diff_sparse");
  delta::save_delta(dir, *d, *model);
  const auto file = read_safetensors(dir / "delta.safetensors");
  int64_t saved = 0;
  for (auto& [n, t] : file.tensors) {
    EXPECT_TRUE(n.find(".diff.indices") != std::string::npos || n.find(".diff.values") != std::string::npos)
        << n;
    if (n.find(".diff.values") != std::string::npos) {
      EXPECT_LE(t.numel(), int64_t(std::ceil(0.05 * 256 * 256)));
      for (float v : t.to_floats()) EXPECT_NE(v, 0.0f);
      saved += t.numel();
    }
  }
  EXPECT_GT(saved, 0);
  auto fresh = golden::load_model("bert-mini");
  delta::load_delta(dir, *fresh);
  EXPECT_LT(max_diff(logits_of(*fresh, batch), trained), 1e-6f);
}

// The trainer adds a delta's regularizer to the loss: at the first update diff pruning's difference
// is still zero, so the reported loss differs by exactly the L0 penalty.
TEST(DeltaMethods, TrainerAddsDiffPruningPenalty) {
  auto tok = Tokenizer::load(golden::model_dir("gpt2-mini"));
  std::vector<data::Example> texts;
  for (int i = 0; i < 4; ++i) {
    data::Example e;
    e.text = "The whale number " + std::to_string(i) + " swims in the deep blue sea.";
    texts.push_back(e);
  }
  const data::EncodedDataset set = data::encode_for_lm(texts, *tok, 32);
  auto first_loss = [&](double l0_weight) {
    LoadOptions load;
    load.head = HeadKind::CausalLM;
    load.verbose = false;
    auto model = load_pretrained(golden::model_dir("gpt2-mini"), load);
    auto d =
        delta::make_delta({{"method", "diff_pruning"}, {"targets", {"attn.q"}}, {"l0_weight", l0_weight}});
    d->attach(*model);
    train::TrainOptions o;
    o.max_steps = 1;
    o.batch_size = 4;
    o.metric = "loss";
    o.progress = false;
    o.run_dir = temp_dir("trainer_l0_" + std::to_string(int(l0_weight)));
    train::Trainer trainer(train::TrainTarget::with_deltas(*model, {d.get()}, "diff_pruning"), o);
    const train::TrainResult r = trainer.train(set, nullptr);
    fs::remove_all(o.run_dir);
    return r.losses.at(0);
  };
  const double gate_open = 1.0 / (1.0 + std::exp(-(3.0 - 2.0 / 3.0 * std::log(0.1 / 1.1))));
  EXPECT_NEAR(first_loss(5.0) - first_loss(0.0), 5.0 * gate_open, 1e-3);
}

// Learned masks: the forward equals the base model with the pruned weights set to zero, and the save
// lists exactly the pruned positions.
TEST(DeltaMethods, MaskEqualsZeroedWeightsAndSavesPrunedPositions) {
  auto model = golden::load_model("bert-mini");
  const Batch batch = make_batch(*model);
  auto d = delta::make_delta({{"method", "mask"}, {"targets", {"attn.q"}}, {"layers", {0}}});
  d->attach(*model);
  auto params = d->parameters();
  ASSERT_EQ(params.size(), 1u);
  // Prune every third weight by hand.
  std::vector<float> scores = params[0].second.to_floats();
  std::vector<int64_t> pruned;
  for (size_t j = 0; j < scores.size(); j += 3) {
    scores[j] = 0.0f;
    pruned.push_back(int64_t(j));
  }
  d->load_parameters({{params[0].first, Tensor::from_floats(scores, params[0].second.shape())}});
  const Tensor masked = logits_of(*model, batch);
  fs::path dir = temp_dir("mask_save");
  delta::save_delta(dir, *d, *model);
  const auto file = read_safetensors(dir / "delta.safetensors");
  ASSERT_EQ(file.tensors.size(), 1u);
  EXPECT_EQ(file.tensors.begin()->second.to_ints(), pruned);
  // The same model with those weights zeroed and no delta.
  auto zeroed = golden::load_model("bert-mini");
  Tensor* w = zeroed->find_parameter("bert.encoder.layer.0.attention.self.query.weight");
  ASSERT_NE(w, nullptr);
  std::vector<float> values = w->to_floats();
  for (int64_t p : pruned) values[size_t(p)] = 0.0f;
  *w = Tensor::from_floats(values, w->shape());
  EXPECT_LT(max_diff(logits_of(*zeroed, batch), masked),
            1e-4f);  // two float paths (masked product vs zeroed weights), as the golden tolerance
  EXPECT_THROW(delta::make_delta({{"method", "mask"}, {"init_score", 0.001}}), ConfigError);
}

// LoRA on embeddings: PEFT's shapes, key names and config; the bias options' parameters and errors.
TEST(DeltaMethods, LoraEmbeddingAndBiasFollowPeft) {
  auto model = golden::load_model("bert-mini");
  auto d = delta::make_delta(
      {{"method", "lora"}, {"r", 4}, {"targets", {"word_embeddings", "query"}}, {"bias", "lora_only"}});
  d->attach(*model);
  std::map<std::string, Shape> shapes;
  for (auto& [n, t] : d->parameters()) shapes[n] = t.shape();
  const int64_t vocab = model->config.vocab_size, dim = model->config.hidden_size;
  EXPECT_EQ(shapes.at("bert.embeddings.word_embeddings.lora_embedding_A"), (Shape{4, vocab}));
  EXPECT_EQ(shapes.at("bert.embeddings.word_embeddings.lora_embedding_B"), (Shape{dim, 4}));
  EXPECT_EQ(shapes.at("bert.encoder.layer.0.attention.self.query.bias"), (Shape{dim}));
  EXPECT_EQ(shapes.count("bert.encoder.layer.0.attention.self.key.bias"), 0u);
  EXPECT_EQ(shapes.size(), 2u + 4u * 3u);  // embedding A, B; per layer query A, B, bias
  json p = delta::to_peft_config(*d, *model);
  EXPECT_EQ(p["bias"], "lora_only");
  EXPECT_EQ(p["target_modules"], json({"query", "word_embeddings"}));
  fs::path dir = temp_dir("lora_embedding_keys");
  delta::save_peft(dir, *d, *model);
  const auto file = read_safetensors(dir / "adapter_model.safetensors");
  EXPECT_EQ(file.tensors.count("base_model.model.bert.embeddings.word_embeddings.lora_embedding_A"), 1u);
  EXPECT_EQ(file.tensors.count("base_model.model.bert.encoder.layer.1.attention.self.query.base_layer.bias"),
            1u);
  // PEFT's own files hold an adapted layer's bias as <module>.base_layer.bias.
  EXPECT_EQ(delta::peft_key_to_ours("bert.encoder.layer.1.attention.self.query.base_layer.bias"),
            "bert.encoder.layer.1.attention.self.query.bias");
  EXPECT_THROW(delta::merge_into(*model, *d), ConfigError);
  fs::remove_all(dir);
  // Llama's projections have no bias: lora_only trains the factors alone.
  auto llama = golden::load_model("llama-mini");
  auto l = delta::make_delta({{"method", "lora"}, {"bias", "lora_only"}});
  l->attach(*llama);
  for (auto& [n, _] : l->parameters()) EXPECT_EQ(n.find(".bias"), std::string::npos) << n;
  try {
    delta::make_delta({{"method", "lora"}, {"bias", "some"}});
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("bias"), std::string::npos) << e.what();
  }
  EXPECT_THROW(
      delta::make_delta({{"method", "lora"}, {"dora", true}, {"targets", {"embed"}}})->attach(*llama),
      ConfigError);
}

TEST(DeltaMethods, UnknownMethodListsSupported) {
  try {
    delta::make_delta({{"method", "nope"}});
    FAIL();
  } catch (const ConfigError& e) {
    std::string m = e.what();
    for (const char* n : {"lora", "ia3", "prefix", "prompt", "adapter", "bitfit", "ln", "last-layers"})
      EXPECT_NE(m.find(n), std::string::npos) << m;
  }
}

TEST(DeltaMethods, UnknownPeftTypeListsSupported) {
  try {
    delta::from_peft_config({{"peft_type", "VERA"}}, "x/adapter_config.json");
    FAIL();
  } catch (const ConfigError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("VERA"), std::string::npos) << m;
    EXPECT_NE(m.find("x/adapter_config.json"), std::string::npos) << m;
    for (const char* n : {"LORA", "IA3", "PREFIX_TUNING", "PROMPT_TUNING"})
      EXPECT_NE(m.find(n), std::string::npos) << m;
  }
}

TEST(DeltaMethods, UnknownPeftKeysWarn) {
  // A PEFT adapter from a newer version: its extra keys are ignored with a warning, and it loads.
  auto model = golden::load_model("gpt2-mini");
  auto d = delta::make_delta({{"method", "ia3"}});
  d->attach(*model);
  fs::path dir = temp_dir("unknown_keys");
  delta::save_peft(dir, *d, *model);
  json c;
  std::ifstream(dir / "adapter_config.json") >> c;
  c["shiny_new_option"] = 3;
  std::ofstream(dir / "adapter_config.json") << c.dump();
  auto fresh = golden::load_model("gpt2-mini");
  testing::internal::CaptureStderr();
  EXPECT_NO_THROW(delta::load_delta(dir, *fresh));
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("shiny_new_option"), std::string::npos) << err;
  EXPECT_NE(err.find("warning"), std::string::npos) << err;
  fs::remove_all(dir);
}

TEST(DeltaMethods, AdapterShapeMismatchNamesKeyAndShapes) {
  auto model = golden::load_model("bert-mini");
  auto d = delta::make_delta({{"method", "adapter"}, {"bottleneck", 8}});
  d->attach(*model);
  fs::path dir = temp_dir("adapter_mismatch");
  delta::save_delta(dir, *d, *model);
  // The config now claims a bottleneck the tensors do not have.
  json c;
  std::ifstream(dir / "delta_config.json") >> c;
  c["delta"]["bottleneck"] = 16;
  std::ofstream(dir / "delta_config.json") << c.dump();
  auto fresh = golden::load_model("bert-mini");
  try {
    delta::load_delta(dir, *fresh);
    FAIL();
  } catch (const ShapeError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(".adapter."), std::string::npos) << m;
    EXPECT_NE(m.find("saved shape [8"), std::string::npos) << m;
    EXPECT_NE(m.find("does not fit [16"), std::string::npos) << m;
    EXPECT_NE(m.find("delta.safetensors"), std::string::npos) << m;
  }
  fs::remove_all(dir);
}

// A config error names the field at fault.
TEST(DeltaMethods, BadFieldsAreNamed) {
  const std::pair<json, const char*> cases[] = {
      {{{"method", "lora"}, {"r", "four"}}, "r"},
      {{{"method", "diff_pruning"}, {"target_sparsity", 1.0}}, "target_sparsity"},
      {{{"method", "diff_pruning"}, {"l0_weight", -1}}, "l0_weight"},
      {{{"method", "mask"}, {"threshold", "high"}}, "threshold"},
      {{{"method", "mask"}, {"init_score", 0.0}}, "init_score"},
      {{{"method", "compacter"}, {"phm_dim", 0}}, "phm_dim"},
      {{{"method", "lowrank_adapter"}, {"rank", 0}}, "rank"},
      {{{"method", "adapter"}, {"dropout", "lots"}}, "dropout"},
  };
  for (const auto& [config, field] : cases) {
    try {
      delta::make_delta(config);
      ADD_FAILURE() << config.dump() << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  }
}

TEST(DeltaMethods, BadConfigsAreClear) {
  EXPECT_THROW(delta::make_delta({{"method", "adapter"}, {"variant", "sideways"}}), ConfigError);
  EXPECT_THROW(delta::make_delta({{"method", "adapter"}, {"activation", "wiggle"}}), ConfigError);
  EXPECT_THROW(delta::make_delta({{"method", "prefix"}, {"num_virtual_tokens", 0}}), ConfigError);
  EXPECT_THROW(delta::make_delta({{"method", "prompt"}, {"init", "text"}}), ConfigError);
  auto model = golden::load_model("llama-mini");
  auto d = delta::make_delta({{"method", "prefix"}, {"num_virtual_tokens", 2}, {"token_dim", 256}});
  try {
    d->attach(*model);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("token_dim"), std::string::npos) << e.what();
  }
  auto k = delta::make_delta({{"method", "last-layers"}, {"k", 9}});
  EXPECT_THROW(k->attach(*model), ConfigError);
  // Methods without a PEFT equivalent say so when saved in PEFT's format.
  auto a = delta::make_delta({{"method", "adapter"}});
  a->attach(*model);
  EXPECT_THROW(delta::save_peft(temp_dir("adapter_peft"), *a, *model), ConfigError);
}

// Generation with a KV cache under prompt or prefix tuning gives what full forwards give: the soft
// prompt joins once, on the first step, and the prefix sits before the cache in every layer.
TEST(DeltaMethods, GenerateWithCacheMatchesFullForwards) {
  for (const std::string name : {"gpt2-mini", "llama-mini"})
    for (const json& config : {json{{"method", "prompt"}, {"num_virtual_tokens", 3}},
                               json{{"method", "prefix"}, {"num_virtual_tokens", 3}}}) {
      SCOPED_TRACE(name + " " + config.dump());
      auto model = golden::load_model(name);
      auto d = delta::make_delta(config);
      d->attach(*model);
      const std::vector<int64_t> prompt{5, 17, 99, 4, 250};
      GenerationOptions o;
      o.max_new_tokens = 4;
      auto cached = generate(*model, prompt, o);
      std::vector<int64_t> ids = prompt, full;
      NoGradGuard no_grad;
      for (int i = 0; i < 4; ++i) {
        ModelInput in;
        in.input_ids = Tensor::from_ints(ids, {1, int64_t(ids.size())});
        Tensor logits = model->forward(in).logits;
        std::vector<float> last = logits.select(0, 0).select(0, logits.size(1) - 1).contiguous().to_floats();
        int64_t next = int64_t(std::max_element(last.begin(), last.end()) - last.begin());
        full.push_back(next);
        ids.push_back(next);
      }
      EXPECT_EQ(cached, full);
    }
}

// Roles inside blocks are relative to the block: BERT's ffn.down ("output.dense") is not its
// attention output ("attention.output.dense").
TEST(DeltaMethods, BlockRolesAreAnchored) {
  auto model = golden::load_model("bert-mini");
  auto paths = delta::resolve_targets(*model, delta::TargetSpec::from_json(json{"ffn.down"}));
  ASSERT_EQ(paths.size(), 4u);
  for (const auto& p : paths) EXPECT_EQ(p.find("attention"), std::string::npos) << p;
  auto excluded = delta::resolve_targets(*model, delta::TargetSpec::from_json(json{"dense"}, json{"attn.o"}));
  for (const auto& p : excluded) EXPECT_EQ(p.find("attention.output"), std::string::npos) << p;
  EXPECT_EQ(excluded.size(), 9u);  // intermediate.dense and output.dense in 4 layers, the MLM transform
}
