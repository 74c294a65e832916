// concat and split. concat copies whole contiguous blocks; split returns views (ops::slice).
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/backend.h"

namespace deltatune::ops {

Tensor concat(const std::vector<Tensor>& tensors, int64_t dim) {
  if (tensors.empty()) throw ShapeError("concat: no tensors given");
  for (const Tensor& t : tensors)
    if (!t.defined()) throw ShapeError("concat: an input tensor is undefined");
  const Tensor& first = tensors[0];
  const int64_t rank = first.dim();
  if (rank == 0) throw ShapeError("concat: cannot concatenate 0-d tensors");
  const int64_t d = wrap_dim(dim, rank, "concat");
  Shape out_shape = first.shape();
  out_shape[size_t(d)] = 0;
  bool same_dtype = true;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    bool fits = t.dim() == rank;
    for (int64_t j = 0; fits && j < rank; ++j)
      if (j != d && t.shape()[size_t(j)] != first.shape()[size_t(j)]) fits = false;
    if (!fits)
      throw ShapeError("concat: tensor " + std::to_string(i) + " has shape " + shape_str(t.shape()) +
                       ", which does not match " + shape_str(first.shape()) + " outside dim " +
                       std::to_string(d));
    out_shape[size_t(d)] += t.shape()[size_t(d)];
    same_dtype = same_dtype && t.dtype() == first.dtype();
  }
  // Tensors of one dtype keep it (ids, half-precision caches); mixed inputs meet in float32.
  const DType out_dtype = same_dtype ? first.dtype() : DType::F32;
  const size_t esize = dtype_size(out_dtype);
  const Backend& be = backend_for("concat", tensors);
  Tensor out = Tensor::empty(out_shape, out_dtype);

  int64_t outer = 1, inner = 1;
  for (int64_t j = 0; j < d; ++j) outer *= out_shape[size_t(j)];
  for (int64_t j = d + 1; j < rank; ++j) inner *= out_shape[size_t(j)];
  const int64_t out_row = out_shape[size_t(d)] * inner;  // elements per outer index in the output
  std::vector<int64_t> sizes;
  {
    NoGradGuard no_grad;
    int64_t at = 0;  // running offset along dim
    for (const Tensor& t : tensors) {
      const int64_t n = t.shape()[size_t(d)];
      sizes.push_back(n);
      if (n == 0 || outer == 0 || inner == 0) continue;
      Tensor src = t.to(out_dtype).contiguous();
      const char* from = static_cast<const char*>(src.storage()->data) + src.offset() * int64_t(esize);
      char* to = static_cast<char*>(out.storage()->data) + at * inner * int64_t(esize);
      be.copy_blocks(to, out_row * int64_t(esize), from, n * inner * int64_t(esize), outer,
                     n * inner * int64_t(esize));
      at += n;
    }
  }
  if (!is_floating(out_dtype)) return out;
  return record("concat", out, tensors,
                [sizes, d](const Tensor& g, const std::vector<bool>& needs) -> std::vector<Tensor> {
                  std::vector<Tensor> grads(sizes.size());
                  int64_t at = 0;
                  for (size_t i = 0; i < sizes.size(); ++i) {
                    if (needs[i]) grads[i] = ops::slice(g, d, at, at + sizes[i]);
                    at += sizes[i];
                  }
                  return grads;
                });
}

std::vector<Tensor> split(const Tensor& a, const std::vector<int64_t>& sizes, int64_t dim) {
  if (a.dim() == 0) throw ShapeError("split: cannot split a 0-d tensor");
  const int64_t d = wrap_dim(dim, a.dim(), "split");
  int64_t total = 0;
  for (int64_t n : sizes) {
    if (n < 0) throw ShapeError("split: negative size " + std::to_string(n));
    total += n;
  }
  if (total != a.size(d)) {
    std::string list = "[";
    for (size_t i = 0; i < sizes.size(); ++i) list += (i ? ", " : "") + std::to_string(sizes[i]);
    list += "]";
    throw ShapeError("split: sizes " + list + " add up to " + std::to_string(total) + ", but dim " +
                     std::to_string(d) + " of " + shape_str(a.shape()) + " has " + std::to_string(a.size(d)));
  }
  std::vector<Tensor> parts;
  parts.reserve(sizes.size());
  int64_t at = 0;
  for (int64_t n : sizes) {
    parts.push_back(ops::slice(a, d, at, at + n));
    at += n;
  }
  return parts;
}

}  // namespace deltatune::ops
