// Reference optimizer updates: torch's formulas one element at a time, in the same float32
// operations as the optimised kernels (compiled without FMA contraction), so they agree bit for bit.
#include <cmath>

#include "ops/reference/reference_backend.h"

namespace deltatune::ops {

void ReferenceBackend::adamw_update(const AdamWArgs& a) const {
  const AdamWStep& k = a.step;
  for (int64_t i = 0; i < a.n; ++i) {
    float& w = a.param[i];
    float& m = a.exp_avg[i];
    float& v = a.exp_avg_sq[i];
    w = w * k.decay;
    m = std::fma(a.grad[i], k.one_minus_beta1, m * k.beta1);
    v = std::fma(k.one_minus_beta2 * a.grad[i], a.grad[i], v * k.beta2);
    float second = v;
    if (a.max_exp_avg_sq) {
      float& mx = a.max_exp_avg_sq[i];
      mx = std::isnan(mx) ? mx : std::isnan(v) ? v : (mx > v ? mx : v);
      second = mx;
    }
    w = w + (k.neg_step_size * m) / (std::sqrt(second) / k.bias_correction2_sqrt + k.eps);
  }
}

void ReferenceBackend::sgd_update(const SgdArgs& a) const {
  const SgdStep& k = a.step;
  for (int64_t i = 0; i < a.n; ++i) {
    float& w = a.param[i];
    float d = k.decay ? std::fma(w, k.weight_decay, a.grad[i]) : a.grad[i];
    if (a.momentum_buffer) {
      float& buf = a.momentum_buffer[i];
      buf = k.first ? d : std::fma(d, k.keep, buf * k.momentum);
      d = k.nesterov ? std::fma(buf, k.momentum, d) : buf;
    }
    w = std::fma(d, k.neg_lr, w);
  }
}

double ReferenceBackend::sum_squares(const float* x, int64_t n) const {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += double(x[i]) * x[i];
  return sum;
}

void ReferenceBackend::scale_inplace(float* x, int64_t n, float s) const {
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

}  // namespace deltatune::ops
