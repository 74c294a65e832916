// Reference matrix products: the triple loop, sums in double. The bfloat16 product rounds A to
// bfloat16 as the optimised kernel does, so both compute the same mathematical product.
#include <vector>

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
        s += double(bf16_to_f32(f32_to_bf16(p.a_trans ? p.a[kk * p.lda + i] : p.a[i * p.lda + kk]))) *
             bf16_to_f32(p.b[kk * p.b_k + j * p.b_n]);
      float& c = p.c[i * p.ldc + j];
      c = float(s + (p.accumulate ? c : 0.0));
    }
}

// W dequantised one row at a time (the format's own definition), the sums in double.
void ReferenceBackend::quantized_gemm(const QuantizedGemmArgs& p) const {
  const QuantizedMatrix& w = *p.w;
  const int64_t n = w.rows, k = w.cols, out_cols = p.transposed ? k : n;
  std::vector<double> sums(size_t(p.m * out_cols), 0.0);
  std::vector<float> row(static_cast<size_t>(k));
  for (int64_t j = 0; j < n; ++j) {
    w.dequantize_rows(j, 1, row.data());
    for (int64_t i = 0; i < p.m; ++i)
      for (int64_t kk = 0; kk < k; ++kk) {
        if (p.transposed)
          sums[size_t(i * k + kk)] += double(p.a[i * n + j]) * row[size_t(kk)];
        else
          sums[size_t(i * n + j)] += double(p.a[i * k + kk]) * row[size_t(kk)];
      }
  }
  for (size_t i = 0; i < sums.size(); ++i) p.c[i] = float(sums[i] + (p.accumulate ? p.c[i] : 0.0));
}

void ReferenceBackend::fill_rows(const float* row, float* out, int64_t rows, int64_t cols) const {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = row[c];
}

}  // namespace deltatune::ops
