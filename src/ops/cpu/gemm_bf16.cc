// The bfloat16-weight GEMM (see gemm_bf16.h) on the blocked loop of gemm_tiles.h: A is rounded to
// bfloat16 once per call (rows split among the threads), then each thread packs its columns of B as
// vdpbf16ps reads them ([pair][column][2]). vdpbf16ps multiplies pairs along k, so k is padded to
// even with zeros.
#include "gemm_bf16.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "gemm_tiles.h"

namespace deltatune::ops::kernels {
namespace {

using tiles::lanes16;
using tiles::lanes32;
using tiles::NR;

// Rows [r0, r1) of A rounded to bfloat16, row stride k_even (k padded with a zero when odd).
DT_TILES_TARGET void round_rows(const float* a, int64_t lda, int64_t k, int64_t k_even, int64_t r0,
                                int64_t r1, uint16_t* out) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* src = a + r * lda;
    uint16_t* dst = out + r * k_even;
    int64_t j = 0;
    for (; j + 32 <= k; j += 32) {
      const __m512 lo = _mm512_loadu_ps(src + j), hi = _mm512_loadu_ps(src + j + 16);
      _mm512_storeu_si512(dst + j, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
    if (j < k_even) {  // the tail (and the zero that pads k to even)
      const int64_t left = k - j;
      const __m512 lo = _mm512_maskz_loadu_ps(lanes16(left), src + j);
      const __m512 hi = _mm512_maskz_loadu_ps(lanes16(left - 16), src + j + 16);
      _mm512_mask_storeu_epi16(dst + j, lanes32(k_even - j), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

// Index vectors for the 16 x 8 transpose in round_cols: each picks, for output lane e, a lane of the
// first source (0-15) or of the second (16-31). Built once from the rule that names the lane.
struct TransposeIndices {
  alignas(64) uint16_t pair_words[32];  // (A[i, kk], A[i, kk + 1]) from row kk's and row kk+1's lanes
  alignas(64) uint32_t a[2][16], b[2][16], c[2][16];
  TransposeIndices() {
    for (int e = 0; e < 32; ++e) pair_words[e] = uint16_t((e % 2) * 16 + e / 2);
    for (int h = 0; h < 2; ++h)
      for (int e = 0; e < 16; ++e) {
        a[h][e] = uint32_t((e % 2) * 16 + 8 * h + e / 2);                    // 8 i x 2 pairs
        b[h][e] = uint32_t((e % 4) / 2 * 16 + 2 * (4 * h + e / 4) + e % 2);  // 4 i x 4 pairs
        c[h][e] = uint32_t((e % 8) / 4 * 16 + 4 * (2 * h + e / 8) + e % 4);  // 2 i x 8 pairs
      }
  }
};

// Rows [r0, r1) of A stored transposed (A[i, kk] at at[kk * lda + i]) rounded to bfloat16 like
// round_rows, in 16 x 16 tiles: two stored rows (kk, kk + 1) rounded together give 16 pairs, one
// 32-bit lane per row i of A; the tile's 8 such registers are then transposed in registers (three
// rounds of two-source permutes) so that each 256-bit half holds 16 consecutive k of one row of A.
DT_TILES_TARGET void round_cols(const float* at, int64_t lda, int64_t k, int64_t k_even, int64_t r0,
                                int64_t r1, uint16_t* out) {
  static const TransposeIndices ix;
  const __m512i pair_words = _mm512_load_si512(ix.pair_words);
  const __m512i ia[2] = {_mm512_load_si512(ix.a[0]), _mm512_load_si512(ix.a[1])};
  const __m512i ib[2] = {_mm512_load_si512(ix.b[0]), _mm512_load_si512(ix.b[1])};
  const __m512i ic[2] = {_mm512_load_si512(ix.c[0]), _mm512_load_si512(ix.c[1])};
  for (int64_t i0 = r0; i0 < r1; i0 += 16) {
    const int64_t ni = std::min<int64_t>(16, r1 - i0);
    const __mmask16 m = lanes16(ni);
    for (int64_t k0 = 0; k0 < k_even; k0 += 16) {
      __m512i pairs[8];  // pairs[p]: lane i = (A[i0 + i, k0 + 2p], A[i0 + i, k0 + 2p + 1]); rows past k are 0
      for (int p = 0; p < 8; ++p) {
        const int64_t kk = k0 + 2 * p;
        const __m512 lo = kk < k ? _mm512_maskz_loadu_ps(m, at + kk * lda + i0) : _mm512_setzero_ps();
        const __m512 hi =
            kk + 1 < k ? _mm512_maskz_loadu_ps(m, at + (kk + 1) * lda + i0) : _mm512_setzero_ps();
        pairs[p] = _mm512_permutexvar_epi16(pair_words, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
      __m512i a[4][2], b[2][2][2];
      for (int q = 0; q < 4; ++q)  // a[q][h]: rows i0 + [8h, 8h + 8), pairs 2q and 2q + 1
        for (int h = 0; h < 2; ++h)
          a[q][h] = _mm512_permutex2var_epi32(pairs[2 * q], ia[h], pairs[2 * q + 1]);
      for (int r = 0; r < 2; ++r)  // b[r][h][g]: rows i0 + 8h + 4g + [0, 4), pairs [4r, 4r + 4)
        for (int h = 0; h < 2; ++h)
          for (int g = 0; g < 2; ++g)
            b[r][h][g] = _mm512_permutex2var_epi32(a[2 * r][h], ib[g], a[2 * r + 1][h]);
      const __mmask16 kmask = lanes16(k_even - k0);
      for (int h = 0; h < 2; ++h)
        for (int g = 0; g < 2; ++g)
          for (int c = 0; c < 2; ++c) {  // rows i0 + 8h + 4g + 2c and the next, all 8 pairs each
            const __m512i rows2 = _mm512_permutex2var_epi32(b[0][h][g], ic[c], b[1][h][g]);
            const int64_t i = 8 * h + 4 * g + 2 * c;
            if (i < ni)
              _mm256_mask_storeu_epi16(out + (i0 + i) * k_even + k0, kmask, _mm512_castsi512_si256(rows2));
            if (i + 1 < ni)
              _mm256_mask_storeu_epi16(out + (i0 + i + 1) * k_even + k0, kmask,
                                       _mm512_extracti64x4_epi64(rows2, 1));
          }
    }
  }
}

// Packs B's pairs [p0, p0 + pairs) and columns [n0, n0 + cols) into strips of NR columns, each
// [pair][NR][2] (bfloat16), zero-padded past k and past the last column.
DT_TILES_TARGET void pack_b(const uint16_t* b, int64_t b_k, int64_t b_n, int64_t k, int64_t p0, int64_t pairs,
                            int64_t n0, int64_t cols, uint16_t* out) {
  // Interleaving indices: element 2j of the result takes row 0's column j, element 2j + 1 row 1's.
  alignas(64) static const uint16_t lo_idx[32] = {0,  32, 1,  33, 2,  34, 3,  35, 4,  36, 5,
                                                  37, 6,  38, 7,  39, 8,  40, 9,  41, 10, 42,
                                                  11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t hi_idx[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21,
                                                  53, 22, 54, 23, 55, 24, 56, 25, 57, 26, 58,
                                                  27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i ilo = _mm512_load_si512(lo_idx), ihi = _mm512_load_si512(hi_idx);
  for (int64_t s = 0; s < cols; s += NR) {
    const int64_t width = std::min<int64_t>(NR, cols - s);
    uint16_t* strip = out + (s / NR) * pairs * NR * 2;
    if (b_n == 1) {  // rows of B are contiguous: interleave rows 2p and 2p + 1, 32 columns at a time
      for (int64_t p = 0; p < pairs; ++p) {
        const int64_t k0 = 2 * (p0 + p);
        const uint16_t* r0 = b + k0 * b_k + n0 + s;
        const uint16_t* r1 = r0 + b_k;
        const bool has_r1 = k0 + 1 < k;
        uint16_t* dst = strip + p * NR * 2;
        for (int64_t j = 0; j < NR; j += 32) {
          const __mmask32 m = lanes32(width - j);
          const __m512i a0 = _mm512_maskz_loadu_epi16(m, r0 + j);
          const __m512i a1 = has_r1 ? _mm512_maskz_loadu_epi16(m, r1 + j) : _mm512_setzero_si512();
          _mm512_storeu_si512(dst + 2 * j, _mm512_permutex2var_epi16(a0, ilo, a1));
          _mm512_storeu_si512(dst + 2 * j + 32, _mm512_permutex2var_epi16(a0, ihi, a1));
        }
      }
    } else if (b_k == 1 && (NR - 1) * b_n * 2 < (int64_t(1) << 31)) {
      // Columns of B contiguous (a [n, k] weight read as its transpose): each pair (k, k + 1) of a
      // column is one 32-bit element; gather 16 columns' pair at a time.
      const uint16_t* base = b + (n0 + s) * b_n;
      const __m512i step =
          _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                             _mm512_set1_epi32(int(b_n * 2)));
      __mmask16 mask[NR / 16];
      for (int g = 0; g < NR / 16; ++g) mask[g] = lanes16(width - 16 * g);
      // An odd k's last pair would read one element past a column: it is written below instead.
      const int64_t whole = (k & 1) && p0 + pairs == (k + 1) / 2 ? pairs - 1 : pairs;
      for (int64_t p = 0; p < whole; ++p) {
        const uint16_t* at = base + 2 * (p0 + p);
        uint32_t* dst = reinterpret_cast<uint32_t*>(strip + p * NR * 2);
        for (int g = 0; g < NR / 16; ++g)
          _mm512_storeu_si512(dst + 16 * g, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask[g], step,
                                                                        at + 16 * g * b_n, 1));
      }
      for (int64_t p = whole; p < pairs; ++p) {
        uint16_t* dst = strip + p * NR * 2;
        std::memset(dst, 0, NR * 2 * sizeof(uint16_t));
        for (int64_t j = 0; j < width; ++j) dst[2 * j] = base[j * b_n + 2 * (p0 + p)];
      }
    } else {  // any other layout, element by element
      std::memset(strip, 0, size_t(pairs * NR * 2) * sizeof(uint16_t));
      for (int64_t j = 0; j < width; ++j) {
        const uint16_t* col = b + (n0 + s + j) * b_n;
        for (int64_t p = 0; p < pairs; ++p) {
          const int64_t k0 = 2 * (p0 + p);
          strip[(p * NR + j) * 2] = col[k0 * b_k];
          strip[(p * NR + j) * 2 + 1] = k0 + 1 < k ? col[(k0 + 1) * b_k] : uint16_t(0);
        }
      }
    }
  }
}

constexpr int kProbeChains = 24;  // independent accumulators: more than latency x issue width needs

// The lanes' sum (stored and added: GCC 12's _mm512_reduce_add_ps warns about its own undefined operand).
__attribute__((target("avx512f"))) float lane_sum(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float total = 0.0f;
  for (float x : lanes) total += x;
  return total;
}

// vdpbf16ps (kDot) or vfmadd231ps on zmm registers. Both are built for the BF16 target; the FMA one
// uses AVX-512 F instructions only and runs where fma_flops() says AVX-512 (F, BW, VL) is there.
template <bool kDot>
DT_TILES_TARGET float zmm_rounds(int64_t rounds) {
  __m512 acc[kProbeChains];
  for (int i = 0; i < kProbeChains; ++i) acc[i] = _mm512_set1_ps(float(i));
  const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-3f);
  const __m512bh xh = (__m512bh)_mm512_set1_epi32(0x3f803f80), yh = (__m512bh)_mm512_set1_epi32(0x3c003c00);
  for (int64_t r = 0; r < rounds; ++r)
#pragma GCC unroll 24  // every accumulator in its own register, no loop over memory
    for (int i = 0; i < kProbeChains; ++i)
      acc[i] = kDot ? _mm512_dpbf16_ps(acc[i], xh, yh) : _mm512_fmadd_ps(acc[i], x, y);
  __m512 sum = acc[0];
  for (int i = 1; i < kProbeChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
  return lane_sum(sum);
}

__attribute__((target("avx2,fma"))) float fma_rounds_avx2(int64_t rounds) {
  __m256 acc[kProbeChains];
  for (int i = 0; i < kProbeChains; ++i) acc[i] = _mm256_set1_ps(float(i));
  const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-3f);
  for (int64_t r = 0; r < rounds; ++r)
#pragma GCC unroll 24  // every accumulator in its own register, no loop over memory
    for (int i = 0; i < kProbeChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
  __m256 sum = acc[0];
  for (int i = 1; i < kProbeChains; ++i) sum = _mm256_add_ps(sum, acc[i]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = 0.0f;
  for (float v : lanes) total += v;
  return total;
}

}  // namespace

int fma_flops() {
  static const int flops = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                   __builtin_cpu_supports("avx512vl")
                               ? 32
                           : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 16
                                                                                             : 0;
  return flops;
}

const char* register_peak_instruction(bool bf16) {
  if (bf16) return bf16_gemm_available() ? "vdpbf16ps zmm" : "none";
  switch (fma_flops()) {
    case 32:
      return "vfmadd231ps zmm";
    case 16:
      return "vfmadd231ps ymm";
    default:
      return "none";
  }
}

double register_peak_gflops(bool bf16, int64_t rounds) {
  const int flops = bf16 ? (bf16_gemm_available() ? 64 : 0) : fma_flops();
  if (flops == 0 || rounds <= 0) return 0.0;
  float sink = 0.0f;
  int threads = 1;
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : sink)
  {
#pragma omp single
    threads = omp_get_num_threads();
    sink += bf16          ? zmm_rounds<true>(rounds)
            : flops == 32 ? zmm_rounds<false>(rounds)
                          : fma_rounds_avx2(rounds);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (sink == 12345.0f) std::fputc(' ', stderr);  // the sums are used, so the loops stay
  return double(kProbeChains) * flops * double(rounds) * threads / seconds * 1e-9;
}

void round_to_bf16(int64_t rows, int64_t cols, const float* a, int64_t lda, uint16_t* out) {
  if (rows > 0 && cols > 0) round_rows(a, lda, cols, cols, 0, rows, out);
}

bool bf16_gemm_available() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  return yes;
}

void gemm_f32_bf16(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const uint16_t* b,
                   int64_t b_k, int64_t b_n, float* c, int64_t ldc, bool accumulate, bool a_trans) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
  const int64_t k_even = k + (k & 1);
  static thread_local std::vector<uint16_t> a16;
  a16.resize(size_t(m * k_even));
  uint16_t* a16p = a16.data();
#pragma omp parallel if (tiles::worth_threads(m, n, k))
  {
    // A's rows rounded in blocks of 64 (whole 16-row tiles of round_cols) handed out as the threads
    // come; the loop's end waits for all of them.
#pragma omp for schedule(dynamic, 1)
    for (int64_t r0 = 0; r0 < m; r0 += 64) {
      const int64_t r1 = std::min(m, r0 + 64);
      if (a_trans)
        round_cols(a, lda, k, k_even, r0, r1, a16p);
      else
        round_rows(a, lda, k, k_even, r0, r1, a16p);
    }
    static thread_local std::vector<uint16_t> packed;
    const auto pack = [&](int64_t p0, int64_t pairs, int64_t col0, int64_t cols, uint16_t* out) {
      pack_b(b, b_k, b_n, k, p0, pairs, col0, cols, out);
    };
    tiles::for_units(m, n, [&](int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
      tiles::columns<tiles::Bf16Step>(r1 - r0, n0, n1, k_even / 2,
                                      reinterpret_cast<const uint32_t*>(a16p) + r0 * (k_even / 2), k_even / 2,
                                      1, pack, c + r0 * ldc, ldc, accumulate, packed);
    });
  }
}

}  // namespace deltatune::ops::kernels
