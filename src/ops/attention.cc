// Scaled dot-product attention. The tape keeps only each row's logsumexp; the kernels (ops/cpu/
// attention.cc) never hold a [B, H, T, S] tensor and read the usual q/k/v views ([B, T, H, D]
// transposed to [B, H, T, D]) without copies.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/backend.h"
#include "ops/f32_contiguous.h"

namespace deltatune::ops {
namespace {

// A [B, H, rows, cols] tensor as the kernels read it, and the tensor that owns the data (the input
// itself, or a contiguous float32 copy).
struct Heads {
  Tensor keep;
  HeadMatrices m;
};

Heads head_matrices(const Tensor& t) {
  const int64_t rows = t.size(2), cols = t.size(3);
  const Shape& st = t.strides();
  const bool direct = t.dtype() == DType::F32 && st[0] >= 0 && st[1] >= 0 && (cols <= 1 || st[3] == 1) &&
                      (rows <= 1 || st[2] >= cols);
  Heads m;
  if (direct) {
    m.keep = t.detach();
  } else {
    NoGradGuard no_grad;
    m.keep = t.float32().contiguous().detach();
    if (!m.keep.is_contiguous()) m.keep = ops::contiguous(m.keep).detach();
  }
  const Shape& ks = m.keep.strides();
  m.m.base = m.keep.f32();
  m.m.stride_b = ks[0];
  m.m.stride_h = ks[1];
  m.m.ld = std::max<int64_t>({rows > 1 ? ks[2] : cols, cols, 1});
  return m;
}

void check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask) {
  auto shapes = [&] {
    return "q " + shape_str(q.shape()) + ", k " + shape_str(k.shape()) + ", v " + shape_str(v.shape());
  };
  if (!q.defined() || !k.defined() || !v.defined())
    throw ShapeError("scaled_dot_product_attention: q, k or v is undefined");
  for (const Tensor* t : {&q, &k, &v})
    if (!is_floating(t->dtype()))
      throw DtypeError("scaled_dot_product_attention: q, k and v must be floating, got " + t->describe());
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4)
    throw ShapeError("scaled_dot_product_attention: expected q [B, H, T, D], k and v [B, Hkv, S, D]; got " +
                     shapes());
  const int64_t hkv = k.size(1);
  if (k.size(0) != q.size(0) || v.size(0) != q.size(0) || v.size(1) != hkv || v.size(2) != k.size(2) ||
      k.size(3) != q.size(3) || hkv == 0 || q.size(1) % hkv != 0)
    throw ShapeError(
        "scaled_dot_product_attention: shapes do not fit (expected q [B, H, T, D], k and v [B, Hkv, S, D] "
        "with H a multiple of Hkv); got " +
        shapes());
  if (key_mask.defined() &&
      (key_mask.dim() != 2 || key_mask.size(0) != q.size(0) || key_mask.size(1) != k.size(2)))
    throw ShapeError("scaled_dot_product_attention: key_mask " + shape_str(key_mask.shape()) +
                     " does not fit " + shapes() + " (expected [B, S] = [" + std::to_string(q.size(0)) +
                     ", " + std::to_string(k.size(2)) + "])");
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                                    bool causal, float scale) {
  check_inputs(q, k, v, key_mask);
  const Backend& be = backend_for("scaled_dot_product_attention", {&q, &k, &v, &key_mask});
  auto p = std::make_shared<AttentionProblem>();
  p->b = q.size(0);
  p->h = q.size(1);
  p->hkv = k.size(1);
  p->t = q.size(2);
  p->s = k.size(2);
  p->d = q.size(3);
  p->dv = v.size(3);
  p->causal = causal;
  p->scale = scale < 0.0f ? (p->d > 0 ? 1.0f / std::sqrt(float(p->d)) : 1.0f) : scale;
  p->bf16 = matmul_precision() == MatmulPrecision::Bf16 && bf16_linear_available();
  auto mask = std::make_shared<std::vector<uint8_t>>();
  if (key_mask.defined()) {
    const Tensor m = f32_contiguous(key_mask);
    mask->resize(size_t(m.numel()));
    be.nonzero_mask(m.f32(), mask->data(), m.numel());
    p->mask = mask->data();
  }
  Tensor out = Tensor::empty({p->b, p->h, p->t, p->dv});
  auto lse = std::make_shared<std::vector<float>>(size_t(p->b * p->h * p->t));
  if (!lse->empty()) {
    const Heads qm = head_matrices(q), km = head_matrices(k), vm = head_matrices(v);
    be.attention({*p, qm.m, km.m, vm.m, out.f32(), lse->data()});
  }
  Tensor qd = q.detach(), kd = k.detach(), vd = v.detach();
  return record(
      "scaled_dot_product_attention", out, {q, k, v, key_mask},
      [p, mask, lse, qd, kd, vd](const Tensor& g, const std::vector<bool>& needs) -> std::vector<Tensor> {
        Tensor gq = needs[0] ? Tensor::zeros(qd.shape()) : Tensor();
        Tensor gk = needs[1] ? Tensor::zeros(kd.shape()) : Tensor();
        Tensor gv = needs[2] ? Tensor::zeros(vd.shape()) : Tensor();
        if (g.numel() == 0) return {gq, gk, gv, Tensor()};
        Tensor gc = f32_contiguous(g);
        const Heads qm = head_matrices(qd), km = head_matrices(kd), vm = head_matrices(vd);
        backend_for("scaled_dot_product_attention", {&gc, &qd})
            .attention_backward({*p, qm.m, km.m, vm.m, gc.f32(), lse->data(),
                                 gq.defined() ? gq.f32() : nullptr, gk.defined() ? gk.f32() : nullptr,
                                 gv.defined() ? gv.f32() : nullptr});
        return {gq, gk, gv, Tensor()};
      });
}

}  // namespace deltatune::ops
