#pragma once
// The blocked loop the two hand-written CPU GEMMs share (gemm_bf16.cc: bfloat16 B and vdpbf16ps;
// gemm_f32.cc: float32 B and vfmadd231ps). Blocked in the usual way (Goto & van de Geijn): each
// thread takes units of C's columns (GROUP strips of NR columns at most); for each block of KC_STEPS
// steps along k (a step is one k in float32, a pair of k in bfloat16: what one instruction multiplies
// per lane) it packs the unit's columns of B in the order the instruction reads them; then a
// 6 x 64 register tile of C (24 zmm accumulators) is accumulated per strip and group of rows, the
// next tile's rows of C prefetched while one runs. Every element of C is the sum of its blocks' sums
// in k's order, each a running sum in k's order, whatever the threads: the same bits for every split.
//
// Compiled for AVX-512 F/BW/VL and BF16 together: a function's target must cover what it inlines.
// The float32 instantiations use AVX-512 F instructions only (the compiler does not invent BF16
// ones), so gemm_f32.cc runs them wherever f32_gemm_available() says AVX-512 F/BW/VL is there.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#define DT_TILES_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define DT_TILES_STEP __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) inline

namespace deltatune::ops::kernels::tiles {

constexpr int MR = 6;   // rows of C per micro-tile
constexpr int NR = 64;  // columns of C per micro-tile: four zmm of 16 floats
// Steps of k per packed block. A strip is then 384 * 64 * 4 B = 96 KiB (L2, not L1), but C's tiles
// are loaded and stored once per block: at 128 (a 32 KiB strip in L1) those passes over C cost 15-20%
// of the bfloat16 kernel's speed on bert-base's shapes (bench/README.md has the figures).
constexpr int64_t KC_STEPS = 384;
constexpr int64_t MC = 96;    // rows of A swept over a unit's strips while they are hot
constexpr int64_t GROUP = 8;  // strips in a unit, packed at once: 768 KiB, whatever n is

// Masks of the first n lanes (n clamped to [0, 16] or [0, 32]).
inline __mmask16 lanes16(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}
inline __mmask32 lanes32(int64_t n) {
  return n >= 32 ? __mmask32(~0u) : n <= 0 ? __mmask32(0) : __mmask32((1u << n) - 1);
}

// Brings C's rows [0, rows) of one strip towards the core while the tile before them runs: a tile's
// rows are ldc apart, so the hardware's stream prefetchers do not see them coming.
inline void prefetch_tile(const float* c, int64_t ldc, int64_t rows, int width) {
  for (int64_t r = 0; r < rows; ++r)
    for (int j = 0; j < width; j += 16)
      _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + j), _MM_HINT_T0);
}

// One step of each kernel. A is the element type of A (a pair of bfloat16 in one uint32_t, or a
// float); B the packed element type, kBStep of them per step of a strip.
struct Bf16Step {
  using A = uint32_t;
  using B = uint16_t;
  using BVec = __m512bh;
  using AVec = __m512bh;
  static constexpr int64_t kBStep = NR * 2;
  DT_TILES_STEP static BVec load_b(const B* p, int j) { return (BVec)_mm512_loadu_si512(p + 32 * j); }
  DT_TILES_STEP static AVec broadcast(A a) { return (AVec)_mm512_set1_epi32(int(a)); }
  DT_TILES_STEP static __m512 madd(__m512 acc, AVec a, BVec b) { return _mm512_dpbf16_ps(acc, a, b); }
};
struct F32Step {
  using A = float;
  using B = float;
  using BVec = __m512;
  using AVec = __m512;
  static constexpr int64_t kBStep = NR;
  DT_TILES_STEP static BVec load_b(const B* p, int j) { return _mm512_loadu_ps(p + 16 * j); }
  DT_TILES_STEP static AVec broadcast(A a) { return _mm512_set1_ps(a); }
  DT_TILES_STEP static __m512 madd(__m512 acc, AVec a, BVec b) { return _mm512_fmadd_ps(a, b, acc); }
};

// C[R rows, up to 64 columns] (+)= A's rows x a packed B strip over `steps` steps; A's element
// (row r, step p) is a[r * a_row + p * a_step]. The block's sum starts from zero and is added to C
// at the end (with add_c), as BLAS adds alpha A B to beta C: a bias already in C joins the first k
// block's sum, not its products one by one (with one k block, k <= 384 pairs or floats, it joins last).
template <int R, class S>
DT_TILES_TARGET void micro_tile(int64_t steps, const typename S::A* a, int64_t a_row, int64_t a_step,
                                const typename S::B* b, float* c, int64_t ldc, int width, bool add_c) {
  __mmask16 mask[4];
  for (int j = 0; j < 4; ++j) mask[j] = lanes16(width - 16 * j);
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < steps; ++p) {
    const typename S::B* bp = b + p * S::kBStep;
    const typename S::BVec b0 = S::load_b(bp, 0), b1 = S::load_b(bp, 1), b2 = S::load_b(bp, 2),
                           b3 = S::load_b(bp, 3);
    for (int r = 0; r < R; ++r) {
      const typename S::AVec av = S::broadcast(a[r * a_row + p * a_step]);
      acc[r][0] = S::madd(acc[r][0], av, b0);
      acc[r][1] = S::madd(acc[r][1], av, b1);
      acc[r][2] = S::madd(acc[r][2], av, b2);
      acc[r][3] = S::madd(acc[r][3], av, b3);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) {
      float* cj = c + r * ldc + 16 * j;
      _mm512_mask_storeu_ps(cj, mask[j],
                            add_c ? _mm512_add_ps(_mm512_maskz_loadu_ps(mask[j], cj), acc[r][j]) : acc[r][j]);
    }
}

