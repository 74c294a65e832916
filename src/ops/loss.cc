// cross_entropy over the last dim. The tape keeps the logits (no copy when already float32 and
// contiguous) and one logsumexp per row; backward recomputes softmax from them.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/bf16_products.h"
#include "ops/cpu/gemm_bf16.h"
#include "ops/f32_contiguous.h"

namespace deltatune::ops {
namespace {

// How many targets count towards the mean loss (all but ignore_index), each checked to be one of
// `classes`; `classes_text` says them in the error.
int64_t counted_targets(const char* op, const std::vector<int64_t>& targets, int64_t classes,
                        int64_t ignore_index, const std::string& classes_text) {
  int64_t counted = 0;
  for (size_t i = 0; i < targets.size(); ++i) {
    const int64_t t = targets[i];
    if (t == ignore_index) continue;
    if (t < 0 || t >= classes)
      throw ShapeError(std::string(op) + ": target " + std::to_string(t) + " at position " + std::to_string(i) +
                       " is out of range for " + classes_text);
    ++counted;
  }
  return counted;
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
  const int64_t counted =
      counted_targets("cross_entropy", tgt, c, ignore_index,
                      "C = " + std::to_string(c) + " classes (logits " + shape_str(logits.shape()) + ")");
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

// --- linear_cross_entropy: the LM head and its loss in one pass over row chunks ---
// Full-vocabulary logits exist for one chunk of rows at a time. When a gradient is needed the
// forward also computes it (Liger's fused linear cross-entropy): the loss is a scalar, so dLoss/dx
// and dLoss/dW are known up to the incoming gradient's factor, and backward only scales them.
// That avoids both the [N, V] logits on the tape and recomputing the vocabulary GEMM in backward.
namespace deltatune::ops {

Tensor linear_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets, int64_t ignore_index) {
  if (!x.defined() || !weight.defined() || !targets.defined())
    throw ShapeError("linear_cross_entropy: x, weight or targets undefined");
  if (x.dim() != 2 || weight.dim() != 2 || x.size(1) != weight.size(1))
    throw ShapeError("linear_cross_entropy: expected x [N, H] and weight [V, H], got " + shape_str(x.shape()) +
                     " and " + shape_str(weight.shape()));
  if (targets.dtype() != DType::I64 && targets.dtype() != DType::I32)
    throw DtypeError("linear_cross_entropy: targets must be int32 or int64, got " + targets.describe());
  if (targets.shape() != Shape{x.size(0)})
    throw ShapeError("linear_cross_entropy: targets " + shape_str(targets.shape()) + " do not fit x " +
                     shape_str(x.shape()));
  const int64_t n = x.size(0), h = x.size(1), v = weight.size(0);
  std::vector<int64_t> tgt = targets.to_ints();
  const int64_t counted =
      counted_targets("linear_cross_entropy", tgt, v, ignore_index, std::to_string(v) + " classes");
  const Tensor xc = f32_contiguous(x).detach();
  const bool want_gx = grad_enabled() && x.requires_grad();
  const bool want_gw = grad_enabled() && weight.requires_grad();
  // Bf16 precision on a frozen head: the BF16 kernel reads it (rounded once if stored in float32).
  const bool bf16_kernel = !want_gw && runs_bf16_kernel(weight);
  const Tensor wc = bf16_kernel ? bf16_weight(weight) : f32_contiguous(weight).detach();
  Tensor gx = want_gx ? Tensor::zeros({n, h}) : Tensor();
  Tensor gw = want_gw ? Tensor::zeros({v, h}) : Tensor();
  // Rows per chunk: about 16 MiB of logits at a time; 64 MiB on the BF16 kernel, which repacks the
  // head for every chunk and needs the rows to pay for that.
  const int64_t logits_floats = int64_t(1) << (bf16_kernel ? 24 : 22);
  const int64_t chunk = std::clamp<int64_t>(logits_floats / std::max<int64_t>(v, 1), 8, 1024);
  std::vector<float> logits(size_t(std::min(chunk, std::max<int64_t>(n, 1)) * v));
  const float inv_count = counted ? 1.0f / float(counted) : 0.0f;
  double total = 0;
  for (int64_t r0 = 0; r0 < n && v > 0; r0 += chunk) {
    const int64_t rows = std::min(chunk, n - r0);
    float* lg = logits.data();
    if (bf16_kernel)  // B[k, n] = W[n, k]
      kernels::gemm_f32_bf16(rows, v, h, xc.f32() + r0 * h, h, wc.data<uint16_t>(), wc.strides()[1], wc.strides()[0],
                             lg, v, false);
    else if (h > 0)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(v), int(h), 1.0f, xc.f32() + r0 * h,
                  int(h), wc.f32(), int(h), 0.0f, lg, int(v));
    else
      std::fill(lg, lg + rows * v, 0.0f);
    double chunk_total = 0;
#pragma omp parallel for reduction(+ : chunk_total) if (rows * v > 16384)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = tgt[size_t(r0 + r)];
      float* row = lg + r * v;
      if (t == ignore_index) {
        if (want_gx || want_gw) std::fill(row, row + v, 0.0f);
        continue;
      }
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < v; ++j) mx = std::max(mx, row[j]);
      double s = 0;
      for (int64_t j = 0; j < v; ++j) s += std::exp(double(row[j]) - mx);
      const double l = double(mx) + std::log(s);
      chunk_total += l - row[t];
      if (want_gx || want_gw) {  // d(mean loss)/d(logits) = (softmax - onehot) / counted
        const float lf = float(l);
        for (int64_t j = 0; j < v; ++j) row[j] = std::exp(row[j] - lf) * inv_count;
        row[t] -= inv_count;
      }
    }
    total += chunk_total;
    if (want_gx && bf16_kernel)  // gx[rows, H] = G[rows, V] @ W[V, H]
      kernels::gemm_f32_bf16(rows, h, v, lg, v, wc.data<uint16_t>(), wc.strides()[0], wc.strides()[1],
                             gx.f32() + r0 * h, h, false);
    else if (want_gx && h > 0)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(h), int(v), 1.0f, lg, int(v), wc.f32(),
                  int(h), 0.0f, gx.f32() + r0 * h, int(h));
    if (want_gw && h > 0)  // gW[V, H] += G^T[V, rows] @ x[rows, H]
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(v), int(h), int(rows), 1.0f, lg, int(v),
                  xc.f32() + r0 * h, int(h), 1.0f, gw.f32(), int(h));
  }
  Tensor out = Tensor::scalar(counted ? float(total / double(counted)) : 0.0f);
  if (!want_gx && !want_gw) return out;
  return record("linear_cross_entropy", out, {x, weight, targets},
                [gx, gw](const Tensor& g, const std::vector<bool>& needs) -> std::vector<Tensor> {
                  const float s = g.item();
                  Tensor a, b;
                  if (needs[0] && gx.defined()) a = s == 1.0f ? gx : mul_scalar(gx, s);
                  if (needs[1] && gw.defined()) b = s == 1.0f ? gw : mul_scalar(gw, s);
                  return {a, b, Tensor()};
                });
}

}  // namespace deltatune::ops
