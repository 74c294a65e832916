// "Specification" deltas: they train some of the model's own tensors instead of adding modules.
//   bitfit       biases (Ben Zaken et al.); a targeted Linear or LayerNorm without one gets a zero
//                bias, as OpenDelta does, removed again on detach.
//   ln           LayerNorm / RMSNorm weights and biases.
//   last-layers  every parameter of the last k blocks.
// Their parameters are named as the model's (bert.encoder.layer.0.attention.self.query.bias). The
// delta owns float32 copies and installs them in the model's parameter slots while attached and
// enabled; detached or disabled, the slots hold the original tensors again, so the base is intact.
#include <set>

#include "delta/methods.h"
#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/delta_method.h"
#include "deltatune/error.h"

namespace deltatune::delta {
namespace {

// A model parameter the delta trains.
struct Selected {
  std::string module;  // path of the module holding it
  std::string leaf;    // "bias", "weight", ...
  Shape shape;         // for a bias the module lacks
};

class SpecDelta : public Delta {
 public:
  explicit SpecDelta(const nlohmann::json& c) : config_(c) {}

  void attach(TransformerModel& model) override {
    if (model_) throw Error(method() + " delta '" + name + "' is already attached");
    std::vector<Selected> picked = select(model);
    if (picked.empty())
      throw ConfigError(method() + ": selects no parameter of this " + model.config.model_type + " model");
    std::map<std::string, Tensor> previous;
    for (auto& e : entries_) previous[e.name] = e.value;
    entries_.clear();
    NoGradGuard no_grad;
    for (const auto& s : picked) {
      Entry e;
      e.name = s.module.empty() ? s.leaf : s.module + "." + s.leaf;
      e.owner = model.find_module(s.module);
      e.leaf = s.leaf;
      for (auto& [n, t] : e.owner->local_parameters())
        if (n == s.leaf) e.original = t;
      const Shape shape = e.original.defined() ? e.original.shape() : s.shape;
      auto prev = previous.find(e.name);
      if (prev != previous.end() && prev->second.shape() == shape)
        e.value = prev->second;
      else if (e.original.defined())
        e.value = e.original.float32().contiguous().clone().detach();
      else
        e.value = Tensor::zeros(shape);
      entries_.push_back(std::move(e));
    }
    model_ = &model;
    install(enabled_);
  }

  // These train the model's own tensors: they come first in a combination, and there is nothing to
  // merge or to confine to some rows of a mixed batch. PEFT has no such method.
  int attach_stage() const override { return 1; }

  void detach() override {
    if (!model_) return;
    install(false);
    for (auto& e : entries_) e.owner = nullptr;
    model_ = nullptr;
  }

  void set_enabled(bool on) override {
    enabled_ = on;
    if (model_) install(on);
  }

  std::vector<std::pair<std::string, Tensor>> parameters() override {
    std::vector<std::pair<std::string, Tensor>> out;
    for (auto& e : entries_) out.emplace_back(e.name, e.value);
    return out;
  }

  std::vector<std::string> attached_modules() const override {
    std::vector<std::string> out;
    std::set<std::string> seen;
    for (auto& e : entries_) {
      std::string m = e.name.substr(0, e.name.rfind('.'));
      if (seen.insert(m).second) out.push_back(m);
    }
    return out;
  }

 protected:
  // The parameters this method trains in `model`.
  virtual std::vector<Selected> select(TransformerModel& model) = 0;

  // Modules under the backbone (not the task or LM head), by path.
  static std::vector<std::pair<std::string, nn::Module*>> backbone_modules(TransformerModel& model) {
    const std::string lp = model.layers_path();
    const std::string root = lp.substr(0, lp.find('.'));
    const std::vector<std::string> head_list = model.head_parameters();
    std::set<std::string> head(head_list.begin(), head_list.end());
    std::vector<std::pair<std::string, nn::Module*>> out;
    for (auto& [path, m] : model.named_modules()) {
      if (path.rfind(root + ".", 0) != 0) continue;
      bool in_head = false;
      for (auto& [leaf, _] : m->local_parameters()) in_head = in_head || head.count(path + "." + leaf) > 0;
      if (!in_head) out.emplace_back(path, m);
    }
    return out;
  }

  // Modules chosen by `targets` (any type), or the backbone's when there are none.
  std::vector<std::pair<std::string, nn::Module*>> target_modules(TransformerModel& model) {
    if (!config_.contains("targets") || config_["targets"].is_null()) return backbone_modules(model);
    TargetSpec spec = TargetSpec::from_json(config_["targets"], config_.value("exclude", nlohmann::json()),
                                            config_.value("layers", nlohmann::json()));
    std::vector<std::pair<std::string, nn::Module*>> out;
    for (const auto& p : resolve_targets(model, spec, false)) out.emplace_back(p, model.find_module(p));
    return out;
  }

