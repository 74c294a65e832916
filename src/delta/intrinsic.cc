// Intrinsic-subspace tuning (Aghajanyan et al., 2021, after Li et al., 2018): an inner delta's
// parameters are not trained themselves but are a fixed affine image of a few trainable numbers z,
//   theta = origin + P z       (all the inner delta's parameters flattened into one vector of n)
// Config: {"method": "intrinsic", "dim": d, "delta": {...any delta's config...}, "said": false}
//   random   P is the Fastfood transform (delta/fastfood.h), origin the inner delta's initialisation,
//            both drawn from the delta's seed, so z and the seed alone reproduce the delta.
//   "said"   SAID: one more trained scale per inner tensor, theta_i = origin_i + lambda_i (P z)_i
//            (lambda starts at 1); the delta then trains d + (number of tensors) numbers.
//   subspace {"method": "intrinsic", "subspace": DIR}: P and origin are a fitted shared subspace
//            (deltatune/subspace.h: PCA over deltas trained on other tasks); "dim" may take its first
//            d directions. The inner delta's config comes from the subspace folder.
// Only z (and the scales) are parameters: they train, and they are what a save holds, with the seed
// and the inner config in delta_config.json. The inner delta's tensors are computed from z at the
// start of every forward by an embedding hook placed first: under grad mode the computed tensor is
// recorded and the inner tensors become views of it (their handles, held by the inner delta's hooks,
// now carry its graph node), so backward reaches z; without grad the values are written once per
// change of z. Not mergeable, not in a mixed batch, and PEFT has no such method.
#include <algorithm>
#include <cmath>
#include <functional>
#include <mutex>

#include "delta/composite.h"
#include "delta/fastfood.h"
#include "delta/methods.h"
#include "deltatune/autograd.h"
#include "deltatune/delta_method.h"
#include "deltatune/error.h"
#include "deltatune/subspace.h"

namespace deltatune::delta {
namespace {

constexpr double kIntrinsicLearningRate = 3e-2;

// Makes `target`'s shared TensorImpl hold `value`: its data, layout and (when recorded) graph node.
// Every handle on that impl (the inner delta's hooks hold them) then reads the new tensor.
void adopt(Tensor& target, const Tensor& value) {
  TensorImpl* t = target.impl();
  const TensorImpl* v = value.impl();
  t->storage = v->storage;
  t->dtype = v->dtype;
  t->shape = v->shape;
  t->strides = v->strides;
  t->offset = v->offset;
  t->grad_fn = v->grad_fn;
  t->requires_grad = v->requires_grad;
  t->grad.reset();
}

// What the inner tensors are computed from, shared by the delta and its hook: the model keeps a
// delta's hooks working after the delta object is gone, as it does every delta's.
struct Reparameterisation {
  std::vector<Tensor> targets;  // handles on the inner delta's own tensors
  std::vector<Shape> shapes;
  Tensor origin, z, scales;                      // scales: SAID's, undefined without
  std::function<Tensor(const Tensor&)> project;  // z [d] -> P z [n]
  std::vector<float> materialised;               // z (and scales) the targets hold without grad; empty: stale
  std::mutex mutex;

