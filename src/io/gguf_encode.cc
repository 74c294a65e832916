// Float32 matrices to the bytes of a GGUF tensor type: the plain types converted (round to nearest
// even), Q8_0 and Q4_0 through quantize(), whose blocks are ggml's bytes when a row is whole blocks.
#include <cstring>

#include "deltatune/dtype.h"
#include "deltatune/error.h"
#include "deltatune/gguf.h"
#include "deltatune/quantize.h"

namespace deltatune::gguf {

std::vector<uint8_t> encode(const float* values, int64_t rows, int64_t cols, GgmlType type) {
  const size_t n = size_t(rows * cols);
  std::vector<uint8_t> out;
  switch (type) {
    case GgmlType::F32:
      out.resize(n * 4);
      if (n) std::memcpy(out.data(), values, n * 4);
      return out;
    case GgmlType::F16:
    case GgmlType::BF16:
      out.resize(n * 2);
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = type == GgmlType::F16 ? f32_to_f16(values[i]) : f32_to_bf16(values[i]);
        std::memcpy(out.data() + 2 * i, &h, 2);
      }
      return out;
    case GgmlType::Q8_0:
    case GgmlType::Q4_0: {
      if (cols % 32 != 0)
        throw ConfigError("gguf: " + std::string(traits(type).name) +
                          " needs rows whose length is a multiple of 32, not " + std::to_string(cols));
      QuantizedMatrix q =
          quantize(values, rows, cols, type == GgmlType::Q8_0 ? QuantFormat::Q8_0 : QuantFormat::Q4_0);
      return std::move(q.data);
    }
    default:
      throw ConfigError(std::string("gguf: cannot write type ") + traits(type).name +
                        " (supported: F32, F16, BF16, Q8_0, Q4_0)");
  }
}

}  // namespace deltatune::gguf
