// LoRA (Hu et al.): y = W x + (alpha / r) B A dropout(x), with PEFT's options: rsLoRA (alpha/sqrt(r)),
// rank_pattern / alpha_pattern, DoRA (a learned magnitude per output, PEFT's formula), and GPT-2's
// fan_in_fan_out weights. Parameter names follow PEFT: <module>.lora_A.weight, .lora_B.weight,
// .lora_magnitude_vector.
// Embeddings (a target that is an embedding table, e.g. the role "embed"): PEFT's Embedding LoRA,
// y = E[ids] + s (A^T[ids]) B^T with lora_embedding_A [r, vocab] (zeros) and lora_embedding_B
// [dim, r] (N(0, 1)); no dropout, as PEFT. Named <module>.lora_embedding_A / .lora_embedding_B.
// bias (PEFT's option): "none"; "lora_only" also trains the biases of the adapted linear layers;
// "all" trains every bias of the backbone. Trained biases are held as BitFit holds them (the model's
// originals come back when disabled or detached) and named as the model's (<module>.bias).
#include <algorithm>
#include <cmath>
#include <regex>

#include "delta/methods.h"
#include "delta/module_names.h"
#include "delta/peft_config.h"
#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/delta_method.h"
#include "deltatune/error.h"
#include "deltatune/lora_arithmetic.h"

namespace deltatune::delta {
namespace {

struct LoraHook : nn::LinearHook {
  Tensor A, B, magnitude;  // magnitude: DoRA only
  float scaling = 1.0f;
  float dropout = 0.0f;

  Tensor post(nn::Linear& layer, const Tensor& x, const Tensor& y) override {
    const bool drop = layer.training() && dropout > 0.0f;
    Tensor xin = drop ? ops::dropout(x, dropout, true, ForwardContext::current().dropout_rng) : x;
    Tensor lora = ops::linear(ops::linear(xin, A), B);
    if (!magnitude.defined()) return ops::add(y, ops::mul_scalar(lora, scaling));
    // DoRA: out = y + (m/||W + s B A|| - 1) (y - bias) + (m/||.||) s lora; the norm is detached.
    Tensor norm;
    {
      NoGradGuard no_grad;
      Tensor w = ops::add(layer.weight_out_in().float32(), ops::mul_scalar(ops::matmul(B, A), scaling));
      norm = ops::sqrt(ops::sum(ops::square(w), {1}));
    }
    Tensor scale = ops::div(magnitude, norm);  // [out]
    Tensor base = drop ? layer.base_forward(xin) : y;
    if (layer.bias().defined()) base = ops::sub(base, layer.bias());
    Tensor delta = ops::add(ops::mul(ops::add_scalar(scale, -1.0f), base),
                            ops::mul(scale, ops::mul_scalar(lora, scaling)));
    return ops::add(y, delta);
  }
};

struct LoraEmbeddingHook : nn::EmbeddingHook {
  Tensor A, B;  // [r, vocab], [dim, r]
  float scaling = 1.0f;
  Tensor post(nn::Embedding&, const Tensor& ids, const Tensor& y) override {
    Tensor after_a = ops::embedding(A.t(), ids);  // [..., r]: rows of A^T
    return ops::add(y, ops::mul_scalar(ops::linear(after_a, B), scaling));
  }
};

class Lora : public Delta {
 public:
  explicit Lora(const nlohmann::json& c) : config_(c) {
    r_ = c.value("r", int64_t(8));
    alpha_ = c.value("alpha", c.value("lora_alpha", 8.0));
    dropout_ = c.value("dropout", c.value("lora_dropout", 0.0));
    rslora_ = c.value("rslora", c.value("use_rslora", false));
    dora_ = c.value("dora", c.value("use_dora", false));
    init_ = c.contains("init") && c["init"].is_string() ? c["init"].get<std::string>() : "default";
    if (r_ < 1) throw ConfigError("lora: r must be at least 1, got " + std::to_string(r_));
    if (dropout_ < 0 || dropout_ >= 1) throw ConfigError("lora: dropout must be in [0, 1)");
    if (c.contains("bias") && !c["bias"].is_null()) {
      if (!c["bias"].is_string()) throw ConfigError("lora: bias must be \"none\", \"all\" or \"lora_only\"");
      bias_ = c["bias"].get<std::string>();
    }
    if (bias_ != "none" && bias_ != "all" && bias_ != "lora_only")
      throw ConfigError("lora: bias '" + bias_ + "' is not one of none, all, lora_only");
    nlohmann::json targets = c.contains("targets") ? c["targets"] : nlohmann::json{"attn.q", "attn.v"};
    spec_ = TargetSpec::from_json(targets, c.value("exclude", nlohmann::json()),
                                  c.value("layers", nlohmann::json()));
    seed = c.value("seed", uint64_t(0));
  }

