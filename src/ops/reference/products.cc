// Reference matrix products: the triple loop, sums in double. The bfloat16 product rounds A to
// bfloat16 as the optimised kernel does, so both compute the same mathematical product.
#include "ops/reference/reference_backend.h"

namespace deltatune::ops {

void ReferenceBackend::gemm(const GemmArgs& p) const {
  for (int64_t i = 0; i < p.m; ++i)
    for (int64_t j = 0; j < p.n; ++j) {
      double s = 0;
      for (int64_t kk = 0; kk < p.k; ++kk) {
        const float a = p.trans_a ? p.a[kk * p.lda + i] : p.a[i * p.lda + kk];
        const float b = p.trans_b ? p.b[j * p.ldb + kk] : p.b[kk * p.ldb + j];
        s += double(a) * b;
      }
      float& c = p.c[i * p.ldc + j];
      c = float(p.alpha * s + (p.beta == 0.0f ? 0.0 : double(p.beta) * c));
    }
}

void ReferenceBackend::gemm_bf16(const GemmBf16Args& p) const {
  for (int64_t i = 0; i < p.m; ++i)
    for (int64_t j = 0; j < p.n; ++j) {
      double s = 0;
      for (int64_t kk = 0; kk < p.k; ++kk)
        s += double(bf16_to_f32(f32_to_bf16(p.a[i * p.lda + kk]))) * bf16_to_f32(p.b[kk * p.b_k + j * p.b_n]);
      float& c = p.c[i * p.ldc + j];
      c = float(s + (p.accumulate ? c : 0.0));
    }
}

void ReferenceBackend::fill_rows(const float* row, float* out, int64_t rows, int64_t cols) const {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = row[c];
}

}  // namespace deltatune::ops
