// The CPU elementwise kernels: OpenMP loops over contiguous float32 (large arrays only), fast paths
// for the common broadcasts, and the vectorised activations of activations.h.
#include <algorithm>
#include <cmath>

#include "core/strided.h"
#include "ops/cpu/activations.h"
#include "ops/cpu/cpu_backend.h"

namespace deltatune::ops {
namespace {

constexpr int64_t kParallelMin = 32768;

bool is_dense(const Shape& shape, const Shape& strides) {
  int64_t expected = 1;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    if (shape[size_t(d)] == 1) continue;
    if (strides[size_t(d)] != expected) return false;
    expected *= shape[size_t(d)];
  }
  return true;
}

bool all_zero(const Shape& strides) {
  return std::all_of(strides.begin(), strides.end(), [](int64_t s) { return s == 0; });
}

// b broadcast along every dim but the last, which it walks with unit stride (a bias-like row).
bool is_row(const Shape& shape, const Shape& strides) {
  if (shape.empty() || strides.back() != 1) return false;
  return std::all_of(strides.begin(), strides.end() - 1, [](int64_t s) { return s == 0; });
}

template <class Fn>
void binary_loop(const BinaryArgs& p, Fn fn) {
  const Shape& shape = p.shape;
  float* o = p.out;
  const float* pa = p.a;
  const float* pb = p.b;
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  const bool a_dense = is_dense(shape, p.a_strides);
  if (a_dense && is_dense(shape, p.b_strides)) {
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) o[i] = fn(pa[i], pb[i]);
    return;
  }
  if (a_dense && all_zero(p.b_strides)) {
    const float s = pb[0];
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) o[i] = fn(pa[i], s);
    return;
  }
  if (a_dense && is_row(shape, p.b_strides)) {  // row broadcast (bias-like)
    const int64_t cols = shape.back(), rows = n / std::max<int64_t>(cols, 1);
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) o[r * cols + c] = fn(pa[r * cols + c], pb[c]);
    return;
  }
  // Walk the output row-major, tracking both operands' offsets.
  const Shape& sa = p.a_strides;
  const Shape& sb = p.b_strides;
  const int64_t rank = int64_t(shape.size());
  if (rank == 0) {
    o[0] = fn(pa[0], pb[0]);
    return;
  }
  std::vector<int64_t> index(size_t(rank), 0);
  int64_t oa = 0, ob = 0;
  const int64_t inner = shape[size_t(rank - 1)];
  const int64_t ia = sa[size_t(rank - 1)], ib = sb[size_t(rank - 1)];
  for (int64_t i = 0; i < n; i += inner) {
    for (int64_t j = 0; j < inner; ++j) o[i + j] = fn(pa[oa + j * ia], pb[ob + j * ib]);
    for (int64_t d = rank - 2; d >= 0; --d) {
      oa += sa[size_t(d)];
      ob += sb[size_t(d)];
      if (++index[size_t(d)] < shape[size_t(d)]) break;
      oa -= sa[size_t(d)] * shape[size_t(d)];
      ob -= sb[size_t(d)] * shape[size_t(d)];
      index[size_t(d)] = 0;
    }
  }
}

template <class Fn>
void map(const float* x, float* y, int64_t n, Fn fn) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = fn(x[i]);
}

// gx = g * dfn(x, y) with whichever of x, y the op saved.
template <class Fn>
void map_backward(const float* g, const float* x, const float* y, float* gx, int64_t n, Fn dfn) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) gx[i] = g[i] * dfn(x ? x[i] : 0.0f, y ? y[i] : 0.0f);
}

// Runs a vectorised kernel over [0, n) in chunks, one per thread, large arrays only.
template <class Kernel>
void parallel_chunks(int64_t n, Kernel kernel) {
  constexpr int64_t kChunk = 16384;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for if (chunks > 2)
  for (int64_t c = 0; c < chunks; ++c) kernel(c * kChunk, std::min(n, (c + 1) * kChunk) - c * kChunk);
}

kernels::Activation activation_of(Unary op) {
  return op == Unary::Silu      ? kernels::Activation::Silu
         : op == Unary::GeluErf ? kernels::Activation::GeluErf
                                : kernels::Activation::GeluTanh;
}

}  // namespace

const char* CpuBackend::name() const { return "cpu"; }

const Backend& cpu_kernels() {
  static const CpuBackend backend;
  return backend;
}