  std::string method() const override { return "lora"; }

  void attach(TransformerModel& model) override {
    if (model_) throw Error("lora delta '" + name + "' is already attached");
    // Linear layers and embedding tables; other modules a name or regex happens to match are skipped.
    paths_.clear();
    std::vector<std::string> matched;
    try {
      matched = resolve_targets(model, spec_, false);
    } catch (const ConfigError&) {
      // Nothing matched: the error below lists what LoRA can adapt, not every module.
    }
    for (const auto& path : matched) {
      const std::string type = model.find_module(path)->type_name();
      if (type == "Linear" || type == "Embedding") paths_.push_back(path);
    }
    if (paths_.empty()) resolve_targets(model, spec_);  // throws, listing the linear layers
    Generator gen(seed);
    for (const auto& path : paths_) {
      if (auto* emb = dynamic_cast<nn::Embedding*>(model.find_module(path))) {
        if (dora_) throw ConfigError("lora: dora is not supported on embeddings (target '" + path + "')");
        const LoraShape shape = lora_shape(config(), path);
        auto hook = std::make_shared<LoraEmbeddingHook>();
        hook->owner = name;
        hook->scaling = float(shape.scaling);
        const Shape table = emb->weight().shape();
        hook->A = Tensor::zeros({shape.r, table[0]});
        hook->B = Tensor::randn({table[1], shape.r}, gen, 1.0f);
        emb->hooks.push_back(hook);
        emb_hooks_.emplace_back(path, hook);
        emb_layers_.push_back(emb);
        continue;
      }
      auto* layer = static_cast<nn::Linear*>(model.find_module(path));
      const LoraShape shape = lora_shape(config(), path);
      const int64_t r = shape.r;
      auto hook = std::make_shared<LoraHook>();
      hook->owner = name;
      hook->scaling = float(shape.scaling);
      hook->dropout = float(dropout_);
      const int64_t in = layer->in_features, out = layer->out_features;
      if (init_ == "gaussian") {
        hook->A = Tensor::randn({r, in}, gen, 1.0f / float(r));
      } else {  // PEFT's default: kaiming_uniform(a=sqrt(5)) on A, i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0
        const float bound = 1.0f / std::sqrt(float(in));
        hook->A = Tensor::uniform({r, in}, gen, -bound, bound);
      }
      hook->B = Tensor::zeros({out, r});
      if (dora_) {  // the magnitude starts at ||W|| per output row, so the delta starts at zero
        NoGradGuard no_grad;
        hook->magnitude =
            ops::sqrt(ops::sum(ops::square(layer->weight_out_in().float32()), {1})).contiguous();
      }
      layer->hooks.push_back(hook);
      hooks_.emplace_back(path, hook);
      layers_.push_back(layer);
    }
    if (bias_ != "none") attach_bias(model);
    model_ = &model;
  }

  void detach() override {
    for (size_t i = 0; i < layers_.size(); ++i) {
      remove_hook(layers_[i]->hooks, hooks_[i].second);
    }
    layers_.clear();
    for (size_t i = 0; i < emb_layers_.size(); ++i) {
      remove_hook(emb_layers_[i]->hooks, emb_hooks_[i].second);
    }
    emb_layers_.clear();
    if (bias_delta_) bias_delta_->detach();
    model_ = nullptr;
  }

  void set_enabled(bool on) override {
    for (auto& [_, h] : hooks_) h->enabled = on;
    for (auto& [_, h] : emb_hooks_) h->enabled = on;
    if (bias_delta_) bias_delta_->set_enabled(on);
  }

