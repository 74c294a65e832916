// embedding (a row gather; backward scatter-adds into the rows used) and dropout (a seeded mask kept
// for backward as one byte per element).
#include <memory>
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/backend.h"
#include "ops/f32_contiguous.h"

namespace deltatune::ops {

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  if (!weight.defined() || !ids.defined()) throw ShapeError("embedding: weight or ids undefined");
  if (weight.dim() != 2)
    throw ShapeError("embedding: weight must be [V, D], got " + shape_str(weight.shape()));
  if (!is_floating(weight.dtype()))
    throw DtypeError("embedding: weight must be floating, got " + weight.describe());
  if (ids.dtype() != DType::I64 && ids.dtype() != DType::I32)
    throw DtypeError("embedding: ids must be int32 or int64, got " + ids.describe());
  const int64_t vocab = weight.size(0), d = weight.size(1);
  std::vector<int64_t> idx = ids.to_ints();
  for (size_t i = 0; i < idx.size(); ++i)
    if (idx[i] < 0 || idx[i] >= vocab)
      throw ShapeError("embedding: id " + std::to_string(idx[i]) + " at position " + std::to_string(i) +
                       " is out of range for a vocabulary of " + std::to_string(vocab) + " (weight " +
                       shape_str(weight.shape()) + ")");
  Shape out_shape = ids.shape();
  out_shape.push_back(d);
  Tensor out = Tensor::empty(out_shape);
  const Backend& be = backend_for("embedding", {&weight, &ids});
  if (!idx.empty() && d)
    be.embedding({weight.storage()->data, weight.dtype(), weight.offset(), weight.strides()[0],
                  weight.strides()[1], idx.data(), int64_t(idx.size()), d, out.f32()});
  auto saved = std::make_shared<std::vector<int64_t>>(std::move(idx));
  return record("embedding", out, {weight, ids},
                [saved, vocab, d](const Tensor& g, const std::vector<bool>& needs) -> std::vector<Tensor> {
                  if (!needs[0]) return {Tensor(), Tensor()};
                  Tensor gc = f32_contiguous(g);
                  Tensor gw = Tensor::zeros({vocab, d});
                  if (!saved->empty() && d)
                    backend_for("embedding", {&gc})
                        .embedding_backward(saved->data(), int64_t(saved->size()), d, gc.f32(), gw.f32());
                  return {gw, Tensor()};
                });
}

Tensor dropout(const Tensor& a, float p, bool training, Generator& gen) {
  if (!(p >= 0.0f && p <= 1.0f)) throw ConfigError("dropout: p must be in [0, 1], got " + std::to_string(p));
  if (!training || p == 0.0f) return a;
  if (!is_floating(a.dtype())) throw DtypeError("dropout: needs a floating tensor, got " + a.describe());
  Tensor x = f32_contiguous(a);
  const int64_t n = a.numel();
  const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  auto keep = std::make_shared<std::vector<uint8_t>>(size_t(n));
  const Backend& be = backend_for("dropout", {&a});
  be.dropout_mask(gen, p, keep->data(), n);
  Tensor out = Tensor::empty(a.shape());
  be.masked_scale(x.f32(), keep->data(), scale, out.f32(), n);
  return record(
      "dropout", out, {a}, [keep, scale](const Tensor& g, const std::vector<bool>&) -> std::vector<Tensor> {
        Tensor gc = f32_contiguous(g);
        Tensor gx = Tensor::empty(gc.shape());
        backend_for("dropout", {&gc}).masked_scale(gc.f32(), keep->data(), scale, gx.f32(), gc.numel());
        return {gx};
      });
}

}  // namespace deltatune::ops
