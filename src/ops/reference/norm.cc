// Reference layer_norm and rms_norm: per row in double, gradients from the textbook formulas.
#include <cmath>
#include <vector>

#include "ops/reference/reference_backend.h"

namespace deltatune::ops {
namespace {

void normalise(const NormArgs& p, bool rms) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * p.d;
    double mean = 0, var = 0;
    if (!rms) {
      for (int64_t j = 0; j < p.d; ++j) mean += x[j];
      mean /= double(p.d);
    }
    for (int64_t j = 0; j < p.d; ++j) var += (x[j] - mean) * (x[j] - mean);
    const double rstd = 1.0 / std::sqrt(var / double(p.d) + p.eps);
    if (p.mean) p.mean[r] = float(mean);
    p.rstd[r] = float(rstd);
    for (int64_t j = 0; j < p.d; ++j) {
      double y = (x[j] - mean) * rstd;
      if (p.weight) y *= p.weight[j];
      if (p.bias) y += p.bias[j];
      p.y[r * p.d + j] = float(y);
    }
  }
}

// xhat = (x - mean) * rstd, gh = g * w: gx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)), where
// rms_norm has mean = 0 and no mean(gh) term.
void normalise_backward(const NormBackwardArgs& p, bool rms) {
  std::vector<double> gw(size_t(p.d), 0.0), gb(size_t(p.d), 0.0);
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * p.d;
    const float* g = p.g + r * p.d;
    const double mean = rms ? 0.0 : p.mean[r], rstd = p.rstd[r];
    double sum_gh = 0, sum_ghx = 0;
    for (int64_t j = 0; j < p.d; ++j) {
      const double xhat = (x[j] - mean) * rstd, gh = p.weight ? double(g[j]) * p.weight[j] : g[j];
      gw[size_t(j)] += g[j] * xhat;
      gb[size_t(j)] += g[j];
      sum_gh += gh;
      sum_ghx += gh * xhat;
    }
    if (!p.gx) continue;
    const double mean_gh = rms ? 0.0 : sum_gh / double(p.d), mean_ghx = sum_ghx / double(p.d);
    for (int64_t j = 0; j < p.d; ++j) {
      const double xhat = (x[j] - mean) * rstd, gh = p.weight ? double(g[j]) * p.weight[j] : g[j];
      p.gx[r * p.d + j] = float(rstd * (gh - mean_gh - xhat * mean_ghx));
    }
  }
  for (int64_t j = 0; j < p.d; ++j) {
    if (p.gweight) p.gweight[j] = float(gw[size_t(j)]);
    if (p.gbias) p.gbias[j] = float(gb[size_t(j)]);
  }
}

}  // namespace

void ReferenceBackend::layer_norm(const NormArgs& args) const { normalise(args, false); }
void ReferenceBackend::layer_norm_backward(const NormBackwardArgs& args) const {
  normalise_backward(args, false);
}
void ReferenceBackend::rms_norm(const NormArgs& args) const { normalise(args, true); }
void ReferenceBackend::rms_norm_backward(const NormBackwardArgs& args) const {
  normalise_backward(args, true);
}

}  // namespace deltatune::ops
