// softmax and log_softmax over any dim, numerically stable (the row maximum is subtracted first).
// The tensor is seen as [outer, n, inner] with the reduced dim in the middle.
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/backend.h"
#include "ops/f32_contiguous.h"

namespace deltatune::ops {
namespace {

Lines lines_of(const Shape& shape, int64_t d) {
  Lines r;
  for (int64_t j = 0; j < int64_t(shape.size()); ++j) {
    if (j < d)
      r.outer *= shape[size_t(j)];
    else if (j == d)
      r.n = shape[size_t(j)];
    else
      r.inner *= shape[size_t(j)];
  }
  return r;
}

Tensor softmax_impl(const Tensor& a, int64_t dim, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  if (!is_floating(a.dtype()))
    throw DtypeError(std::string(name) + ": needs a floating tensor, got " + a.describe());
  const Backend& be = backend_for(name, {&a});
  Tensor x = f32_contiguous(a);
  Tensor out = Tensor::empty(a.shape());
  if (a.dim() == 0) {  // a single element: softmax 1, log_softmax 0
    out.f32()[0] = log ? 0.0f : 1.0f;
    return record(name, out, {a}, [](const Tensor& g, const std::vector<bool>&) -> std::vector<Tensor> {
      return {Tensor::zeros(g.shape())};
    });
  }
  const int64_t d = wrap_dim(dim, a.dim(), name);
  const Lines r = lines_of(a.shape(), d);
  if (a.numel()) be.softmax(x.f32(), out.f32(), r, log);
  Tensor y = out.detach();
  return record(name, out, {a},
                [name, y, r, log](const Tensor& g, const std::vector<bool>&) -> std::vector<Tensor> {
                  Tensor gc = f32_contiguous(g);
                  Tensor gx = Tensor::empty(y.shape());
                  if (y.numel())
                    backend_for(name, {&gc, &y}).softmax_backward(y.f32(), gc.f32(), gx.f32(), r, log);
                  return {gx};
                });
}

}  // namespace

Tensor softmax(const Tensor& a, int64_t dim) { return softmax_impl(a, dim, false); }
Tensor log_softmax(const Tensor& a, int64_t dim) { return softmax_impl(a, dim, true); }

}  // namespace deltatune::ops
