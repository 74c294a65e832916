// The CPU reductions and softmax: OpenMP over rows, sums in double so long reductions stay exact
// to float32.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/strided.h"
#include "ops/cpu/cpu_backend.h"

namespace deltatune::ops {

void CpuBackend::sum(const float* p, const Shape& shape, const std::vector<bool>& reduce, float* o) const {
  const int64_t rank = int64_t(shape.size());
  Shape keep_shape = shape;
  for (int64_t d = 0; d < rank; ++d)
    if (reduce[size_t(d)]) keep_shape[size_t(d)] = 1;
  const int64_t out_n = shape_numel(keep_shape);
  // Fast path: reducing only the last dim.
  bool last_only = rank > 0 && reduce[size_t(rank - 1)];
  for (int64_t d = 0; d + 1 < rank; ++d) last_only = last_only && !reduce[size_t(d)];
  if (last_only) {
    const int64_t cols = shape[size_t(rank - 1)], rows = out_n;
#pragma omp parallel for if (rows * cols > 32768)
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += p[r * cols + c];
      o[r] = float(s);
    }
    return;
  }
  // General: accumulate each input element into its output slot (stride 0 along reduced dims).
  Shape out_strides = contiguous_strides(keep_shape);
  for (int64_t d = 0; d < rank; ++d)
    if (reduce[size_t(d)]) out_strides[size_t(d)] = 0;
  std::vector<double> acc(size_t(out_n), 0.0);
  detail::for_each_offset(shape, out_strides, [&](int64_t i, int64_t off) { acc[size_t(off)] += p[i]; });
  for (size_t i = 0; i < acc.size(); ++i) o[i] = float(acc[i]);
}

// out = softmax or log_softmax of x along the middle dim of [outer, n, inner].
void CpuBackend::softmax(const float* x, float* out, const Lines& r, bool log) const {
  const int64_t lines = r.outer * r.inner;
#pragma omp parallel for if (lines * r.n > 4096)
  for (int64_t line = 0; line < lines; ++line) {
    const int64_t o = line / r.inner, i = line % r.inner;
    const float* xs = x + o * r.n * r.inner + i;
    float* ys = out + o * r.n * r.inner + i;
    const int64_t st = r.inner;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < r.n; ++j) mx = std::max(mx, xs[j * st]);
    if (mx == -std::numeric_limits<float>::infinity()) mx = 0;  // all -inf: avoid inf - inf
    double sum = 0;
    if (log) {
      for (int64_t j = 0; j < r.n; ++j) sum += std::exp(xs[j * st] - mx);
      // (x - max) - log(sum): adding max and log(sum) first would round away low bits of large inputs.
      const float log_sum = float(std::log(sum));
      for (int64_t j = 0; j < r.n; ++j) ys[j * st] = (xs[j * st] - mx) - log_sum;
    } else {
      for (int64_t j = 0; j < r.n; ++j) {
        ys[j * st] = std::exp(xs[j * st] - mx);
        sum += ys[j * st];
      }
      const float inv = float(1.0 / sum);
      for (int64_t j = 0; j < r.n; ++j) ys[j * st] *= inv;
    }
  }
}

// softmax: gx = y * (g - sum(g * y));  log_softmax: gx = g - exp(y) * sum(g).
void CpuBackend::softmax_backward(const float* y, const float* g, float* gx, const Lines& r, bool log) const {
  const int64_t lines = r.outer * r.inner;
#pragma omp parallel for if (lines * r.n > 4096)
  for (int64_t line = 0; line < lines; ++line) {
    const int64_t o = line / r.inner, i = line % r.inner;
    const int64_t base = o * r.n * r.inner + i, st = r.inner;
    double dot = 0;
    if (log) {
      for (int64_t j = 0; j < r.n; ++j) dot += g[base + j * st];
      for (int64_t j = 0; j < r.n; ++j)
        gx[base + j * st] = g[base + j * st] - std::exp(y[base + j * st]) * float(dot);
    } else {
      for (int64_t j = 0; j < r.n; ++j) dot += double(g[base + j * st]) * y[base + j * st];
      for (int64_t j = 0; j < r.n; ++j)
        gx[base + j * st] = y[base + j * st] * (g[base + j * st] - float(dot));
    }
  }
}

}  // namespace deltatune::ops
