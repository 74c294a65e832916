// The quantised formats' definitions (deltatune/quantize.h): one quantiser and one dequantiser per
// format, element for element as bitsandbytes and ggml define them. The products that read them live
// in src/ops (cpu/quantized_gemm.cc, reference/products.cc).
#include "deltatune/quantize.h"

#include <algorithm>
#include <cmath>

#include "core/quant_blocks.h"
#include "deltatune/dtype.h"
#include "deltatune/error.h"

namespace deltatune {

using namespace quant;

const float kNf4Codebook[16] = {-1.0f,
                                -0.6961928009986877f,
                                -0.5250730514526367f,
                                -0.39491748809814453f,
                                -0.28444138169288635f,
                                -0.18477343022823334f,
                                -0.09105003625154495f,
                                0.0f,
                                0.07958029955625534f,
                                0.16093020141124725f,
                                0.24611230194568634f,
                                0.33791524171829224f,
                                0.44070982933044434f,
                                0.5626170039176941f,
                                0.7229568362236023f,
                                1.0f};

namespace {

std::vector<float> make_dynamic_map() {
  // create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): torch.linspace(0.1, 1, 2^i + 1)
  // and the means of neighbours in float32 (torch's default dtype), each scaled in double by 10^(i - 6)
  // (Python floats), then rounded to float32 by torch.tensor.
  std::vector<double> values;
  for (int i = 0; i < 7; ++i) {
    const int items = (1 << i) + 1;
    const float step = (1.0f - 0.1f) / float(items - 1);
    std::vector<float> boundaries(static_cast<size_t>(items));
    for (int k = 0; k < items; ++k)  // torch's linspace kernel: the upper half counted from the end
      boundaries[size_t(k)] = k < items / 2 ? 0.1f + step * float(k) : 1.0f - step * float(items - k - 1);
    const double scale = std::pow(10.0, double(i - 6));
    for (int k = 0; k + 1 < items; ++k) {
      const float mean = (boundaries[size_t(k)] + boundaries[size_t(k + 1)]) / 2.0f;
      values.push_back(scale * double(mean));
      values.push_back(-scale * double(mean));
    }
  }
  values.push_back(0.0);
  values.push_back(1.0);
  std::sort(values.begin(), values.end());
  return std::vector<float>(values.begin(), values.end());
}

}  // namespace

const std::vector<float>& dynamic_map() {
  static const std::vector<float> map = make_dynamic_map();
  return map;
}

namespace {

// bitsandbytes' dQuantizeNF4 decision tree, flattened: the code is the number of these pivots
// (midpoints between neighbouring codebook values, as its tree has them) that x exceeds.
const float kNf4Pivots[15] = {-0.8480964004993439f,   -0.6106329262256622f,  -0.4599952697753906f,
                              -0.33967943489551544f,  -0.23460740596055984f, -0.13791173323988914f,
                              -0.045525018125772476f, 0.03979014977812767f,  0.1202552504837513f,
                              0.2035212516784668f,    0.2920137718319893f,   0.3893125355243683f,
                              0.5016634166240692f,    0.6427869200706482f,   0.8614784181118011f};

uint8_t nf4_code(float x) {
  uint8_t code = 0;
  for (float pivot : kNf4Pivots) code += x > pivot ? 1 : 0;
  return code;
}

void check_finite(const float* w, int64_t rows, int64_t cols, QuantFormat format) {
  for (int64_t i = 0; i < rows * cols; ++i)
    if (!std::isfinite(w[i]))
      throw ConfigError(std::string("quantize ") + quant_format_name(format) + ": the weight has a " +
                        (std::isnan(w[i]) ? "NaN" : "infinite value") + " at row " +
                        std::to_string(i / cols) + ", column " + std::to_string(i % cols) +
                        "; only finite weights can be quantised");
}

void quantize_nf4(const float* w, QuantizedMatrix& q) {
  const int64_t n = q.rows * q.cols, blocks = (n + kNf4Block - 1) / kNf4Block;
  q.data.assign(size_t((n + 1) / 2), 0);
  q.scales.resize(size_t(blocks));
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kNf4Block, end = std::min(n, begin + kNf4Block);
    float absmax = 0;
    for (int64_t i = begin; i < end; ++i) absmax = std::max(absmax, std::fabs(w[i]));
    q.scales[size_t(b)] = absmax;
    const float inverse = absmax != 0 ? 1.0f / absmax : 0.0f;
    for (int64_t i = begin; i < end; ++i)
      q.data[size_t(i / 2)] |= uint8_t(nf4_code(w[i] * inverse) << (i % 2 == 0 ? 4 : 0));
  }
}

// The index of dynamic_map()'s entry nearest x (ties to the lower one), as bitsandbytes' kernels pick.
uint8_t dynamic_code(float x) {
  const std::vector<float>& map = dynamic_map();
  const auto upper = std::lower_bound(map.begin(), map.end(), x);
  if (upper == map.begin()) return 0;
  if (upper == map.end()) return uint8_t(map.size() - 1);
  const auto lower = upper - 1;
  return uint8_t((x - *lower <= *upper - x ? lower : upper) - map.begin());
}

// bitsandbytes' quantize_4bit(compress_statistics=True) after the nf4 codes: the absmaxes less their
// mean, blockwise-quantised in blocks of 256 with the dynamic map.
void compress_scales(QuantizedMatrix& q) {
  const std::vector<float> absmax = std::move(q.scales);
  q.scales.clear();
  const int64_t n = int64_t(absmax.size());
  double sum = 0;
  for (float a : absmax) sum += a;
  q.scale_offset = n ? float(sum / double(n)) : 0.0f;
  q.scale_codes.resize(size_t(n));
  q.scale_absmax.resize(size_t((n + kNestedBlock - 1) / kNestedBlock));
  for (int64_t b = 0; b < int64_t(q.scale_absmax.size()); ++b) {
    const int64_t begin = b * kNestedBlock, end = std::min(n, begin + kNestedBlock);
    float amax = 0;
    for (int64_t i = begin; i < end; ++i)
      amax = std::max(amax, std::fabs(absmax[size_t(i)] - q.scale_offset));
    q.scale_absmax[size_t(b)] = amax;
    const float inverse = amax != 0 ? 1.0f / amax : 0.0f;
    for (int64_t i = begin; i < end; ++i)
      q.scale_codes[size_t(i)] = dynamic_code((absmax[size_t(i)] - q.scale_offset) * inverse);
  }
}

void quantize_int8(const float* w, QuantizedMatrix& q) {
  q.data.resize(size_t(q.rows * q.cols));
  q.scales.resize(size_t(q.rows));
  for (int64_t r = 0; r < q.rows; ++r) {
    const float* row = w + r * q.cols;
    float absmax = 0;
    for (int64_t c = 0; c < q.cols; ++c) absmax = std::max(absmax, std::fabs(row[c]));
    q.scales[size_t(r)] = absmax / 127.0f;
    const float inverse = absmax != 0 ? 127.0f / absmax : 0.0f;
    for (int64_t c = 0; c < q.cols; ++c)
      q.data[size_t(r * q.cols + c)] = uint8_t(int8_t(std::nearbyint(row[c] * inverse)));
  }
}

// One row's 32-value block, zero-padded past the row's end.
void load_block(const float* row, int64_t cols, int64_t block, float* x) {
  for (int64_t j = 0; j < kGgmlBlock; ++j) {
    const int64_t c = block * kGgmlBlock + j;
    x[j] = c < cols ? row[c] : 0.0f;
  }
}

void store_half(uint8_t* at, uint16_t h) {
  at[0] = uint8_t(h & 0xff);
  at[1] = uint8_t(h >> 8);
}

void quantize_q8_0(const float* w, QuantizedMatrix& q) {
  const int64_t per_row = blocks_per_row(q.cols);
  q.data.resize(size_t(q.rows * per_row * kQ8Bytes));
  float x[kGgmlBlock];
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t b = 0; b < per_row; ++b) {
      load_block(w + r * q.cols, q.cols, b, x);
      float amax = 0;
      for (float v : x) amax = std::max(amax, std::fabs(v));
      const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
      uint8_t* block = q.data.data() + (r * per_row + b) * kQ8Bytes;
      store_half(block, f32_to_f16(d));
      for (int64_t j = 0; j < kGgmlBlock; ++j) block[2 + j] = uint8_t(int8_t(std::round(x[j] * id)));
    }
}

