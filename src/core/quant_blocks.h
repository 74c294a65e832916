#pragma once
// The quantised formats' block layouts (deltatune/quantize.h), shared by their definition
// (core/quantize.cc) and the CPU's tile decoders (ops/cpu/dequantize.cc).
#include <cstdint>

#include "deltatune/dtype.h"

namespace deltatune::quant {

constexpr int64_t kNf4Block = 64;      // nf4: values per absmax, the matrix flattened row-major
constexpr int64_t kNestedBlock = 256;  // nf4-dq: absmaxes per block of the second quantisation
constexpr int64_t kGgmlBlock = 32;     // q8_0 / q4_0: values per block, each row on its own
constexpr int64_t kQ8Bytes = 2 + 32;   // float16 d, 32 int8
constexpr int64_t kQ4Bytes = 2 + 16;   // float16 d, 32 nibbles

inline int64_t blocks_per_row(int64_t cols) { return (cols + kGgmlBlock - 1) / kGgmlBlock; }
// A block's float16 scale, little-endian at its start.
inline float load_half(const uint8_t* at) { return f16_to_f32(uint16_t(at[0] | (at[1] << 8))); }

}  // namespace deltatune::quant
