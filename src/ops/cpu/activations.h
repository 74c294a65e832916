#pragma once
// The transformer activations over contiguous float32 arrays without libm calls, so the loops
// vectorise: exp by a Cephes-style polynomial (relative error ~1e-7), erf by Abramowitz & Stegun
// 7.1.26 (absolute error below 1.5e-7, the approximation PyTorch's vectorised CPU erf uses too),
// tanh(z) = 1 - 2 / (e^{2z} + 1). Each kernel is compiled for AVX-512, AVX2 and the baseline, and
// the CPU picks one at run time.
#include <cstdint>

namespace deltatune::ops::kernels {

enum class Activation {
  GeluErf,   // x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))       (BERT's gelu)
  GeluTanh,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (GPT-2's gelu_new)
  Silu,      // x sigmoid(x)                                   (Llama's silu)
};

// y = f(x)
void activation(Activation f, const float* x, float* y, int64_t n);
// out = g * f'(x)
void activation_backward(Activation f, const float* g, const float* x, float* out, int64_t n);

// y = e^(x - shift), by the same polynomial (the softmax rows of attention; y may be x).
void exp_shifted(const float* x, float shift, float* y, int64_t n);

}  // namespace deltatune::ops::kernels
