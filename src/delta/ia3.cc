// IA3 (Liu et al.), PEFT's semantics exactly: a learned vector scales a layer's output
// (y * l, l stored [out, 1]) or, for feed-forward targets, its input (x * l, l stored [1, in]).
// The output scaling multiplies the whole result, bias included, as PEFT does. Vectors start at
// ones, so an attached IA3 delta is the identity. Parameter names follow PEFT: <module>.ia3_l.
#include <algorithm>
#include <regex>
#include <set>

#include "delta/methods.h"
#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/error.h"

namespace deltatune::delta {
namespace {

struct Ia3Hook : nn::LinearHook {
  Tensor scale;  // [out, 1] or [1, in]
  bool feedforward = false;

  Tensor pre(nn::Linear& layer, const Tensor& x) override {
    if (!feedforward) return x;
    return ops::mul(x, ops::reshape(scale, {scale.numel()}));
  }
  Tensor post(nn::Linear& layer, const Tensor& x, const Tensor& y) override {
    if (feedforward) return y;
    return ops::mul(y, ops::reshape(scale, {scale.numel()}));
  }
};

class Ia3 : public Delta {
 public:
  explicit Ia3(const nlohmann::json& c) : config_(c) {
    nlohmann::json targets = c.contains("targets") && !c["targets"].is_null()
                                 ? c["targets"]
                                 : nlohmann::json{"attn.k", "attn.v", "ffn.down"};
    spec_ = TargetSpec::from_json(targets, c.value("exclude", nlohmann::json()),
                                  c.value("layers", nlohmann::json()));
    feedforward_ = c.contains("feedforward") && !c["feedforward"].is_null() ? c["feedforward"]
                                                                            : nlohmann::json{"ffn.down"};
    if (!feedforward_.is_string() && !feedforward_.is_array())
      throw ConfigError("ia3: feedforward must be a list of module names or a regex string");
    if (feedforward_.is_array())
      for (const auto& f : feedforward_)
        if (!f.is_string())
          throw ConfigError("ia3: feedforward must be a list of module names or a regex string");
    init_ones_ = c.value("init_ones", true);
    seed = c.value("seed", uint64_t(0));
  }

  std::string method() const override { return "ia3"; }

  void attach(TransformerModel& model) override {
    if (model_) throw Error("ia3 delta '" + name + "' is already attached");
    auto paths = resolve_targets(model, spec_);
    // PEFT: a regex string is a full match; a list matches when the module path ends with an entry.
    std::vector<std::string> ff_names;
    std::regex ff_regex;
    if (feedforward_.is_string()) {
      try {
        ff_regex = std::regex(feedforward_.get<std::string>());
      } catch (const std::regex_error& e) {
        throw ConfigError("ia3: feedforward regex '" + feedforward_.get<std::string>() +
                          "' is invalid: " + e.what());
      }
    } else {
      const auto roles = model.roles();
      for (const auto& f : feedforward_) {
        auto it = roles.find(f.get<std::string>());
        if (it == roles.end())
          ff_names.push_back(f.get<std::string>());
        else
          ff_names.insert(ff_names.end(), it->second.begin(), it->second.end());
      }
    }
    // Re-attaching keeps the learned vectors.
    std::map<std::string, Tensor> previous;
    for (auto& [p, h] : hooks_) previous[p] = h->scale;
    hooks_.clear();
    Generator gen(seed);
    for (const auto& path : paths) {
      auto* layer = static_cast<nn::Linear*>(model.find_module(path));
      auto hook = std::make_shared<Ia3Hook>();
      hook->owner = name;
      if (feedforward_.is_string())
        hook->feedforward = std::regex_match(path, ff_regex);
      else
        for (const auto& f : ff_names) hook->feedforward = hook->feedforward || path.ends_with(f);
      const Shape shape = hook->feedforward ? Shape{1, layer->in_features} : Shape{layer->out_features, 1};
      auto prev = previous.find(path);
      if (prev != previous.end() && prev->second.shape() == shape)
        hook->scale = prev->second;
      else
        hook->scale = init_ones_ ? Tensor::ones(shape) : Tensor::randn(shape, gen);
      layer->hooks.push_back(hook);
      hooks_.emplace_back(path, hook);
      layers_.push_back(layer);
    }
    paths_ = paths;
    model_ = &model;
  }

  void detach() override {
    for (size_t i = 0; i < layers_.size(); ++i) {
      remove_hook(layers_[i]->hooks, hooks_[i].second);
    }
    layers_.clear();
    model_ = nullptr;
  }

  void set_enabled(bool on) override {
    for (auto& [_, h] : hooks_) h->enabled = on;
  }

  std::vector<std::pair<std::string, Tensor>> parameters() override {
    std::vector<std::pair<std::string, Tensor>> out;
    for (auto& [path, h] : hooks_) out.emplace_back(path + ".ia3_l", h->scale);
    return out;
  }

  nlohmann::json config() const override {
    nlohmann::json c = config_;
    c["method"] = "ia3";
    c["targets"] = spec_.names_json();
    c["feedforward"] = feedforward_;
    c["init_ones"] = init_ones_;
    return c;
  }

  std::vector<std::string> attached_modules() const override { return paths_; }

 private:
  nlohmann::json config_;
  TargetSpec spec_;
  nlohmann::json feedforward_;
  bool init_ones_ = true;
  TransformerModel* model_ = nullptr;
  std::vector<std::string> paths_;
  std::vector<std::pair<std::string, std::shared_ptr<Ia3Hook>>> hooks_;
  std::vector<nn::Linear*> layers_;
};
}  // namespace

std::unique_ptr<Delta> make_ia3(const nlohmann::json& config) { return std::make_unique<Ia3>(config); }

}  // namespace deltatune::delta
