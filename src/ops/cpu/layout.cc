// The CPU copies: memmove for same-dtype contiguous data, float32 row copies on the OpenMP threads
// for strided sources (transposes, permuted heads), dense float32 <-> bfloat16 casts in vector loops,
// and a gather/scatter for everything else.
#include <cstring>
#include <vector>

#include "core/strided.h"
#include "deltatune/dtype.h"
#include "ops/cpu/cpu_backend.h"

namespace deltatune::ops {
namespace {

bool dense(const StridedView& v) {
  int64_t expected = 1;
  for (int64_t d = int64_t(v.shape.size()) - 1; d >= 0; --d) {
    if (v.shape[size_t(d)] == 1) continue;
    if (v.strides[size_t(d)] != expected) return false;
    expected *= v.shape[size_t(d)];
  }
  return true;
}

// Offset of row r (row-major over all dims but the last) under `strides`.
int64_t row_offset(int64_t r, const Shape& shape, const Shape& strides) {
  int64_t off = 0;
  for (int64_t d = int64_t(shape.size()) - 2; d >= 0; --d) {
    off += (r % shape[size_t(d)]) * strides[size_t(d)];
    r /= shape[size_t(d)];
  }
  return off;
}

// float32 into a destination with unit-stride rows (a contiguous tensor, a window of a KV cache) from
// any strided source (transposes, permuted heads), row by row over the last dim.
void copy_rows_f32(const StridedView& dst, const StridedView& src) {
  const int64_t n = shape_numel(dst.shape);
  const int64_t last = dst.shape.back(), last_stride = src.strides.back(), rows = n / last;
  const float* sp = static_cast<const float*>(src.base) + src.offset;
  float* dp = static_cast<float*>(dst.base) + dst.offset;
#pragma omp parallel for if (n > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const float* from = sp + row_offset(r, dst.shape, src.strides);
    float* to = dp + row_offset(r, dst.shape, dst.strides);
    if (last_stride == 1)
      std::memcpy(to, from, size_t(last) * sizeof(float));
    else
      for (int64_t c = 0; c < last; ++c) to[c] = from[c * last_stride];
  }
}

// Dense float32 <-> bfloat16, element by element as the gather below would (the same bits), in loops
// the compiler vectorises, on the threads when large: a learning weight is rounded for the BF16 kernel
// at every call (bert-base full fine-tuning under --bf16: 85M values a step). False for other casts.
template <typename From, typename To, typename Convert>
void convert_dense(const StridedView& dst, const StridedView& src, int64_t n, Convert convert) {
  const From* sp = static_cast<const From*>(src.base) + src.offset;
  To* dp = static_cast<To*>(dst.base) + dst.offset;
#pragma omp parallel for simd if (n > 65536)
  for (int64_t i = 0; i < n; ++i) dp[i] = convert(sp[i]);
}

bool cast_dense_bf16(const StridedView& dst, const StridedView& src, int64_t n) {
  if (!dense(dst) || !dense(src)) return false;
  if (src.dtype == DType::F32 && dst.dtype == DType::BF16)
    convert_dense<float, uint16_t>(dst, src, n, [](float v) { return f32_to_bf16(v); });
  else if (src.dtype == DType::BF16 && dst.dtype == DType::F32)
    convert_dense<uint16_t, float>(dst, src, n, [](uint16_t v) { return bf16_to_f32(v); });
  else
    return false;
  return true;
}

}  // namespace

void CpuBackend::copy(const StridedView& dst, const StridedView& src) const {
  const int64_t n = shape_numel(dst.shape);
  if (n == 0) return;
  if (src.dtype == dst.dtype && dense(dst) && dense(src)) {
    const size_t esize = dtype_size(dst.dtype);
    std::memmove(static_cast<char*>(dst.base) + dst.offset * esize,
                 static_cast<const char*>(src.base) + src.offset * esize, size_t(n) * esize);
    return;
  }
  // (a source sharing the storage may overlap: the gather below copes)
  if (src.base != dst.base && cast_dense_bf16(dst, src, n)) return;
  if (src.dtype == DType::F32 && dst.dtype == DType::F32 && !dst.shape.empty() && src.base != dst.base &&
      (dense(dst) || dst.strides.back() == 1))
    return copy_rows_f32(dst, src);
  // Gather source values row-major, then scatter into the destination's layout.
  if (src.dtype == DType::I64 && dst.dtype == DType::I64) {
    std::vector<int64_t> v(static_cast<size_t>(n));
    const int64_t* sp = static_cast<const int64_t*>(src.base) + src.offset;
    int64_t* dp = static_cast<int64_t*>(dst.base) + dst.offset;
    detail::for_each_offset(src.shape, src.strides, [&](int64_t i, int64_t o) { v[size_t(i)] = sp[o]; });
    detail::for_each_offset(dst.shape, dst.strides, [&](int64_t i, int64_t o) { dp[o] = v[size_t(i)]; });
    return;
  }
  std::vector<float> v(static_cast<size_t>(n));
  detail::for_each_offset(src.shape, src.strides, [&](int64_t i, int64_t o) {
    v[size_t(i)] = detail::load_as_float(src.base, src.dtype, src.offset + o);
  });
  detail::for_each_offset(dst.shape, dst.strides, [&](int64_t i, int64_t o) {
    detail::store_from_float(dst.base, dst.dtype, dst.offset + o, v[size_t(i)]);
  });
}

void CpuBackend::fill(const StridedView& dst, float value) const {
  if (dst.dtype == DType::F32 && dense(dst)) {
    float* p = static_cast<float*>(dst.base) + dst.offset;
    for (int64_t i = 0, n = shape_numel(dst.shape); i < n; ++i) p[i] = value;
    return;
  }
  detail::for_each_offset(dst.shape, dst.strides, [&](int64_t, int64_t o) {
    detail::store_from_float(dst.base, dst.dtype, dst.offset + o, value);
  });
}

void CpuBackend::copy_blocks(char* dst, int64_t dst_stride, const char* src, int64_t src_stride,
                             int64_t outer, int64_t block) const {
#pragma omp parallel for if (outer * block > (1 << 18))
  for (int64_t r = 0; r < outer; ++r) std::memcpy(dst + r * dst_stride, src + r * src_stride, size_t(block));
}

}  // namespace deltatune::ops
