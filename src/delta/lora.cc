// LoRA (Hu et al.): y = W x + (alpha / r) B A dropout(x), with PEFT's options: rsLoRA (alpha/sqrt(r)),
// rank_pattern / alpha_pattern, DoRA (a learned magnitude per output, PEFT's formula), and GPT-2's
// fan_in_fan_out weights. Parameter names follow PEFT: <module>.lora_A.weight, .lora_B.weight,
// .lora_magnitude_vector.
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
  Generator* rng = nullptr;

  Tensor post(nn::Linear& layer, const Tensor& x, const Tensor& y) override {
    const bool drop = layer.training() && dropout > 0.0f;
    Tensor xin = drop ? ops::dropout(x, dropout, true, *rng) : x;
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
    nlohmann::json targets = c.contains("targets") ? c["targets"] : nlohmann::json{"attn.q", "attn.v"};
    spec_ = TargetSpec::from_json(targets, c.value("exclude", nlohmann::json()), c.value("layers", nlohmann::json()));
    seed = c.value("seed", uint64_t(0));
  }

  std::string method() const override { return "lora"; }

  void attach(TransformerModel& model) override {
    if (model_) throw Error("lora delta '" + name + "' is already attached");
    paths_ = resolve_targets(model, spec_);
    Generator gen(seed);
    for (const auto& path : paths_) {
      auto* layer = static_cast<nn::Linear*>(model.find_module(path));
      const LoraShape shape = lora_shape(config(), path);
      const int64_t r = shape.r;
      auto hook = std::make_shared<LoraHook>();
      hook->owner = name;
      hook->scaling = float(shape.scaling);
      hook->dropout = float(dropout_);
      hook->rng = &model.dropout_rng;
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
    model_ = &model;
  }

  void detach() override {
    for (size_t i = 0; i < layers_.size(); ++i) {
      auto& hs = layers_[i]->hooks;
      hs.erase(std::remove(hs.begin(), hs.end(), hooks_[i].second), hs.end());
    }
    layers_.clear();
    model_ = nullptr;
  }

  void set_enabled(bool on) override {
    for (auto& [_, h] : hooks_) h->enabled = on;
  }

  std::vector<std::pair<std::string, Tensor>> parameters() override {
    std::vector<std::pair<std::string, Tensor>> out;
    for (auto& [path, h] : hooks_) {
      out.emplace_back(path + ".lora_A.weight", h->A);
      out.emplace_back(path + ".lora_B.weight", h->B);
      if (h->magnitude.defined()) out.emplace_back(path + ".lora_magnitude_vector", h->magnitude);
    }
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
    c["targets"] = spec_.names_json();
    return c;
  }

  std::vector<std::string> attached_modules() const override { return paths_; }

 private:
  nlohmann::json config_;
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
