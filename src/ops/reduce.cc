// Sums and means over dims. Accumulates in double so long reductions stay exact to float32.
#include <algorithm>

#include "core/strided.h"
#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"

namespace deltatune::ops {
namespace {
Tensor sum_forward(const Tensor& a, const std::vector<bool>& reduce, const Shape& keep_shape) {
  const Tensor x = a.float32().contiguous();
  const Shape& shape = x.shape();
  const int64_t rank = x.dim();
  Tensor out = Tensor::empty(keep_shape);
  float* o = out.f32();
  const float* p = x.f32();
  // Fast path: reducing only the last dim.
  bool last_only = rank > 0 && reduce[size_t(rank - 1)];
  for (int64_t d = 0; d + 1 < rank; ++d) last_only = last_only && !reduce[size_t(d)];
  if (last_only) {
    const int64_t cols = shape[size_t(rank - 1)], rows = out.numel();
#pragma omp parallel for if (rows * cols > 32768)
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += p[r * cols + c];
      o[r] = float(s);
    }
    return out;
  }
  // General: accumulate each input element into its output slot (stride 0 along reduced dims).
  Shape out_strides = contiguous_strides(keep_shape);
  for (int64_t d = 0; d < rank; ++d)
    if (reduce[size_t(d)]) out_strides[size_t(d)] = 0;
  std::vector<double> acc(size_t(out.numel()), 0.0);
  detail::for_each_offset(shape, out_strides, [&](int64_t i, int64_t off) { acc[size_t(off)] += p[i]; });
  for (size_t i = 0; i < acc.size(); ++i) o[i] = float(acc[i]);
  return out;
}
}  // namespace

Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  const int64_t rank = a.dim();
  std::vector<bool> reduce(size_t(rank), false);
  for (int64_t d : dims) reduce[size_t(wrap_dim(d, rank, "sum"))] = true;
  Shape keep_shape = a.shape(), out_shape;
  for (int64_t d = 0; d < rank; ++d) {
    if (reduce[size_t(d)]) keep_shape[size_t(d)] = 1;
    else out_shape.push_back(a.shape()[size_t(d)]);
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