  // Recomputes the targets from z: recorded under grad mode, else only when z changed.
  void materialise() {
    std::lock_guard<std::mutex> lock(mutex);
    if (targets.empty()) return;
    const bool said = scales.defined();
    const bool recording = grad_enabled() && (z.requires_grad() || (said && scales.requires_grad()));
    std::vector<float> now = z.to_floats();
    if (said) {
      std::vector<float> s = scales.to_floats();
      now.insert(now.end(), s.begin(), s.end());
    }
    if (!recording && now == materialised) return;
    Tensor flat = project(z);
    int64_t at = 0;
    for (size_t i = 0; i < targets.size(); ++i) {
      const int64_t n = shape_numel(shapes[i]);
      Tensor part = flat.slice(0, at, at + n);
      if (said) part = ops::mul(part, scales.slice(0, int64_t(i), int64_t(i) + 1));
      Tensor value = ops::add(origin.slice(0, at, at + n), part).reshape(shapes[i]);
      if (!recording) value = value.contiguous().detach();
      adopt(targets[i], value);
      at += n;
    }
    materialised = recording ? std::vector<float>{} : now;
  }
};

// The first embedding hook: recomputes the inner tensors before anything in the forward reads them.
struct MaterialiseHook : EmbeddingHook {
  std::shared_ptr<Reparameterisation> state;
  void extend(Tensor&, Tensor&) override { state->materialise(); }
};

class Intrinsic : public Delta, public CompositeDelta {
 public:
  explicit Intrinsic(const nlohmann::json& c) : config_(c) {
    if (!c.is_object()) throw ConfigError("intrinsic: the config must be an object");
    said_ = c.value("said", false);
    seed = c.value("seed", uint64_t(0));
    if (c.contains("subspace") && !c["subspace"].is_null()) {
      if (!c["subspace"].is_string()) throw ConfigError("intrinsic: subspace must be a folder path");
      subspace_dir_ = c["subspace"].get<std::string>();
      subspace_ = std::make_shared<Subspace>(load_subspace(subspace_dir_));
      inner_config_ = subspace_->delta_config;
      dim_ = c.value("dim", subspace_->dim());
      if (dim_ < 1 || dim_ > subspace_->dim())
        throw ConfigError("intrinsic: dim must be between 1 and the subspace's " +
                          std::to_string(subspace_->dim()) + ", got " + std::to_string(dim_));
    } else {
      if (!c.contains("delta") || !c["delta"].is_object())
        throw ConfigError(
            "intrinsic: needs \"delta\" (the inner delta's config, e.g. {\"method\": \"lora\"}) "
            "or \"subspace\" (a folder from `deltatune subspace fit`)");
      inner_config_ = c["delta"];
      if (!c.contains("dim") || !c["dim"].is_number_integer())
        throw ConfigError("intrinsic: needs \"dim\", the number of trained coordinates (an integer)");
      dim_ = c["dim"].get<int64_t>();
      if (dim_ < 1) throw ConfigError("intrinsic: dim must be at least 1, got " + std::to_string(dim_));
    }
    if (inner_config_.value("method", "") == "intrinsic")
      throw ConfigError("intrinsic: the inner delta cannot itself be intrinsic");
    inner_config_.erase("seed");
    inner_ = make_delta(inner_config_);
  }

  std::string method() const override { return "intrinsic"; }
  std::vector<Delta*> members() override { return {inner_.get()}; }

  void attach(TransformerModel& model) override {
    if (model_) throw Error("intrinsic delta '" + name + "' is already attached");
    inner_->name = name;
    inner_->seed = seed;
    inner_->attach(model);
    try {
      collect_inner();
      build_projection();
    } catch (...) {
      inner_->detach();
      throw;
    }
    Reparameterisation& r = *state_;
    if (!r.z.defined() || r.z.numel() != dim_) r.z = Tensor::zeros({dim_});
    if (said_ && (!r.scales.defined() || r.scales.numel() != int64_t(r.targets.size())))
      r.scales = Tensor::ones({int64_t(r.targets.size())});
    hook_ = std::make_shared<MaterialiseHook>();
    hook_->state = state_;
    hook_->owner = name;
    hook_->enabled = enabled_;
    model.embedding_hooks.insert(model.embedding_hooks.begin(), hook_);
    model_ = &model;
    r.materialised.clear();
    r.materialise();
  }

  void detach() override {
    if (!model_) return;
    remove_hook(model_->embedding_hooks, std::static_pointer_cast<EmbeddingHook>(hook_));
    hook_.reset();
    inner_->detach();
    model_ = nullptr;
  }

  void set_enabled(bool on) override {
    enabled_ = on;
    inner_->set_enabled(on);
    if (hook_) hook_->enabled = on;
  }

  std::vector<std::pair<std::string, Tensor>> parameters() override {
    std::vector<std::pair<std::string, Tensor>> out{{"intrinsic.z", state_->z}};
    if (said_) out.emplace_back("intrinsic.said_scales", state_->scales);
    return out;
  }
  std::vector<std::string> saved_names() override {
    std::vector<std::string> out{"intrinsic.z"};
    if (said_) out.push_back("intrinsic.said_scales");
    return out;
  }
  void load_saved(const std::map<std::string, Tensor>& values) override {
    load_parameters(values);
    state_->materialise();
  }

  nlohmann::json config() const override {
    nlohmann::json c;
    c["method"] = "intrinsic";
    c["dim"] = dim_;
    c["said"] = said_;
    c["seed"] = seed;
    c["projection"] = subspace_ ? "subspace" : "fastfood";
    if (subspace_) c["subspace"] = std::filesystem::absolute(subspace_dir_).lexically_normal().string();
    c["delta"] = inner_->config();
    c["delta"].erase("seed");
    return c;
  }

