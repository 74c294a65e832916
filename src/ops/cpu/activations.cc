// See activations.h. The helpers are forced inline so each target clone gets its own vector code;
// CMake compiles this folder with -fno-trapping-math -fno-math-errno so clamps become vector selects.
#include "ops/cpu/activations.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "ops/cpu/target_clones.h"

namespace deltatune::ops::kernels {
namespace {

constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;
constexpr float kSqrt2OverPi = 0.7978845608028654f;

// e^x: x = k ln2 + r, |r| <= ln2 / 2, e^r by a degree-6 polynomial, 2^k from the exponent bits.
// Clamped to [-87, 88] (e^-87 ~ 1.6e-38, the smallest normal range).
[[gnu::always_inline]] inline float exp_poly(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - k * 0.693359375f;  // ln 2 split in two so that k * the first part is exact
  r = r + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// erf(x) = sign(x) (1 - (a1 t + ... + a5 t^5) e^{-x^2}), t = 1 / (1 + p |x|).
[[gnu::always_inline]] inline float erf_as(float x) {
  const float ax = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float poly = 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  return std::copysign(1.0f - poly * t * exp_poly(-ax * ax), x);
}

// tanh(z) = 1 - 2 / (e^{2z} + 1): exact limits at both ends (e^{2z} -> 0 or huge).
[[gnu::always_inline]] inline float tanh_exp(float z) { return 1.0f - 2.0f / (exp_poly(2.0f * z) + 1.0f); }

[[gnu::always_inline]] inline float sigmoid_exp(float x) { return 1.0f / (1.0f + exp_poly(-x)); }

DELTATUNE_TARGET_CLONES("avx512f", "avx2", "default") void gelu_erf(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + erf_as(x[i] * kInvSqrt2));
}
DELTATUNE_TARGET_CLONES("avx512f", "avx2", "default")
void gelu_erf_backward(const float* g, const float* x, float* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float cdf = 0.5f * (1.0f + erf_as(v * kInvSqrt2));
    out[i] = g[i] * (cdf + v * kInvSqrt2Pi * exp_poly(-0.5f * v * v));
  }
}

DELTATUNE_TARGET_CLONES("avx512f", "avx2", "default") void gelu_tanh(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    y[i] = 0.5f * v * (1.0f + tanh_exp(kSqrt2OverPi * (v + 0.044715f * v * v * v)));
  }
}
DELTATUNE_TARGET_CLONES("avx512f", "avx2", "default")
void gelu_tanh_backward(const float* g, const float* x, float* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float t = tanh_exp(kSqrt2OverPi * (v + 0.044715f * v * v * v));
    out[i] = g[i] *
             (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3 * 0.044715f * v * v));
  }
}

DELTATUNE_TARGET_CLONES("avx512f", "avx2", "default") void silu(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * sigmoid_exp(x[i]);
}
DELTATUNE_TARGET_CLONES("avx512f", "avx2", "default")
void silu_backward(const float* g, const float* x, float* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float s = sigmoid_exp(x[i]);
    out[i] = g[i] * s * (1.0f + x[i] * (1.0f - s));
  }
}

// In blocks of exactly 16, so that every element goes through the same vector code. A loop over the
// whole row would peel a few elements into scalar code to reach an aligned address, and those can
// round differently: the result would depend on where the row lies (attention's rows are in each
// thread's own scratch), and a run on other threads or in another process would differ in its bits.
// Whole blocks are read and written in place; only the last, partial one goes through a buffer
// (copying every block through one cost more than the exponentials: a store-forwarding stall per
// block and a scalar copy back).
[[gnu::always_inline]] inline void exp_shifted_block(const float* x, float shift, float* y) {
#pragma omp simd
  for (int64_t j = 0; j < 16; ++j) y[j] = exp_poly(x[j] - shift);
}

DELTATUNE_TARGET_CLONES("avx512f", "avx2", "default")
void exp_shifted_loop(const float* x, float shift, float* y, int64_t n) {
  const int64_t whole = n / 16 * 16;
  for (int64_t i = 0; i < whole; i += 16) exp_shifted_block(x + i, shift, y + i);
  if (whole == n) return;
  alignas(64) float in[16] = {}, out[16];
  std::copy(x + whole, x + n, in);
  exp_shifted_block(in, shift, out);
  std::copy(out, out + (n - whole), y + whole);
}

}  // namespace

void exp_shifted(const float* x, float shift, float* y, int64_t n) { exp_shifted_loop(x, shift, y, n); }

void activation(Activation f, const float* x, float* y, int64_t n) {
  switch (f) {
    case Activation::GeluErf:
      return gelu_erf(x, y, n);
    case Activation::GeluTanh:
      return gelu_tanh(x, y, n);
    case Activation::Silu:
      return silu(x, y, n);
  }
}

void activation_backward(Activation f, const float* g, const float* x, float* out, int64_t n) {
  switch (f) {
    case Activation::GeluErf:
      return gelu_erf_backward(g, x, out, n);
    case Activation::GeluTanh:
      return gelu_tanh_backward(g, x, out, n);
    case Activation::Silu:
      return silu_backward(g, x, out, n);
  }
}

}  // namespace deltatune::ops::kernels
