// Reference embedding gather/scatter and rotary rotation: one element at a time.
#include <cmath>

#include "core/strided.h"
#include "ops/reference/reference_backend.h"

namespace deltatune::ops {

void ReferenceBackend::embedding(const EmbeddingArgs& p) const {
  for (int64_t i = 0; i < p.n; ++i)
    for (int64_t j = 0; j < p.d; ++j)
      p.out[i * p.d + j] = detail::load_as_float(p.weight, p.dtype, p.offset + p.ids[i] * p.s0 + j * p.s1);
}

void ReferenceBackend::embedding_backward(const int64_t* ids, int64_t n, int64_t d, const float* g,
                                          float* gweight) const {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) gweight[ids[i] * d + j] += g[i * d + j];
}

void ReferenceBackend::rope_table(const float* positions, int64_t count, const float* inv_freq, int64_t half,
                                  float* cos, float* sin) const {
  for (int64_t p = 0; p < count; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const float angle = positions[p] * inv_freq[i];
      cos[p * half + i] = float(std::cos(double(angle)));
      sin[p * half + i] = float(std::sin(double(angle)));
    }
}

void ReferenceBackend::rope(const RopeArgs& p) const {
  const int64_t h = p.half;
  for (int64_t b = 0; b < p.b0; ++b)
    for (int64_t mi = 0; mi < p.m; ++mi)
      for (int64_t ti = 0; ti < p.t; ++ti) {
        const int64_t line = (b * p.m + mi) * p.t + ti, row = ((p.batches == 1 ? 0 : b) * p.t + ti) * h;
        for (int64_t i = 0; i < h; ++i) {
          const double c = p.cos[row + i], s = (p.inverse ? -1.0 : 1.0) * p.sin[row + i];
          const double x1 = p.x[line * 2 * h + i], x2 = p.x[line * 2 * h + i + h];
          p.out[line * 2 * h + i] = float(x1 * c - x2 * s);
          p.out[line * 2 * h + i + h] = float(x2 * c + x1 * s);
        }
      }
}

}  // namespace deltatune::ops
