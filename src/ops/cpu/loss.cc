// The CPU cross-entropy kernels: OpenMP over rows, logsumexp in double.
#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/cpu/cpu_backend.h"

namespace deltatune::ops {

double CpuBackend::cross_entropy(const CrossEntropyArgs& p, float* lse) const {
  const int64_t n = p.n, c = p.c;
  double total = 0;
#pragma omp parallel for reduction(+ : total) if (n * c > 16384)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = p.targets[i];
    if (t == p.ignore_index) continue;
    const float* row = p.logits + i * c;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < c; ++j) mx = std::max(mx, row[j]);
    double s = 0;
    for (int64_t j = 0; j < c; ++j) s += std::exp(double(row[j]) - mx);
    const double l = double(mx) + std::log(s);
    lse[i] = float(l);
    total += l - row[t];
  }
  return total;
}

void CpuBackend::cross_entropy_backward(const CrossEntropyArgs& p, const float* lse, float scale,
                                        float* gx) const {
  const int64_t n = p.n, c = p.c;
#pragma omp parallel for if (n * c > 16384)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = p.targets[i];
    if (t == p.ignore_index) continue;
    const float* row = p.logits + i * c;
    float* grow = gx + i * c;
    const float l = lse[i];
    for (int64_t j = 0; j < c; ++j) grow[j] = std::exp(row[j] - l) * scale;
    grow[t] -= scale;
  }
}

double CpuBackend::cross_entropy_rows(const CrossEntropyArgs& p, float* lg, bool gradient,
                                      float scale) const {
  const int64_t rows = p.n, v = p.c;
  double total = 0;
#pragma omp parallel for reduction(+ : total) if (rows * v > 16384)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = p.targets[r];
    float* row = lg + r * v;
    if (t == p.ignore_index) {
      if (gradient) std::fill(row, row + v, 0.0f);
      continue;
    }
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < v; ++j) mx = std::max(mx, row[j]);
    double s = 0;
    for (int64_t j = 0; j < v; ++j) s += std::exp(double(row[j]) - mx);
    const double l = double(mx) + std::log(s);
    total += l - row[t];
    if (gradient) {  // d(mean loss)/d(logits) = (softmax - onehot) / counted
      const float lf = float(l);
      for (int64_t j = 0; j < v; ++j) row[j] = std::exp(row[j] - lf) * scale;
      row[t] -= scale;
    }
  }
  return total;
}

}  // namespace deltatune::ops
