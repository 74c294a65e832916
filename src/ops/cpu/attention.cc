// The CPU attention kernels: one (batch, head) at a time with a block of query rows against all
// keys, so no [B, H, T, S] tensor ever exists; the backward recomputes the probabilities block by
// block from each row's logsumexp (FlashAttention's recipe, on the CPU). QK^T, PV and the backward
// products are OpenBLAS GEMMs over strided per-head matrices; heads run on the OpenMP threads.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "deltatune/threads.h"
#include "ops/cpu/cpu_backend.h"

namespace deltatune::ops {
namespace {

constexpr int64_t kRowBlock = 256;  // query rows per score block: bounds the scratch to 256 x S
constexpr int64_t kParallelWork = 1 << 18;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Multiply-adds of one pass over all heads: below kParallelWork a thread team costs more than it saves.
int64_t work(const AttentionProblem& p) { return p.b * p.h * p.t * p.s * (p.d + p.dv); }

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

// scores[tb, ns] = scale * Q[t0:t0+tb] K[0:ns]^T
void block_scores(const AttentionProblem& p, const float* q, int64_t ldq, const float* k, int64_t ldk,
                  int64_t t0, int64_t tb, int64_t ns, float* scores) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(tb), int(ns), int(p.d), p.scale, q + t0 * ldq,
              int(ldq), k, int(ldk), 0.0f, scores, int(ns));
}

void forward_head(const AttentionProblem& p, int64_t bi, int64_t hi, const HeadMatrices& q,
                  const HeadMatrices& k, const HeadMatrices& v, float* out, float* lse,
                  std::vector<float>& scratch) {
  const int64_t kvh = hi / p.group();
  const float* qm = q.at(bi, hi);
  const float* km = k.at(bi, kvh);
  const float* vm = v.at(bi, kvh);
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
void backward_kv_head(const AttentionProblem& p, int64_t bi, int64_t kvh, const HeadMatrices& q,
                      const HeadMatrices& k, const HeadMatrices& v, const float* g, const float* lse,
                      float* gq, float* gk, float* gv, std::vector<float>& probs,
                      std::vector<float>& dprobs) {
  const float* km = k.at(bi, kvh);
  const float* vm = v.at(bi, kvh);
  float* gkm = gk ? gk + (bi * p.hkv + kvh) * p.s * p.d : nullptr;
  float* gvm = gv ? gv + (bi * p.hkv + kvh) * p.s * p.dv : nullptr;
  const uint8_t* mask = p.mask ? p.mask + bi * p.s : nullptr;
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

}  // namespace

void CpuBackend::attention(const AttentionArgs& a) const {
  const AttentionProblem& p = a.p;
  const int64_t items = p.b * p.h;
  const bool parallel = items > 1 && num_threads() > 1 && work(p) > kParallelWork;
  const int64_t scratch = std::min(kRowBlock, p.t) * p.s;
  BlasSingleThread blas(parallel);
#pragma omp parallel if (parallel)
  {
    std::vector<float> sc(static_cast<size_t>(scratch));
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < items; ++item)
      forward_head(p, item / p.h, item % p.h, a.q, a.k, a.v, a.out, a.lse, sc);
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
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < items; ++item)
      backward_kv_head(p, item / p.hkv, item % p.hkv, a.q, a.k, a.v, a.g, a.lse, a.gq, a.gk, a.gv, probs,
                       dprobs);
  }
}

}  // namespace deltatune::ops
