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
// transpose); C is float32, row-major with row stride ldc. With a_trans, A is stored transposed:
// A[i, kk] at a[kk * lda + i] (a weight's gradient, g^T x, reads the output gradient so). Runs on the
// OpenMP threads.
void gemm_f32_bf16(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const uint16_t* b,
                   int64_t b_k, int64_t b_n, float* c, int64_t ldc, bool accumulate, bool a_trans = false);

// out[r, c] = A[r, c] rounded to bfloat16 (nearest even), r < rows, c < cols; A row stride lda, out
// row-major [rows, cols]: a B operand made once and read by many products.
void round_to_bf16(int64_t rows, int64_t cols, const float* a, int64_t lda, uint16_t* out);

// The instruction's own ceiling (`deltatune bench --kernel-peak`): every OpenMP thread at once runs
// `rounds` rounds of 24 independent dot products on registers alone (no memory traffic), vdpbf16ps zmm
// (64 FLOPs) with bf16, else vfmadd231ps (zmm, 32 FLOPs; ymm, 16, without AVX-512). No kernel built on
// that instruction can beat the GFLOP/s returned (0 when the CPU lacks it).
double register_peak_gflops(bool bf16, int64_t rounds);
// The instruction register_peak_gflops(bf16, ...) times here ("vdpbf16ps zmm", "vfmadd231ps ymm", ...).
const char* register_peak_instruction(bool bf16);

}  // namespace deltatune::ops::kernels
