// Sparse weight differences: a learned difference D added to chosen frozen weights, y = x (W + D)^T + b,
// computed as the base output plus x D^T. Both methods save only the non-zero entries of D.
//
//   diff_pruning (Guo et al., 2021)  D = w ⊙ z with z a hard-concrete gate per entry (Louizos et al.:
//       u ~ U(0, 1), s = sigmoid((log u - log(1 - u) + log_alpha) / beta), z = clamp(s (zeta - gamma)
//       + gamma, 0, 1); beta 2/3, (gamma, zeta) = (-0.1, 1.1)); at evaluation z is deterministic. The
//       trainer adds l0_weight × the mean probability that a gate is open (the expected L0 norm per
//       entry). In evaluation and in a save, D is projected to target_sparsity: per layer, all but the
//       largest |D| entries are zero. Saved as <module>.diff.indices (int64, flat positions in the
//       [out, in] weight) and <module>.diff.values.
//   mask (Zhao et al., 2020)  learned binary masks: real scores s per entry, m = 1[s > threshold],
//       the layer uses W ⊙ m, so D = W ⊙ (m - 1); backward passes straight through the threshold
//       (dL/ds = dL/dm). Scores start at init_score above the threshold: every entry kept, the
//       identity. Saved as <module>.mask.pruned, the flat positions of the removed entries.
// Config fields (both): targets (default attn.q/k/v/o, ffn.up/down), exclude, layers, seed.
//   diff_pruning: target_sparsity (0.99; share of entries zero after projection, in [0, 1)),
//                 l0_weight (0.1; the penalty's factor, >= 0), init_log_alpha (3.0; gates start open).
//   mask:         threshold (5e-3), init_score (1e-2; must exceed threshold).
#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "delta/methods.h"
#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/delta_method.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"

namespace deltatune::delta {
namespace {

constexpr float kBeta = 2.0f / 3.0f, kGamma = -0.1f, kZeta = 1.1f;

// One targeted layer's state: the trainable tensors of the method and, once loaded from a save, the
// fixed difference it holds.
struct DiffHook : nn::LinearHook {
  std::function<Tensor(nn::Linear&)> difference;  // D [out, in], recorded
  Tensor post(nn::Linear& layer, const Tensor& x, const Tensor& y) override {
    return ops::add(y, ops::linear(x, difference(layer)));
  }
};

// Targets, hooks, attach/detach: the part both methods share.
class WeightDifference : public Delta {
 public:
  WeightDifference(const nlohmann::json& c, std::string method) : config_(c), method_(std::move(method)) {
    const nlohmann::json targets =
        c.contains("targets") && !c["targets"].is_null()
            ? c["targets"]
            : nlohmann::json{"attn.q", "attn.k", "attn.v", "attn.o", "ffn.up", "ffn.down"};
    spec_ = TargetSpec::from_json(targets, c.value("exclude", nlohmann::json()),
                                  c.value("layers", nlohmann::json()));
    seed = c.value("seed", uint64_t(0));
  }

  std::string method() const override { return method_; }

  void attach(TransformerModel& model) override {
    if (model_) throw Error(method_ + " delta '" + name + "' is already attached");
    paths_ = resolve_targets(model, spec_);
    Generator gen(seed);
    for (size_t i = 0; i < paths_.size(); ++i) {
      auto* layer = static_cast<nn::Linear*>(model.find_module(paths_[i]));
      if (i >= shapes_.size()) {  // first attach: create the state (re-attaching keeps it)
        shapes_.push_back({layer->out_features, layer->in_features});
        create(i, shapes_.back(), *layer, gen);
      }
      auto hook = std::make_shared<DiffHook>();
      hook->difference = difference_fn(i, model);
      hooks_.install(layer, hook, name, enabled_);
    }
    model_ = &model;
  }

  void detach() override {
    hooks_.remove_all();
    model_ = nullptr;
  }

  // A weight difference acts through linear-layer hooks, added to W x: it shares mixed batches. (It is
  // not merged: the trained difference is kept apart from the base. PEFT has no such method.)
  bool supports_mixed_batch() const override { return true; }
  int attach_stage() const override { return 4; }

  void set_enabled(bool on) override {
    enabled_ = on;
    hooks_.set_enabled(on);
  }

  std::vector<std::string> attached_modules() const override { return paths_; }

