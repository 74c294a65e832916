// Reference reductions and softmax: one output element at a time, sums in double.
#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/reference/reference_backend.h"

namespace deltatune::ops {

void ReferenceBackend::sum(const float* x, const Shape& shape, const std::vector<bool>& reduce,
                           float* out) const {
  const int64_t rank = int64_t(shape.size());
  Shape keep = shape;
  for (int64_t d = 0; d < rank; ++d)
    if (reduce[size_t(d)]) keep[size_t(d)] = 1;
  std::vector<double> acc(size_t(shape_numel(keep)), 0.0);
  for (int64_t i = 0, n = shape_numel(shape); i < n; ++i) {
    int64_t rest = i, slot = 0, stride = 1;
    for (int64_t d = rank - 1; d >= 0; --d) {
      const int64_t index = rest % shape[size_t(d)];
      rest /= shape[size_t(d)];
      if (!reduce[size_t(d)]) slot += index * stride;
      stride *= keep[size_t(d)];
    }
    acc[size_t(slot)] += x[i];
  }
  for (size_t i = 0; i < acc.size(); ++i) out[i] = float(acc[i]);
}

void ReferenceBackend::softmax(const float* x, float* y, const Lines& r, bool log) const {
  for (int64_t o = 0; o < r.outer; ++o)
    for (int64_t i = 0; i < r.inner; ++i) {
      auto at = [&](int64_t j) { return (o * r.n + j) * r.inner + i; };
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < r.n; ++j) mx = std::max(mx, double(x[at(j)]));
      if (std::isinf(mx) && mx < 0) mx = 0;
      double sum = 0;
      for (int64_t j = 0; j < r.n; ++j) sum += std::exp(x[at(j)] - mx);
      for (int64_t j = 0; j < r.n; ++j)
        y[at(j)] = float(log ? (x[at(j)] - mx) - std::log(sum) : std::exp(x[at(j)] - mx) / sum);
    }
}

void ReferenceBackend::softmax_backward(const float* y, const float* g, float* gx, const Lines& r,
                                        bool log) const {
  for (int64_t o = 0; o < r.outer; ++o)
    for (int64_t i = 0; i < r.inner; ++i) {
      auto at = [&](int64_t j) { return (o * r.n + j) * r.inner + i; };
      double dot = 0;
      for (int64_t j = 0; j < r.n; ++j) dot += log ? double(g[at(j)]) : double(g[at(j)]) * y[at(j)];
      for (int64_t j = 0; j < r.n; ++j)
        gx[at(j)] = float(log ? g[at(j)] - std::exp(double(y[at(j)])) * dot : y[at(j)] * (g[at(j)] - dot));
    }
}

}  // namespace deltatune::ops
