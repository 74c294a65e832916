// The CPU layer_norm and rms_norm: OpenMP over rows, each row by one function built for the CPU's
// vector width (target clones); the weight and bias gradients are summed per thread in double and
// reduced once at the end.
#include <omp.h>

#include <cmath>
#include <vector>

#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/target_clones.h"

namespace deltatune::ops {
namespace {

// Per-thread partial sums of two [D] vectors, reduced once at the end.
struct Partials {
  int threads;
  int64_t d;
  std::vector<double> a, b;
  explicit Partials(int64_t dim)
      : threads(omp_get_max_threads()), d(dim), a(size_t(threads * dim)), b(size_t(threads * dim)) {}
  double* a_of(int t) { return a.data() + int64_t(t) * d; }
  double* b_of(int t) { return b.data() + int64_t(t) * d; }
  void reduce(float* out_a, float* out_b) const {
    for (int64_t j = 0; j < d; ++j) {
      double sa = 0, sb = 0;
      for (int t = 0; t < threads; ++t) {
        sa += a[size_t(t * d + j)];
        sb += b[size_t(t * d + j)];
      }
      if (out_a) out_a[j] = float(sa);
      if (out_b) out_b[j] = float(sb);
    }
  }
};

// The sum over j < d of term(j) in double, in eight running sums (element j into sum j % 8, the
// rest in order), added together at the end. One running sum is an add per 4 cycles, and the row
// sums were most of layer_norm's time; eight are one vector. The order is fixed by d alone, not by
// where the row lies, so every copy of a row gives the same bits. Across CPUs the last bit may differ:
// the clones for CPUs with FMA fuse products into sums, here and in the element-wise lines below.
// Built without that (-ffp-contract=off), bert-lora-qv's merged logits moved from 7.7e-5 to 1.2e-4
// away from PEFT's (tests/test_merge.cc allows 1e-4): torch's own norms fuse them, so we do too.
template <typename Term>
[[gnu::always_inline]] inline double row_sum(int64_t d, Term term) {
  double lanes[8] = {};
  int64_t j = 0;
  for (; j + 8 <= d; j += 8)
#pragma omp simd
    for (int k = 0; k < 8; ++k) lanes[k] += term(j + k);
  double s = 0;
  for (int k = 0; k < 8; ++k) s += lanes[k];
  for (; j < d; ++j) s += term(j);
  return s;
}

// The output gradient scaled by the norm's weight (gh = g * w), or g itself without a weight.
[[gnu::always_inline]] inline float scaled_grad(const float* g, const float* w, int64_t j) {
  return w ? g[j] * w[j] : g[j];
}

// One row of layer_norm. Per row, so the result does not depend on the thread count.
DELTATUNE_TARGET_CLONES("avx512f", "avx2", "default")
void layer_norm_row(const float* xr, int64_t d, float eps, const float* wp, const float* bp, float* yr,
                    float* mean, float* rstd) {
  const double m = row_sum(d, [&](int64_t j) { return double(xr[j]); }) / double(d);
  const double v = row_sum(d, [&](int64_t j) { return (xr[j] - m) * (xr[j] - m); });
  const float rs = float(1.0 / std::sqrt(v / double(d) + double(eps)));
  const float mf = float(m);
  *mean = mf;
  *rstd = rs;
  for (int64_t j = 0; j < d; ++j) {
    float y = (xr[j] - mf) * rs;
    if (wp) y *= wp[j];
    if (bp) y += bp[j];
    yr[j] = y;
  }
}

// One row of layer_norm's backward: its share of the weight and bias gradients added to this
// thread's double partials (pw, pb; null when not wanted), and its input gradient (gxr; null when
// not wanted).
DELTATUNE_TARGET_CLONES("avx512f", "avx2", "default")
void layer_norm_backward_row(const float* xr, const float* gr, int64_t d, float m, float rs, const float* wp,
                             double* pw, double* pb, float* gxr) {
  if (pw)
    for (int64_t j = 0; j < d; ++j) {
      pw[j] += double(gr[j]) * ((xr[j] - m) * rs);
      pb[j] += gr[j];
    }
  if (!gxr) return;
  const double sum_gh = row_sum(d, [&](int64_t j) { return double(scaled_grad(gr, wp, j)); });
  const double sum_ghx =
      row_sum(d, [&](int64_t j) { return double(scaled_grad(gr, wp, j)) * ((xr[j] - m) * rs); });
  const float mean_gh = float(sum_gh / double(d)), mean_ghx = float(sum_ghx / double(d));
  for (int64_t j = 0; j < d; ++j)
    gxr[j] = rs * (scaled_grad(gr, wp, j) - mean_gh - (xr[j] - m) * rs * mean_ghx);
}

// One row of rms_norm (Llama: x * rsqrt(mean(x^2) + eps), in float32).
DELTATUNE_TARGET_CLONES("avx512f", "avx2", "default")
void rms_norm_row(const float* xr, int64_t d, float eps, const float* wp, float* yr, float* rstd) {
  const double s = row_sum(d, [&](int64_t j) { return double(xr[j]) * xr[j]; });
  const float rs = 1.0f / std::sqrt(float(s / double(d)) + eps);
  *rstd = rs;
  for (int64_t j = 0; j < d; ++j) yr[j] = wp ? wp[j] * (xr[j] * rs) : xr[j] * rs;
}

// One row of rms_norm's backward, as layer_norm_backward_row: gx = rs * (gh - xhat * mean(gh * xhat)),
// gh = g * w, xhat = x * rs.
DELTATUNE_TARGET_CLONES("avx512f", "avx2", "default")
void rms_norm_backward_row(const float* xr, const float* gr, int64_t d, float rs, const float* wp, double* pw,
                           float* gxr) {
  if (pw)
    for (int64_t j = 0; j < d; ++j) pw[j] += double(gr[j]) * (xr[j] * rs);
  if (!gxr) return;
  const float mean_ghx =
      float(row_sum(d, [&](int64_t j) { return double(scaled_grad(gr, wp, j)) * (xr[j] * rs); }) / double(d));
  for (int64_t j = 0; j < d; ++j) gxr[j] = rs * (scaled_grad(gr, wp, j) - xr[j] * rs * mean_ghx);
}

}  // namespace

void CpuBackend::layer_norm(const NormArgs& p) const {
  const int64_t rows = p.rows, d = p.d;
#pragma omp parallel for if (rows * d > 8192)
  for (int64_t r = 0; r < rows; ++r)
    layer_norm_row(p.x + r * d, d, p.eps, p.weight, p.bias, p.y + r * d, p.mean + r, p.rstd + r);
}

void CpuBackend::layer_norm_backward(const NormBackwardArgs& p) const {
  const int64_t rows = p.rows, d = p.d;
  const bool want_wb = p.gweight || p.gbias;
  Partials part(want_wb ? d : 0);
#pragma omp parallel if (rows * d > 8192)
  {
    double* pw = want_wb ? part.a_of(omp_get_thread_num()) : nullptr;
    double* pb = want_wb ? part.b_of(omp_get_thread_num()) : nullptr;
#pragma omp for
    for (int64_t r = 0; r < rows; ++r)
      layer_norm_backward_row(p.x + r * d, p.g + r * d, d, p.mean[r], p.rstd[r], p.weight, pw, pb,
                              p.gx ? p.gx + r * d : nullptr);
  }
  if (want_wb) part.reduce(p.gweight, p.gbias);
}

void CpuBackend::rms_norm(const NormArgs& p) const {
  const int64_t rows = p.rows, d = p.d;
#pragma omp parallel for if (rows * d > 8192)
  for (int64_t r = 0; r < rows; ++r) rms_norm_row(p.x + r * d, d, p.eps, p.weight, p.y + r * d, p.rstd + r);
}

void CpuBackend::rms_norm_backward(const NormBackwardArgs& p) const {
  const int64_t rows = p.rows, d = p.d;
  const bool want_w = p.gweight != nullptr;
  Partials part(want_w ? d : 0);
#pragma omp parallel if (rows * d > 8192)
  {
    double* pw = want_w ? part.a_of(omp_get_thread_num()) : nullptr;
#pragma omp for
    for (int64_t r = 0; r < rows; ++r)
      rms_norm_backward_row(p.x + r * d, p.g + r * d, d, p.rstd[r], p.weight, pw,
                            p.gx ? p.gx + r * d : nullptr);
  }
  if (want_w) part.reduce(p.gweight, nullptr);
}

}  // namespace deltatune::ops
