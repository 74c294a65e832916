#pragma once
// The CPU's tile decoders for quantised weights: what the products (quantized_gemm.cc) decode a few
// rows at a time. Bit for bit QuantizedMatrix::dequantize_rows (the formats' definition, core/), in
// AVX-512, AVX2 or plain code picked once for the CPU at run time.
#include <cstdint>

#include "deltatune/quantize.h"

namespace deltatune::ops {

// out [count, cols] = rows [row0, row0 + count) of w, dequantised.
void dequantize_tile(const QuantizedMatrix& w, int64_t row0, int64_t count, float* out);

// The instruction set dequantize_tile uses on this CPU: "avx512", "avx2" or "baseline".
const char* dequantize_isa();
// dequantize_tile in a named set (tests compare every build the CPU can run); false, nothing written,
// when the CPU lacks it.
bool dequantize_tile_using(const char* isa, const QuantizedMatrix& w, int64_t row0, int64_t count,
                           float* out);

}  // namespace deltatune::ops
