#pragma once
// Walking the elements of a strided tensor in row-major order, and reading any dtype as float.
#include <cstdint>

#include "deltatune/dtype.h"
#include "deltatune/tensor.h"

namespace deltatune::detail {

// Calls fn(i, offset) for each element: i is the row-major index, offset the storage offset in
// elements (relative to the tensor's own offset).
template <class Fn>
void for_each_offset(const Shape& shape, const Shape& strides, Fn&& fn) {
  const int64_t rank = int64_t(shape.size());
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  if (rank == 0) {
    fn(int64_t(0), int64_t(0));
    return;
  }
  int64_t index[16] = {0};
  int64_t offset = 0;
  const int64_t inner = shape[rank - 1], inner_stride = strides[rank - 1];
  for (int64_t i = 0; i < n; i += inner) {
    for (int64_t j = 0; j < inner; ++j) fn(i + j, offset + j * inner_stride);
    for (int64_t d = rank - 2; d >= 0; --d) {
      offset += strides[d];
      if (++index[d] < shape[d]) break;
      offset -= strides[d] * shape[d];
      index[d] = 0;
    }
  }
}

inline float load_as_float(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::F32:
      return static_cast<const float*>(base)[i];
    case DType::F16:
      return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::BF16:
      return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::I32:
      return float(static_cast<const int32_t*>(base)[i]);
    case DType::I64:
      return float(static_cast<const int64_t*>(base)[i]);
  }
  return 0;
}

inline void store_from_float(void* base, DType dtype, int64_t i, float v) {
  switch (dtype) {
    case DType::F32:
      static_cast<float*>(base)[i] = v;
      break;
    case DType::F16:
      static_cast<uint16_t*>(base)[i] = f32_to_f16(v);
      break;
    case DType::BF16:
      static_cast<uint16_t*>(base)[i] = f32_to_bf16(v);
      break;
    case DType::I32:
      static_cast<int32_t*>(base)[i] = int32_t(v);
      break;
    case DType::I64:
      static_cast<int64_t*>(base)[i] = int64_t(v);
      break;
  }
}

}  // namespace deltatune::detail
