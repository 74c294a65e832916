// Elementwise ops with NumPy broadcasting, and the unary activations: shapes, broadcasting and
// backward rules here, kernels behind the backend (ops/backend.h). Broadcasting reads operands
// through stride-0 views without materialising them.
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/backend.h"
#include "ops/f32_contiguous.h"

namespace deltatune::ops {
namespace {

// float32 off the tape (the op records its own backward), any layout.
Tensor f32(const Tensor& t) {
  NoGradGuard no_grad;
  return t.float32();
}

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
  for (size_t i = 0; i < t.shape().size(); ++i) strides[lead + i] = t.shape()[i] == 1 ? 0 : t.strides()[i];
  return strides;
}

Tensor binary_forward(const Tensor& a_in, const Tensor& b_in, const char* op, Binary kind) {
  if (!a_in.defined() || !b_in.defined()) throw ShapeError(std::string(op) + ": undefined operand");
  const Backend& be = backend_for(op, {&a_in, &b_in});
  const Tensor a = f32(a_in), b = f32(b_in);
  Shape shape = broadcast_shape(a, b, op);
  Tensor out = Tensor::empty(shape);
  if (out.numel())
    be.binary(kind,
              {a.f32(), b.f32(), out.f32(), shape, broadcast_strides(a, shape), broadcast_strides(b, shape)});
  return out;
}

Tensor unary_forward(const char* op, const Tensor& a, Unary kind, float scalar = 0.0f) {
  const Backend& be = backend_for(op, {&a});
  const Tensor x = f32_contiguous(a);
  Tensor out = Tensor::empty(x.shape());
  be.unary(kind, x.f32(), out.f32(), x.numel(), scalar);
  return out;
}

// What a unary op's derivative reads: the tape keeps only that (one activation-sized tensor, not two).
enum class Saves { Input, Output };

// Records a unary op whose derivative reads the input x or the output y.
Tensor unary_op(const char* name, const Tensor& a, Unary kind, Saves saves) {
  Tensor x = f32_contiguous(a);
  Tensor out = unary_forward(name, x, kind);
  if (!grad_enabled() || !a.requires_grad()) return out;
  Tensor xs = saves == Saves::Input ? x.detach() : Tensor();
  Tensor ys = saves == Saves::Output ? out.detach() : Tensor();
  Tensor recorded =
      record(name, out, {a}, [name, xs, ys, kind](const Tensor& g_in, const std::vector<bool>&) {
        const Tensor g = f32_contiguous(g_in);
        const Backend& be = backend_for(name, {&g, &xs, &ys});
        Tensor gx = Tensor::empty(g.shape());
        be.unary_backward(kind, g.f32(), xs.defined() ? xs.f32() : nullptr, ys.defined() ? ys.f32() : nullptr,
                          gx.f32(), g.numel());
        return std::vector<Tensor>{gx};
      });
  // The tape keeps the input: a rule that saves the output (the next linear's weight gradient)
  // can have it rebuilt instead of kept (autograd.h, SavedTensor).
  if (saves == Saves::Input)
    set_rebuild(recorded, [name, xs, kind] { return unary_forward(name, xs, kind); });
  return recorded;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "add", Binary::Add);
  Shape sa = a.shape(), sb = b.shape();
  return record("add", out, {a, b}, [sa, sb](const Tensor& g, const std::vector<bool>& needs) {
    return std::vector<Tensor>{needs[0] ? sum_to(g, sa) : Tensor(), needs[1] ? sum_to(g, sb) : Tensor()};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "sub", Binary::Sub);
  Shape sa = a.shape(), sb = b.shape();
  return record("sub", out, {a, b}, [sa, sb](const Tensor& g, const std::vector<bool>& needs) {
    return std::vector<Tensor>{needs[0] ? sum_to(g, sa) : Tensor(), needs[1] ? sum_to(neg(g), sb) : Tensor()};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "mul", Binary::Mul);
  const SavedTensor as(a), bs(b);
  return record("mul", out, {a, b}, [as, bs](const Tensor& g, const std::vector<bool>& needs) {
    const Tensor ad = as.get(), bd = bs.get();
    return std::vector<Tensor>{needs[0] ? sum_to(mul(g, bd), ad.shape()) : Tensor(),
                               needs[1] ? sum_to(mul(g, ad), bd.shape()) : Tensor()};
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "div", Binary::Div);
  Tensor ad = a.detach(), bd = b.detach();
  return record("div", out, {a, b}, [ad, bd](const Tensor& g, const std::vector<bool>& needs) {
    Tensor ga, gb;
    if (needs[0]) ga = sum_to(div(g, bd), ad.shape());
    if (needs[1]) gb = sum_to(neg(div(mul(g, ad), square(bd))), bd.shape());
    return std::vector<Tensor>{ga, gb};
  });
}

Tensor add_scalar(const Tensor& a, float s) {
  Tensor out = unary_forward("add_scalar", a, Unary::AddScalar, s);
  return record("add_scalar", out, {a},
                [](const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{g}; });
}

Tensor mul_scalar(const Tensor& a, float s) {
  Tensor out = unary_forward("mul_scalar", a, Unary::MulScalar, s);
  return record("mul_scalar", out, {a}, [s](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{mul_scalar(g, s)};
  });
}

Tensor neg(const Tensor& a) { return mul_scalar(a, -1.0f); }

Tensor exp(const Tensor& a) { return unary_op("exp", a, Unary::Exp, Saves::Output); }
Tensor log(const Tensor& a) { return unary_op("log", a, Unary::Log, Saves::Input); }
Tensor sqrt(const Tensor& a) { return unary_op("sqrt", a, Unary::Sqrt, Saves::Output); }
Tensor square(const Tensor& a) { return unary_op("square", a, Unary::Square, Saves::Input); }
Tensor tanh(const Tensor& a) { return unary_op("tanh", a, Unary::Tanh, Saves::Output); }
Tensor sigmoid(const Tensor& a) { return unary_op("sigmoid", a, Unary::Sigmoid, Saves::Output); }
Tensor relu(const Tensor& a) { return unary_op("relu", a, Unary::Relu, Saves::Input); }
// The activations run on the vectorised kernels; the tape keeps the input only.
Tensor silu(const Tensor& a) { return unary_op("silu", a, Unary::Silu, Saves::Input); }
Tensor gelu(const Tensor& a, GeluKind kind) {
  if (kind == GeluKind::Erf) return unary_op("gelu", a, Unary::GeluErf, Saves::Input);
  return unary_op("gelu_tanh", a, Unary::GeluTanh, Saves::Input);
}

void add_(Tensor& dst, const Tensor& src, float alpha) {
  if (dst.dtype() != DType::F32 || !dst.is_contiguous())
    throw DtypeError("add_: destination must be contiguous float32, got " + dst.describe());
  Tensor s = f32(src);
  Shape shape = broadcast_shape(dst, s, "add_");
  if (shape != dst.shape())
    throw ShapeError("add_: " + src.describe() + " does not broadcast to " + dst.describe());
  const Backend& be = backend_for("add_", {&dst, &s});
  if (dst.numel()) be.accumulate(dst.f32(), s.f32(), shape, broadcast_strides(s, shape), alpha);
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
