// The CPU attention kernels: one (batch, head) at a time with a block of query rows against all
// keys, so no [B, H, T, S] tensor ever exists; the backward recomputes the probabilities block by
// block from each row's logsumexp (FlashAttention's recipe, on the CPU). QK^T, PV and the backward
// products are float32 GEMMs over strided per-head matrices (the AVX-512 kernel where the shape suits
// it, else OpenBLAS), or the BF16 kernel with p.bf16 (autocast's bfloat16 attention products); heads
// run on the OpenMP threads.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "deltatune/threads.h"
#include "ops/cpu/activations.h"
#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/gemm_bf16.h"
#include "ops/cpu/gemm_f32.h"

namespace deltatune::ops {
namespace {

constexpr int64_t kRowBlock = 256;  // query rows per score block: bounds the scratch to 256 x S
constexpr int64_t kParallelWork = 1 << 18;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Multiply-adds of one pass over all heads: below kParallelWork a thread team costs more than it saves.
int64_t work(const AttentionProblem& p) { return p.b * p.h * p.t * p.s * (p.d + p.dv); }

// While every thread runs its own per-head GEMMs, BLAS must run single-threaded on each (the heads'
// products mostly run on our kernels, which see the region and stay on their thread; shapes that do not
// suit them go to OpenBLAS). The OpenMP build of OpenBLAS (the one we link) does so by itself inside a
// parallel region, but a process can hold the pthread build instead: libopenblas.so.0 loaded first by
// another library (numpy, in the Python module) is the one we get, and its own threads would then
// multiply ours. So in that build alone its thread count is lowered around the region. Not in the
// OpenMP build: there openblas_set_num_threads also sets OpenMP's count, and the region would run on one
// thread (as it did until 2026-12-05: attention was serial on every core count).
class BlasSingleThread {
 public:
  // openblas_get_parallel(): 0 sequential, 1 pthreads, 2 OpenMP.
  explicit BlasSingleThread(bool on) : on_(on && openblas_get_parallel() == 1) {
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

// The products of one (batch, head): float32 OpenBLAS GEMMs, or with p.bf16 the BF16 kernel, whose B
// operand (K, V, Q or dO of the head) is rounded to bfloat16 once per head and read by every block.
// C[m, n] = A[m, k] B[k, n] (+ C with accumulate); A float32 row-major (lda).
struct HeadProducts {
  explicit HeadProducts(bool bf16) : bf16(bf16) {}
  bool bf16;
  std::vector<uint16_t> k16, v16, q16, g16;  // the head's operands in bfloat16, row-major

  // Rounds rows x cols of `src` (row stride ld) into `dst` when bf16.
  void keep(std::vector<uint16_t>& dst, const float* src, int64_t ld, int64_t rows, int64_t cols) {
    if (!bf16) return;
    dst.resize(size_t(rows * cols));
    kernels::round_to_bf16(rows, cols, src, ld, dst.data());
  }

  // C = alpha A B^T with B [n, k] (row stride ldb): scores (Q K^T) and dP (dO V^T).
  void a_bt(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
            int64_t ldb, const std::vector<uint16_t>& b16, float* c, int64_t ldc) const {
    if (bf16) {
      kernels::gemm_f32_bf16(m, n, k, a, lda, b16.data(), 1, k, c, ldc, false);
    } else if (kernels::f32_gemm_suits(m, n, k)) {
      kernels::gemm_f32(m, n, k, a, lda, 1, b, 1, ldb, c, ldc, false);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(k), alpha, a, int(lda), b,
                  int(ldb), 0.0f, c, int(ldc));
      return;
    }
    if (alpha != 1.0f)
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) c[i * ldc + j] *= alpha;
  }
  // C (+)= A B with B [k, n] (row stride ldb; its bfloat16 copy b16 from row b16_row0 on): P V, dS K.
  void a_b(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
           const std::vector<uint16_t>& b16, int64_t b16_row0, float* c, int64_t ldc, bool accumulate) const {
    if (bf16)
      kernels::gemm_f32_bf16(m, n, k, a, lda, b16.data() + b16_row0 * n, n, 1, c, ldc, accumulate);
    else if (kernels::f32_gemm_suits(m, n, k))
      kernels::gemm_f32(m, n, k, a, lda, 1, b, ldb, 1, c, ldc, accumulate);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(m), int(n), int(k), 1.0f, a, int(lda), b,
                  int(ldb), accumulate ? 1.0f : 0.0f, c, int(ldc));
  }
  // C += A^T B with A [k, m] (row stride lda), B [k, n] (b16 from row b16_row0): dV += P^T dO, dK += dS^T Q.
  // Both kernels read A through its transpose (a_trans, strides) without a copy.
  void at_b_add(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                const std::vector<uint16_t>& b16, int64_t b16_row0, float* c, int64_t ldc) const {
    if (bf16)
      kernels::gemm_f32_bf16(m, n, k, a, lda, b16.data() + b16_row0 * n, n, 1, c, ldc, true, true);
    else if (kernels::f32_gemm_suits(m, n, k))
      kernels::gemm_f32(m, n, k, a, 1, lda, b, ldb, 1, c, ldc, true);
    else
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(m), int(n), int(k), 1.0f, a, int(lda), b,
                  int(ldb), 1.0f, c, int(ldc));
  }
};