 protected:
  virtual void create(size_t i, const Shape& shape, nn::Linear& layer, Generator& gen) = 0;
  // The hook's computation of target i's difference. It must not refer to the delta object (a model
  // keeps working when the delta that attached it is gone), only to state it shares.
  virtual std::function<Tensor(nn::Linear&)> difference_fn(size_t i, TransformerModel& model) = 0;

  // The config fields both methods share: what was given, the method and the resolved target names.
  nlohmann::json common_config() const {
    nlohmann::json c = config_;
    c["method"] = method_;
    c["targets"] = spec_.names_json();
    return c;
  }

  // The flat positions saved under `key` for target i, checked against its weight's size.
  std::vector<int64_t> positions(const std::map<std::string, Tensor>& values, const std::string& key,
                                 size_t i) const {
    auto it = values.find(key);
    if (it == values.end()) throw IoError("missing delta tensor '" + key + "'");
    if (it->second.dim() != 1) throw ShapeError("'" + key + "' must be a list of positions");
    std::vector<int64_t> out = it->second.to_ints();
    const int64_t n = shapes_[i][0] * shapes_[i][1];
    for (int64_t p : out)
      if (p < 0 || p >= n)
        throw ShapeError("'" + key + "' holds position " + std::to_string(p) + " outside the weight " +
                         shape_str(shapes_[i]));
    return out;
  }

  nlohmann::json config_;
  std::string method_;
  TargetSpec spec_;
  TransformerModel* model_ = nullptr;
  bool enabled_ = true;
  std::vector<std::string> paths_;
  std::vector<Shape> shapes_;
  LinearHooks hooks_;
};

// clamp(x, 0, 1) as relu(x) - relu(x - 1): gradients pass inside (0, 1) only.
Tensor hard_clamp(const Tensor& x) { return ops::sub(ops::relu(x), ops::relu(ops::add_scalar(x, -1.0f))); }

// Diff pruning's tensors, shared by the delta and its hooks.
struct DiffState {
  double sparsity = 0.99;
  std::vector<Shape> shapes;
  std::vector<Tensor> w, log_alpha;  // log_alpha undefined once a projected save is loaded

  // The gates at evaluation: clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1).
  Tensor deterministic_gate(size_t i) const {
    return hard_clamp(ops::add_scalar(ops::mul_scalar(ops::sigmoid(log_alpha[i]), kZeta - kGamma), kGamma));
  }

  // 1 at the largest (1 - sparsity) share of the evaluation difference's entries, 0 elsewhere (ties
  // broken by position, so the choice is deterministic).
  Tensor kept_mask(size_t i) const {
    NoGradGuard no_grad;
    const std::vector<float> d = ops::mul(w[i], deterministic_gate(i)).contiguous().to_floats();
    const size_t keep = std::min(d.size(), size_t(std::ceil((1.0 - sparsity) * double(d.size()))));
    std::vector<size_t> order(d.size());
    std::iota(order.begin(), order.end(), size_t(0));
    auto larger = [&](size_t x, size_t y) {
      const float mx = std::fabs(d[x]), my = std::fabs(d[y]);
      return mx > my || (mx == my && x < y);
    };
    std::nth_element(order.begin(), order.begin() + std::ptrdiff_t(keep), order.end(), larger);
    std::vector<float> mask(d.size(), 0.0f);
    for (size_t k = 0; k < keep; ++k) mask[order[k]] = 1.0f;
    return Tensor::from_floats(mask, shapes[i]);
  }

  // Training: a fresh hard-concrete sample per entry; evaluation: deterministic gates, projected.
  Tensor difference(size_t i, bool training, Generator& rng) const {
    if (!log_alpha[i].defined()) return w[i];  // loaded: the projected difference itself
    if (!training) return ops::mul(ops::mul(w[i], deterministic_gate(i)), kept_mask(i));
    std::vector<float> noise(size_t(w[i].numel()));
    for (float& u : noise) {
      const float v = std::clamp(rng.uniform(), 1e-6f, 1.0f - 1e-6f);
      u = std::log(v) - std::log(1.0f - v);
    }
    Tensor s = ops::sigmoid(
        ops::mul_scalar(ops::add(log_alpha[i], Tensor::from_floats(noise, shapes[i])), 1.0f / kBeta));
    return ops::mul(w[i], hard_clamp(ops::add_scalar(ops::mul_scalar(s, kZeta - kGamma), kGamma)));
  }
};

class DiffPruning : public WeightDifference {
 public:
  explicit DiffPruning(const nlohmann::json& c)
      : WeightDifference(c, "diff_pruning"), st_(std::make_shared<DiffState>()) {
    st_->sparsity = c.value("target_sparsity", 0.99);
    l0_weight_ = c.value("l0_weight", 0.1);
    init_log_alpha_ = c.value("init_log_alpha", 3.0);
    if (!(st_->sparsity >= 0 && st_->sparsity < 1))
      throw ConfigError("diff_pruning: target_sparsity must be in [0, 1)");
    if (l0_weight_ < 0) throw ConfigError("diff_pruning: l0_weight must be >= 0");
  }