void CpuBackend::binary(Binary op, const BinaryArgs& args) const {
  switch (op) {
    case Binary::Add:
      return binary_loop(args, [](float x, float y) { return x + y; });
    case Binary::Sub:
      return binary_loop(args, [](float x, float y) { return x - y; });
    case Binary::Mul:
      return binary_loop(args, [](float x, float y) { return x * y; });
    case Binary::Div:
      return binary_loop(args, [](float x, float y) { return x / y; });
  }
}

void CpuBackend::unary(Unary op, const float* x, float* y, int64_t n, float s) const {
  switch (op) {
    case Unary::AddScalar:
      return map(x, y, n, [s](float v) { return v + s; });
    case Unary::MulScalar:
      return map(x, y, n, [s](float v) { return v * s; });
    case Unary::Exp:
      return map(x, y, n, [](float v) { return std::exp(v); });
    case Unary::Log:
      return map(x, y, n, [](float v) { return std::log(v); });
    case Unary::Sqrt:
      return map(x, y, n, [](float v) { return std::sqrt(v); });
    case Unary::Square:
      return map(x, y, n, [](float v) { return v * v; });
    case Unary::Tanh:
      return map(x, y, n, [](float v) { return std::tanh(v); });
    case Unary::Sigmoid:
      return map(x, y, n, [](float v) { return 1.0f / (1.0f + std::exp(-v)); });
    case Unary::Relu:
      return map(x, y, n, [](float v) { return v > 0 ? v : 0.0f; });
    case Unary::Silu:
    case Unary::GeluErf:
    case Unary::GeluTanh:
      return parallel_chunks(n, [&](int64_t start, int64_t len) {
        kernels::activation(activation_of(op), x + start, y + start, len);
      });
  }
}

void CpuBackend::unary_backward(Unary op, const float* g, const float* x, const float* y, float* gx,
                                int64_t n) const {
  switch (op) {
    case Unary::AddScalar:
      return map_backward(g, x, y, gx, n, [](float, float) { return 1.0f; });
    case Unary::MulScalar:
      return map_backward(g, x, y, gx, n, [](float, float) { return 1.0f; });
    case Unary::Exp:
      return map_backward(g, x, y, gx, n, [](float, float out) { return out; });
    case Unary::Log:
      return map_backward(g, x, y, gx, n, [](float in, float) { return 1.0f / in; });
    case Unary::Sqrt:
      return map_backward(g, x, y, gx, n, [](float, float out) { return 0.5f / out; });
    case Unary::Square:
      return map_backward(g, x, y, gx, n, [](float in, float) { return 2.0f * in; });
    case Unary::Tanh:
      return map_backward(g, x, y, gx, n, [](float, float out) { return 1.0f - out * out; });
    case Unary::Sigmoid:
      return map_backward(g, x, y, gx, n, [](float, float out) { return out * (1.0f - out); });
    case Unary::Relu:
      return map_backward(g, x, y, gx, n, [](float in, float) { return in > 0 ? 1.0f : 0.0f; });
    case Unary::Silu:
    case Unary::GeluErf:
    case Unary::GeluTanh:
      return parallel_chunks(n, [&](int64_t start, int64_t len) {
        kernels::activation_backward(activation_of(op), g + start, x + start, gx + start, len);
      });
  }
}

void CpuBackend::accumulate(float* d, const float* p, const Shape& shape, const Shape& src_strides,
                            float alpha) const {
  const int64_t n = shape_numel(shape);
  if (is_dense(shape, src_strides)) {
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) d[i] += alpha * p[i];
    return;
  }
  detail::for_each_offset(shape, src_strides, [&](int64_t i, int64_t o) { d[i] += alpha * p[o]; });
}

void CpuBackend::masked_scale(const float* x, const uint8_t* keep, float scale, float* y, int64_t n) const {
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) y[i] = keep[i] ? x[i] * scale : 0.0f;
}

void CpuBackend::dropout_mask(Generator& gen, float p, uint8_t* keep, int64_t n) const {
  // Serial on purpose: one generator, drawn in element order, so a seed means one mask everywhere.
  for (int64_t i = 0; i < n; ++i) keep[i] = gen.uniform() >= p ? 1 : 0;
}

void CpuBackend::nonzero_mask(const float* x, uint8_t* mask, int64_t n) const {
  for (int64_t i = 0; i < n; ++i) mask[i] = x[i] != 0.0f ? 1 : 0;
}

}  // namespace deltatune::ops