  std::vector<std::pair<std::string, Tensor>> parameters() override {
    std::vector<std::pair<std::string, Tensor>> out;
    for (auto& [path, h] : hooks_) {
      out.emplace_back(path + ".lora_A.weight", h->A);
      out.emplace_back(path + ".lora_B.weight", h->B);
      if (h->magnitude.defined()) out.emplace_back(path + ".lora_magnitude_vector", h->magnitude);
    }
    for (auto& [path, h] : emb_hooks_) {
      out.emplace_back(path + ".lora_embedding_A", h->A);
      out.emplace_back(path + ".lora_embedding_B", h->B);
    }
    if (bias_delta_)
      for (auto& p : bias_delta_->parameters()) out.push_back(p);
    return out;
  }

  nlohmann::json config() const override {
    nlohmann::json c = config_;
    c["method"] = "lora";
    c["r"] = r_;
    c["alpha"] = alpha_;
    c["dropout"] = dropout_;
    c["rslora"] = rslora_;
    c["dora"] = dora_;
    c["bias"] = bias_;
    c["targets"] = spec_.names_json();
    return c;
  }

  std::vector<std::string> attached_modules() const override { return paths_; }

  // What LoRA knows of itself; defined below the class.
  bool can_merge() const override { return true; }
  void merge_into(TransformerModel& model) override;
  void unmerge_from(TransformerModel& model) override { fold(model, -1.0f); }
  nlohmann::json peft_config(TransformerModel& model) override;
  std::string peft_tensor_name(const std::string& name) const override;
  // Trained biases replace the model's own and embedding hooks act before the layers: neither can be
  // confined to some rows of a batch.
  bool supports_mixed_batch() const override { return bias_ == "none" && emb_hooks_.empty(); }
  int attach_stage() const override { return 4; }

 private:
  void fold(TransformerModel& model, float sign);
  // bias "lora_only": the adapted linear layers' own biases; "all": every backbone bias. None is added
  // where a layer has none (PEFT only trains biases that exist).
  void attach_bias(TransformerModel& model) {
    nlohmann::json bc{{"method", "bitfit"}, {"add_missing", false}};
    if (bias_ == "lora_only") {
      nlohmann::json with_bias = nlohmann::json::array();
      for (auto* layer : layers_)
        if (layer->bias().defined())
          for (auto& [p, h] : hooks_)
            if (model.find_module(p) == layer) with_bias.push_back(p);
      if (with_bias.empty()) return;  // e.g. Llama's projections have no bias
      bc["targets"] = with_bias;
    }
    if (!bias_delta_) bias_delta_ = make_bitfit(bc);  // re-attaching keeps the trained values
    bias_delta_->name = name;
    bias_delta_->attach(model);
  }

