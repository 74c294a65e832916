#include <algorithm>
#include <cmath>
#include <optional>
#include <set>
#include <sstream>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "deltatune/optim.h"

namespace deltatune {
namespace {

std::string number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

void require(bool ok, const char* optimizer, const std::string& what) {
  if (!ok) throw ConfigError(std::string(optimizer) + ": " + what);
}

int64_t scalar_int(const std::string& key, const Tensor& t) {
  if (t.numel() != 1)
    throw ShapeError("optimizer state '" + key + "': expected a one-element tensor, got " + t.describe());
  return t.to_ints()[0];
}

}  // namespace

// --- Optimizer ------------------------------------------------------------------------------

Optimizer::Optimizer(const char* name, std::vector<ParamGroup> groups, double lr, double weight_decay)
    : name_(name) {
  std::set<std::string> names;
  std::set<const TensorImpl*> tensors;
  size_t count = 0;
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    ParamGroup& in = groups[gi];
    Group group;
    group.lr = group.initial_lr = in.lr.value_or(lr);
    group.weight_decay = in.weight_decay.value_or(weight_decay);
    const std::string where = " (parameter group " + std::to_string(gi) + ")";
    require(group.lr >= 0, name_, "invalid learning rate " + number(group.lr) + where);
    require(group.weight_decay >= 0, name_, "invalid weight_decay " + number(group.weight_decay) + where);
    for (const auto& [pname, t] : in.params) {
      const std::string what = "parameter '" + pname + "'";
      require(!pname.empty(), name_, "a parameter has an empty name" + where);
      require(t.defined(), name_, what + " is an undefined tensor");
      require(names.insert(pname).second, name_, what + " is given more than once");
      require(tensors.insert(t.impl()).second, name_, what + " is a tensor already given under another name");
      require(t.is_leaf(), name_, what + " is not a leaf tensor (it was computed by an op)");
      if (t.dtype() != DType::F32 || t.device() != Device::CPU || !t.is_contiguous())
        throw DtypeError(std::string(name_) + ": " + what + " must be a contiguous float32 CPU tensor, got " +
                         t.describe() + " on " + device_name(t.device()));
    }
    count += in.params.size();
    group.params = std::move(in.params);
    groups_.push_back(std::move(group));
  }
  require(count > 0, name_, "got no parameters to optimize");
}

void Optimizer::step() {
  NoGradGuard no_grad;
  for (const Group& group : groups_) {
    for (const auto& [pname, param] : group.params) {
      const Tensor grad = param.grad();
      if (!grad.defined()) continue;  // as torch: no gradient, no update, no state change
      if (grad.shape() != param.shape() || grad.device() != Device::CPU)
        throw ShapeError(std::string(name_) + ": gradient " + grad.describe() + " on " +
                         device_name(grad.device()) + " does not fit parameter '" + pname + "' " +
                         param.describe());
      const Tensor g = grad.float32().contiguous();
      ParamState& state = state_[pname];
      ++state.step;
      Tensor p = param;
      update(p, g, state, group);
    }
  }
  ++step_count_;
}

void Optimizer::zero_grad() {
  for (Group& group : groups_)
    for (auto& [pname, param] : group.params) param.zero_grad();
}

double Optimizer::lr() const { return groups_.front().lr; }

void Optimizer::set_lr(double lr) {
  require(lr >= 0, name_, "invalid learning rate " + number(lr));
  for (Group& group : groups_) group.lr = lr;
}

void Optimizer::set_lr_multiplier(double multiplier) {
  require(multiplier >= 0, name_, "invalid learning-rate multiplier " + number(multiplier));
  for (Group& group : groups_) group.lr = group.initial_lr * multiplier;
}

double Optimizer::group_lr(size_t group) const { return groups_.at(group).lr; }

void Optimizer::set_group_lr(size_t group, double lr) {
  require(lr >= 0, name_, "invalid learning rate " + number(lr));
  groups_.at(group).lr = lr;
}

double Optimizer::group_weight_decay(size_t group) const { return groups_.at(group).weight_decay; }

std::vector<Tensor> Optimizer::parameters() const {
  std::vector<Tensor> out;
  for (const Group& group : groups_)
    for (const auto& [pname, param] : group.params) out.push_back(param);
  return out;
}

