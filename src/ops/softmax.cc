// softmax and log_softmax over any dim, numerically stable (the row maximum is subtracted first).
// The tensor is seen as [outer, n, inner] with the reduced dim in the middle.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/f32_contiguous.h"

namespace deltatune::ops {
namespace {

struct Rows {
  int64_t outer = 1, n = 1, inner = 1;
};

Rows rows_of(const Shape& shape, int64_t d) {
  Rows r;
  for (int64_t j = 0; j < int64_t(shape.size()); ++j) {
    if (j < d)
      r.outer *= shape[size_t(j)];
    else if (j == d)
      r.n = shape[size_t(j)];
    else
      r.inner *= shape[size_t(j)];
  }
  return r;
}

// out = softmax or log_softmax of x along the middle dim of [outer, n, inner].
void softmax_forward(const float* x, float* out, const Rows& r, bool log) {
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
void softmax_backward(const float* y, const float* g, float* gx, const Rows& r, bool log) {
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

Tensor softmax_impl(const Tensor& a, int64_t dim, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  if (!is_floating(a.dtype()))
    throw DtypeError(std::string(name) + ": needs a floating tensor, got " + a.describe());
  Tensor x = f32_contiguous(a);
  Tensor out = Tensor::empty(a.shape());
  if (a.dim() == 0) {  // a single element: softmax 1, log_softmax 0
    out.f32()[0] = log ? 0.0f : 1.0f;
    return record(name, out, {a}, [](const Tensor& g, const std::vector<bool>&) -> std::vector<Tensor> {
      return {Tensor::zeros(g.shape())};
    });
  }
  const int64_t d = wrap_dim(dim, a.dim(), name);
  const Rows r = rows_of(a.shape(), d);
  if (a.numel()) softmax_forward(x.f32(), out.f32(), r, log);
  Tensor y = out.detach();
  return record(name, out, {a},
                [y, r, log](const Tensor& g, const std::vector<bool>&) -> std::vector<Tensor> {
                  Tensor gc = f32_contiguous(g);
                  Tensor gx = Tensor::empty(y.shape());
                  if (y.numel()) softmax_backward(y.f32(), gc.f32(), gx.f32(), r, log);
                  return {gx};
                });
}

}  // namespace

Tensor softmax(const Tensor& a, int64_t dim) { return softmax_impl(a, dim, false); }
Tensor log_softmax(const Tensor& a, int64_t dim) { return softmax_impl(a, dim, true); }

}  // namespace deltatune::ops
