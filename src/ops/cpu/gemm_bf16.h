#pragma once
// A GEMM with bfloat16 weights (frozen ones stored so, learning ones rounded per call): C = A B with A
// float32 activations (rounded to bfloat16, round to nearest even, as they are read), B bfloat16, products
// summed in float32 by AVX-512 BF16 dot products (vdpbf16ps: twice the multiply-adds of a float32 FMA per
// instruction, and half the weight bytes). Debian's OpenBLAS has no sbgemm, so this is ours. Callers check
// bf16_gemm_available() and keep the float32 OpenBLAS path on CPUs without AVX-512 BF16.
#include <cstdint>

namespace deltatune::ops::kernels {

// True when this CPU executes AVX-512 BF16 (checked once, at run time).
bool bf16_gemm_available();

// C[m, n] = A[m, k] B[k, n] (+ C when accumulate). A is float32, row-major with row stride lda;
// B[kk, nn] is the bfloat16 bit pattern at b[kk * b_k + nn * b_n] (any layout: a weight or its
// transpose); C is float32, row-major with row stride ldc. Runs on the OpenMP threads.
void gemm_f32_bf16(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const uint16_t* b,
                   int64_t b_k, int64_t b_n, float* c, int64_t ldc, bool accumulate);

}  // namespace deltatune::ops::kernels
