// Reference copies: gather every element row-major (exactly, for integers), then scatter.
#include <vector>

#include "core/strided.h"
#include "ops/reference/reference_backend.h"

namespace deltatune::ops {

namespace {
// Integers exactly (int64 ids below 2^53), floating values through float32 as every copy converts.
double load(const StridedView& v, int64_t o) {
  if (v.dtype == DType::I64) return double(static_cast<const int64_t*>(v.base)[v.offset + o]);
  if (v.dtype == DType::I32) return double(static_cast<const int32_t*>(v.base)[v.offset + o]);
  return detail::load_as_float(v.base, v.dtype, v.offset + o);
}
void store(const StridedView& v, int64_t o, double x) {
  if (v.dtype == DType::I64)
    static_cast<int64_t*>(v.base)[v.offset + o] = int64_t(x);
  else if (v.dtype == DType::I32)
    static_cast<int32_t*>(v.base)[v.offset + o] = int32_t(x);
  else
    detail::store_from_float(v.base, v.dtype, v.offset + o, float(x));
}
}  // namespace

void ReferenceBackend::copy(const StridedView& dst, const StridedView& src) const {
  std::vector<double> v(static_cast<size_t>(shape_numel(dst.shape)));
  detail::for_each_offset(src.shape, src.strides, [&](int64_t i, int64_t o) { v[size_t(i)] = load(src, o); });
  detail::for_each_offset(dst.shape, dst.strides, [&](int64_t i, int64_t o) { store(dst, o, v[size_t(i)]); });
}

void ReferenceBackend::fill(const StridedView& dst, float value) const {
  detail::for_each_offset(dst.shape, dst.strides, [&](int64_t, int64_t o) {
    detail::store_from_float(dst.base, dst.dtype, dst.offset + o, value);
  });
}

void ReferenceBackend::copy_blocks(char* dst, int64_t dst_stride, const char* src, int64_t src_stride,
                                   int64_t outer, int64_t block) const {
  for (int64_t r = 0; r < outer; ++r)
    for (int64_t i = 0; i < block; ++i) dst[r * dst_stride + i] = src[r * src_stride + i];
}

}  // namespace deltatune::ops
