// Reference elementwise kernels: one plain loop each, every operand read through its strides, the
// activations from their textbook formulas in double.
#include <cmath>

#include "core/strided.h"
#include "ops/reference/reference_backend.h"

namespace deltatune::ops {
namespace {

// Element i of a row-major walk of `shape`, at its offset under `strides`.
int64_t offset_of(int64_t i, const Shape& shape, const Shape& strides) {
  int64_t off = 0;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    off += (i % shape[size_t(d)]) * strides[size_t(d)];
    i /= shape[size_t(d)];
  }
  return off;
}

double gelu_erf(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }
double gelu_tanh(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

double apply(Unary op, double x, double s) {
  switch (op) {
    case Unary::AddScalar:
      return x + s;
    case Unary::MulScalar:
      return x * s;
    case Unary::Exp:
      return std::exp(x);
    case Unary::Log:
      return std::log(x);
    case Unary::Sqrt:
      return std::sqrt(x);
    case Unary::Square:
      return x * x;
    case Unary::Tanh:
      return std::tanh(x);
    case Unary::Sigmoid:
      return sigmoid(x);
    case Unary::Relu:
      return x > 0 ? x : 0.0;
    case Unary::Silu:
      return x * sigmoid(x);
    case Unary::GeluErf:
      return gelu_erf(x);
    case Unary::GeluTanh:
      return gelu_tanh(x);
  }
  return 0;
}

// f'(x), from the input x when the op saved it, else from the output y.
double derivative(Unary op, double x, double y) {
  switch (op) {
    case Unary::AddScalar:
    case Unary::MulScalar:
      return 1;
    case Unary::Exp:
      return y;
    case Unary::Log:
      return 1 / x;
    case Unary::Sqrt:
      return 0.5 / y;
    case Unary::Square:
      return 2 * x;
    case Unary::Tanh:
      return 1 - y * y;
    case Unary::Sigmoid:
      return y * (1 - y);
    case Unary::Relu:
      return x > 0 ? 1 : 0;
    case Unary::Silu:
      return sigmoid(x) * (1 + x * (1 - sigmoid(x)));
    case Unary::GeluErf:
      return 0.5 * (1 + std::erf(x / std::sqrt(2.0))) + x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI);
    case Unary::GeluTanh: {
      const double c = std::sqrt(2.0 / M_PI), u = c * (x + 0.044715 * x * x * x), t = std::tanh(u);
      return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x);
    }
  }
  return 0;
}

}  // namespace

const char* ReferenceBackend::name() const { return "reference"; }

const Backend& reference_kernels() {
  static const ReferenceBackend backend;
  return backend;
}

void ReferenceBackend::binary(Binary op, const BinaryArgs& p) const {
  for (int64_t i = 0, n = shape_numel(p.shape); i < n; ++i) {
    const float x = p.a[offset_of(i, p.shape, p.a_strides)], y = p.b[offset_of(i, p.shape, p.b_strides)];
    switch (op) {
      case Binary::Add:
        p.out[i] = x + y;
        break;
      case Binary::Sub:
        p.out[i] = x - y;
        break;
      case Binary::Mul:
        p.out[i] = x * y;
        break;
      case Binary::Div:
        p.out[i] = x / y;
        break;
    }
  }
}

void ReferenceBackend::unary(Unary op, const float* x, float* y, int64_t n, float scalar) const {
  for (int64_t i = 0; i < n; ++i) y[i] = float(apply(op, x[i], scalar));
}

void ReferenceBackend::unary_backward(Unary op, const float* g, const float* x, const float* y, float* gx,
                                      int64_t n) const {
  for (int64_t i = 0; i < n; ++i) gx[i] = float(g[i] * derivative(op, x ? x[i] : 0.0, y ? y[i] : 0.0));
}

void ReferenceBackend::accumulate(float* dst, const float* src, const Shape& shape, const Shape& src_strides,
                                  float alpha) const {
  for (int64_t i = 0, n = shape_numel(shape); i < n; ++i)
    dst[i] += alpha * src[offset_of(i, shape, src_strides)];
}

void ReferenceBackend::masked_scale(const float* x, const uint8_t* keep, float scale, float* y,
                                    int64_t n) const {
  for (int64_t i = 0; i < n; ++i) y[i] = keep[i] ? x[i] * scale : 0.0f;
}

void ReferenceBackend::dropout_mask(Generator& gen, float p, uint8_t* keep, int64_t n) const {
  for (int64_t i = 0; i < n; ++i) keep[i] = gen.uniform() >= p ? 1 : 0;
}

void ReferenceBackend::nonzero_mask(const float* x, uint8_t* mask, int64_t n) const {
  for (int64_t i = 0; i < n; ++i) mask[i] = x[i] != 0.0f ? 1 : 0;
}

}  // namespace deltatune::ops
