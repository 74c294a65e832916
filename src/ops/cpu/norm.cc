// The CPU layer_norm and rms_norm: OpenMP over rows; the weight and bias gradients are summed per
// thread in double and reduced once at the end.
#include <omp.h>

#include <cmath>
#include <vector>

#include "ops/cpu/cpu_backend.h"

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

}  // namespace

void CpuBackend::layer_norm(const NormArgs& p) const {
  const int64_t rows = p.rows, d = p.d;
  const float* wp = p.weight;
  const float* bp = p.bias;
#pragma omp parallel for if (rows * d > 8192)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = p.x + r * d;
    double s = 0;
    for (int64_t j = 0; j < d; ++j) s += xr[j];
    const double m = s / double(d);
    double v = 0;
    for (int64_t j = 0; j < d; ++j) v += (xr[j] - m) * (xr[j] - m);
    const float rs = float(1.0 / std::sqrt(v / double(d) + double(p.eps)));
    const float mf = float(m);
    p.mean[r] = mf;
    p.rstd[r] = rs;
    float* yr = p.y + r * d;
    for (int64_t j = 0; j < d; ++j) {
      float y = (xr[j] - mf) * rs;
      if (wp) y *= wp[j];
      if (bp) y += bp[j];
      yr[j] = y;
    }
  }
}

void CpuBackend::layer_norm_backward(const NormBackwardArgs& p) const {
  const int64_t rows = p.rows, d = p.d;
  const float* wp = p.weight;
  float* gxp = p.gx;
  const bool want_wb = p.gweight || p.gbias;
  Partials part(want_wb ? d : 0);
#pragma omp parallel if (rows * d > 8192)
  {
    double* pw = want_wb ? part.a_of(omp_get_thread_num()) : nullptr;
    double* pb = want_wb ? part.b_of(omp_get_thread_num()) : nullptr;
#pragma omp for
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = p.x + r * d;
      const float* gr = p.g + r * d;
      const float m = p.mean[r], rs = p.rstd[r];
      if (want_wb)
        for (int64_t j = 0; j < d; ++j) {
          pw[j] += double(gr[j]) * ((xr[j] - m) * rs);
          pb[j] += gr[j];
        }
      if (!gxp) continue;
      double sum_gh = 0, sum_ghx = 0;
      for (int64_t j = 0; j < d; ++j) {
        const float gh = wp ? gr[j] * wp[j] : gr[j];
        sum_gh += gh;
        sum_ghx += double(gh) * ((xr[j] - m) * rs);
      }
      const float mean_gh = float(sum_gh / double(d)), mean_ghx = float(sum_ghx / double(d));
      float* gxr = gxp + r * d;
      for (int64_t j = 0; j < d; ++j) {
        const float gh = wp ? gr[j] * wp[j] : gr[j];
        gxr[j] = rs * (gh - mean_gh - (xr[j] - m) * rs * mean_ghx);
      }
    }
  }
  if (want_wb) part.reduce(p.gweight, p.gbias);
}

void CpuBackend::rms_norm(const NormArgs& p) const {
  const int64_t rows = p.rows, d = p.d;
  const float* wp = p.weight;
#pragma omp parallel for if (rows * d > 8192)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = p.x + r * d;
    double s = 0;
    for (int64_t j = 0; j < d; ++j) s += double(xr[j]) * xr[j];
    // Llama: x * rsqrt(mean(x^2) + eps), in float32.
    const float rs = 1.0f / std::sqrt(float(s / double(d)) + p.eps);
    p.rstd[r] = rs;
    float* yr = p.y + r * d;
    for (int64_t j = 0; j < d; ++j) yr[j] = wp ? wp[j] * (xr[j] * rs) : xr[j] * rs;
  }
}

void CpuBackend::rms_norm_backward(const NormBackwardArgs& p) const {
  const int64_t rows = p.rows, d = p.d;
  const float* wp = p.weight;
  float* gxp = p.gx;
  const bool want_w = p.gweight != nullptr;
  Partials part(want_w ? d : 0);
#pragma omp parallel if (rows * d > 8192)
  {
    double* pw = want_w ? part.a_of(omp_get_thread_num()) : nullptr;
#pragma omp for
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = p.x + r * d;
      const float* gr = p.g + r * d;
      const float rs = p.rstd[r];
      if (want_w)
        for (int64_t j = 0; j < d; ++j) pw[j] += double(gr[j]) * (xr[j] * rs);
      if (!gxp) continue;
      // gx = rs * (gh - xhat * mean(gh * xhat)), gh = g * w, xhat = x * rs.
      double sum_ghx = 0;
      for (int64_t j = 0; j < d; ++j) sum_ghx += double(wp ? gr[j] * wp[j] : gr[j]) * (xr[j] * rs);
      const float mean_ghx = float(sum_ghx / double(d));
      float* gxr = gxp + r * d;
      for (int64_t j = 0; j < d; ++j) {
        const float gh = wp ? gr[j] * wp[j] : gr[j];
        gxr[j] = rs * (gh - xr[j] * rs * mean_ghx);
      }
    }
  }
  if (want_w) part.reduce(p.gweight, nullptr);
}

}  // namespace deltatune::ops
