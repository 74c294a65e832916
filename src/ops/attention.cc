// Scaled dot-product attention, one (batch, head) at a time with a block of query rows against all
// keys, so no [B, H, T, S] tensor ever exists. The forward keeps only each row's logsumexp; the
// backward recomputes the probabilities block by block (FlashAttention's recipe, on the CPU).
// QK^T, PV and the backward products are OpenBLAS GEMMs over strided per-head matrices, so the
// usual q/k/v views ([B, T, H, D] transposed to [B, H, T, D]) are read without copies.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "deltatune/threads.h"

namespace deltatune::ops {
namespace {

constexpr int64_t kRowBlock = 256;  // query rows per score block: bounds the scratch to 256 x S
constexpr int64_t kParallelWork = 1 << 18;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// A [B, H, rows, cols] float32 tensor seen as B*H row-major matrices with unit column stride.
struct HeadMatrices {
  Tensor keep;  // owns the data (the input itself, or a contiguous float32 copy)
  const float* base = nullptr;
  int64_t stride_b = 0, stride_h = 0, ld = 1;
  const float* at(int64_t b, int64_t h) const { return base + b * stride_b + h * stride_h; }
};

HeadMatrices head_matrices(const Tensor& t) {
  const int64_t rows = t.size(2), cols = t.size(3);
  const Shape& st = t.strides();
  const bool direct = t.dtype() == DType::F32 && st[0] >= 0 && st[1] >= 0 && (cols <= 1 || st[3] == 1) &&
                      (rows <= 1 || st[2] >= cols);
  HeadMatrices m;
  if (direct) {
    m.keep = t.detach();
  } else {
    NoGradGuard no_grad;
    m.keep = t.float32().contiguous().detach();
    if (!m.keep.is_contiguous()) m.keep = ops::contiguous(m.keep).detach();
  }
  const Shape& ks = m.keep.strides();
  m.base = m.keep.f32();
  m.stride_b = ks[0];
  m.stride_h = ks[1];
  m.ld = std::max<int64_t>({rows > 1 ? ks[2] : cols, cols, 1});
  return m;
}

// OpenBLAS's pthread pool does not know about our OpenMP threads: while every thread runs its own
// per-head GEMMs, BLAS runs single-threaded so the two pools do not oversubscribe the cores.
class BlasSingleThread {
 public:
  explicit BlasSingleThread(bool on) : on_(on) {
    if (on_) openblas_set_num_threads(1);
  }
  ~BlasSingleThread() {
    if (on_) openblas_set_num_threads(num_threads());
  }
  BlasSingleThread(const BlasSingleThread&) = delete;
  BlasSingleThread& operator=(const BlasSingleThread&) = delete;

 private:
  bool on_;
};

struct Problem {
  int64_t b = 0, h = 0, hkv = 0, t = 0, s = 0, d = 0, dv = 0;
  bool causal = false;
  float scale = 1;
  std::shared_ptr<std::vector<uint8_t>> mask;  // [B, S], 1 = attend; null = attend everywhere
  int64_t group() const { return h / hkv; }
  // Multiply-adds of one pass over all heads: below kParallelWork a thread team costs more than it saves.
  int64_t work() const { return b * h * t * s * (d + dv); }
  // Keys [0, key_end) can be seen by some row of the block ending before row t1.
  int64_t key_end(int64_t t1) const { return causal ? std::clamp<int64_t>(t1 + s - t, 0, s) : s; }
  // Keys [0, limit) are visible to row ti (before the padding mask).
  int64_t row_limit(int64_t ti) const { return causal ? std::clamp<int64_t>(ti + 1 + s - t, 0, s) : s; }
};

// scores[tb, ns] = scale * Q[t0:t0+tb] K[0:ns]^T
void block_scores(const Problem& p, const float* q, int64_t ldq, const float* k, int64_t ldk, int64_t t0,
                  int64_t tb, int64_t ns, float* scores) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(tb), int(ns), int(p.d), p.scale, q + t0 * ldq,
              int(ldq), k, int(ldk), 0.0f, scores, int(ns));
}

