#pragma once
// Whether a product with this weight runs on the AVX-512 BF16 kernel (ops/cpu/gemm_bf16.h): Bf16
// precision (ops::set_matmul_precision), a float32 or bfloat16 CPU weight of at least kBf16MinDim
// rows and columns, and a CPU that has AVX-512 BF16.
#include "deltatune/tensor.h"

namespace deltatune::ops {
bool runs_bf16_kernel(const Tensor& weight);
// The same rule for a weight of this shape held otherwise (a quantised base's QuantizedMatrix).
bool runs_bf16_kernel(int64_t rows, int64_t cols);
// The weight as the kernel reads it: itself when stored in bfloat16, else a rounded copy.
Tensor bf16_weight(const Tensor& weight);
}  // namespace deltatune::ops
