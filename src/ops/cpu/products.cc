// The CPU matrix products: the AVX-512 float32 GEMM of gemm_f32.h where it suits the shape, else
// OpenBLAS sgemm; and the AVX-512 BF16 GEMM of gemm_bf16.h.
#include <cblas.h>

#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/gemm_bf16.h"
#include "ops/cpu/gemm_f32.h"

namespace deltatune::ops {

void CpuBackend::gemm(const GemmArgs& p) const {
  if (p.alpha == 1.0f && (p.beta == 0.0f || p.beta == 1.0f) && kernels::f32_gemm_suits(p.m, p.n, p.k)) {
    // op(A)[i, kk] and op(B)[kk, nn] as strides into the row-major arrays.
    kernels::gemm_f32(p.m, p.n, p.k, p.a, p.trans_a ? 1 : p.lda, p.trans_a ? p.lda : 1, p.b,
                      p.trans_b ? 1 : p.ldb, p.trans_b ? p.ldb : 1, p.c, p.ldc, p.beta == 1.0f);
    return;
  }
  cblas_sgemm(CblasRowMajor, p.trans_a ? CblasTrans : CblasNoTrans, p.trans_b ? CblasTrans : CblasNoTrans,
              int(p.m), int(p.n), int(p.k), p.alpha, p.a, int(p.lda), p.b, int(p.ldb), p.beta, p.c,
              int(p.ldc));
}

void CpuBackend::gemm_bf16(const GemmBf16Args& p) const {
  kernels::gemm_f32_bf16(p.m, p.n, p.k, p.a, p.lda, p.b, p.b_k, p.b_n, p.c, p.ldc, p.accumulate, p.a_trans);
}

void CpuBackend::fill_rows(const float* row, float* out, int64_t rows, int64_t cols) const {
#pragma omp parallel for if (rows * cols > 32768)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = row[c];
}

}  // namespace deltatune::ops