void forward_head(const Problem& p, int64_t bi, int64_t hi, const HeadMatrices& q, const HeadMatrices& k,
                  const HeadMatrices& v, float* out, float* lse, std::vector<float>& scratch) {
  const int64_t kvh = hi / p.group();
  const float* qm = q.at(bi, hi);
  const float* km = k.at(bi, kvh);
  const float* vm = v.at(bi, kvh);
  float* om = out + (bi * p.h + hi) * p.t * p.dv;
  float* lm = lse + (bi * p.h + hi) * p.t;
  const uint8_t* mask = p.mask ? p.mask->data() + bi * p.s : nullptr;
  for (int64_t t0 = 0; t0 < p.t; t0 += kRowBlock) {
    const int64_t tb = std::min(kRowBlock, p.t - t0);
    const int64_t ns = p.key_end(t0 + tb);
    if (ns == 0) {  // no key visible to any row of the block: zeros
      std::fill(om + t0 * p.dv, om + (t0 + tb) * p.dv, 0.0f);
      std::fill(lm + t0, lm + t0 + tb, kNegInf);
      continue;
    }
    float* sc = scratch.data();
    if (p.d > 0)
      block_scores(p, qm, q.ld, km, k.ld, t0, tb, ns, sc);
    else
      std::fill(sc, sc + tb * ns, 0.0f);
    for (int64_t r = 0; r < tb; ++r) {
      float* row = sc + r * ns;
      const int64_t limit = std::min(ns, p.row_limit(t0 + r));
      float mx = kNegInf;
      for (int64_t j = 0; j < limit; ++j)
        if (!mask || mask[j]) mx = std::max(mx, row[j]);
      if (mx == kNegInf) {  // fully masked row: zeros
        std::fill(row, row + ns, 0.0f);
        lm[t0 + r] = kNegInf;
        continue;
      }
      double sum = 0;
      for (int64_t j = 0; j < ns; ++j) {
        const bool on = j < limit && (!mask || mask[j]);
        row[j] = on ? std::exp(row[j] - mx) : 0.0f;
        sum += row[j];
      }
      const float inv = float(1.0 / sum);
      for (int64_t j = 0; j < limit; ++j) row[j] *= inv;
      lm[t0 + r] = mx + float(std::log(sum));
    }
    if (p.dv > 0)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(tb), int(p.dv), int(ns), 1.0f, sc, int(ns),
                  vm, int(v.ld), 0.0f, om + t0 * p.dv, int(p.dv));
  }
}