  nlohmann::json config_;
  std::string bias_ = "none";
  std::vector<std::pair<std::string, std::shared_ptr<LoraEmbeddingHook>>> emb_hooks_;
  std::vector<nn::Embedding*> emb_layers_;
  std::unique_ptr<Delta> bias_delta_;
  int64_t r_;
  double alpha_, dropout_;
  bool rslora_, dora_;
  std::string init_;
  TargetSpec spec_;
  TransformerModel* model_ = nullptr;
  std::vector<std::string> paths_;
  std::vector<std::pair<std::string, std::shared_ptr<LoraHook>>> hooks_;
  std::vector<nn::Linear*> layers_;
};

// --- merging: W += s B A (DoRA: W = m / ||W + s B A|| * (W + s B A)); unmerging subtracts ---

// LoRA on an embedding table: E += s (B A)^T, as PEFT's Embedding.get_delta_weight.
void fold_embedding(TransformerModel& model, const std::string& path, const LoraFactors& f, float sign) {
  auto* emb = dynamic_cast<nn::Embedding*>(model.find_module(path));
  if (!emb) throw ConfigError("merge: '" + path + "' is not an embedding table of this model");
  // A tied LM head reads the same table: folding the delta in would change the head too, which the
  // attached delta never does (it only changes the lookup).
  if (model.config.tie_word_embeddings &&
      (model.head == HeadKind::CausalLM || model.head == HeadKind::MaskedLM) &&
      emb->weight().same(model.input_embeddings()))
    throw ConfigError(
        "merge: '" + path +
        "' is tied to the LM head (tie_word_embeddings), so folding a LoRA into it "
        "would change the head as well; use the delta as it is, or load the model without the LM head");
  Tensor delta_e =
      ops::mul_scalar(ops::matmul(f.B, f.A).t().contiguous(), float(f.scaling) * sign);  // [vocab, dim]
  Tensor merged = ops::add(emb->weight().float32(), delta_e);
  emb->weight() = merged.to(emb->weight().dtype()).contiguous().detach();
}

void fold_linear(TransformerModel& model, const std::string& path, const LoraFactors& f, float sign) {
  auto* layer = dynamic_cast<nn::Linear*>(model.find_module(path));
  if (!layer) throw ConfigError("merge: '" + path + "' is not a linear layer of this model");
  Tensor w = layer->weight_out_in().float32().contiguous();  // [out, in]
  Tensor delta_w = ops::mul_scalar(ops::matmul(f.B, f.A), float(f.scaling));
  Tensor merged;
  if (f.magnitude.defined()) {
    if (sign < 0) throw ConfigError("unmerge: DoRA merges cannot be undone exactly; reload the base instead");
    Tensor combined = ops::add(w, delta_w);
    Tensor norm = ops::sqrt(ops::sum(ops::square(combined), {1}, true));
    merged = ops::mul(ops::div(f.magnitude.reshape({-1, 1}), norm), combined);
  } else {
    merged = sign > 0 ? ops::add(w, delta_w) : ops::sub(w, delta_w);
  }
  Tensor stored = layer->fan_in_fan_out ? merged.t().contiguous() : merged;
  layer->weight() = stored.to(layer->weight().dtype()).contiguous().detach();
}

void Lora::fold(TransformerModel& model, float sign) {
  NoGradGuard no_grad;
  if (sign < 0 && bias_ != "none")
    throw ConfigError("unmerge: a LoRA that trained biases replaced them; reload the base instead");
  for (auto& [path, f] : lora_embedding_factors(*this)) fold_embedding(model, path, f, sign);
  for (auto& [path, f] : lora_factors(*this)) fold_linear(model, path, f, sign);
}

// Trained biases (bias "all" / "lora_only") replace the model's while attached and are named as the
// model's own (<module>.bias): they are copied in once the delta is detached.
void Lora::merge_into(TransformerModel& model) {
  std::map<std::string, Tensor> biases;
  if (bias_ != "none")
    for (auto& [name, t] : parameters())
      if (strip_suffix(name, ".bias")) biases[name] = t.clone();
  fold(model, 1.0f);
  detach();
  NoGradGuard no_grad;
  for (auto& [name, b] : biases) {
    Tensor* target = model.find_parameter(name);
    if (!target) throw ConfigError("merge: the model has no parameter '" + name + "' for the trained bias");
    *target = b.to(target->dtype()).contiguous().detach();
  }
}

// --- PEFT's LORA ---

const std::set<std::string>& peft_lora_keys() {
  static const std::set<std::string> keys{"r",
                                          "lora_alpha",
                                          "lora_dropout",
                                          "use_rslora",
                                          "use_dora",
                                          "rank_pattern",
                                          "alpha_pattern",
                                          "bias",
                                          "lora_bias",
                                          "alora_invocation_tokens",
                                          "arrow_config",
                                          "corda_config",
                                          "ensure_weight_tying",
                                          "eva_config",
                                          "kasa_config",
                                          "layer_replication",
                                          "loftq_config",
                                          "lora_ga_config",
                                          "megatron_config",
                                          "megatron_core",
                                          "monteclora_config",
                                          "qalora_group_size",
                                          "trainable_token_indices",
                                          "use_bdlora",
                                          "use_qalora",
                                          "velora_config"};
  return keys;
}

nlohmann::json lora_from_peft(const nlohmann::json& p, const std::string& source) {
  warn_unknown_peft_keys(p, peft_lora_keys(), source);
  const nlohmann::json bias = p.value("bias", nlohmann::json("none"));
  if (!bias.is_null() && (!bias.is_string() || (bias != "none" && bias != "all" && bias != "lora_only")))
    throw ConfigError(source + ": LoRA bias " + bias.dump() +
                      " is not supported (supported: none, all, lora_only)");
  if (p.value("lora_bias", false) == true)
    throw ConfigError(source + ": lora_bias (a bias on lora_B) is not supported");
  nlohmann::json c{{"method", "lora"}};
  c["bias"] = bias.is_null() ? nlohmann::json("none") : bias;
  c["r"] = p.value("r", 8);
  c["alpha"] = p.value("lora_alpha", 8.0);
  c["dropout"] = p.value("lora_dropout", 0.0);
  c["rslora"] = p.value("use_rslora", false);
  c["dora"] = p.value("use_dora", false);
  c["targets"] = p.value("target_modules", nlohmann::json());
  if (c["targets"].is_null())
    throw ConfigError(
        source + ": target_modules is null (PEFT's per-model defaults are not supported; name the modules)");
  c["exclude"] = p.value("exclude_modules", nlohmann::json());
  c["layers"] = p.value("layers_to_transform", nlohmann::json());
  c["rank_pattern"] = p.value("rank_pattern", nlohmann::json::object());
  c["alpha_pattern"] = p.value("alpha_pattern", nlohmann::json::object());
  return c;
}

nlohmann::json Lora::peft_config(TransformerModel& model) {
  const nlohmann::json c = config();
  nlohmann::json p;
  p["peft_type"] = "LORA";
  p["r"] = c.value("r", 8);
  p["lora_alpha"] = c.value("alpha", 8.0);
  p["lora_dropout"] = c.value("dropout", 0.0);
  p["use_rslora"] = c.value("rslora", false);
  p["use_dora"] = c.value("dora", false);
  p["rank_pattern"] = c.value("rank_pattern", nlohmann::json::object());
  p["alpha_pattern"] = c.value("alpha_pattern", nlohmann::json::object());
  p["bias"] = c.value("bias", std::string("none"));
  p["init_lora_weights"] = true;
  p["inference_mode"] = true;
  p["layers_pattern"] = nullptr;
  p["layers_to_transform"] =
      c.contains("layers") && !c["layers"].is_null() && !c["layers"].empty() ? c["layers"] : nlohmann::json();
  p["exclude_modules"] = nullptr;
  // PEFT matches a list by exact name or dotted suffix: the shortest suffixes of the modules we
  // attached to that select nothing else (GPT-2's attn.c_proj and mlp.c_proj share "c_proj").
  bool fan_in_fan_out = false;
  for (const auto& path : paths_) {
    auto* layer = dynamic_cast<nn::Linear*>(model.find_module(path));
    fan_in_fan_out = fan_in_fan_out || (layer && layer->fan_in_fan_out);
  }
  const auto& t = c.value("targets", nlohmann::json());
  p["target_modules"] =
      t.is_string()
          ? t
          : nlohmann::json(minimal_suffixes(paths_, unattached_linears(model, paths_, layer_list(c))));
  p["fan_in_fan_out"] = fan_in_fan_out;
  // The list above already leaves excluded modules out; a regex keeps its exclusions.
  if (t.is_string() && !c.value("exclude", nlohmann::json()).is_null() && !c["exclude"].empty())
    p["exclude_modules"] = c["exclude"];
  p["peft_version"] = kPeftVersion;
  return p;
}

// PEFT wraps each layer LoRA adapts, so a trained bias of one (bias "all" or "lora_only") is
// <module>.base_layer.bias in its files (read back by peft_key_to_ours).
std::string Lora::peft_tensor_name(const std::string& name) const {
  const auto module = strip_suffix(name, ".bias");
  if (module && std::find(paths_.begin(), paths_.end(), *module) != paths_.end())
    return peft_model_key(*module + ".base_layer.bias");
  return peft_model_key(name);
}
}  // namespace

std::unique_ptr<Delta> make_lora(const nlohmann::json& config) { return std::make_unique<Lora>(config); }

DeltaMethod lora_method() {
  return {.name = "lora",
          .make = make_lora,
          .description = "LoRA r 8, alpha 16 on query and value",
          .peft_type = "LORA",
          .from_peft = lora_from_peft,
          .default_lr = kDeltaLearningRate,
          // r 8 on query and value with alpha 16 (scaling 2): the README demo's measured setting.
          .train_config =
              nlohmann::json{{"method", "lora"}, {"r", 8}, {"alpha", 16}, {"targets", {"attn.q", "attn.v"}}}};
}

LoraShape lora_shape(const nlohmann::json& c, const std::string& path) {
  LoraShape s;
  s.r = c.value("r", int64_t(8));
  double alpha = c.value("alpha", 8.0);
  if (auto v = pattern_lookup(c.value("rank_pattern", nlohmann::json::object()), path))
    s.r = v->get<int64_t>();
  if (auto v = pattern_lookup(c.value("alpha_pattern", nlohmann::json::object()), path))
    alpha = v->get<double>();
  s.scaling = c.value("rslora", false) ? alpha / std::sqrt(double(s.r)) : alpha / double(s.r);
  return s;
}

}  // namespace deltatune::delta