  std::vector<std::pair<std::string, Tensor>> parameters() override {
    std::vector<std::pair<std::string, Tensor>> out;
    for (size_t i = 0; i < st_->w.size(); ++i) {
      out.emplace_back(paths_[i] + ".diff.weight", st_->w[i]);
      if (st_->log_alpha[i].defined()) out.emplace_back(paths_[i] + ".diff.log_alpha", st_->log_alpha[i]);
    }
    return out;
  }

  nlohmann::json config() const override {
    nlohmann::json c = common_config();
    c["target_sparsity"] = st_->sparsity;
    c["l0_weight"] = l0_weight_;
    c["init_log_alpha"] = init_log_alpha_;
    return c;
  }

  // Only the kept entries of the projected difference.
  std::vector<std::pair<std::string, Tensor>> saved_parameters() override {
    NoGradGuard no_grad;
    std::vector<std::pair<std::string, Tensor>> out;
    for (size_t i = 0; i < st_->w.size(); ++i) {
      Generator unused(0);
      const std::vector<float> d = st_->difference(i, false, unused).contiguous().to_floats();
      std::vector<int64_t> idx;
      std::vector<float> val;
      for (size_t j = 0; j < d.size(); ++j)
        if (d[j] != 0.0f) {
          idx.push_back(int64_t(j));
          val.push_back(d[j]);
        }
      out.emplace_back(paths_[i] + ".diff.indices", Tensor::from_ints(idx, {int64_t(idx.size())}));
      out.emplace_back(paths_[i] + ".diff.values", Tensor::from_floats(val, {int64_t(val.size())}));
    }
    return out;
  }

  std::vector<std::string> saved_names() override {
    std::vector<std::string> out;
    for (const auto& p : paths_) {
      out.push_back(p + ".diff.indices");
      out.push_back(p + ".diff.values");
    }
    return out;
  }

  // A loaded difference is final: no gates, no further projection.
  void load_saved(const std::map<std::string, Tensor>& values) override {
    NoGradGuard no_grad;
    for (size_t i = 0; i < st_->w.size(); ++i) {
      const std::vector<int64_t> idx = positions(values, paths_[i] + ".diff.indices", i);
      const std::vector<float> val = values.at(paths_[i] + ".diff.values").to_floats();
      if (val.size() != idx.size())
        throw ShapeError("'" + paths_[i] + ".diff.values' has " + std::to_string(val.size()) +
                         " values for " + std::to_string(idx.size()) + " positions");
      std::vector<float> dense(size_t(shapes_[i][0] * shapes_[i][1]), 0.0f);
      for (size_t j = 0; j < idx.size(); ++j) dense[size_t(idx[j])] = val[j];
      st_->w[i] = Tensor::from_floats(dense, shapes_[i]);
      st_->log_alpha[i] = Tensor();
    }
  }

  Tensor regularizer() override {
    if (l0_weight_ == 0 || st_->w.empty() || !st_->log_alpha[0].defined() || !model_ || !model_->training())
      return Tensor();
    // P(z > 0) = sigmoid(log_alpha - beta log(-gamma / zeta)), averaged over every gated entry.
    const float shift = kBeta * std::log(-kGamma / kZeta);
    Tensor total;
    int64_t count = 0;
    for (const Tensor& la : st_->log_alpha) {
      Tensor s = ops::sum_all(ops::sigmoid(ops::add_scalar(la, -shift)));
      total = total.defined() ? ops::add(total, s) : s;
      count += la.numel();
    }
    return ops::mul_scalar(total, float(l0_weight_ / double(count)));
  }

 protected:
  void create(size_t, const Shape& shape, nn::Linear&, Generator&) override {
    st_->shapes.push_back(shape);
    st_->w.push_back(Tensor::zeros(shape));  // D starts at zero: the delta is the identity
    st_->log_alpha.push_back(Tensor::full(shape, float(init_log_alpha_)));
  }

  std::function<Tensor(nn::Linear&)> difference_fn(size_t i, TransformerModel&) override {
    return [st = st_, i](nn::Linear& layer) {
      return st->difference(i, layer.training(), ForwardContext::current().dropout_rng);
    };
  }

