// cross_entropy over the last dim. The tape keeps the logits (no copy when already float32 and
// contiguous) and one logsumexp per row; backward recomputes softmax from them.
#include <cmath>
#include <limits>
#include <memory>
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"

namespace deltatune::ops {
namespace {

Tensor f32_contiguous(const Tensor& t) {
  NoGradGuard no_grad;
  return t.float32().contiguous();
}

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  if (!logits.defined() || !targets.defined()) throw ShapeError("cross_entropy: logits or targets undefined");
  if (!is_floating(logits.dtype()))
    throw DtypeError("cross_entropy: logits must be floating, got " + logits.describe());
  if (targets.dtype() != DType::I64 && targets.dtype() != DType::I32)
    throw DtypeError("cross_entropy: targets must be int32 or int64, got " + targets.describe());
  Shape rows_shape = logits.shape();
  if (!rows_shape.empty()) rows_shape.pop_back();
  if (logits.dim() < 1 || targets.shape() != rows_shape)
    throw ShapeError("cross_entropy: logits " + shape_str(logits.shape()) + " and targets " +
                     shape_str(targets.shape()) + " do not fit (expected logits [N, C] and targets [N])");
  const int64_t c = logits.size(-1), n = targets.numel();
  std::vector<int64_t> tgt = targets.to_ints();
  int64_t counted = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = tgt[size_t(i)];
    if (t == ignore_index) continue;
    if (t < 0 || t >= c)
      throw ShapeError("cross_entropy: target " + std::to_string(t) + " at position " + std::to_string(i) +
                       " is out of range for C = " + std::to_string(c) + " classes (logits " +
                       shape_str(logits.shape()) + ")");
    ++counted;
  }
  Tensor x = f32_contiguous(logits).detach();
  const float* xp = x.f32();
  auto lse = std::make_shared<std::vector<float>>(size_t(n));
  double total = 0;
#pragma omp parallel for reduction(+ : total) if (n * c > 16384)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = tgt[size_t(i)];
    if (t == ignore_index) continue;
    const float* row = xp + i * c;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < c; ++j) mx = std::max(mx, row[j]);
    double s = 0;
    for (int64_t j = 0; j < c; ++j) s += std::exp(double(row[j]) - mx);
    const double l = double(mx) + std::log(s);
    (*lse)[size_t(i)] = float(l);
    total += l - row[t];
  }
  Tensor out = Tensor::scalar(counted ? float(total / double(counted)) : 0.0f);
  auto saved_targets = std::make_shared<std::vector<int64_t>>(std::move(tgt));
  return record("cross_entropy", out, {logits, targets},
                [x, lse, saved_targets, counted, ignore_index, c, n](
                    const Tensor& g, const std::vector<bool>& needs) -> std::vector<Tensor> {
                  if (!needs[0]) return {Tensor(), Tensor()};
                  Tensor gx = Tensor::zeros(x.shape());
                  if (!counted) return {gx, Tensor()};
                  const float scale = g.item() / float(counted);
                  const float* xp = x.f32();
                  float* gp = gx.f32();
#pragma omp parallel for if (n * c > 16384)
                  for (int64_t i = 0; i < n; ++i) {
                    const int64_t t = (*saved_targets)[size_t(i)];
                    if (t == ignore_index) continue;
                    const float* row = xp + i * c;
                    float* grow = gp + i * c;
                    const float l = (*lse)[size_t(i)];
                    for (int64_t j = 0; j < c; ++j) grow[j] = std::exp(row[j] - l) * scale;
                    grow[t] -= scale;
                  }
                  return {gx, Tensor()};
                });
}

}  // namespace deltatune::ops
