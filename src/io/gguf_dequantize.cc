// GGUF tensors to float32: the plain types converted, ggml's block types decoded as ggml-quants.c's
// dequantize_row_* functions define them (Q8_0 and Q4_0 through our own QuantizedMatrix, whose bytes
// are ggml's; the K-quants Q4_K and Q6_K here).
#include <cstring>

#include "deltatune/dtype.h"
#include "deltatune/error.h"
#include "deltatune/gguf.h"
#include "deltatune/quantize.h"

namespace deltatune::gguf {
namespace {

constexpr int64_t kQK_K = 256;

float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Q4_K's 6-bit scale and min of sub-block j, packed into 12 bytes (ggml's get_scale_min_k4).
void scale_min_k4(int j, const uint8_t* q, int& scale, int& min) {
  if (j < 4) {
    scale = q[j] & 63;
    min = q[j + 4] & 63;
  } else {
    scale = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// block_q4_K: d, dmin (float16), scales[12], qs[128]; eight sub-blocks of 32: y = d*sc*q - dmin*m.
void dequantize_q4_k(const uint8_t* block, float* y) {
  const float d = half_at(block), dmin = half_at(block + 2);
  const uint8_t* scales = block + 4;
  const uint8_t* q = block + 16;
  for (int j = 0; j < kQK_K; j += 64, q += 32) {
    int sc1, m1, sc2, m2;
    scale_min_k4(j / 32, scales, sc1, m1);
    scale_min_k4(j / 32 + 1, scales, sc2, m2);
    for (int l = 0; l < 32; ++l) *y++ = d * float(sc1) * float(q[l] & 0xF) - dmin * float(m1);
    for (int l = 0; l < 32; ++l) *y++ = d * float(sc2) * float(q[l] >> 4) - dmin * float(m2);
  }
}

// block_q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d (float16); sixteen
// sub-blocks of 16: y = d * scale * (q - 32).
void dequantize_q6_k(const uint8_t* block, float* y) {
  const uint8_t* ql = block;
  const uint8_t* qh = block + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(block + 192);
  const float d = half_at(block + 208);
  for (int n = 0; n < kQK_K; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * float(sc[is]) * float(q1);
      y[l + 32] = d * float(sc[is + 2]) * float(q2);
      y[l + 64] = d * float(sc[is + 4]) * float(q3);
      y[l + 96] = d * float(sc[is + 6]) * float(q4);
    }
  }
}

std::vector<float> dequantize_ggml_blocks(const TensorInfo& t, QuantFormat format) {
  QuantizedMatrix m;
  m.format = format;
  m.cols = t.dims.empty() ? 1 : t.dims[0];
  m.rows = m.cols ? t.elements() / m.cols : 0;
  m.data.assign(t.data, t.data + t.bytes);
  std::vector<float> out(size_t(t.elements()));
  if (m.rows) m.dequantize_rows(0, m.rows, out.data());
  return out;
}

template <typename Block>
std::vector<float> dequantize_k(const TensorInfo& t, Block decode) {
  std::vector<float> out(size_t(t.elements()));
  const uint32_t type_size = traits(t.type).type_size;
  for (int64_t b = 0; b < t.elements() / kQK_K; ++b) decode(t.data + b * type_size, out.data() + b * kQK_K);
  return out;
}

}  // namespace

std::vector<float> dequantize(const TensorInfo& t, const std::filesystem::path& file) {
  const size_t n = size_t(t.elements());
  std::vector<float> out;
  switch (t.type) {
    case GgmlType::F32:
      out.resize(n);
      if (n) std::memcpy(out.data(), t.data, n * 4);
      return out;
    case GgmlType::F64:
      out.resize(n);
      for (size_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, t.data + 8 * i, 8);
        out[i] = float(v);
      }
      return out;
    case GgmlType::F16:
    case GgmlType::BF16:
      out.resize(n);
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        out[i] = t.type == GgmlType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
      return out;
    case GgmlType::Q8_0:
      return dequantize_ggml_blocks(t, QuantFormat::Q8_0);
    case GgmlType::Q4_0:
      return dequantize_ggml_blocks(t, QuantFormat::Q4_0);
    case GgmlType::Q4_K:
      return dequantize_k(t, dequantize_q4_k);
    case GgmlType::Q6_K:
      return dequantize_k(t, dequantize_q6_k);
    default:
      throw IoError((file.empty() ? std::string() : file.string() + ": ") + "tensor '" + t.name + "': type " +
                    traits(t.type).name +
                    " cannot be read (supported: F32, F16, BF16, F64, Q8_0, Q4_0, Q4_K, Q6_K)");
  }
}

}  // namespace deltatune::gguf
