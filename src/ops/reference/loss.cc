// Reference cross-entropy: logsumexp and softmax per row in double.
#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/reference/reference_backend.h"

namespace deltatune::ops {
namespace {
double logsumexp(const float* row, int64_t c) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < c; ++j) mx = std::max(mx, double(row[j]));
  double s = 0;
  for (int64_t j = 0; j < c; ++j) s += std::exp(row[j] - mx);
  return mx + std::log(s);
}
}  // namespace

double ReferenceBackend::cross_entropy(const CrossEntropyArgs& p, float* lse) const {
  double total = 0;
  for (int64_t i = 0; i < p.n; ++i) {
    const int64_t t = p.targets[i];
    if (t == p.ignore_index) continue;
    const double l = logsumexp(p.logits + i * p.c, p.c);
    lse[i] = float(l);
    total += l - p.logits[i * p.c + t];
  }
  return total;
}

void ReferenceBackend::cross_entropy_backward(const CrossEntropyArgs& p, const float* lse, float scale,
                                              float* gx) const {
  for (int64_t i = 0; i < p.n; ++i) {
    const int64_t t = p.targets[i];
    if (t == p.ignore_index) continue;
    const double l = logsumexp(p.logits + i * p.c, p.c);
    for (int64_t j = 0; j < p.c; ++j)
      gx[i * p.c + j] = float((std::exp(p.logits[i * p.c + j] - l) - (j == t ? 1.0 : 0.0)) * scale);
  }
  (void)lse;  // recomputed in double instead
}

double ReferenceBackend::cross_entropy_rows(const CrossEntropyArgs& p, float* logits, bool gradient,
                                            float scale) const {
  double total = 0;
  for (int64_t i = 0; i < p.n; ++i) {
    float* row = logits + i * p.c;
    const int64_t t = p.targets[i];
    if (t == p.ignore_index) {
      if (gradient) std::fill(row, row + p.c, 0.0f);
      continue;
    }
    const double l = logsumexp(row, p.c);
    total += l - row[t];
    if (gradient)
      for (int64_t j = 0; j < p.c; ++j) row[j] = float((std::exp(row[j] - l) - (j == t ? 1.0 : 0.0)) * scale);
  }
  return total;
}

}  // namespace deltatune::ops
