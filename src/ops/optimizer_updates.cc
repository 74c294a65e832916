// The optimizers' in-place updates as ops: checks here, the element loops behind the backend, so a
// parameter on the GPU is updated where it lives.
#include <string>

#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/backend.h"
#include "ops/f32_contiguous.h"

namespace deltatune::ops {
namespace {

// A buffer the update writes or reads: float32, contiguous, the parameter's shape.
void check_buffer(const char* op, const char* what, const Tensor& t, const Tensor& param) {
  if (t.dtype() != DType::F32 || !t.is_contiguous() || t.shape() != param.shape())
    throw DtypeError(std::string(op) + ": " + what + " must be a contiguous float32 " +
                     shape_str(param.shape()) + " tensor, got " + t.describe());
}

}  // namespace

void adamw_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                   Tensor& max_exp_avg_sq, const AdamWStep& step) {
  const char* op = "adamw_update_";
  check_buffer(op, "param", param, param);
  check_buffer(op, "grad", grad, param);
  check_buffer(op, "exp_avg", exp_avg, param);
  check_buffer(op, "exp_avg_sq", exp_avg_sq, param);
  if (max_exp_avg_sq.defined()) check_buffer(op, "max_exp_avg_sq", max_exp_avg_sq, param);
  const Backend& be = backend_for(op, {&param, &grad, &exp_avg, &exp_avg_sq, &max_exp_avg_sq});
  be.adamw_update({param.f32(), grad.f32(), exp_avg.f32(), exp_avg_sq.f32(),
                   max_exp_avg_sq.defined() ? max_exp_avg_sq.f32() : nullptr, param.numel(), step});
}

void sgd_update_(Tensor& param, const Tensor& grad, Tensor& momentum_buffer, const SgdStep& step) {
  const char* op = "sgd_update_";
  check_buffer(op, "param", param, param);
  check_buffer(op, "grad", grad, param);
  if (momentum_buffer.defined()) check_buffer(op, "momentum_buffer", momentum_buffer, param);
  const Backend& be = backend_for(op, {&param, &grad, &momentum_buffer});
  be.sgd_update({param.f32(), grad.f32(), momentum_buffer.defined() ? momentum_buffer.f32() : nullptr,
                 param.numel(), step});
}

double sum_of_squares(const Tensor& t) {
  const Tensor x = f32_contiguous(t);
  return backend_for("sum_of_squares", {&t}).sum_squares(x.f32(), x.numel());
}

void scale_(Tensor& t, float s) {
  if (t.dtype() == DType::F32 && t.is_contiguous()) {
    backend_for("scale_", {&t}).scale_inplace(t.f32(), t.numel(), s);
    return;
  }
  Tensor scaled = f32_contiguous(t).clone();
  backend_for("scale_", {&t}).scale_inplace(scaled.f32(), scaled.numel(), s);
  t.copy_(scaled);
}

}  // namespace deltatune::ops
