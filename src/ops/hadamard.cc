// hadamard_transform: the fast Walsh-Hadamard transform along the last dim. Its matrix is symmetric,
// so the backward is the same transform applied to the gradient.
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/backend.h"
#include "ops/f32_contiguous.h"

namespace deltatune::ops {
namespace {
// y = x H along the last dim of a float32 tensor, a fresh buffer.
Tensor transform(const Tensor& x, const char* op) {
  Tensor y = f32_contiguous(x).clone();
  const int64_t n = y.size(-1);
  if (y.numel() > 0) backend_for(op, {&y}).hadamard(y.f32(), y.numel() / n, n);
  return y;
}
}  // namespace

Tensor hadamard_transform(const Tensor& a) {
  if (!a.defined() || a.dim() < 1) throw ShapeError("hadamard_transform: needs a tensor of at least one dim");
  if (!is_floating(a.dtype()))
    throw DtypeError("hadamard_transform: needs a floating tensor, got " + a.describe());
  const int64_t n = a.size(-1);
  if (n < 1 || (n & (n - 1)) != 0)
    throw ShapeError("hadamard_transform: the last dim must be a power of two, got " + shape_str(a.shape()));
  Tensor y;
  {
    NoGradGuard no_grad;  // the clone inside is this op's own buffer, not a recorded copy
    y = transform(a, "hadamard_transform");
  }
  return record("hadamard_transform", y, {a},
                [](const Tensor& g, const std::vector<bool>&) -> std::vector<Tensor> {
                  return {transform(g, "hadamard_transform")};
                });
}

}  // namespace deltatune::ops
