// The CPU embedding gather and scatter, and the rotary embedding's rotation: OpenMP over rows.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/strided.h"
#include "ops/cpu/cpu_backend.h"

namespace deltatune::ops {

void CpuBackend::embedding(const EmbeddingArgs& p) const {
  // Gather straight from the weight's own storage and dtype: a half-precision vocabulary table is
  // never converted as a whole.
  const int64_t n = p.n, d = p.d, s0 = p.s0, s1 = p.s1, off = p.offset;
#pragma omp parallel for if (n * d > 16384)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = off + p.ids[i] * s0;
    float* dst = p.out + i * d;
    if (p.dtype == DType::F32 && s1 == 1) {
      std::memcpy(dst, static_cast<const float*>(p.weight) + row, size_t(d) * 4);
    } else {
      for (int64_t j = 0; j < d; ++j) dst[j] = detail::load_as_float(p.weight, p.dtype, row + j * s1);
    }
  }
}

void CpuBackend::embedding_backward(const int64_t* ids, int64_t n, int64_t d, const float* gp,
                                    float* wp) const {
  // Rows repeat, so threads split the columns instead of the tokens.
  const int64_t chunk = 64, chunks = (d + chunk - 1) / chunk;
#pragma omp parallel for if (n * d > 65536)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t j0 = c * chunk, j1 = std::min(d, j0 + chunk);
    for (int64_t i = 0; i < n; ++i) {
      float* dst = wp + ids[i] * d;
      const float* src = gp + i * d;
      for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
    }
  }
}

void CpuBackend::rope_table(const float* positions, int64_t count, const float* inv_freq, int64_t half,
                            float* cos, float* sin) const {
#pragma omp parallel for if (count * half > 16384)
  for (int64_t p = 0; p < count; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const float angle = positions[p] * inv_freq[i];  // float32, like transformers' inv_freq @ positions
      cos[p * half + i] = float(std::cos(double(angle)));
      sin[p * half + i] = float(std::sin(double(angle)));
    }
}

void CpuBackend::rope(const RopeArgs& p) const {
  const int64_t t = p.t, h = p.half, d = 2 * h;
  const int64_t lines = p.b0 * p.m * t;
  const float sign = p.inverse ? -1.0f : 1.0f;
#pragma omp parallel for if (lines * d > 16384)
  for (int64_t line = 0; line < lines; ++line) {
    const int64_t ti = line % t, b = line / (p.m * t);
    const int64_t row = ((p.batches == 1 ? 0 : b) * t + ti) * h;
    const float* c = p.cos + row;
    const float* s = p.sin + row;
    const float* xr = p.x + line * d;
    float* yr = p.out + line * d;
    for (int64_t i = 0; i < h; ++i) {
      const float x1 = xr[i], x2 = xr[i + h], si = sign * s[i];
      yr[i] = x1 * c[i] - x2 * si;
      yr[i + h] = x2 * c[i] + x1 * si;
    }
  }
}

}  // namespace deltatune::ops
