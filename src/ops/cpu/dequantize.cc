// Tile decoders for the quantised formats, one build per instruction set, picked once at run time (as
// the bf16 GEMM is). Each value is the definition's one multiply (code value x scale), so every build
// gives the bits of QuantizedMatrix::dequantize_rows. nf4's 16-entry codebook fits one AVX-512
// register (a lookup is one permute) or two AVX2 registers (two permutes and a blend); the ggml
// formats and int8 are plain loops over whole blocks that the compiler vectorises for the set its
// caller targets.
#include "ops/cpu/dequantize.h"

#include <algorithm>
#include <string_view>

#include "core/quant_blocks.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define DT_AVX512 __attribute__((target("avx512f")))
#define DT_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace deltatune::ops {
namespace {

using namespace quant;

enum class Isa { Avx512, Avx2, Baseline };

Isa detect_isa() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Baseline;
}

Isa isa() {
  static const Isa chosen = detect_isa();
  return chosen;
}

const char* isa_name(Isa set) {
  switch (set) {
    case Isa::Avx512:
      return "avx512";
    case Isa::Avx2:
      return "avx2";
    default:
      return "baseline";
  }
}

#if defined(__x86_64__)
// 64 nf4 values (32 bytes, the first of each pair in the high nibble) times their block's scale.
DT_AVX512 void nf4_block_avx512(const uint8_t* bytes, float scale, float* out) {
  const __m512 codebook = _mm512_loadu_ps(kNf4Codebook), s = _mm512_set1_ps(scale);
  // Interleave the high-nibble values (first of a pair) with the low-nibble ones.
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int half = 0; half < 2; ++half) {
    const __m512i v =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + 16 * half)));
    // The permute reads an index's low 4 bits: the low nibble needs no mask.
    const __m512 high = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), codebook);
    const __m512 low = _mm512_permutexvar_ps(v, codebook);
    _mm512_storeu_ps(out + 32 * half, _mm512_mul_ps(_mm512_permutex2var_ps(high, first, low), s));
    _mm512_storeu_ps(out + 32 * half + 16, _mm512_mul_ps(_mm512_permutex2var_ps(high, second, low), s));
  }
}

// The codebook entries of 8 codes: a permute in each half of the codebook, the half chosen by bit 3
// (moved to the sign bit, which the blend reads). The permute reads the low 3 bits only.
DT_AVX2 inline __m256 nf4_lookup_avx2(__m256i codes, __m256 first_half, __m256 second_half) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(first_half, codes),
                          _mm256_permutevar8x32_ps(second_half, codes),
                          _mm256_castsi256_ps(_mm256_slli_epi32(codes, 28)));
}

DT_AVX2 void nf4_block_avx2(const uint8_t* bytes, float scale, float* out) {
  const __m256 first_half = _mm256_loadu_ps(kNf4Codebook), second_half = _mm256_loadu_ps(kNf4Codebook + 8);
  const __m256 s = _mm256_set1_ps(scale);
  for (int q = 0; q < 4; ++q) {
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes + 8 * q)));
    const __m256 high = _mm256_mul_ps(nf4_lookup_avx2(_mm256_srli_epi32(v, 4), first_half, second_half), s);
    const __m256 low = _mm256_mul_ps(nf4_lookup_avx2(v, first_half, second_half), s);
    // unpack interleaves within 128-bit lanes; the lane permutes put the pairs back in order.
    const __m256 a = _mm256_unpacklo_ps(high, low), b = _mm256_unpackhi_ps(high, low);
    _mm256_storeu_ps(out + 16 * q, _mm256_permute2f128_ps(a, b, 0x20));
    _mm256_storeu_ps(out + 16 * q + 8, _mm256_permute2f128_ps(a, b, 0x31));
  }
}
#endif

void nf4_block_plain(const uint8_t* bytes, float scale, float* out) {
  for (int j = 0; j < kNf4Block / 2; ++j) {
    out[2 * j] = kNf4Codebook[bytes[j] >> 4] * scale;
    out[2 * j + 1] = kNf4Codebook[bytes[j] & 0x0f] * scale;
  }
}

// nf4 / nf4-dq: the flattened values [begin, end) (blocks of 64 run across rows). Whole blocks go
// through the vector kernel; a block the range cuts goes value by value.
template <Isa kIsa>
[[gnu::always_inline]] inline void nf4_range(const QuantizedMatrix& w, int64_t begin, int64_t end,
                                             float* out) {
  for (int64_t i = begin; i < end;) {
    const int64_t b = i / kNf4Block, block_end = std::min(end, (b + 1) * kNf4Block);
    const float scale = w.nf4_block_scale(b);
    if (i == b * kNf4Block && block_end == i + kNf4Block) {
      const uint8_t* bytes = w.data.data() + i / 2;
#if defined(__x86_64__)
      if constexpr (kIsa == Isa::Avx512) nf4_block_avx512(bytes, scale, out + (i - begin));
      if constexpr (kIsa == Isa::Avx2) nf4_block_avx2(bytes, scale, out + (i - begin));
      if constexpr (kIsa == Isa::Baseline) nf4_block_plain(bytes, scale, out + (i - begin));
#else
      nf4_block_plain(bytes, scale, out + (i - begin));
#endif
    } else {
      for (int64_t k = i; k < block_end; ++k) {
        const uint8_t byte = w.data[size_t(k / 2)];
        out[k - begin] = kNf4Codebook[k % 2 == 0 ? byte >> 4 : byte & 0x0f] * scale;
      }
    }
    i = block_end;
  }
}

