#pragma once
// Whether a product with this weight runs on the AVX-512 BF16 kernel (ops/cpu/gemm_bf16.h): a
// bfloat16 weight on the CPU, products allowed (ops::allow_bf16_products), and a CPU that has it.
#include "deltatune/tensor.h"

namespace deltatune::ops {
bool runs_bf16_kernel(const Tensor& weight);
}  // namespace deltatune::ops
