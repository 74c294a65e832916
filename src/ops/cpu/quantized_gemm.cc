// Products with a quantised weight: a tile of W's rows is dequantised into a small float32 buffer
// (OpenMP over the rows) and multiplied with OpenBLAS, tile after tile. The tile holds about 256 KB of
// float32 (it stays in cache between dequantising and the product), so no weight is ever float32 whole.
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "ops/cpu/cpu_backend.h"

namespace deltatune::ops {
namespace {

constexpr int64_t kTileFloats = 64 * 1024;

int64_t tile_rows(int64_t cols) { return std::max<int64_t>(16, kTileFloats / std::max<int64_t>(cols, 1)); }

void dequantize_tile(const QuantizedMatrix& w, int64_t row0, int64_t count, float* tile) {
#pragma omp parallel for if (count * w.cols > 8192)
  for (int64_t r = 0; r < count; ++r) w.dequantize_rows(row0 + r, 1, tile + r * w.cols);
}

}  // namespace

void CpuBackend::quantized_gemm(const QuantizedGemmArgs& p) const {
  const QuantizedMatrix& w = *p.w;
  const int64_t n = w.rows, k = w.cols, m = p.m;
  const int64_t out_cols = p.transposed ? k : n;
  if (m == 0 || out_cols == 0) return;
  if (n == 0 || k == 0) {  // an empty inner dimension: the product is zero
    if (!p.accumulate) std::fill(p.c, p.c + m * out_cols, 0.0f);
    return;
  }
  const int64_t rows = std::min(n, tile_rows(k));
  std::vector<float> tile(size_t(rows * k));
  for (int64_t j0 = 0; j0 < n; j0 += rows) {
    const int64_t t = std::min(rows, n - j0);
    dequantize_tile(w, j0, t, tile.data());
    if (!p.transposed) {  // c[:, j0:j0+t] = a[m, k] @ tile[t, k]^T
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(t), int(k), 1.0f, p.a, int(k),
                  tile.data(), int(k), p.accumulate ? 1.0f : 0.0f, p.c + j0, int(n));
    } else {  // c[m, k] += a[:, j0:j0+t] @ tile[t, k]
      const float beta = (j0 == 0 && !p.accumulate) ? 0.0f : 1.0f;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(m), int(k), int(t), 1.0f, p.a + j0, int(n),
                  tile.data(), int(k), beta, p.c, int(k));
    }
  }
}

}  // namespace deltatune::ops