NamedParams Optimizer::named_parameters() const {
  NamedParams out;
  for (const Group& group : groups_) out.insert(out.end(), group.params.begin(), group.params.end());
  return out;
}

std::map<std::string, Tensor> Optimizer::state_tensors() const {
  std::map<std::string, Tensor> out;
  out.emplace("step", Tensor::from_ints({step_count_}, {}));
  for (const auto& [pname, state] : state_) {
    out.emplace("step." + pname, Tensor::from_ints({state.step}, {}));
    for (const auto& [kind, buffer] : state.buffers) out.emplace(kind + "." + pname, buffer.clone());
  }
  return out;
}

void Optimizer::load_state_tensors(const std::map<std::string, Tensor>& state) {
  // Everything is checked before anything is replaced, so a bad checkpoint leaves this optimizer as it was.
  std::map<std::string, Tensor> params;
  for (const Group& group : groups_)
    for (const auto& [pname, param] : group.params) params.emplace(pname, param);
  const std::vector<std::string> kinds = state_kinds();
  std::string expected = "step";
  for (const std::string& kind : kinds) expected += ", " + kind;

  std::map<std::string, ParamState> loaded;
  std::optional<int64_t> step_count;
  for (const auto& [key, t] : state) {
    const std::string at = std::string(name_) + ": optimizer state '" + key + "'";
    if (!t.defined() || t.device() != Device::CPU) throw ConfigError(at + " is not a CPU tensor");
    if (key == "step") {
      step_count = scalar_int(key, t);
      continue;
    }
    const size_t dot = key.find('.');
    if (dot == std::string::npos)
      throw ConfigError(at + ": expected '<kind>.<parameter>' with kind one of " + expected);
    const std::string kind = key.substr(0, dot), pname = key.substr(dot + 1);
    const auto param = params.find(pname);
    if (param == params.end()) throw ConfigError(at + ": this optimizer has no parameter '" + pname + "'");
    if (kind == "step") {
      loaded[pname].step = scalar_int(key, t);
      if (loaded[pname].step < 1) throw ConfigError(at + ": step count must be at least 1");
      continue;
    }
    if (std::find(kinds.begin(), kinds.end(), kind) == kinds.end())
      throw ConfigError(at + ": unknown state kind '" + kind + "' (expected one of " + expected + ")");
    if (t.shape() != param->second.shape())
      throw ShapeError(at + ": shape " + shape_str(t.shape()) + " does not match the parameter's " +
                       shape_str(param->second.shape()));
    Tensor buffer = Tensor::empty(t.shape());
    buffer.copy_(t);
    loaded[pname].buffers.emplace(kind, std::move(buffer));
  }
  if (!step_count) throw ConfigError(std::string(name_) + ": optimizer state lacks 'step'");
  for (const auto& [pname, st] : loaded) {
    if (st.step == 0) throw ConfigError(std::string(name_) + ": optimizer state lacks 'step." + pname + "'");
    for (const std::string& kind : kinds)
      if (!st.buffers.count(kind))
        throw ConfigError(std::string(name_) + ": optimizer state lacks '" + kind + "." + pname + "'");
  }
  state_ = std::move(loaded);
  step_count_ = *step_count;
}

// --- SGD ------------------------------------------------------------------------------------
//
// Scalars are cast to float where torch casts a Python number into a float32 kernel, and
// torch's add(other, alpha) is a fused multiply-add on CPU (a + alpha * b rounded once), so
// std::fma reproduces it bit for bit.

SGD::SGD(NamedParams params, const SGDOptions& options)
    : SGD(std::vector<ParamGroup>{ParamGroup{std::move(params), {}, {}}}, options) {}

SGD::SGD(std::vector<ParamGroup> groups, const SGDOptions& options)
    : Optimizer("sgd", std::move(groups), options.lr, options.weight_decay), options_(options) {
  require(options.momentum >= 0, "sgd", "invalid momentum " + number(options.momentum));
  require(std::isfinite(options.dampening), "sgd", "invalid dampening " + number(options.dampening));
  require(!options.nesterov || (options.momentum > 0 && options.dampening == 0), "sgd",
          "nesterov momentum requires momentum > 0 and dampening 0");
}

std::vector<std::string> SGD::state_kinds() const {
  if (options_.momentum == 0) return {};
  return {"momentum"};
}

