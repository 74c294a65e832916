// Reference attention: for each query row, its scores, softmax and weighted sum in double; the
// backward recomputes the row's probabilities and applies the softmax Jacobian directly.
#include <cmath>
#include <limits>
#include <vector>

#include "ops/reference/reference_backend.h"

namespace deltatune::ops {
namespace {

// The probabilities of query row (bi, hi, ti) over the keys (zeros where masked or unseen); false
// when no key is visible. lse gets the row's logsumexp.
bool row_probabilities(const AttentionProblem& p, const HeadMatrices& q, const HeadMatrices& k, int64_t bi,
                       int64_t hi, int64_t ti, std::vector<double>& prob, double& lse) {
  const float* qr = q.at(bi, hi) + ti * q.ld;
  const float* km = k.at(bi, hi / p.group());
  const int64_t limit = p.row_limit(ti);
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < p.s; ++j) {
    prob[size_t(j)] = -std::numeric_limits<double>::infinity();
    if (j >= limit || (p.mask && !p.mask[bi * p.s + j])) continue;
    double dot = 0;
    for (int64_t c = 0; c < p.d; ++c) dot += double(qr[c]) * km[j * k.ld + c];
    prob[size_t(j)] = dot * p.scale;
    mx = std::max(mx, prob[size_t(j)]);
  }
  if (std::isinf(mx)) {
    std::fill(prob.begin(), prob.end(), 0.0);
    lse = mx;
    return false;
  }
  double sum = 0;
  for (double& x : prob) sum += (x = std::isinf(x) ? 0.0 : std::exp(x - mx));
  for (double& x : prob) x /= sum;
  lse = mx + std::log(sum);
  return true;
}

}  // namespace

void ReferenceBackend::attention(const AttentionArgs& a) const {
  const AttentionProblem& p = a.p;
  std::vector<double> prob(size_t(p.s));
  for (int64_t bi = 0; bi < p.b; ++bi)
    for (int64_t hi = 0; hi < p.h; ++hi)
      for (int64_t ti = 0; ti < p.t; ++ti) {
        double lse = 0;
        row_probabilities(p, a.q, a.k, bi, hi, ti, prob, lse);
        const float* vm = a.v.at(bi, hi / p.group());
        float* out = a.out + ((bi * p.h + hi) * p.t + ti) * p.dv;
        for (int64_t c = 0; c < p.dv; ++c) {
          double s = 0;
          for (int64_t j = 0; j < p.s; ++j) s += prob[size_t(j)] * vm[j * a.v.ld + c];
          out[c] = float(s);
        }
        a.lse[(bi * p.h + hi) * p.t + ti] = float(lse);
      }
}

void ReferenceBackend::attention_backward(const AttentionBackwardArgs& a) const {
  const AttentionProblem& p = a.p;
  std::vector<double> prob(size_t(p.s)), dprob(size_t(p.s));
  for (int64_t bi = 0; bi < p.b; ++bi)
    for (int64_t hi = 0; hi < p.h; ++hi)
      for (int64_t ti = 0; ti < p.t; ++ti) {
        double lse = 0;
        if (!row_probabilities(p, a.q, a.k, bi, hi, ti, prob, lse)) continue;
        const int64_t kvh = hi / p.group();
        const float* qr = a.q.at(bi, hi) + ti * a.q.ld;
        const float* km = a.k.at(bi, kvh);
        const float* vm = a.v.at(bi, kvh);
        const float* g = a.g + ((bi * p.h + hi) * p.t + ti) * p.dv;
        double dot = 0;  // sum_j P_j dP_j
        for (int64_t j = 0; j < p.s; ++j) {
          double dp = 0;
          for (int64_t c = 0; c < p.dv; ++c) dp += double(g[c]) * vm[j * a.v.ld + c];
          dprob[size_t(j)] = dp;
          dot += prob[size_t(j)] * dp;
          if (a.gv)
            for (int64_t c = 0; c < p.dv; ++c)
              a.gv[((bi * p.hkv + kvh) * p.s + j) * p.dv + c] += float(prob[size_t(j)] * g[c]);
        }
        for (int64_t j = 0; j < p.s; ++j) {
          const double ds = prob[size_t(j)] * (dprob[size_t(j)] - dot) * p.scale;
          if (ds == 0) continue;
          for (int64_t c = 0; c < p.d; ++c) {
            if (a.gq) a.gq[((bi * p.h + hi) * p.t + ti) * p.d + c] += float(ds * km[j * a.k.ld + c]);
            if (a.gk) a.gk[((bi * p.hkv + kvh) * p.s + j) * p.d + c] += float(ds * qr[c]);
          }
        }
      }
}

}  // namespace deltatune::ops