 private:
  std::shared_ptr<DiffState> st_;
  double l0_weight_, init_log_alpha_;
};

// Learned masks' scores, shared by the delta and its hooks.
struct MaskState {
  double threshold = 5e-3;
  std::vector<Shape> shapes;
  std::vector<Tensor> scores;

  // W ⊙ (m - 1), with m passed straight through to the scores in backward.
  Tensor difference(size_t i, nn::Linear& layer) const {
    const Tensor& s = scores[i];
    Tensor hard;
    {
      NoGradGuard no_grad;
      std::vector<float> v = s.contiguous().to_floats();
      for (float& x : v) x = x > threshold ? 1.0f : 0.0f;
      hard = ops::sub(Tensor::from_floats(v, shapes[i]), s);
    }
    Tensor m = ops::add(s, hard.detach());  // value: the binary mask; gradient: identity to s
    return ops::mul(layer.weight_out_in().float32(), ops::add_scalar(m, -1.0f));
  }
};

class LearnedMask : public WeightDifference {
 public:
  explicit LearnedMask(const nlohmann::json& c)
      : WeightDifference(c, "mask"), st_(std::make_shared<MaskState>()) {
    st_->threshold = c.value("threshold", 5e-3);
    init_score_ = c.value("init_score", 1e-2);
    if (init_score_ <= st_->threshold)
      throw ConfigError("mask: init_score must exceed threshold, so that every weight starts kept");
  }

  std::vector<std::pair<std::string, Tensor>> parameters() override {
    std::vector<std::pair<std::string, Tensor>> out;
    for (size_t i = 0; i < st_->scores.size(); ++i)
      out.emplace_back(paths_[i] + ".mask.scores", st_->scores[i]);
    return out;
  }

  nlohmann::json config() const override {
    nlohmann::json c = common_config();
    c["threshold"] = st_->threshold;
    c["init_score"] = init_score_;
    return c;
  }

  std::vector<std::pair<std::string, Tensor>> saved_parameters() override {
    std::vector<std::pair<std::string, Tensor>> out;
    for (size_t i = 0; i < st_->scores.size(); ++i) {
      const std::vector<float> s = st_->scores[i].contiguous().to_floats();
      std::vector<int64_t> pruned;
      for (size_t j = 0; j < s.size(); ++j)
        if (!(s[j] > st_->threshold)) pruned.push_back(int64_t(j));
      out.emplace_back(paths_[i] + ".mask.pruned", Tensor::from_ints(pruned, {int64_t(pruned.size())}));
    }
    return out;
  }

  std::vector<std::string> saved_names() override {
    std::vector<std::string> out;
    for (const auto& p : paths_) out.push_back(p + ".mask.pruned");
    return out;
  }

  void load_saved(const std::map<std::string, Tensor>& values) override {
    NoGradGuard no_grad;
    for (size_t i = 0; i < st_->scores.size(); ++i) {
      std::vector<float> s(size_t(shapes_[i][0] * shapes_[i][1]), float(init_score_));
      for (int64_t p : positions(values, paths_[i] + ".mask.pruned", i)) s[size_t(p)] = 0.0f;
      st_->scores[i] = Tensor::from_floats(s, shapes_[i]);
    }
  }

 protected:
  void create(size_t, const Shape& shape, nn::Linear&, Generator&) override {
    st_->shapes.push_back(shape);
    st_->scores.push_back(Tensor::full(shape, float(init_score_)));
  }

  std::function<Tensor(nn::Linear&)> difference_fn(size_t i, TransformerModel&) override {
    return [st = st_, i](nn::Linear& layer) { return st->difference(i, layer); };
  }

 private:
  std::shared_ptr<MaskState> st_;
  double init_score_;
};

}  // namespace

std::unique_ptr<Delta> make_diff_pruning(const nlohmann::json& config) {
  return std::make_unique<DiffPruning>(config);
}
std::unique_ptr<Delta> make_mask(const nlohmann::json& config) {
  return std::make_unique<LearnedMask>(config);
}

DeltaMethod diff_pruning_method() {
  return {.name = "diff_pruning",
          .make = make_diff_pruning,
          .description = "diff pruning: L0-gated weight differences, 99% sparse"};
}
DeltaMethod mask_method() {
  return {.name = "mask", .make = make_mask, .description = "learned binary masks of the weights"};
}

}  // namespace deltatune::delta
