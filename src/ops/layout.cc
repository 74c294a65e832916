// Layout ops: copies, casts and views. Views share storage with their input; their backward maps the
// gradient back through the same view.
#include <algorithm>

#include "core/strided.h"
#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"

namespace deltatune::ops {
namespace {
Tensor make_view(const Tensor& a, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = a.storage();
  impl->dtype = a.dtype();
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  return Tensor(std::move(impl));
}

Shape resolve_shape(const Shape& requested, int64_t numel, const Tensor& a) {
  Shape shape = requested;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) throw ShapeError("reshape: more than one -1 in " + shape_str(requested));
      infer = int64_t(i);
    } else if (shape[i] < 0) {
      throw ShapeError("reshape: negative size in " + shape_str(requested));
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || numel % known != 0)
      throw ShapeError("reshape: cannot reshape " + a.describe() + " to " + shape_str(requested));
    shape[size_t(infer)] = numel / known;
  }
  if (shape_numel(shape) != numel)
    throw ShapeError("reshape: cannot reshape " + a.describe() + " to " + shape_str(requested));
  return shape;
}
}  // namespace

Tensor contiguous(const Tensor& a) {
  Tensor out = Tensor::empty(a.shape(), a.dtype());
  out.copy_(a);
  return record("contiguous", out, {a},
                [](const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{g}; });
}

Tensor cast(const Tensor& a, DType dtype) {
  Tensor out = Tensor::empty(a.shape(), dtype);
  out.copy_(a);
  if (!is_floating(dtype)) return out;
  const DType from = a.dtype();
  return record("cast", out, {a}, [from](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g.dtype() == from ? g : cast(g, from)};
  });
}

Tensor reshape(const Tensor& a, const Shape& requested) {
  Shape shape = resolve_shape(requested, a.numel(), a);
  Tensor base = a.is_contiguous() ? a : contiguous(a).detach();
  Tensor out = make_view(base, shape, contiguous_strides(shape), base.offset());
  Shape original = a.shape();
  return record("reshape", out, {a}, [original](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{reshape(g, original)};
  });
}

Tensor transpose(const Tensor& a, int64_t d0, int64_t d1) {
  d0 = wrap_dim(d0, a.dim(), "transpose");
  d1 = wrap_dim(d1, a.dim(), "transpose");
  Shape shape = a.shape(), strides = a.strides();
  std::swap(shape[size_t(d0)], shape[size_t(d1)]);
  std::swap(strides[size_t(d0)], strides[size_t(d1)]);
  Tensor out = make_view(a, shape, strides, a.offset());
  return record("transpose", out, {a}, [d0, d1](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{transpose(g, d0, d1)};
  });
}

Tensor permute(const Tensor& a, const std::vector<int64_t>& dims) {
  if (int64_t(dims.size()) != a.dim())
    throw ShapeError("permute: " + std::to_string(dims.size()) + " dims for " + a.describe());
  Shape shape(dims.size()), strides(dims.size());
  std::vector<int64_t> inverse(dims.size(), -1);
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t d = wrap_dim(dims[i], a.dim(), "permute");
    if (inverse[size_t(d)] != -1) throw ShapeError("permute: repeated dim " + std::to_string(d));
    inverse[size_t(d)] = int64_t(i);
    shape[i] = a.shape()[size_t(d)];
    strides[i] = a.strides()[size_t(d)];
  }
  Tensor out = make_view(a, shape, strides, a.offset());
  return record("permute", out, {a}, [inverse](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{permute(g, inverse)};
  });
}

Tensor slice(const Tensor& a, int64_t dim, int64_t start, int64_t end, int64_t step) {
  dim = wrap_dim(dim, a.dim(), "slice");
  if (step <= 0) throw ShapeError("slice: step must be positive, got " + std::to_string(step));
  const int64_t n = a.size(dim);
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape shape = a.shape(), strides = a.strides();
  shape[size_t(dim)] = (end - start + step - 1) / step;
  strides[size_t(dim)] *= step;
  Tensor out = make_view(a, shape, strides, a.offset() + start * a.strides()[size_t(dim)]);
  Shape original = a.shape();
  return record("slice", out, {a},
                [original, dim, start, end, step](const Tensor& g, const std::vector<bool>&) {
                  Tensor full = Tensor::zeros(original);
                  Tensor window = slice(full, dim, start, end, step);
                  window.copy_(g);
                  return std::vector<Tensor>{full};
                });
}

Tensor expand(const Tensor& a, const Shape& shape) {
  if (int64_t(shape.size()) < a.dim())
    throw ShapeError("expand: cannot expand " + a.describe() + " to " + shape_str(shape));
  const size_t lead = shape.size() - size_t(a.dim());
  Shape strides(shape.size(), 0);
  for (size_t i = 0; i < size_t(a.dim()); ++i) {
    int64_t have = a.shape()[i], want = shape[lead + i];
    if (have == want)
      strides[lead + i] = a.strides()[i];
    else if (have == 1)
      strides[lead + i] = 0;
    else
      throw ShapeError("expand: cannot expand " + a.describe() + " to " + shape_str(shape));
  }
  Tensor out = make_view(a, shape, strides, a.offset());
  Shape original = a.shape();
  return record("expand", out, {a}, [original](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{sum_to(g, original)};
  });
}

}  // namespace deltatune::ops
