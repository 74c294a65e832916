#pragma once
// The measured peak of the product kernel on this machine (`deltatune bench --kernel-peak`): the
// GEMM the linear products call (OpenBLAS sgemm in float32, the AVX-512 BF16 kernel with --bf16)
// timed alone on a representative large shape, the denominator of bench's MFU figures.
#include <nlohmann/json.hpp>

namespace deltatune::cli {

// Times the kernel at m x n x k = 1024 x 3072 x 768 (bert-base's FFN product on 8 x 128 tokens) on
// the current OpenMP threads: `warmup` untimed calls, then the best of `repeats`. bf16 falls back to
// float32 where the CPU lacks AVX-512 BF16. Returns {"kernel", "precision", "m", "n", "k", "threads",
// "peak_gflops", "instruction", "register_peak_gflops"}: the last is the instruction the kernel is built
// on run from registers alone on every thread (best of `repeats`), the ceiling no such kernel can pass.
nlohmann::json measure_kernel_peak(bool bf16, int threads, int warmup, int repeats);

}  // namespace deltatune::cli
