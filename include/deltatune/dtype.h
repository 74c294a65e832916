#pragma once
// Storage element types. Floating types are computed in float32 on the CPU.
#include <cstdint>
#include <cstring>
#include <string>

namespace deltatune {

enum class DType : uint8_t { F32, F16, BF16, I32, I64 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "float32", "float16", ...
bool is_floating(DType t);

// Half-precision conversions (round to nearest even), bit-exact with PyTorch.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

enum class Device : uint8_t { CPU, CUDA };
const char* device_name(Device d);

}  // namespace deltatune
