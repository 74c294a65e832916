#include "kernel_peak.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "deltatune/dtype.h"
#include "ops/cpu/gemm_bf16.h"
#include "ops/cpu/gemm_f32.h"

namespace deltatune::cli {
namespace {

double round1(double x) { return double(int64_t(x * 10.0 + 0.5)) / 10.0; }

}  // namespace

nlohmann::json measure_kernel_peak(bool bf16, int threads, int warmup, int repeats) {
  const int64_t m = 1024, n = 3072, k = 768;
  const bool use_bf16 = bf16 && ops::kernels::bf16_gemm_available();
  // A[m, k] activations times W[n, k]^T, a weight as the linear layers store it.
  std::vector<float> a(size_t(m * k)), b(size_t(n * k)), c(size_t(m * n));
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(int64_t(i % 17) - 8) * 0.01f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = float(int64_t(i % 13) - 6) * 0.01f;
  std::vector<uint16_t> b16(b.size());
  for (size_t i = 0; i < b.size(); ++i) b16[i] = f32_to_bf16(b[i]);

  const bool use_f32 = !use_bf16 && ops::kernels::f32_gemm_suits(m, n, k);
  auto product = [&] {  // as the linear products call them (src/ops/cpu/products.cc)
    if (use_bf16)
      ops::kernels::gemm_f32_bf16(m, n, k, a.data(), k, b16.data(), 1, k, c.data(), n, false);
    else if (use_f32)
      ops::kernels::gemm_f32(m, n, k, a.data(), k, 1, b.data(), 1, k, c.data(), n, false);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(k), 1.0f, a.data(), int(k),
                  b.data(), int(k), 0.0f, c.data(), int(n));
  };
  for (int i = 0; i < warmup; ++i) product();
  double best = 0.0;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    product();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (best == 0.0 || dt < best) best = dt;
  }
  const double gflops = 2.0 * double(m) * double(n) * double(k) / best * 1e-9;
  double ceiling = 0.0;  // the instruction's ceiling: the best of `repeats` probes (gemm_bf16.h)
  for (int i = 0; i < std::max(1, repeats); ++i)
    ceiling = std::max(ceiling, ops::kernels::register_peak_gflops(use_bf16, 4'000'000));
  return {{"engine", "deltatune"},
          {"kernel", use_bf16  ? "gemm_f32_bf16"
                     : use_f32 ? "gemm_f32"
                               : "openblas sgemm"},
          {"precision", use_bf16 ? "bf16" : "float32"},
          {"m", m},
          {"n", n},
          {"k", k},
          {"threads", threads},
          {"peak_gflops", round1(gflops)},
          {"instruction", ops::kernels::register_peak_instruction(use_bf16)},
          {"register_peak_gflops", round1(ceiling)}};
}

}  // namespace deltatune::cli