void SGD::update(Tensor& param, const Tensor& grad, ParamState& state, const Group& group) {
  ops::SgdStep k{float(group.weight_decay),
                 float(-group.lr),
                 float(options_.momentum),
                 float(1.0 - options_.dampening),
                 group.weight_decay != 0,
                 options_.nesterov,
                 false};
  Tensor buffer;
  if (options_.momentum != 0) {
    auto found = state.buffers.find("momentum");
    k.first = found == state.buffers.end();
    if (k.first) found = state.buffers.emplace("momentum", Tensor::empty(param.shape())).first;
    buffer = found->second;
  }
  ops::sgd_update_(param, grad, buffer, k);
}

// --- AdamW ----------------------------------------------------------------------------------
//
// torch 1.13 _single_tensor_adamw, operation by operation:
//   param.mul_(1 - lr * wd)
//   exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)            -> fma(grad, 1-b1, m*b1)
//   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2) -> fma((1-b2)*grad, grad, v*b2)
//   denom = (exp_avg_sq.sqrt() / sqrt(1 - beta2**step)).add_(eps)
//   param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step)) -> p + (-step_size*m) / denom
// with the scalar arithmetic in double (Python floats) and cast to float at each kernel.

AdamW::AdamW(NamedParams params, const AdamWOptions& options)
    : AdamW(std::vector<ParamGroup>{ParamGroup{std::move(params), {}, {}}}, options) {}

AdamW::AdamW(std::vector<ParamGroup> groups, const AdamWOptions& options)
    : Optimizer("adamw", std::move(groups), options.lr, options.weight_decay), options_(options) {
  require(options.eps >= 0, "adamw", "invalid eps " + number(options.eps));
  require(options.beta1 >= 0 && options.beta1 < 1, "adamw", "invalid beta1 " + number(options.beta1));
  require(options.beta2 >= 0 && options.beta2 < 1, "adamw", "invalid beta2 " + number(options.beta2));
}

std::vector<std::string> AdamW::state_kinds() const {
  if (options_.amsgrad) return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  return {"exp_avg", "exp_avg_sq"};
}

void AdamW::update(Tensor& param, const Tensor& grad, ParamState& state, const Group& group) {
  const AdamWOptions& o = options_;
  for (const std::string& kind : state_kinds())
    if (!state.buffers.count(kind)) state.buffers.emplace(kind, Tensor::zeros(param.shape()));
  Tensor& m = state.buffers.at("exp_avg");
  Tensor& v = state.buffers.at("exp_avg_sq");
  Tensor v_max = o.amsgrad ? state.buffers.at("max_exp_avg_sq") : Tensor();

  const double step = double(state.step);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, step);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, step);
  const ops::AdamWStep k{float(1.0 - group.lr * group.weight_decay),
                         float(o.beta1),
                         float(1.0 - o.beta1),
                         float(o.beta2),
                         float(1.0 - o.beta2),
                         float(std::sqrt(bias_correction2)),
                         float(o.eps),
                         float(-(group.lr / bias_correction1))};
  ops::adamw_update_(param, grad, m, v, v_max, k);
}

// --- gradient clipping ----------------------------------------------------------------------

float clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  NoGradGuard no_grad;
  std::vector<Tensor> grads;
  for (const Tensor& p : params)
    if (p.defined() && p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return 0.0f;

  // torch takes each gradient's norm (a float32 result), then the norm of those norms. Sums run in
  // double here, so the total agrees with torch's to float rounding.
  double total_sq = 0;
  for (const Tensor& grad : grads) {
    const double norm = double(float(std::sqrt(ops::sum_of_squares(grad))));
    total_sq += norm * norm;
  }
  const float total = float(std::sqrt(total_sq));

  // torch: clip_coef = max_norm / (total + 1e-6), a reciprocal then a multiply in float32, then
  // clamp(max=1), which keeps a NaN.
  float coef = float(max_norm) * (1.0f / (total + float(1e-6)));
  if (coef > 1.0f) coef = 1.0f;
  if (coef == 1.0f) return total;  // multiplying by 1 would change nothing

  for (Tensor& grad : grads) ops::scale_(grad, coef);
  return total;
}

}  // namespace deltatune
