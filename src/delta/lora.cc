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
#include <cmath>
#include <regex>

#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/error.h"
#include "delta/methods.h"

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
    Tensor delta = ops::add(ops::mul(ops::add_scalar(scale, -1.0f), base), ops::mul(scale, ops::mul_scalar(lora, scaling)));
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
    spec_ = TargetSpec::from_json(targets, c.value("exclude", nlohmann::json()), c.value("layers", nlohmann::json()));
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
        hook->magnitude = ops::sqrt(ops::sum(ops::square(layer->weight_out_in().float32()), {1})).contiguous();
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

 private:
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
}  // namespace

std::unique_ptr<Delta> make_lora(const nlohmann::json& config) { return std::make_unique<Lora>(config); }

LoraShape lora_shape(const nlohmann::json& c, const std::string& path) {
  LoraShape s;
  s.r = c.value("r", int64_t(8));
  double alpha = c.value("alpha", 8.0);
  if (auto v = pattern_lookup(c.value("rank_pattern", nlohmann::json::object()), path)) s.r = v->get<int64_t>();
  if (auto v = pattern_lookup(c.value("alpha_pattern", nlohmann::json::object()), path)) alpha = v->get<double>();
  s.scaling = c.value("rslora", false) ? alpha / std::sqrt(double(s.r)) : alpha / double(s.r);
  return s;
}

}  // namespace deltatune::delta
