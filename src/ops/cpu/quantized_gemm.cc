// Products with a quantised weight: a tile of W's rows is dequantised (ops/cpu/dequantize.h, vectorised
// for the CPU) into a float32 buffer and multiplied with OpenBLAS, so no weight is ever float32 whole.
// A tile holds about 1 MB of float32 and at least 128 rows: the tile's rows are the product's N in the
// forward and its K in the input gradient, and OpenBLAS runs slowly on narrow ones (with 64K-float
// tiles a 768 x 3072 weight came in tiles of 21 rows, and its forward at 1024 tokens took 2.2x the
// float32 product's time; with these, about the same).
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "deltatune/dtype.h"
#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/dequantize.h"
#include "ops/cpu/gemm_bf16.h"

namespace deltatune::ops {
namespace {

constexpr int64_t kTileFloats = 256 * 1024;

int64_t tile_rows(int64_t cols) { return std::max<int64_t>(128, kTileFloats / std::max<int64_t>(cols, 1)); }

// c[:, j0:j0+t] = a[m, k] @ W[j0:j0+t, :]^T, each tile's columns of c its own: the tiles run in
// parallel (one fork per call; OpenBLAS runs single-threaded inside the region), each thread
// dequantising into its own buffer.
void forward(const QuantizedMatrix& w, const QuantizedGemmArgs& p) {
  const int64_t n = w.rows, k = w.cols, rows = std::min(n, tile_rows(k));
  const int64_t tiles = (n + rows - 1) / rows;
#pragma omp parallel if (tiles > 1)
  {
    std::vector<float> tile(static_cast<size_t>(rows * k));
#pragma omp for schedule(dynamic)
    for (int64_t i = 0; i < tiles; ++i) {
      const int64_t j0 = i * rows, t = std::min(rows, n - j0);
      dequantize_tile(w, j0, t, tile.data());
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(p.m), int(t), int(k), 1.0f, p.a, int(k),
                  tile.data(), int(k), p.accumulate ? 1.0f : 0.0f, p.c + j0, int(n));
    }
  }
}

// c[m, k] (+)= sum over tiles of a[:, j0:j0+t] @ W[j0:j0+t, :]: every tile adds into all of c, so the
// tiles run in turn, each product on OpenBLAS's threads.
void transposed(const QuantizedMatrix& w, const QuantizedGemmArgs& p) {
  const int64_t n = w.rows, k = w.cols, rows = std::min(n, tile_rows(k));
  std::vector<float> tile(static_cast<size_t>(rows * k));
  for (int64_t j0 = 0; j0 < n; j0 += rows) {
    const int64_t t = std::min(rows, n - j0);
    dequantize_tile(w, j0, t, tile.data());
    const float beta = (j0 == 0 && !p.accumulate) ? 0.0f : 1.0f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(p.m), int(k), int(t), 1.0f, p.a + j0, int(n),
                tile.data(), int(k), beta, p.c, int(k));
  }
}

// The same two products with bfloat16 tiles on the AVX-512 BF16 kernel (args.bf16): each tile is
// decoded, rounded to bfloat16 (what ops::linear does to a float weight at this precision), and
// multiplied on the kernel's threads, the tiles in turn.
void bf16_tiles(const QuantizedMatrix& w, const QuantizedGemmArgs& p) {
  const int64_t n = w.rows, k = w.cols, rows = std::min(n, tile_rows(k));
  std::vector<float> tile(static_cast<size_t>(rows * k));
  std::vector<uint16_t> rounded(tile.size());
  for (int64_t j0 = 0; j0 < n; j0 += rows) {
    const int64_t t = std::min(rows, n - j0);
    dequantize_tile(w, j0, t, tile.data());
    for (int64_t i = 0; i < t * k; ++i) rounded[size_t(i)] = f32_to_bf16(tile[size_t(i)]);
    if (!p.transposed)  // c[:, j0:j0+t] = a[m, k] @ tile^T: B[kk, nn] = tile[nn, kk]
      kernels::gemm_f32_bf16(p.m, t, k, p.a, k, rounded.data(), 1, k, p.c + j0, n, p.accumulate);
    else  // c[m, k] (+)= a[:, j0:j0+t] @ tile: B[kk, nn] = tile[kk, nn]
      kernels::gemm_f32_bf16(p.m, k, t, p.a + j0, n, rounded.data(), k, 1, p.c, k, j0 > 0 || p.accumulate);
  }
}

}  // namespace

void CpuBackend::quantized_gemm(const QuantizedGemmArgs& p) const {
  const QuantizedMatrix& w = *p.w;
  const int64_t out_cols = p.transposed ? w.cols : w.rows;
  if (p.m == 0 || out_cols == 0) return;
  if (w.rows == 0 || w.cols == 0) {  // an empty inner dimension: the product is zero
    if (!p.accumulate) std::fill(p.c, p.c + p.m * out_cols, 0.0f);
    return;
  }
  if (p.bf16 && kernels::bf16_gemm_available())
    bf16_tiles(w, p);
  else if (p.transposed)
    transposed(w, p);
  else
    forward(w, p);
}

}  // namespace deltatune::ops
