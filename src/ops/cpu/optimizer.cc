// The CPU optimizer updates: torch's single-tensor AdamW and SGD element loops, bit-exact with torch
// (compiled without FMA contraction: see CMakeLists.txt), on the OpenMP threads for large tensors.
#include <algorithm>
#include <cmath>

#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/target_clones.h"

namespace deltatune::ops {
namespace {

// Elementwise loops go parallel only where the threads pay for themselves.
constexpr int64_t kParallelMin = 32768;

// torch.maximum propagates NaN from either side; std::max would drop it from one.
inline float nan_max(float a, float b) {
  if (std::isnan(a)) return a;
  if (std::isnan(b)) return b;
  return a > b ? a : b;
}

// torch's AdamW update, element by element, over [i0, i1). Cloned for AVX-512 and AVX2 + FMA so the
// fused multiply-adds are instructions rather than libm calls and the loop vectorises; every clone
// computes the same IEEE operations in the same order, so the results are the same bits.
DELTATUNE_TARGET_CLONES("arch=x86-64-v4", "arch=x86-64-v3", "default")
void adamw_elements(int64_t i0, int64_t i1, float* __restrict w, const float* __restrict grad,
                    float* __restrict m, float* __restrict v, float* __restrict v_max, const AdamWStep& k) {
  for (int64_t i = i0; i < i1; ++i) {
    w[i] = w[i] * k.decay;
    m[i] = std::fma(grad[i], k.one_minus_beta1, m[i] * k.beta1);
    v[i] = std::fma(k.one_minus_beta2 * grad[i], grad[i], v[i] * k.beta2);
    float second = v[i];
    if (v_max) second = v_max[i] = nan_max(v_max[i], v[i]);
    const float denom = std::sqrt(second) / k.bias_correction2_sqrt + k.eps;
    w[i] = w[i] + (k.neg_step_size * m[i]) / denom;
  }
}

}  // namespace

void CpuBackend::adamw_update(const AdamWArgs& a) const {
  const int64_t n = a.n, chunk = 1 << 14;
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t c = 0; c < (n + chunk - 1) / chunk; ++c)
    adamw_elements(c * chunk, std::min(n, (c + 1) * chunk), a.param, a.grad, a.exp_avg, a.exp_avg_sq,
                   a.max_exp_avg_sq, a.step);
}

// torch's add(other, alpha) is a fused multiply-add on CPU (a + alpha * b rounded once): std::fma.
void CpuBackend::sgd_update(const SgdArgs& a) const {
  const int64_t n = a.n;
  float* w = a.param;
  const float* grad = a.grad;
  const SgdStep& k = a.step;
  if (!a.momentum_buffer) {
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      const float d = k.decay ? std::fma(w[i], k.weight_decay, grad[i]) : grad[i];
      w[i] = std::fma(d, k.neg_lr, w[i]);
    }
    return;
  }
  float* buf = a.momentum_buffer;
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    float d = k.decay ? std::fma(w[i], k.weight_decay, grad[i]) : grad[i];
    buf[i] = k.first ? d : std::fma(d, k.keep, buf[i] * k.momentum);
    d = k.nesterov ? std::fma(buf[i], k.momentum, d) : buf[i];
    w[i] = std::fma(d, k.neg_lr, w[i]);
  }
}

double CpuBackend::sum_squares(const float* p, int64_t n) const {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += double(p[i]) * double(p[i]);
  return sum;
}

void CpuBackend::scale_inplace(float* p, int64_t n, float s) const {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) p[i] *= s;
}

}  // namespace deltatune::ops
