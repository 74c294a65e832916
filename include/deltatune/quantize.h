#pragma once
// Quantised weight matrices: a frozen [rows, cols] weight stored in 4 or 8 bits, dequantised a few
// rows at a time inside the product (ops::quantized_linear), never whole in float32.
//
//   QuantizedMatrix q = quantize(w.f32(), rows, cols, QuantFormat::NF4);  // ~0.56 bytes a weight
//   std::vector<float> tile(size_t(4 * cols));
//   q.dequantize_rows(0, 4, tile.data());                                  // rows 0..3
//
// The formats are other projects' definitions, reproduced exactly so a recipe means the same here:
//   nf4   bitsandbytes' NormalFloat4 (QLoRA): the matrix flattened row-major into blocks of 64, each
//         scaled by its absmax (float32) to [-1, 1] and rounded to the nearest of 16 normal quantiles
//         (bitsandbytes' decision tree, ties going down); two codes a byte, the first in the high nibble.
//   nf4-dq  nf4 with QLoRA's double quantisation (bitsandbytes' compress_statistics,
//         transformers' bnb_4bit_use_double_quant): the same codes, and the blocks' absmaxes stored as
//         their mean (float32) plus, per block of 256 absmaxes, an absmax (float32) and 8-bit codes of
//         bitsandbytes' signed dynamic map (dynamic_map()), each the nearest map entry; 4.127 bits a
//         weight instead of nf4's 4.5.
//   int8  per-output-channel absmax (LLM.int8's vector-wise quantisation): q = round(w * 127 / absmax)
//         (half to even, as bitsandbytes' kernel), dequantised as q * (absmax / 127).
//   q8_0  ggml's block_q8_0: each row in blocks of 32, d = absmax / 127 as float16, q = roundf(w / d).
//   q4_0  ggml's block_q4_0: blocks of 32, d = (the value of largest magnitude) / -8 as float16,
//         q = min(15, trunc(w / d + 8.5)), stored as q - 8; byte j holds elements j (low nibble) and
//         j + 16 (high nibble).
// ggml's formats need rows whose length is a multiple of 32; here a row's last block is zero-padded,
// so any length works and a multiple of 32 gives ggml's bytes exactly. An all-zero block has scale 0
// and dequantises to zeros. NaN or infinite weights are refused (ConfigError naming row and column).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace deltatune {

enum class QuantFormat : uint8_t { NF4, Int8, Q8_0, Q4_0, NF4DoubleQuant };

const char* quant_format_name(QuantFormat f);  // "nf4", "int8", "q8_0", "q4_0", "nf4-dq"
// The format of a name, or nullopt for an unknown one.
std::optional<QuantFormat> parse_quant_format(const std::string& name);
const char* quant_format_choices();  // "nf4, int8, q8_0, q4_0, nf4-dq" (for error messages)
// Every format, in that order.
const std::vector<QuantFormat>& all_quant_formats();

// bitsandbytes' NF4 codebook (code i dequantises to kNf4Codebook[i] * absmax).
extern const float kNf4Codebook[16];
// bitsandbytes' signed dynamic 8-bit map (create_dynamic_map: for exponents e = -6..0, 2^(e+6) means
// of linspace(0.1, 1) times ±10^e, then 0 and 1; 256 values ascending), the code nf4-dq's scales use.
const std::vector<float>& dynamic_map();

class QuantizedMatrix {
 public:
  QuantFormat format = QuantFormat::Int8;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> data;  // the codes (q8_0 / q4_0: ggml's blocks, float16 scale first)
  std::vector<float> scales;  // nf4: absmax per block of 64; int8: per row; q8_0 / q4_0 / nf4-dq: none
  // nf4-dq's absmax per block of 64: dynamic_map()[scale_codes[b]] * scale_absmax[b / 256] + scale_offset.
  std::vector<uint8_t> scale_codes;
  std::vector<float> scale_absmax;
  float scale_offset = 0;

  // out [count, cols] (row-major) = rows [row0, row0 + count) dequantised.
  void dequantize_rows(int64_t row0, int64_t count, float* out) const;
  size_t bytes() const {
    return data.size() + (scales.size() + scale_absmax.size()) * sizeof(float) + scale_codes.size() +
           (format == QuantFormat::NF4DoubleQuant ? sizeof(float) : 0);
  }
  // nf4 / nf4-dq: block b's absmax (of 64 values) as stored.
  float nf4_block_scale(int64_t b) const;
};

// Quantises a row-major float32 matrix. Throws ConfigError on NaN or infinite values.
QuantizedMatrix quantize(const float* w, int64_t rows, int64_t cols, QuantFormat format);

}  // namespace deltatune
