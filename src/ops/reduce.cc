// Sums and means over dims (the kernels sum in double, so long reductions stay exact to float32).
#include <algorithm>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/backend.h"
#include "ops/f32_contiguous.h"

namespace deltatune::ops {
namespace {
Tensor sum_forward(const Tensor& a, const std::vector<bool>& reduce, const Shape& keep_shape) {
  const Backend& be = backend_for("sum", {&a});
  const Tensor x = f32_contiguous(a);
  Tensor out = Tensor::empty(keep_shape);
  if (out.numel()) be.sum(x.f32(), x.shape(), reduce, out.f32());
  return out;
}
}  // namespace

Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  const int64_t rank = a.dim();
  std::vector<bool> reduce(size_t(rank), false);
  for (int64_t d : dims) reduce[size_t(wrap_dim(d, rank, "sum"))] = true;
  Shape keep_shape = a.shape(), out_shape;
  for (int64_t d = 0; d < rank; ++d) {
    if (reduce[size_t(d)])
      keep_shape[size_t(d)] = 1;
    else
      out_shape.push_back(a.shape()[size_t(d)]);
  }
  Tensor out = sum_forward(a, reduce, keep_shape);
  if (!keepdim) out = out.detach().reshape(out_shape).detach();
  Shape original = a.shape();
  return record("sum", out, {a}, [original, keep_shape](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{contiguous(expand(reshape(g, keep_shape), original))};
  });
}

Tensor mean(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  int64_t count = 1;
  for (int64_t d : dims) count *= a.size(d);
  return mul_scalar(sum(a, dims, keepdim), count ? 1.0f / float(count) : 0.0f);
}

Tensor sum_all(const Tensor& a) {
  std::vector<int64_t> dims(size_t(a.dim()));
  for (int64_t d = 0; d < a.dim(); ++d) dims[size_t(d)] = d;
  return sum(a, dims, false);
}

Tensor mean_all(const Tensor& a) {
  return mul_scalar(sum_all(a), a.numel() ? 1.0f / float(a.numel()) : 0.0f);
}

}  // namespace deltatune::ops