// Gradients for one (batch, kv head): its group's query heads write their own dQ rows and add into
// the shared dK, dV (so no two threads touch the same memory).
void backward_kv_head(const Problem& p, int64_t bi, int64_t kvh, const HeadMatrices& q, const HeadMatrices& k,
                      const HeadMatrices& v, const float* g, const float* lse, float* gq, float* gk,
                      float* gv, std::vector<float>& probs, std::vector<float>& dprobs) {
  const float* km = k.at(bi, kvh);
  const float* vm = v.at(bi, kvh);
  float* gkm = gk ? gk + (bi * p.hkv + kvh) * p.s * p.d : nullptr;
  float* gvm = gv ? gv + (bi * p.hkv + kvh) * p.s * p.dv : nullptr;
  const uint8_t* mask = p.mask ? p.mask->data() + bi * p.s : nullptr;
  const bool need_ds = gq || gk;
  for (int64_t hi = kvh * p.group(); hi < (kvh + 1) * p.group(); ++hi) {
    const float* qm = q.at(bi, hi);
    const float* gm = g + (bi * p.h + hi) * p.t * p.dv;
    const float* lm = lse + (bi * p.h + hi) * p.t;
    float* gqm = gq ? gq + (bi * p.h + hi) * p.t * p.d : nullptr;
    for (int64_t t0 = 0; t0 < p.t; t0 += kRowBlock) {
      const int64_t tb = std::min(kRowBlock, p.t - t0);
      const int64_t ns = p.key_end(t0 + tb);
      if (ns == 0) continue;  // every row fully masked: no gradient (gq was zeroed)
      float* pr = probs.data();
      if (p.d > 0)
        block_scores(p, qm, q.ld, km, k.ld, t0, tb, ns, pr);
      else
        std::fill(pr, pr + tb * ns, 0.0f);
      for (int64_t r = 0; r < tb; ++r) {
        float* row = pr + r * ns;
        const float l = lm[t0 + r];
        const int64_t limit = l == kNegInf ? 0 : std::min(ns, p.row_limit(t0 + r));
        for (int64_t j = 0; j < ns; ++j)
          row[j] = j < limit && (!mask || mask[j]) ? std::exp(row[j] - l) : 0.0f;
      }
      const float* gblk = gm + t0 * p.dv;
      if (gvm && p.dv > 0)  // dV += P^T dO
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(ns), int(p.dv), int(tb), 1.0f, pr, int(ns),
                    gblk, int(p.dv), 1.0f, gvm, int(p.dv));
      if (!need_ds || p.d == 0) continue;
      float* dp = dprobs.data();
      if (p.dv > 0)  // dP = dO V^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(tb), int(ns), int(p.dv), 1.0f, gblk,
                    int(p.dv), vm, int(v.ld), 0.0f, dp, int(ns));
      else
        std::fill(dp, dp + tb * ns, 0.0f);
      // dS = P * (dP - rowsum(P * dP)) * scale
      for (int64_t r = 0; r < tb; ++r) {
        const float* prow = pr + r * ns;
        float* drow = dp + r * ns;
        double dot = 0;
        for (int64_t j = 0; j < ns; ++j) dot += double(prow[j]) * drow[j];
        const float fd = float(dot);
        for (int64_t j = 0; j < ns; ++j) drow[j] = prow[j] * (drow[j] - fd) * p.scale;
      }
      if (gqm)  // dQ = dS K
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(tb), int(p.d), int(ns), 1.0f, dp, int(ns),
                    km, int(k.ld), 0.0f, gqm + t0 * p.d, int(p.d));
      if (gkm)  // dK += dS^T Q
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(ns), int(p.d), int(tb), 1.0f, dp, int(ns),
                    qm + t0 * q.ld, int(q.ld), 1.0f, gkm, int(p.d));
    }
  }
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
  auto p = std::make_shared<Problem>();
  p->b = q.size(0);
  p->h = q.size(1);
  p->hkv = k.size(1);
  p->t = q.size(2);
  p->s = k.size(2);
  p->d = q.size(3);
  p->dv = v.size(3);
  p->causal = causal;
  p->scale = scale < 0.0f ? (p->d > 0 ? 1.0f / std::sqrt(float(p->d)) : 1.0f) : scale;
  if (key_mask.defined()) {
    std::vector<float> m = key_mask.to_floats();
    p->mask = std::make_shared<std::vector<uint8_t>>(m.size());
    for (size_t i = 0; i < m.size(); ++i) (*p->mask)[i] = m[i] != 0.0f ? 1 : 0;
  }
  Tensor out = Tensor::empty({p->b, p->h, p->t, p->dv});
  auto lse = std::make_shared<std::vector<float>>(size_t(p->b * p->h * p->t));
  if (!lse->empty()) {
    const HeadMatrices qm = head_matrices(q), km = head_matrices(k), vm = head_matrices(v);
    const int64_t items = p->b * p->h;
    const bool parallel = items > 1 && num_threads() > 1 && p->work() > kParallelWork;
    const int64_t scratch = std::min(kRowBlock, p->t) * p->s;
    BlasSingleThread blas(parallel);
#pragma omp parallel if (parallel)
    {
      std::vector<float> sc(static_cast<size_t>(scratch));
#pragma omp for schedule(dynamic)
      for (int64_t item = 0; item < items; ++item)
        forward_head(*p, item / p->h, item % p->h, qm, km, vm, out.f32(), lse->data(), sc);
    }
  }
  Tensor qd = q.detach(), kd = k.detach(), vd = v.detach();
  return record("scaled_dot_product_attention", out, {q, k, v, key_mask},
                [p, lse, qd, kd, vd](const Tensor& g, const std::vector<bool>& needs) -> std::vector<Tensor> {
                  Tensor gq = needs[0] ? Tensor::zeros(qd.shape()) : Tensor();
                  Tensor gk = needs[1] ? Tensor::zeros(kd.shape()) : Tensor();
                  Tensor gv = needs[2] ? Tensor::zeros(vd.shape()) : Tensor();
                  if (g.numel() == 0) return {gq, gk, gv, Tensor()};
                  Tensor gc;
                  {
                    NoGradGuard no_grad;
                    gc = g.float32().contiguous();
                  }
                  const HeadMatrices qm = head_matrices(qd), km = head_matrices(kd), vm = head_matrices(vd);
                  const int64_t items = p->b * p->hkv;
                  const bool parallel = items > 1 && num_threads() > 1 && p->work() > kParallelWork;
                  const int64_t scratch = std::min(kRowBlock, p->t) * p->s;
                  BlasSingleThread blas(parallel);
#pragma omp parallel if (parallel)
                  {
                    std::vector<float> probs(static_cast<size_t>(scratch)),
                        dprobs(static_cast<size_t>(scratch));
#pragma omp for schedule(dynamic)
                    for (int64_t item = 0; item < items; ++item)
                      backward_kv_head(*p, item / p->hkv, item % p->hkv, qm, km, vm, gc.f32(), lse->data(),
                                       gq.defined() ? gq.f32() : nullptr, gk.defined() ? gk.f32() : nullptr,
                                       gv.defined() ? gv.f32() : nullptr, probs, dprobs);
                  }
                  return {gq, gk, gv, Tensor()};
                });
}

}  // namespace deltatune::ops