  nlohmann::json config_;

 private:
  struct Entry {
    std::string name;
    nn::Module* owner = nullptr;
    std::string leaf;
    Tensor value;     // the delta's trainable tensor
    Tensor original;  // the model's own; undefined for a bias the delta added
  };

  // Puts the delta's tensors (on) or the originals (off) in the model's slots.
  void install(bool on) {
    for (auto& e : entries_) e.owner->register_parameter(e.leaf, on ? e.value : e.original);
  }

  std::vector<Entry> entries_;
  TransformerModel* model_ = nullptr;
  bool enabled_ = true;
};

bool is_norm(const nn::Module* m) { return m->type_name() == "LayerNorm" || m->type_name() == "RMSNorm"; }

class BitFit : public SpecDelta {
 public:
  explicit BitFit(const nlohmann::json& c) : SpecDelta(c) { add_missing_ = c.value("add_missing", true); }
  std::string method() const override { return "bitfit"; }
  nlohmann::json config() const override {
    nlohmann::json c = config_;
    c["method"] = "bitfit";
    c["add_missing"] = add_missing_;
    return c;
  }

 protected:
  std::vector<Selected> select(TransformerModel& model) override {
    std::vector<Selected> out;
    for (auto& [path, m] : target_modules(model)) {
      const bool linear = m->type_name() == "Linear";
      if (!linear && m->type_name() != "LayerNorm") continue;  // RMSNorm has no bias to add
      bool has_slot = false, defined = false;
      for (auto& [leaf, t] : m->local_parameters())
        if (leaf == "bias") has_slot = true, defined = t.defined();
      if (!has_slot || (!defined && !add_missing_)) continue;
      Shape shape;
      if (linear)
        shape = {static_cast<nn::Linear*>(m)->out_features};
      else
        for (auto& [leaf, t] : m->local_parameters())
          if (leaf == "weight" && t.defined()) shape = {t.size(0)};
      if (shape.empty()) continue;
      out.push_back({path, "bias", shape});
    }
    return out;
  }

 private:
  bool add_missing_ = true;
};

class LnTuning : public SpecDelta {
 public:
  using SpecDelta::SpecDelta;
  std::string method() const override { return "ln"; }
  nlohmann::json config() const override {
    nlohmann::json c = config_;
    c["method"] = "ln";
    return c;
  }

 protected:
  std::vector<Selected> select(TransformerModel& model) override {
    std::vector<Selected> out;
    for (auto& [path, m] : target_modules(model)) {
      if (!is_norm(m)) continue;
      for (auto& [leaf, t] : m->local_parameters())
        if (t.defined()) out.push_back({path, leaf, t.shape()});
    }
    return out;
  }
};

class LastLayers : public SpecDelta {
 public:
  explicit LastLayers(const nlohmann::json& c) : SpecDelta(c) {
    k_ = c.value("k", int64_t(1));
    if (k_ < 1) throw ConfigError("last-layers: k must be at least 1, got " + std::to_string(k_));
  }
  std::string method() const override { return "last-layers"; }
  bool trains_linear_weights() const override { return true; }
  nlohmann::json config() const override {
    nlohmann::json c = config_;
    c["method"] = "last-layers";
    c["k"] = k_;
    return c;
  }

 protected:
  std::vector<Selected> select(TransformerModel& model) override {
    const int64_t layers = model.config.num_layers;
    if (k_ > layers)
      throw ConfigError("last-layers: k is " + std::to_string(k_) + " but the model has " +
                        std::to_string(layers) + " layers");
    std::vector<Selected> out;
    for (auto& [path, m] : model.named_modules()) {
      const int64_t layer = layer_index(model, path);
      if (layer < layers - k_) continue;  // also skips modules outside the blocks (-1)
      for (auto& [leaf, t] : m->local_parameters())
        if (t.defined()) out.push_back({path, leaf, t.shape()});
    }
    return out;
  }

 private:
  int64_t k_ = 1;
};
}  // namespace

std::unique_ptr<Delta> make_bitfit(const nlohmann::json& config) { return std::make_unique<BitFit>(config); }
std::unique_ptr<Delta> make_ln_tuning(const nlohmann::json& config) {
  return std::make_unique<LnTuning>(config);
}
std::unique_ptr<Delta> make_last_layers(const nlohmann::json& config) {
  return std::make_unique<LastLayers>(config);
}

DeltaMethod bitfit_method() {
  return {.name = "bitfit", .make = make_bitfit, .description = "BitFit: biases only"};
}
DeltaMethod ln_tuning_method() {
  return {.name = "ln", .make = make_ln_tuning, .description = "LayerNorm tuning"};
}
DeltaMethod last_layers_method() {
  return {.name = "last-layers", .make = make_last_layers, .description = "the last block's weights"};
}

}  // namespace deltatune::delta
