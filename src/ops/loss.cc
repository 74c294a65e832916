// cross_entropy over the last dim. The tape keeps the logits (no copy when already float32 and
// contiguous) and one logsumexp per row; backward recomputes softmax from them.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/backend.h"
#include "ops/bf16_products.h"
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
      throw ShapeError(std::string(op) + ": target " + std::to_string(t) + " at position " +
                       std::to_string(i) + " is out of range for " + classes_text);
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
  auto lse = std::make_shared<std::vector<float>>(size_t(n));
  const double total = backend_for("cross_entropy", {&logits, &targets})
                           .cross_entropy({x.f32(), tgt.data(), n, c, ignore_index}, lse->data());
  Tensor out = Tensor::scalar(counted ? float(total / double(counted)) : 0.0f);
  auto saved_targets = std::make_shared<std::vector<int64_t>>(std::move(tgt));
  return record("cross_entropy", out, {logits, targets},
                [x, lse, saved_targets, counted, ignore_index, c, n](
                    const Tensor& g, const std::vector<bool>& needs) -> std::vector<Tensor> {
                  if (!needs[0]) return {Tensor(), Tensor()};
                  Tensor gx = Tensor::zeros(x.shape());
                  if (!counted) return {gx, Tensor()};
                  const float scale = g.item() / float(counted);
                  backend_for("cross_entropy", {&x})
                      .cross_entropy_backward({x.f32(), saved_targets->data(), n, c, ignore_index},
                                              lse->data(), scale, gx.f32());
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

Tensor linear_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets,
                            int64_t ignore_index) {
  if (!x.defined() || !weight.defined() || !targets.defined())
    throw ShapeError("linear_cross_entropy: x, weight or targets undefined");
  if (x.dim() != 2 || weight.dim() != 2 || x.size(1) != weight.size(1))
    throw ShapeError("linear_cross_entropy: expected x [N, H] and weight [V, H], got " +
                     shape_str(x.shape()) + " and " + shape_str(weight.shape()));
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
  const Backend& be = backend_for("linear_cross_entropy", {&x, &weight, &targets});
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
  // A tensor, not a std::vector: 64 MiB is past glibc's mmap threshold, so a vector was mapped,
  // zeroed and faulted in page by page at every call (16,000 faults a GPT-2 step); the large-block
  // pool hands the same memory back each step, and the products overwrite it.
  Tensor logits = Tensor::empty({std::min(chunk, std::max<int64_t>(n, 1)), v});
  const float inv_count = counted ? 1.0f / float(counted) : 0.0f;
  double total = 0;
  for (int64_t r0 = 0; r0 < n && v > 0; r0 += chunk) {
    const int64_t rows = std::min(chunk, n - r0);
    float* lg = logits.f32();
    const float* xr = xc.f32() + r0 * h;
    if (bf16_kernel)  // B[k, n] = W[n, k]
      be.gemm_bf16({rows, v, h, xr, h, wc.data<uint16_t>(), wc.strides()[1], wc.strides()[0], lg, v, false});
    else if (h > 0)
      be.gemm({rows, v, h, xr, false, h, wc.f32(), true, h, 1.0f, 0.0f, lg, v});
    else
      std::fill(lg, lg + rows * v, 0.0f);
    total += be.cross_entropy_rows({lg, tgt.data() + r0, rows, v, ignore_index}, lg, want_gx || want_gw,
                                   inv_count);
    if (want_gx && bf16_kernel)  // gx[rows, H] = G[rows, V] @ W[V, H]
      be.gemm_bf16({rows, h, v, lg, v, wc.data<uint16_t>(), wc.strides()[0], wc.strides()[1],
                    gx.f32() + r0 * h, h, false});
    else if (want_gx && h > 0)
      be.gemm({rows, h, v, lg, false, v, wc.f32(), false, h, 1.0f, 0.0f, gx.f32() + r0 * h, h});
    if (want_gw && h > 0)  // gW[V, H] += G^T[V, rows] @ x[rows, H]
      be.gemm({v, h, rows, lg, true, v, xr, false, h, 1.0f, 1.0f, gw.f32(), h});
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
