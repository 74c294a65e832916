#pragma once
// Optimizers over named leaf parameters, gradient clipping, and learning-rate schedules.
//
// The update rules are PyTorch's (torch 1.13 torch.optim.SGD / torch.optim.AdamW, single-tensor
// path) reproduced to the float32 operation: hyperparameter arithmetic in double, cast to float
// where torch casts a Python scalar, and fused multiply-adds exactly where torch's CPU kernels
// (AVX2) fuse them (add with alpha, addcmul). A run matches torch bit for bit on the same inputs.
//
// A training loop with a schedule, as transformers' Trainer drives torch's LambdaLR:
//   AdamW opt(groups, {.lr = 5e-4, .weight_decay = 0.01});
//   LrSchedule schedule = LrSchedule::from_name("linear", warmup, total);
//   ... backward ...; clip_grad_norm(opt.parameters(), 1.0);
//   opt.set_lr_multiplier(schedule.multiplier(opt.step_count()));
//   opt.step(); opt.zero_grad();
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "deltatune/tensor.h"

namespace deltatune {

// Parameters by name (the model's HF-style parameter paths); names key the optimizer state.
using NamedParams = std::vector<std::pair<std::string, Tensor>>;

// Parameters sharing options, like a torch param group. Unset options take the optimizer's
// defaults. HF Trainer puts biases and norm weights in a group with weight_decay 0.
struct ParamGroup {
  NamedParams params;
  std::optional<double> lr;
  std::optional<double> weight_decay;
};

// Parameters must be contiguous float32 CPU leaf tensors with distinct non-empty names; a tensor
// may appear only once. Each step reads param.grad(): a parameter without a gradient is skipped and
// its state (including its own step count, which drives AdamW's bias correction) is left as is.
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;  // copies would share state buffers
  Optimizer& operator=(const Optimizer&) = delete;
  Optimizer(Optimizer&&) = default;
  Optimizer& operator=(Optimizer&&) = default;

  void step();
  void zero_grad();  // frees every parameter's gradient buffer (torch's set_to_none)

  // Learning rates. lr() is the first group's; set_lr() sets every group's.
  double lr() const;
  void set_lr(double lr);
  // Each group's lr becomes its initial lr times `multiplier`: what LambdaLR does with a schedule.
  void set_lr_multiplier(double multiplier);
  size_t num_groups() const { return groups_.size(); }
  double group_lr(size_t group) const;
  void set_group_lr(size_t group, double lr);
  double group_weight_decay(size_t group) const;

  const char* name() const { return name_; }          // "sgd", "adamw"
  int64_t step_count() const { return step_count_; }  // step() calls so far
  std::vector<Tensor> parameters() const;             // every group's, in order
  NamedParams named_parameters() const;

  // Checkpoint state as named tensors (copies), for a safetensors file:
  //   "step"            int64 scalar: step_count()
  //   "step.<name>"     int64 scalar: updates parameter <name> received
  //   "<kind>.<name>"   float32, the parameter's shape; kinds: SGD "momentum";
  //                     AdamW "exp_avg", "exp_avg_sq" and, with amsgrad, "max_exp_avg_sq"
  // Parameters never updated have no entries. Loading replaces all state; keys for unknown
  // parameters or kinds, missing kinds, or wrong shapes throw ConfigError/ShapeError naming the key.
  std::map<std::string, Tensor> state_tensors() const;
  void load_state_tensors(const std::map<std::string, Tensor>& state);

 protected:
  struct Group {
    NamedParams params;
    double lr = 0;
    double initial_lr = 0;
    double weight_decay = 0;
  };
  struct ParamState {
    int64_t step = 0;                       // this parameter's updates, including the current one
    std::map<std::string, Tensor> buffers;  // by kind
  };

  Optimizer(const char* name, std::vector<ParamGroup> groups, double lr, double weight_decay);

  // Updates `param` (contiguous float32) from `grad` (contiguous float32, same numel); state.step
  // already counts this update. Buffers are created here on first use.
  virtual void update(Tensor& param, const Tensor& grad, ParamState& state, const Group& group) = 0;
  // The buffer kinds a parameter with state has (the checkpoint's "<kind>." prefixes).
  virtual std::vector<std::string> state_kinds() const = 0;

 private:
  const char* name_;
  std::vector<Group> groups_;
  std::map<std::string, ParamState> state_;  // by parameter name
  int64_t step_count_ = 0;
};

// torch.optim.SGD. weight_decay is L2 added to the gradient; the momentum buffer starts as a copy
// of the first (decayed) gradient, without dampening; nesterov needs momentum > 0 and dampening 0.
struct SGDOptions {
  double lr = 1e-3;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
};

class SGD final : public Optimizer {
 public:
  SGD(NamedParams params, const SGDOptions& options);
  SGD(std::vector<ParamGroup> groups, const SGDOptions& options);

 private:
  void update(Tensor& param, const Tensor& grad, ParamState& state, const Group& group) override;
  std::vector<std::string> state_kinds() const override;
  SGDOptions options_;
};

// torch.optim.AdamW: decoupled weight decay (param *= 1 - lr * weight_decay before the Adam
// update), bias correction by each parameter's own step count, optional AMSGrad. torch's defaults.
struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool amsgrad = false;
};

class AdamW final : public Optimizer {
 public:
  AdamW(NamedParams params, const AdamWOptions& options);
  AdamW(std::vector<ParamGroup> groups, const AdamWOptions& options);

 private:
  void update(Tensor& param, const Tensor& grad, ParamState& state, const Group& group) override;
  std::vector<std::string> state_kinds() const override;
  AdamWOptions options_;
};

// torch.nn.utils.clip_grad_norm_ with the L2 norm: every gradient is multiplied by
// min(1, max_norm / (total + 1e-6)), total being the L2 norm of all gradients together (parameters
// without a gradient are skipped). Returns total before clipping, 0 when no gradient exists. As in
// torch, a non-finite total is returned as is and spreads into the gradients: check it to skip a step.
float clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

// Learning-rate multipliers of transformers' schedules (get_constant_schedule,
// get_constant_schedule_with_warmup, get_linear_schedule_with_warmup,
// get_cosine_schedule_with_warmup), as a function of the optimizer step counted from 0 like
// LambdaLR: step 0 is the first update, which gets multiplier 0 under warmup.
class LrSchedule {
 public:
  enum class Kind { Constant, ConstantWithWarmup, Linear, Cosine };

  // Warmup rises linearly from 0 over num_warmup_steps; linear and cosine then decay to 0 at
  // num_training_steps (cosine: num_cycles waves; transformers' 0.5 is one half-cosine from 1 to 0,
  // which past num_training_steps rises again exactly as transformers' does).
  explicit LrSchedule(Kind kind, int64_t num_warmup_steps = 0, int64_t num_training_steps = 0,
                      double num_cycles = 0.5);
  // By transformers' SchedulerType name: names(). Another name throws ConfigError listing them.
  static LrSchedule from_name(std::string_view name, int64_t num_warmup_steps, int64_t num_training_steps);
  static const std::vector<std::string>& names();

  double multiplier(int64_t step) const;
  Kind kind() const { return kind_; }
  const std::string& name() const;
  int64_t num_warmup_steps() const { return num_warmup_steps_; }
  int64_t num_training_steps() const { return num_training_steps_; }

 private:
  Kind kind_;
  int64_t num_warmup_steps_;
  int64_t num_training_steps_;
  double num_cycles_;
};

}  // namespace deltatune
