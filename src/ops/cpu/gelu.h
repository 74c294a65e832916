#pragma once
// GELU (erf form) over contiguous float32 arrays without libm calls, so the loops vectorise: erf by
// Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, the same approximation PyTorch's
// vectorised CPU erf uses) and exp by a Cephes-style polynomial (relative error ~1e-7). Each kernel
// is compiled for AVX-512, AVX2 and the baseline, and the CPU picks one at run time.
#include <cstdint>

namespace deltatune::ops::kernels {

// y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
void gelu_erf(const float* x, float* y, int64_t n);
// out = g * (Phi(x) + x phi(x)), the derivative at x times the incoming gradient
void gelu_erf_backward(const float* g, const float* x, float* out, int64_t n);

}  // namespace deltatune::ops::kernels