  std::vector<std::string> attached_modules() const override { return inner_->attached_modules(); }
  // z moves every inner tensor through a projection whose columns have norm ~1 spread over n numbers:
  // its step must be larger than a delta's own. Measured on bert-mini / sentiment (1000 reviews, 2
  // epochs, LoRA r 2 inside, d 500): lr 1e-2 0.59, 3e-2 0.64, 1e-1 0.48 (one class predicted).
  double default_learning_rate() const override { return kIntrinsicLearningRate; }

 private:
  void collect_inner() {
    state_->targets.clear();
    state_->shapes.clear();
    names_.clear();
    for (auto& [n, t] : inner_->parameters()) {
      if (t.dtype() != DType::F32)
        throw ConfigError("intrinsic: the inner delta's tensor '" + n + "' is " + t.describe() +
                          ", not float32");
      state_->targets.push_back(t);
      state_->shapes.push_back(t.shape());
      names_.push_back(n);
    }
    if (state_->targets.empty()) throw ConfigError("intrinsic: the inner delta has no parameters");
  }

  // P and the origin. The random one's origin is the inner delta's initialisation, taken at the first
  // attach (a re-attached inner delta holds the values computed from z since).
  void build_projection() {
    Reparameterisation& r = *state_;
    int64_t n = 0;
    for (const Shape& s : r.shapes) n += shape_numel(s);
    if (subspace_) {
      check_layout();
      r.origin = subspace_->mean;
      r.project = [basis = subspace_->basis.slice(0, 0, dim_), dim = dim_](const Tensor& z) {
        return ops::matmul(z.reshape({1, dim}), basis).reshape({basis.size(1)});  // z^T basis [d, n]
      };
      return;
    }
    if (!r.origin.defined() || r.origin.numel() != n) {
      NoGradGuard no_grad;
      std::vector<Tensor> parts;
      for (const Tensor& t : r.targets) parts.push_back(t.contiguous().reshape({t.numel()}));
      r.origin = ops::concat(parts, 0).contiguous().detach();
    }
    auto fastfood = std::make_shared<FastfoodProjection>(dim_, n, seed * 0x9E3779B97F4A7C15ull + 0x5AD);
    r.project = [fastfood](const Tensor& z) { return fastfood->apply(z); };
  }

  void check_layout() const {
    const auto& layout = subspace_->layout;
    bool same = layout.size() == names_.size();
    for (size_t i = 0; same && i < layout.size(); ++i)
      same = layout[i].first == names_[i] && layout[i].second == state_->shapes[i];
    if (same) return;
    std::string want, have;
    for (const auto& [n, s] : layout) want += (want.empty() ? "" : ", ") + n + " " + shape_str(s);
    for (size_t i = 0; i < names_.size(); ++i)
      have += (have.empty() ? "" : ", ") + names_[i] + " " + shape_str(state_->shapes[i]);
    throw ConfigError("intrinsic: the subspace " + subspace_dir_ + " was fitted on tensors (" + want +
                      ") but the delta on this model has (" + have + ")");
  }

  nlohmann::json config_, inner_config_;
  int64_t dim_ = 0;
  bool said_ = false, enabled_ = true;
  std::string subspace_dir_;
  std::shared_ptr<Subspace> subspace_;
  std::unique_ptr<Delta> inner_;
  std::vector<std::string> names_;  // the inner tensors' names, parallel to state_->targets
  std::shared_ptr<Reparameterisation> state_ = std::make_shared<Reparameterisation>();
  std::shared_ptr<MaterialiseHook> hook_;
  TransformerModel* model_ = nullptr;
};

std::unique_ptr<Delta> make_intrinsic(const nlohmann::json& config) {
  return std::make_unique<Intrinsic>(config);
}
}  // namespace

DeltaMethod intrinsic_method() {
  return {.name = "intrinsic",
          .make = make_intrinsic,
          .description = "intrinsic subspace: an inner delta moved by d numbers through a fixed projection",
          .default_lr = kIntrinsicLearningRate,
          .train_config = {{"method", "intrinsic"}, {"dim", 250}, {"delta", {{"method", "lora"}, {"r", 8}}}}};
}

}  // namespace deltatune::delta
