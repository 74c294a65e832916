// The float32 GEMM (see gemm_f32.h): B packed as vfmadd231ps reads it ([k][column]), A read in place.
#include "gemm_f32.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "gemm_tiles.h"

namespace deltatune::ops::kernels {
namespace {

using tiles::lanes16;
using tiles::NR;

// Packs B's k [p0, p0 + steps) and columns [n0, n0 + cols) into strips of NR columns, each
// [k][NR], zero past the last column.
DT_TILES_TARGET void pack_b(const float* b, int64_t b_k, int64_t b_n, int64_t p0, int64_t steps, int64_t n0,
                            int64_t cols, float* out) {
  for (int64_t s = 0; s < cols; s += NR) {
    const int64_t width = std::min<int64_t>(NR, cols - s);
    float* strip = out + (s / NR) * steps * NR;
    __mmask16 mask[NR / 16];
    for (int g = 0; g < NR / 16; ++g) mask[g] = lanes16(width - 16 * g);
    if (b_n == 1) {  // rows of B contiguous: copy
      for (int64_t p = 0; p < steps; ++p) {
        const float* src = b + (p0 + p) * b_k + n0 + s;
        for (int g = 0; g < NR / 16; ++g)
          _mm512_storeu_ps(strip + p * NR + 16 * g, _mm512_maskz_loadu_ps(mask[g], src + 16 * g));
      }
    } else if (b_k == 1 && (NR - 1) * b_n * 4 < (int64_t(1) << 31)) {
      // Columns of B contiguous (a [n, k] weight read as its transpose): gather 16 columns' k at a time.
      const float* base = b + (n0 + s) * b_n + p0;
      const __m512i step =
          _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                             _mm512_set1_epi32(int(b_n)));
      for (int64_t p = 0; p < steps; ++p)
        for (int g = 0; g < NR / 16; ++g)
          _mm512_storeu_ps(
              strip + p * NR + 16 * g,
              _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask[g], step, base + 16 * g * b_n + p, 4));
    } else {  // any other layout, element by element
      std::memset(strip, 0, size_t(steps * NR) * sizeof(float));
      for (int64_t p = 0; p < steps; ++p)
        for (int64_t j = 0; j < width; ++j) strip[p * NR + j] = b[(p0 + p) * b_k + (n0 + s + j) * b_n];
    }
  }
}

}  // namespace

bool f32_gemm_available() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return yes;
}

bool f32_gemm_suits(int64_t m, int64_t n, int64_t k) {
  return f32_gemm_available() && m >= 4 * tiles::MR && n >= NR && k >= 32;
}

void gemm_f32(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_row, int64_t a_col, const float* b,
              int64_t b_k, int64_t b_n, float* c, int64_t ldc, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
#pragma omp parallel if (tiles::worth_threads(m, n, k))
  {
    static thread_local std::vector<float> packed;
    const auto pack = [&](int64_t p0, int64_t steps, int64_t col0, int64_t cols, float* out) {
      pack_b(b, b_k, b_n, p0, steps, col0, cols, out);
    };
    tiles::for_units(m, n, [&](int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
      tiles::columns<tiles::F32Step>(r1 - r0, n0, n1, k, a + r0 * a_row, a_row, a_col, pack, c + r0 * ldc,
                                     ldc, accumulate, packed);
    });
  }
}

}  // namespace deltatune::ops::kernels
