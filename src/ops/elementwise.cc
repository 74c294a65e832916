// Elementwise ops with NumPy broadcasting, and the unary activations. Forward runs over contiguous
// float32; broadcasting reads operands through stride-0 views without materialising them.
#include <cmath>

#include "core/strided.h"
#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/cpu/activations.h"

namespace deltatune::ops {
namespace {

Shape broadcast_shape(const Tensor& a, const Tensor& b, const char* op) {
  const size_t rank = std::max(a.shape().size(), b.shape().size());
  Shape out(rank);
  for (size_t i = 0; i < rank; ++i) {
    int64_t da = i < rank - a.shape().size() ? 1 : a.shape()[i - (rank - a.shape().size())];
    int64_t db = i < rank - b.shape().size() ? 1 : b.shape()[i - (rank - b.shape().size())];
    if (da != db && da != 1 && db != 1)
      throw ShapeError(std::string(op) + ": shapes " + shape_str(a.shape()) + " and " + shape_str(b.shape()) +
                       " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// Strides that read `t` as if expanded to `shape` (0 along broadcast dims).
Shape broadcast_strides(const Tensor& t, const Shape& shape) {
  Shape strides(shape.size(), 0);
  const size_t lead = shape.size() - t.shape().size();
  for (size_t i = 0; i < t.shape().size(); ++i)
    strides[lead + i] = t.shape()[i] == 1 ? 0 : t.strides()[i];
  return strides;
}

template <class Fn>
Tensor binary_forward(const Tensor& a_in, const Tensor& b_in, const char* op, Fn fn) {
  if (!a_in.defined() || !b_in.defined()) throw ShapeError(std::string(op) + ": undefined operand");
  const Tensor a = a_in.float32(), b = b_in.float32();
  Shape shape = broadcast_shape(a, b, op);
  Tensor out = Tensor::empty(shape);
  float* o = out.f32();
  const float* pa = a.f32();
  const float* pb = b.f32();
  const int64_t n = out.numel();
  if (a.shape() == shape && b.shape() == shape && a.is_contiguous() && b.is_contiguous()) {
#pragma omp parallel for if (n > 32768)
    for (int64_t i = 0; i < n; ++i) o[i] = fn(pa[i], pb[i]);
    return out;
  }
  if (a.shape() == shape && a.is_contiguous() && b.numel() == 1) {
    const float s = pb[0];
#pragma omp parallel for if (n > 32768)
    for (int64_t i = 0; i < n; ++i) o[i] = fn(pa[i], s);
    return out;
  }
  // Row broadcast (bias-like): b is the last dim of a contiguous a.
  if (a.shape() == shape && a.is_contiguous() && b.dim() == 1 && b.is_contiguous() && !shape.empty() &&
      b.size(0) == shape.back()) {
    const int64_t cols = shape.back(), rows = n / std::max<int64_t>(cols, 1);
#pragma omp parallel for if (n > 32768)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) o[r * cols + c] = fn(pa[r * cols + c], pb[c]);
    return out;
  }
  const Shape sa = broadcast_strides(a, shape), sb = broadcast_strides(b, shape);
  // Walk the output row-major, tracking both operands' offsets.
  const int64_t rank = int64_t(shape.size());
  if (rank == 0) {
    o[0] = fn(pa[0], pb[0]);
    return out;
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
  return out;
}

template <class Fn>
Tensor unary_forward(const Tensor& a_in, Fn fn) {
  const Tensor a = a_in.float32().contiguous();
  Tensor out = Tensor::empty(a.shape());
  const float* p = a.f32();
  float* o = out.f32();
  const int64_t n = a.numel();
#pragma omp parallel for if (n > 32768)
  for (int64_t i = 0; i < n; ++i) o[i] = fn(p[i]);
  return out;
}

// d(out)/d(in) evaluated elementwise from the saved input x (and output y), times the incoming g.
template <class Fn>
Tensor unary_backward(const Tensor& g, const Tensor& x, const Tensor& y, Fn dfn) {
  const Tensor gc = g.contiguous();
  Tensor out = Tensor::empty(gc.shape());
  const float* pg = gc.f32();
  const float* px = x.defined() ? x.f32() : nullptr;
  const float* py = y.defined() ? y.f32() : nullptr;
  float* o = out.f32();
  const int64_t n = out.numel();
#pragma omp parallel for if (n > 32768)
  for (int64_t i = 0; i < n; ++i) o[i] = pg[i] * dfn(px ? px[i] : 0.0f, py ? py[i] : 0.0f);
  return out;
}

// What a unary op's derivative reads: the tape keeps only that (one activation-sized tensor, not two).
enum class Saves { Input, Output };

// Records a unary op whose derivative depends on the input x or the output y.
template <class Fwd, class Dfn>
Tensor unary_op(const char* name, const Tensor& a, Fwd fwd, Dfn dfn, Saves saves) {
  Tensor x = a.float32().contiguous();
  Tensor out = unary_forward(x, fwd);
  if (!grad_enabled() || !a.requires_grad()) return out;
  Tensor xs = saves == Saves::Input ? x.detach() : Tensor();
  Tensor ys = saves == Saves::Output ? out.detach() : Tensor();
  return record(name, out, {a}, [xs, ys, dfn](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{unary_backward(g, xs, ys, dfn)};
  });
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "add", [](float x, float y) { return x + y; });
  Shape sa = a.shape(), sb = b.shape();
  return record("add", out, {a, b}, [sa, sb](const Tensor& g, const std::vector<bool>& needs) {
    return std::vector<Tensor>{needs[0] ? sum_to(g, sa) : Tensor(), needs[1] ? sum_to(g, sb) : Tensor()};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "sub", [](float x, float y) { return x - y; });
  Shape sa = a.shape(), sb = b.shape();
  return record("sub", out, {a, b}, [sa, sb](const Tensor& g, const std::vector<bool>& needs) {
    return std::vector<Tensor>{needs[0] ? sum_to(g, sa) : Tensor(), needs[1] ? sum_to(neg(g), sb) : Tensor()};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "mul", [](float x, float y) { return x * y; });
  Tensor ad = a.detach(), bd = b.detach();
  return record("mul", out, {a, b}, [ad, bd](const Tensor& g, const std::vector<bool>& needs) {
    return std::vector<Tensor>{needs[0] ? sum_to(mul(g, bd), ad.shape()) : Tensor(),
                               needs[1] ? sum_to(mul(g, ad), bd.shape()) : Tensor()};
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "div", [](float x, float y) { return x / y; });
  Tensor ad = a.detach(), bd = b.detach();
  return record("div", out, {a, b}, [ad, bd](const Tensor& g, const std::vector<bool>& needs) {
    Tensor ga, gb;
    if (needs[0]) ga = sum_to(div(g, bd), ad.shape());
    if (needs[1]) gb = sum_to(neg(div(mul(g, ad), square(bd))), bd.shape());
    return std::vector<Tensor>{ga, gb};
  });
}

Tensor add_scalar(const Tensor& a, float s) {
  Tensor out = unary_forward(a, [s](float x) { return x + s; });
  return record("add_scalar", out, {a}, [](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g};
  });
}

Tensor mul_scalar(const Tensor& a, float s) {
  Tensor out = unary_forward(a, [s](float x) { return x * s; });
  return record("mul_scalar", out, {a}, [s](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{mul_scalar(g, s)};
  });
}

Tensor neg(const Tensor& a) { return mul_scalar(a, -1.0f); }

Tensor exp(const Tensor& a) {
  return unary_op("exp", a, [](float x) { return std::exp(x); }, [](float, float y) { return y; }, Saves::Output);
}
Tensor log(const Tensor& a) {
  return unary_op("log", a, [](float x) { return std::log(x); }, [](float x, float) { return 1.0f / x; }, Saves::Input);
}
Tensor sqrt(const Tensor& a) {
  return unary_op("sqrt", a, [](float x) { return std::sqrt(x); }, [](float, float y) { return 0.5f / y; }, Saves::Output);
}
Tensor square(const Tensor& a) {
  return unary_op("square", a, [](float x) { return x * x; }, [](float x, float) { return 2.0f * x; }, Saves::Input);
}
Tensor tanh(const Tensor& a) {
  return unary_op("tanh", a, [](float x) { return std::tanh(x); }, [](float, float y) { return 1.0f - y * y; }, Saves::Output);
}
Tensor sigmoid(const Tensor& a) {
  return unary_op("sigmoid", a, [](float x) { return 1.0f / (1.0f + std::exp(-x)); },
                  [](float, float y) { return y * (1.0f - y); }, Saves::Output);
}
Tensor relu(const Tensor& a) {
  return unary_op("relu", a, [](float x) { return x > 0 ? x : 0.0f; }, [](float x, float) { return x > 0 ? 1.0f : 0.0f; }, Saves::Input);
}
namespace {
// Runs a vectorised kernel over [0, n) in chunks, one per thread, large arrays only.
template <class Kernel>
void parallel_chunks(int64_t n, Kernel kernel) {
  constexpr int64_t kChunk = 16384;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for if (chunks > 2)
  for (int64_t c = 0; c < chunks; ++c) kernel(c * kChunk, std::min(n, (c + 1) * kChunk) - c * kChunk);
}

// An activation through the vectorised kernels (ops/cpu/activations.h); the tape keeps the input only.
Tensor vector_activation(const char* name, kernels::Activation f, const Tensor& a) {
  Tensor x = a.float32().contiguous();
  Tensor out = Tensor::empty(x.shape());
  const float* px = x.f32();
  float* po = out.f32();
  parallel_chunks(x.numel(), [&](int64_t start, int64_t len) { kernels::activation(f, px + start, po + start, len); });
  if (!grad_enabled() || !a.requires_grad()) return out;
  Tensor xs = x.detach();
  return record(name, out, {a}, [xs, f](const Tensor& g_in, const std::vector<bool>&) {
    Tensor g = g_in.float32().contiguous();
    Tensor gx = Tensor::empty(g.shape());
    const float *pg = g.f32(), *pxs = xs.f32();
    float* pgx = gx.f32();
    parallel_chunks(g.numel(), [&](int64_t start, int64_t len) {
      kernels::activation_backward(f, pg + start, pxs + start, pgx + start, len);
    });
    return std::vector<Tensor>{gx};
  });
}
}  // namespace

Tensor silu(const Tensor& a) { return vector_activation("silu", kernels::Activation::Silu, a); }

Tensor gelu(const Tensor& a, GeluKind kind) {
  if (kind == GeluKind::Erf) return vector_activation("gelu", kernels::Activation::GeluErf, a);
  return vector_activation("gelu_tanh", kernels::Activation::GeluTanh, a);
}

void add_(Tensor& dst, const Tensor& src, float alpha) {
  if (dst.dtype() != DType::F32 || !dst.is_contiguous())
    throw DtypeError("add_: destination must be contiguous float32, got " + dst.describe());
  Tensor s = src.float32();
  Shape shape = broadcast_shape(dst, s, "add_");
  if (shape != dst.shape())
    throw ShapeError("add_: " + src.describe() + " does not broadcast to " + dst.describe());
  float* d = dst.f32();
  const int64_t n = dst.numel();
  if (s.shape() == dst.shape() && s.is_contiguous()) {
    const float* p = s.f32();
#pragma omp parallel for if (n > 32768)
    for (int64_t i = 0; i < n; ++i) d[i] += alpha * p[i];
    return;
  }
  const float* p = s.f32();
  detail::for_each_offset(shape, broadcast_strides(s, shape), [&](int64_t i, int64_t o) { d[i] += alpha * p[o]; });
}

Tensor sum_to(const Tensor& a, const Shape& shape) {
  if (a.shape() == shape) return a;
  const size_t lead = a.shape().size() - shape.size();
  std::vector<int64_t> dims;
  for (size_t i = 0; i < a.shape().size(); ++i)
    if (i < lead || (shape[i - lead] == 1 && a.shape()[i] != 1)) dims.push_back(int64_t(i));
  Tensor reduced = sum(a, dims, /*keepdim=*/true);
  return reshape(reduced, shape);
}

}  // namespace deltatune::ops
