// layer_norm and rms_norm over the last dim, in float32. The tape keeps the input (no copy when it
// is already float32 and contiguous) and one or two floats per row; the normalised values are
// recomputed in backward.
#include <omp.h>

#include <cmath>
#include <memory>
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/f32_contiguous.h"

namespace deltatune::ops {
namespace {

void check_affine(const char* op, const Tensor& x, const Tensor& p, const char* what) {
  if (!p.defined()) return;
  if (!is_floating(p.dtype()))
    throw DtypeError(std::string(op) + ": " + what + " must be floating, got " + p.describe());
  if (p.dim() != 1 || p.size(0) != x.size(-1))
    throw ShapeError(std::string(op) + ": " + what + " " + shape_str(p.shape()) + " does not fit input " +
                     shape_str(x.shape()) + " (expected [" + std::to_string(x.size(-1)) + "])");
}

void check_input(const char* op, const Tensor& x) {
  if (!x.defined()) throw ShapeError(std::string(op) + ": input is undefined");
  if (!is_floating(x.dtype()))
    throw DtypeError(std::string(op) + ": needs a floating input, got " + x.describe());
  if (x.dim() == 0) throw ShapeError(std::string(op) + ": needs at least 1 dim, got " + shape_str(x.shape()));
}

// Per-thread partial sums of two [D] vectors, reduced once at the end.
struct Partials {
  int threads;
  int64_t d;
  std::vector<double> a, b;
  Partials(int64_t dim)
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

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  check_input("layer_norm", x);
  check_affine("layer_norm", x, weight, "weight");
  check_affine("layer_norm", x, bias, "bias");
  const int64_t d = x.size(-1), rows = d ? x.numel() / d : 0;
  Tensor xc = f32_contiguous(x).detach();
  Tensor w = weight.defined() ? f32_contiguous(weight).detach() : Tensor();
  Tensor b = bias.defined() ? f32_contiguous(bias).detach() : Tensor();
  auto mean = std::make_shared<std::vector<float>>(size_t(rows));
  auto rstd = std::make_shared<std::vector<float>>(size_t(rows));
  Tensor out = Tensor::empty(x.shape());
  const float* xp = xc.f32();
  const float* wp = w.defined() ? w.f32() : nullptr;
  const float* bp = b.defined() ? b.f32() : nullptr;
  float* op = out.f32();
#pragma omp parallel for if (rows * d > 8192)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * d;
    double s = 0;
    for (int64_t j = 0; j < d; ++j) s += xr[j];
    const double m = s / double(d);
    double v = 0;
    for (int64_t j = 0; j < d; ++j) v += (xr[j] - m) * (xr[j] - m);
    const float rs = float(1.0 / std::sqrt(v / double(d) + double(eps)));
    const float mf = float(m);
    (*mean)[size_t(r)] = mf;
    (*rstd)[size_t(r)] = rs;
    float* yr = op + r * d;
    for (int64_t j = 0; j < d; ++j) {
      float y = (xr[j] - mf) * rs;
      if (wp) y *= wp[j];
      if (bp) y += bp[j];
      yr[j] = y;
    }
  }
  return record(
      "layer_norm", out, {x, weight, bias},
      [xc, w, mean, rstd, d, rows](const Tensor& g, const std::vector<bool>& needs) -> std::vector<Tensor> {
        Tensor gc = f32_contiguous(g);
        const float* gp = gc.f32();
        const float* xp = xc.f32();
        const float* wp = w.defined() ? w.f32() : nullptr;
        Tensor gx = needs[0] ? Tensor::empty(xc.shape()) : Tensor();
        float* gxp = needs[0] ? gx.f32() : nullptr;
        const bool want_wb = needs[1] || needs[2];
        Partials part(want_wb ? d : 0);
#pragma omp parallel if (rows * d > 8192)
        {
          double* pw = want_wb ? part.a_of(omp_get_thread_num()) : nullptr;
          double* pb = want_wb ? part.b_of(omp_get_thread_num()) : nullptr;
#pragma omp for
          for (int64_t r = 0; r < rows; ++r) {
            const float* xr = xp + r * d;
            const float* gr = gp + r * d;
            const float m = (*mean)[size_t(r)], rs = (*rstd)[size_t(r)];
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
        Tensor gw = needs[1] ? Tensor::empty({d}) : Tensor();
        Tensor gb = needs[2] ? Tensor::empty({d}) : Tensor();
        if (want_wb) part.reduce(needs[1] ? gw.f32() : nullptr, needs[2] ? gb.f32() : nullptr);
        return {gx, gw, gb};
      });
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps) {
  check_input("rms_norm", x);
  check_affine("rms_norm", x, weight, "weight");
  const int64_t d = x.size(-1), rows = d ? x.numel() / d : 0;
  Tensor xc = f32_contiguous(x).detach();
  Tensor w = weight.defined() ? f32_contiguous(weight).detach() : Tensor();
  auto rstd = std::make_shared<std::vector<float>>(size_t(rows));
  Tensor out = Tensor::empty(x.shape());
  const float* xp = xc.f32();
  const float* wp = w.defined() ? w.f32() : nullptr;
  float* op = out.f32();
#pragma omp parallel for if (rows * d > 8192)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * d;
    double s = 0;
    for (int64_t j = 0; j < d; ++j) s += double(xr[j]) * xr[j];
    // Llama: x * rsqrt(mean(x^2) + eps), in float32.
    const float rs = 1.0f / std::sqrt(float(s / double(d)) + eps);
    (*rstd)[size_t(r)] = rs;
    float* yr = op + r * d;
    for (int64_t j = 0; j < d; ++j) yr[j] = wp ? wp[j] * (xr[j] * rs) : xr[j] * rs;
  }
  return record(
      "rms_norm", out, {x, weight},
      [xc, w, rstd, d, rows](const Tensor& g, const std::vector<bool>& needs) -> std::vector<Tensor> {
        Tensor gc = f32_contiguous(g);
        const float* gp = gc.f32();
        const float* xp = xc.f32();
        const float* wp = w.defined() ? w.f32() : nullptr;
        Tensor gx = needs[0] ? Tensor::empty(xc.shape()) : Tensor();
        float* gxp = needs[0] ? gx.f32() : nullptr;
        const bool want_w = needs[1];
        Partials part(want_w ? d : 0);
#pragma omp parallel if (rows * d > 8192)
        {
          double* pw = want_w ? part.a_of(omp_get_thread_num()) : nullptr;
#pragma omp for
          for (int64_t r = 0; r < rows; ++r) {
            const float* xr = xp + r * d;
            const float* gr = gp + r * d;
            const float rs = (*rstd)[size_t(r)];
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
        Tensor gw;
        if (want_w) {
          gw = Tensor::empty({d});
          part.reduce(gw.f32(), nullptr);
        }
        return {gx, gw};
      });
}

}  // namespace deltatune::ops