// One unit of work: columns [n0, n1) of C (at most GROUP strips: for_units) over m rows,
// `steps` steps of k. A's element (i, p) is a[i * a_row + p * a_step]. pack(p0, steps, col0, cols, out)
// writes B's steps [p0, p0 + steps) of columns [col0, col0 + cols) as strips of NR columns, each
// [step][NR] x kBStep / NR elements, zero past the last column. For each block of k the unit's strips,
// packed together (most of L2), meet each MC rows of A while those rows are hot.
template <class S, class Pack>
void columns(int64_t m, int64_t n0, int64_t n1, int64_t steps, const typename S::A* a, int64_t a_row,
             int64_t a_step, const Pack& pack, float* c, int64_t ldc, bool accumulate,
             std::vector<typename S::B>& packed) {
  using Tile = void (*)(int64_t, const typename S::A*, int64_t, int64_t, const typename S::B*, float*,
                        int64_t, int, bool);
  static constexpr Tile kTiles[MR + 1] = {nullptr,          micro_tile<1, S>, micro_tile<2, S>,
                                          micro_tile<3, S>, micro_tile<4, S>, micro_tile<5, S>,
                                          micro_tile<6, S>};
  const int64_t cols = n1 - n0, strips = (cols + NR - 1) / NR;
  packed.resize(size_t(strips * KC_STEPS * S::kBStep));
  for (int64_t p0 = 0; p0 < steps; p0 += KC_STEPS) {
    const int64_t block = std::min(KC_STEPS, steps - p0);
    const bool add_c = accumulate || p0 > 0;
    pack(p0, block, n0, cols, packed.data());
    for (int64_t i0 = 0; i0 < m; i0 += MC) {
      const int64_t i1 = std::min(m, i0 + MC);
      for (int64_t s = 0; s < strips; ++s) {
        const typename S::B* strip = packed.data() + s * block * S::kBStep;
        const int width = int(std::min<int64_t>(NR, cols - s * NR));
        float* cs = c + n0 + s * NR;
        for (int64_t i = i0; i < i1; i += MR) {
          const int rows = int(std::min<int64_t>(MR, i1 - i));
          if (i + MR < i1) prefetch_tile(cs + (i + MR) * ldc, ldc, std::min<int64_t>(MR, i1 - i - MR), width);
          kTiles[rows](block, a + i * a_row + p0 * a_step, a_row, a_step, strip, cs + i * ldc, ldc, width,
                       add_c);
        }
      }
    }
  }
}

// Whether a product runs on a thread team: not under 2M multiply-adds, not on one strip of C unless it
// has rows enough to split, and not when called from inside a parallel region (attention's heads) or
// with one thread allowed.
inline bool worth_threads(int64_t m, int64_t n, int64_t k) {
  return !omp_in_parallel() && omp_get_max_threads() > 1 && (n > NR || m >= 2 * MC) &&
         m * n * k >= (int64_t(1) << 21);
}

// Called by every thread of a parallel region: C in units of whole strips of columns, handed out as
// the threads come for them, f(r0, r1, n0, n1) each for rows [r0, r1) and columns [n0, n1). About four
// column units a thread (at most GROUP strips), so that a thread woken late (under
// OMP_WAIT_POLICY=passive a sleeping thread can take a millisecond to run on a shared machine) leaves
// its share to the others instead of making them wait for it. Where C has fewer column units than
// threads (a narrow C: n = 64 to 128 on two threads, 768 on sixteen) its rows are split too, in whole
// blocks of MC rows, so that no thread sits idle; each row block packs its strips again, which costs
// little on a B that narrow. Every element of C is still one unit's k-ordered sum: the same bits.
template <class F>
void for_units(int64_t m, int64_t n, const F& f) {
  const int threads = omp_get_num_threads();
  const int64_t strips = (n + NR - 1) / NR;
  const int64_t per_unit =
      threads == 1 ? GROUP : std::clamp<int64_t>((strips + 4 * threads - 1) / (4 * threads), 1, GROUP);
  const int64_t col_units = (strips + per_unit - 1) / per_unit;
  const int64_t row_blocks = (m + MC - 1) / MC;
  const int64_t row_parts = col_units >= threads ? 1 : std::min<int64_t>(row_blocks, 2 * threads);
  const int64_t part_rows = (row_blocks + row_parts - 1) / row_parts * MC;
  const int64_t row_units = (m + part_rows - 1) / part_rows;
#pragma omp for schedule(dynamic, 1)
  for (int64_t u = 0; u < col_units * row_units; ++u) {
    const int64_t cu = u / row_units, ru = u % row_units;
    f(ru * part_rows, std::min(m, (ru + 1) * part_rows), std::min(n, cu * per_unit * NR),
      std::min(n, (cu + 1) * per_unit * NR));
  }
}

}  // namespace deltatune::ops::kernels::tiles