void quantize_q4_0(const float* w, QuantizedMatrix& q) {
  const int64_t per_row = blocks_per_row(q.cols);
  q.data.resize(size_t(q.rows * per_row * kQ4Bytes));
  float x[kGgmlBlock];
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t b = 0; b < per_row; ++b) {
      load_block(w + r * q.cols, q.cols, b, x);
      float amax = 0, max = 0;  // the value of largest magnitude, with its sign
      for (float v : x)
        if (amax < std::fabs(v)) {
          amax = std::fabs(v);
          max = v;
        }
      const float d = max / -8, id = d != 0 ? 1.0f / d : 0.0f;
      uint8_t* block = q.data.data() + (r * per_row + b) * kQ4Bytes;
      store_half(block, f32_to_f16(d));
      for (int64_t j = 0; j < kGgmlBlock / 2; ++j) {
        const uint8_t lo = uint8_t(std::min(15, int(int8_t(x[j] * id + 8.5f))));
        const uint8_t hi = uint8_t(std::min(15, int(int8_t(x[j + kGgmlBlock / 2] * id + 8.5f))));
        block[2 + j] = uint8_t(lo | (hi << 4));
      }
    }
}

void dequantize_row(const QuantizedMatrix& q, int64_t r, float* out) {
  const int64_t cols = q.cols;
  switch (q.format) {
    case QuantFormat::NF4:
    case QuantFormat::NF4DoubleQuant: {
      int64_t block = -1;
      float scale = 0;
      for (int64_t c = 0, i = r * cols; c < cols; ++c, ++i) {
        if (i / kNf4Block != block) scale = q.nf4_block_scale(block = i / kNf4Block);
        const uint8_t byte = q.data[size_t(i / 2)];
        out[c] = kNf4Codebook[i % 2 == 0 ? byte >> 4 : byte & 0x0f] * scale;
      }
      return;
    }
    case QuantFormat::Int8: {
      const float scale = q.scales[size_t(r)];
      const int8_t* codes = reinterpret_cast<const int8_t*>(q.data.data()) + r * cols;
      for (int64_t c = 0; c < cols; ++c) out[c] = float(codes[c]) * scale;
      return;
    }
    case QuantFormat::Q8_0:
    case QuantFormat::Q4_0: {
      const bool q8 = q.format == QuantFormat::Q8_0;
      const int64_t per_row = blocks_per_row(cols), block_bytes = q8 ? kQ8Bytes : kQ4Bytes;
      for (int64_t b = 0; b < per_row; ++b) {
        const uint8_t* block = q.data.data() + (r * per_row + b) * block_bytes;
        const float d = load_half(block);
        float x[kGgmlBlock];
        for (int64_t j = 0; j < kGgmlBlock; ++j)
          x[j] = q8 ? float(int8_t(block[2 + j])) * d
                    : float(int((j < 16 ? block[2 + j] : block[2 + j - 16] >> 4) & 0x0f) - 8) * d;
        const int64_t n = std::min(kGgmlBlock, cols - b * kGgmlBlock);
        std::copy(x, x + n, out + b * kGgmlBlock);
      }
      return;
    }
  }
}

}  // namespace

