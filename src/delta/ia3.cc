// IA3 (Liu et al.), PEFT's semantics exactly: a learned vector scales a layer's output
// (y * l, l stored [out, 1]) or, for feed-forward targets, its input (x * l, l stored [1, in]).
// The output scaling multiplies the whole result, bias included, as PEFT does. Vectors start at
// ones, so an attached IA3 delta is the identity. Parameter names follow PEFT: <module>.ia3_l.
#include <algorithm>
#include <regex>
#include <set>

#include "delta/methods.h"
#include "delta/peft_config.h"
#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/delta_method.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"

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

  // What IA3 knows of itself; defined below the class.
  bool can_merge() const override { return true; }
  void merge_into(TransformerModel& model) override {
    fold(model, false);
    detach();
  }
  void unmerge_from(TransformerModel& model) override { fold(model, true); }
  nlohmann::json peft_config(TransformerModel& model) override;
  bool supports_mixed_batch() const override { return true; }
  int attach_stage() const override { return 5; }

 private:
  void fold(TransformerModel& model, bool undo);

  nlohmann::json config_;
  TargetSpec spec_;
  nlohmann::json feedforward_;
  bool init_ones_ = true;
  TransformerModel* model_ = nullptr;
  std::vector<std::string> paths_;
  std::vector<std::pair<std::string, std::shared_ptr<Ia3Hook>>> hooks_;
  std::vector<nn::Linear*> layers_;
};

// Whether an IA3 vector of this shape scales the layer's inputs ([1, in], feed-forward layers) rather
// than its outputs ([out, 1]); the shapes say it unless both are [1, 1].
bool scales_inputs(const Shape& vector_shape, const nn::Linear& layer) {
  return vector_shape == Shape{1, layer.in_features} && vector_shape != Shape{layer.out_features, 1};
}

// Merging multiplies the weight's rows (and the bias) or, on feed-forward layers, its columns by the
// vector; unmerging divides (PEFT adds 1e-8 to the divisor).
void Ia3::fold(TransformerModel& model, bool undo) {
  NoGradGuard no_grad;
  for (auto& [name, l] : parameters()) {
    const std::string path = name.substr(0, name.size() - std::string(".ia3_l").size());
    auto* layer = dynamic_cast<nn::Linear*>(model.find_module(path));
    if (!layer) throw ConfigError("merge: '" + path + "' is not a linear layer of this model");
    const bool feedforward = scales_inputs(l.shape(), *layer);
    Tensor v = l.detach().float32().reshape({-1});
    if (undo) v = ops::div(Tensor::scalar(1.0f), ops::add_scalar(v, 1e-8f));
    const int64_t out = layer->out_features, in = layer->in_features;
    // [out, in] scaled by columns (a feed-forward IA3 scales the inputs) or by rows.
    Tensor w =
        ops::mul(layer->weight_out_in().float32(), feedforward ? v.reshape({1, in}) : v.reshape({out, 1}));
    Tensor stored = layer->fan_in_fan_out ? w.t().contiguous() : w;
    layer->weight() = stored.to(layer->weight().dtype()).contiguous().detach();
    if (!feedforward && layer->bias().defined())
      layer->bias() = ops::mul(layer->bias().float32(), v).to(layer->bias().dtype()).contiguous().detach();
  }
}

// --- PEFT's IA3 ---

nlohmann::json ia3_from_peft(const nlohmann::json& p, const std::string& source) {
  warn_unknown_peft_keys(p, {"feedforward_modules", "init_ia3_weights"}, source);
  nlohmann::json c{{"method", "ia3"}};
  c["targets"] = p.value("target_modules", nlohmann::json());
  if (c["targets"].is_null())
    throw ConfigError(
        source + ": target_modules is null (PEFT's per-model defaults are not supported; name the modules)");
  c["feedforward"] = p.value("feedforward_modules", nlohmann::json());
  if (c["feedforward"].is_null()) c["feedforward"] = nlohmann::json::array();
  c["exclude"] = p.value("exclude_modules", nlohmann::json());
  c["layers"] = p.value("layers_to_transform", nlohmann::json());
  c["init_ones"] = p.value("init_ia3_weights", true);
  return c;
}

nlohmann::json Ia3::peft_config(TransformerModel& model) {
  // Feed-forward modules carry an input scaling [1, in], the others an output scaling [out, 1].
  std::map<std::string, Shape> shapes;
  for (auto& [n, t] : saved_parameters()) shapes[n.substr(0, n.rfind('.'))] = t.shape();
  std::vector<std::string> feedforward, plain;
  bool fan_in_fan_out = false;
  for (const auto& path : paths_) {
    auto* layer = static_cast<nn::Linear*>(model.find_module(path));
    fan_in_fan_out = fan_in_fan_out || layer->fan_in_fan_out;
    if (scales_inputs(shapes[path], *layer))
      feedforward.push_back(path);
    else
      plain.push_back(path);
  }
  // PEFT requires feedforward_modules to be a subset of target_modules (IA3Config.__post_init__), so
  // a feed-forward module's one entry serves in both lists: it must select no unattached module (by
  // dotted suffix, as target_modules match) and, as PEFT tests feed-forward names with a plain
  // endswith, end no attached module that is not feed-forward.
  // IA3Config has no layers_to_transform: modules of unselected layers must not match either.
  const std::vector<std::string> unattached = unattached_linears(model, paths_, {});
  std::set<std::string> target_entries, feedforward_entries;
  for (const auto& path : plain)
    target_entries.insert(
        shortest_suffix(path, [&](const std::string& s) { return !selects_any(unattached, s, false); }));
  for (const auto& path : feedforward) {
    const std::string entry = shortest_suffix(path, [&](const std::string& s) {
      return !selects_any(unattached, s, false) && !selects_any(plain, s, true);
    });
    target_entries.insert(entry);
    feedforward_entries.insert(entry);
  }
  nlohmann::json p;
  p["peft_type"] = "IA3";
  p["target_modules"] = std::vector<std::string>(target_entries.begin(), target_entries.end());
  p["feedforward_modules"] = std::vector<std::string>(feedforward_entries.begin(), feedforward_entries.end());
  p["exclude_modules"] = nullptr;
  p["fan_in_fan_out"] = fan_in_fan_out;
  p["init_ia3_weights"] = saved_config().value("init_ones", true);
  p["inference_mode"] = true;
  // PEFT's IA3Config has no layers_to_transform: a layer selection is already in target_modules
  // (the entries above select none of the unselected layers' modules).
  p["revision"] = nullptr;
  p["auto_mapping"] = nullptr;
  p["peft_version"] = kPeftVersion;
  return p;
}
}  // namespace

std::unique_ptr<Delta> make_ia3(const nlohmann::json& config) { return std::make_unique<Ia3>(config); }

DeltaMethod ia3_method() {
  return {.name = "ia3",
          .make = make_ia3,
          .description = "IA3: learned scales of keys, values and the feed-forward",
          .peft_type = "IA3",
          .from_peft = ia3_from_peft};
}

}  // namespace deltatune::delta