// scores[tb, ns] = scale * Q[t0:t0+tb] K[0:ns]^T
void block_scores(const AttentionProblem& p, const float* q, int64_t ldq, const float* k, int64_t ldk,
                  const HeadProducts& hp, int64_t t0, int64_t tb, int64_t ns, float* scores) {
  if (p.d == 0) {
    std::fill(scores, scores + tb * ns, 0.0f);
    return;
  }
  hp.a_bt(tb, ns, p.d, p.scale, q + t0 * ldq, ldq, k, ldk, hp.k16, scores, ns);
}

// row[j] = e^(row[j] - shift) where key j is visible (j < limit, not masked), else 0.
void exp_visible(float* row, int64_t ns, int64_t limit, const uint8_t* mask, float shift) {
  kernels::exp_shifted(row, shift, row, limit);
  if (mask)
    for (int64_t j = 0; j < limit; ++j)
      if (!mask[j]) row[j] = 0.0f;
  std::fill(row + limit, row + ns, 0.0f);
}

// One query head hi of the kv head whose K, V are km, vm (and, with p.bf16, already in hp.k16, hp.v16).
void forward_head(const AttentionProblem& p, int64_t bi, int64_t hi, const HeadMatrices& q,
                  const HeadMatrices& k, const HeadMatrices& v, const float* km, const float* vm, float* out,
                  float* lse, std::vector<float>& scratch, const HeadProducts& hp) {
  const float* qm = q.at(bi, hi);
  float* om = out + (bi * p.h + hi) * p.t * p.dv;
  float* lm = lse + (bi * p.h + hi) * p.t;
  const uint8_t* mask = p.mask ? p.mask + bi * p.s : nullptr;
  for (int64_t t0 = 0; t0 < p.t; t0 += kRowBlock) {
    const int64_t tb = std::min(kRowBlock, p.t - t0);
    const int64_t ns = p.key_end(t0 + tb);
    if (ns == 0) {  // no key visible to any row of the block: zeros
      std::fill(om + t0 * p.dv, om + (t0 + tb) * p.dv, 0.0f);
      std::fill(lm + t0, lm + t0 + tb, kNegInf);
      continue;
    }
    float* sc = scratch.data();
    block_scores(p, qm, q.ld, km, k.ld, hp, t0, tb, ns, sc);
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
      exp_visible(row, ns, limit, mask, mx);
      double sum = 0;
      for (int64_t j = 0; j < limit; ++j) sum += row[j];
      const float inv = float(1.0 / sum);
      for (int64_t j = 0; j < limit; ++j) row[j] *= inv;
      lm[t0 + r] = mx + float(std::log(sum));
    }
    if (p.dv > 0) hp.a_b(tb, p.dv, ns, sc, ns, vm, v.ld, hp.v16, 0, om + t0 * p.dv, p.dv, false);
  }
}

// The query heads of one (batch, kv head), as the backward goes: the shared K and V are rounded to
// bfloat16 once for the group, not once per query head.
void forward_kv_head(const AttentionProblem& p, int64_t bi, int64_t kvh, const HeadMatrices& q,
                     const HeadMatrices& k, const HeadMatrices& v, float* out, float* lse,
                     std::vector<float>& scratch, HeadProducts& hp) {
  const float* km = k.at(bi, kvh);
  const float* vm = v.at(bi, kvh);
  const int64_t keys = p.key_end(p.t);
  hp.keep(hp.k16, km, k.ld, keys, p.d);
  hp.keep(hp.v16, vm, v.ld, keys, p.dv);
  for (int64_t hi = kvh * p.group(); hi < (kvh + 1) * p.group(); ++hi)
    forward_head(p, bi, hi, q, k, v, km, vm, out, lse, scratch, hp);
}