const char* quant_format_name(QuantFormat f) {
  switch (f) {
    case QuantFormat::NF4:
      return "nf4";
    case QuantFormat::Int8:
      return "int8";
    case QuantFormat::Q8_0:
      return "q8_0";
    case QuantFormat::Q4_0:
      return "q4_0";
    case QuantFormat::NF4DoubleQuant:
      return "nf4-dq";
  }
  return "?";
}

std::optional<QuantFormat> parse_quant_format(const std::string& name) {
  for (QuantFormat f : all_quant_formats())
    if (name == quant_format_name(f)) return f;
  return std::nullopt;
}

const std::vector<QuantFormat>& all_quant_formats() {
  static const std::vector<QuantFormat> formats = {QuantFormat::NF4, QuantFormat::Int8, QuantFormat::Q8_0,
                                                   QuantFormat::Q4_0, QuantFormat::NF4DoubleQuant};
  return formats;
}

const char* quant_format_choices() {
  static const std::string choices = [] {
    std::string out;
    for (QuantFormat f : all_quant_formats())
      out += (out.empty() ? "" : ", ") + std::string(quant_format_name(f));
    return out;
  }();
  return choices.c_str();
}

float QuantizedMatrix::nf4_block_scale(int64_t b) const {
  if (format == QuantFormat::NF4) return scales[size_t(b)];
  return dynamic_map()[scale_codes[size_t(b)]] * scale_absmax[size_t(b / kNestedBlock)] + scale_offset;
}

void QuantizedMatrix::dequantize_rows(int64_t row0, int64_t count, float* out) const {
  if (row0 < 0 || count < 0 || row0 + count > rows)
    throw ShapeError("dequantize_rows: rows [" + std::to_string(row0) + ", " + std::to_string(row0 + count) +
                     ") outside a matrix of " + std::to_string(rows));
  for (int64_t r = 0; r < count; ++r) dequantize_row(*this, row0 + r, out + r * cols);
}

QuantizedMatrix quantize(const float* w, int64_t rows, int64_t cols, QuantFormat format) {
  if (rows < 0 || cols < 0) throw ShapeError("quantize: negative matrix size");
  check_finite(w, rows, cols, format);
  QuantizedMatrix q;
  q.format = format;
  q.rows = rows;
  q.cols = cols;
  switch (format) {
    case QuantFormat::NF4:
      quantize_nf4(w, q);
      break;
    case QuantFormat::NF4DoubleQuant:
      quantize_nf4(w, q);
      compress_scales(q);
      break;
    case QuantFormat::Int8:
      quantize_int8(w, q);
      break;
    case QuantFormat::Q8_0:
      quantize_q8_0(w, q);
      break;
    case QuantFormat::Q4_0:
      quantize_q4_0(w, q);
      break;
  }
  return q;
}

}  // namespace deltatune
