#pragma once
// A float32 GEMM on AVX-512 (vfmadd231ps zmm), the blocked loop of gemm_tiles.h with float32 B. Why
// ours and not only OpenBLAS's: Debian's OpenBLAS (0.3.21) picks its kernels by CPU model, and on CPUs
// it does not know (Zen 5 among them; OPENBLAS_CORETYPE pins this machine to Haswell) it runs AVX2
// kernels on an AVX-512 CPU, at about half the instruction's rate. This kernel runs AVX-512 wherever
// the CPU has it, and sums each element of C in k's order, so its bits do not depend on the threads.
// CpuBackend::gemm uses it for products big enough to pay for packing (f32_gemm_suits) and OpenBLAS
// for the rest (LoRA factors of rank under 64, single rows) and on CPUs without AVX-512.
#include <cstdint>

namespace deltatune::ops::kernels {

// True when this CPU executes AVX-512 F, BW and VL (checked once, at run time).
bool f32_gemm_available();

// True when gemm_f32 is available and a product of this shape is worth packing for: every dimension
// at least a few tiles (skinny products go to OpenBLAS).
bool f32_gemm_suits(int64_t m, int64_t n, int64_t k);

// C[m, n] = A[m, k] B[k, n] (+ C when accumulate), all float32. A[i, kk] is a[i * a_row + kk * a_col]
// (a_row = lda, a_col = 1 for row-major A; a_row = 1, a_col = lda for A stored transposed); B[kk, nn]
// is b[kk * b_k + nn * b_n]; C row-major with row stride ldc. Runs on the OpenMP threads.
void gemm_f32(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_row, int64_t a_col, const float* b,
              int64_t b_k, int64_t b_n, float* c, int64_t ldc, bool accumulate);

}  // namespace deltatune::ops::kernels