// Gradients for one (batch, kv head): its group's query heads write their own dQ rows and add into
// the shared dK, dV (so no two threads touch the same memory).
void backward_kv_head(const AttentionProblem& p, int64_t bi, int64_t kvh, const HeadMatrices& q,
                      const HeadMatrices& k, const HeadMatrices& v, const float* g, const float* lse,
                      float* gq, float* gk, float* gv, std::vector<float>& probs, std::vector<float>& dprobs,
                      HeadProducts& hp) {
  const float* km = k.at(bi, kvh);
  const float* vm = v.at(bi, kvh);
  float* gkm = gk ? gk + (bi * p.hkv + kvh) * p.s * p.d : nullptr;
  float* gvm = gv ? gv + (bi * p.hkv + kvh) * p.s * p.dv : nullptr;
  const uint8_t* mask = p.mask ? p.mask + bi * p.s : nullptr;
  const bool need_ds = gq || gk;
  const int64_t keys = p.key_end(p.t);
  hp.keep(hp.k16, km, k.ld, keys, p.d);
  hp.keep(hp.v16, vm, v.ld, keys, p.dv);
  for (int64_t hi = kvh * p.group(); hi < (kvh + 1) * p.group(); ++hi) {
    const float* qm = q.at(bi, hi);
    const float* gm = g + (bi * p.h + hi) * p.t * p.dv;
    const float* lm = lse + (bi * p.h + hi) * p.t;
    float* gqm = gq ? gq + (bi * p.h + hi) * p.t * p.d : nullptr;
    if (gkm) hp.keep(hp.q16, qm, q.ld, p.t, p.d);
    if (gvm) hp.keep(hp.g16, gm, p.dv, p.t, p.dv);
    for (int64_t t0 = 0; t0 < p.t; t0 += kRowBlock) {
      const int64_t tb = std::min(kRowBlock, p.t - t0);
      const int64_t ns = p.key_end(t0 + tb);
      if (ns == 0) continue;  // every row fully masked: no gradient (gq was zeroed)
      float* pr = probs.data();
      block_scores(p, qm, q.ld, km, k.ld, hp, t0, tb, ns, pr);
      for (int64_t r = 0; r < tb; ++r) {
        const float l = lm[t0 + r];
        const int64_t limit = l == kNegInf ? 0 : std::min(ns, p.row_limit(t0 + r));
        exp_visible(pr + r * ns, ns, limit, mask, l);
      }
      const float* gblk = gm + t0 * p.dv;
      if (gvm && p.dv > 0)  // dV += P^T dO
        hp.at_b_add(ns, p.dv, tb, pr, ns, gblk, p.dv, hp.g16, t0, gvm, p.dv);
      if (!need_ds || p.d == 0) continue;
      float* dp = dprobs.data();
      if (p.dv > 0)  // dP = dO V^T
        hp.a_bt(tb, ns, p.dv, 1.0f, gblk, p.dv, vm, v.ld, hp.v16, dp, ns);
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
        hp.a_b(tb, p.d, ns, dp, ns, km, k.ld, hp.k16, 0, gqm + t0 * p.d, p.d, false);
      if (gkm)  // dK += dS^T Q
        hp.at_b_add(ns, p.d, tb, dp, ns, qm + t0 * q.ld, q.ld, hp.q16, t0, gkm, p.d);
    }
  }
}

}  // namespace

void CpuBackend::attention(const AttentionArgs& a) const {
  const AttentionProblem& p = a.p;
  const int64_t items = p.b * p.hkv;
  const bool parallel = items > 1 && num_threads() > 1 && work(p) > kParallelWork;
  const int64_t scratch = std::min(kRowBlock, p.t) * p.s;
  BlasSingleThread blas(parallel);
#pragma omp parallel if (parallel)
  {
    std::vector<float> sc(static_cast<size_t>(scratch));
    HeadProducts hp(p.bf16);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < items; ++item)
      forward_kv_head(p, item / p.hkv, item % p.hkv, a.q, a.k, a.v, a.out, a.lse, sc, hp);
  }
}

void CpuBackend::attention_backward(const AttentionBackwardArgs& a) const {
  const AttentionProblem& p = a.p;
  const int64_t items = p.b * p.hkv;
  const bool parallel = items > 1 && num_threads() > 1 && work(p) > kParallelWork;
  const int64_t scratch = std::min(kRowBlock, p.t) * p.s;
  BlasSingleThread blas(parallel);
#pragma omp parallel if (parallel)
  {
    std::vector<float> probs(static_cast<size_t>(scratch)), dprobs(static_cast<size_t>(scratch));
    HeadProducts hp(p.bf16);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < items; ++item)
      backward_kv_head(p, item / p.hkv, item % p.hkv, a.q, a.k, a.v, a.g, a.lse, a.gq, a.gk, a.gv, probs,
                       dprobs, hp);
  }
}

}  // namespace deltatune::ops