// q8_0 / q4_0: one row's blocks; the last may be cut short by the row's end (zero padding not copied).
[[gnu::always_inline]] inline void ggml_row(const QuantizedMatrix& w, int64_t r, float* out) {
  const bool q8 = w.format == QuantFormat::Q8_0;
  const int64_t per_row = blocks_per_row(w.cols), block_bytes = q8 ? kQ8Bytes : kQ4Bytes;
  for (int64_t b = 0; b < per_row; ++b) {
    const uint8_t* block = w.data.data() + (r * per_row + b) * block_bytes;
    const float d = load_half(block);
    const uint8_t* codes = block + 2;
    float* o = out + b * kGgmlBlock;
    if ((b + 1) * kGgmlBlock <= w.cols) {
      if (q8) {
        for (int j = 0; j < kGgmlBlock; ++j) o[j] = float(int8_t(codes[j])) * d;
      } else {  // byte j: value j in the low nibble, value j + 16 in the high one
        for (int j = 0; j < kGgmlBlock / 2; ++j) o[j] = float(int(codes[j] & 0x0f) - 8) * d;
        for (int j = 0; j < kGgmlBlock / 2; ++j) o[j + 16] = float(int(codes[j] >> 4) - 8) * d;
      }
    } else {
      for (int64_t j = 0; j < w.cols - b * kGgmlBlock; ++j)
        o[j] = q8 ? float(int8_t(codes[j])) * d
                  : float(int((j < 16 ? codes[j] : codes[j - 16] >> 4) & 0x0f) - 8) * d;
    }
  }
}

template <Isa kIsa>
[[gnu::always_inline]] inline void decode(const QuantizedMatrix& w, int64_t row0, int64_t count, float* out) {
  switch (w.format) {
    case QuantFormat::NF4:
    case QuantFormat::NF4DoubleQuant:
      nf4_range<kIsa>(w, row0 * w.cols, (row0 + count) * w.cols, out);
      return;
    case QuantFormat::Int8:
      for (int64_t r = 0; r < count; ++r) {
        const float scale = w.scales[size_t(row0 + r)];
        const int8_t* codes = reinterpret_cast<const int8_t*>(w.data.data()) + (row0 + r) * w.cols;
        float* o = out + r * w.cols;
        for (int64_t c = 0; c < w.cols; ++c) o[c] = float(codes[c]) * scale;
      }
      return;
    case QuantFormat::Q8_0:
    case QuantFormat::Q4_0:
      for (int64_t r = 0; r < count; ++r) ggml_row(w, row0 + r, out + r * w.cols);
      return;
  }
}

#if defined(__x86_64__)
DT_AVX512 void decode_avx512(const QuantizedMatrix& w, int64_t row0, int64_t count, float* out) {
  decode<Isa::Avx512>(w, row0, count, out);
}
DT_AVX2 void decode_avx2(const QuantizedMatrix& w, int64_t row0, int64_t count, float* out) {
  decode<Isa::Avx2>(w, row0, count, out);
}
#endif
void decode_baseline(const QuantizedMatrix& w, int64_t row0, int64_t count, float* out) {
  decode<Isa::Baseline>(w, row0, count, out);
}

void decode_using(Isa set, const QuantizedMatrix& w, int64_t row0, int64_t count, float* out) {
  if (row0 < 0 || count < 0 || row0 + count > w.rows) {  // the definition's check and error
    w.dequantize_rows(row0, count, out);
    return;
  }
  switch (set) {
#if defined(__x86_64__)
    case Isa::Avx512:
      return decode_avx512(w, row0, count, out);
    case Isa::Avx2:
      return decode_avx2(w, row0, count, out);
#endif
    default:
      return decode_baseline(w, row0, count, out);
  }
}

}  // namespace

void dequantize_tile(const QuantizedMatrix& w, int64_t row0, int64_t count, float* out) {
  decode_using(isa(), w, row0, count, out);
}

const char* dequantize_isa() { return isa_name(isa()); }

bool dequantize_tile_using(const char* name, const QuantizedMatrix& w, int64_t row0, int64_t count,
                           float* out) {
  for (Isa set : {Isa::Avx512, Isa::Avx2, Isa::Baseline})
    if (std::string_view(name) == isa_name(set)) {
      if (int(set) < int(isa())) return false;  // a set beyond this CPU's best
      decode_using(set, w, row0, count, out);
      return true;
    }
  return false;
}

}  // namespace deltatune::ops
