// embedding (a row gather; backward scatter-adds into the rows used) and dropout (a seeded mask kept
// for backward as one byte per element).
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>

#include "core/strided.h"
#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
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
  float* op = out.f32();
  const int64_t n = int64_t(idx.size());
  // Gather straight from the weight's own storage and dtype: a half-precision vocabulary table is
  // never converted as a whole.
  const void* base = weight.storage()->data;
  const int64_t off = weight.offset(), s0 = weight.strides()[0], s1 = weight.strides()[1];
  const DType wt = weight.dtype();
#pragma omp parallel for if (n * d > 16384)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = off + idx[size_t(i)] * s0;
    float* dst = op + i * d;
    if (wt == DType::F32 && s1 == 1) {
      std::memcpy(dst, static_cast<const float*>(base) + row, size_t(d) * 4);
    } else {
      for (int64_t j = 0; j < d; ++j) dst[j] = detail::load_as_float(base, wt, row + j * s1);
    }
  }
  auto saved = std::make_shared<std::vector<int64_t>>(std::move(idx));
  return record("embedding", out, {weight, ids},
                [saved, vocab, d](const Tensor& g, const std::vector<bool>& needs) -> std::vector<Tensor> {
                  if (!needs[0]) return {Tensor(), Tensor()};
                  Tensor gc = f32_contiguous(g);
                  Tensor gw = Tensor::zeros({vocab, d});
                  const float* gp = gc.f32();
                  float* wp = gw.f32();
                  const int64_t n = int64_t(saved->size());
                  // Rows repeat, so threads split the columns instead of the tokens.
                  const int64_t chunk = 64, chunks = (d + chunk - 1) / chunk;
#pragma omp parallel for if (n * d > 65536)
                  for (int64_t c = 0; c < chunks; ++c) {
                    const int64_t j0 = c * chunk, j1 = std::min(d, j0 + chunk);
                    for (int64_t i = 0; i < n; ++i) {
                      float* dst = wp + (*saved)[size_t(i)] * d;
                      const float* src = gp + i * d;
                      for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
                    }
                  }
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
  // One draw per element in row-major order, serially: the same seed gives the same mask.
  auto keep = std::make_shared<std::vector<uint8_t>>(size_t(n));
  for (int64_t i = 0; i < n; ++i) (*keep)[size_t(i)] = gen.uniform() >= p ? 1 : 0;
  Tensor out = Tensor::empty(a.shape());
  const float* xp = x.f32();
  float* op = out.f32();
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) op[i] = (*keep)[size_t(i)] ? xp[i] * scale : 0.0f;
  return record("dropout", out, {a},
                [keep, scale](const Tensor& g, const std::vector<bool>&) -> std::vector<Tensor> {
                  Tensor gc = f32_contiguous(g);
                  Tensor gx = Tensor::empty(gc.shape());
                  const float* gp = gc.f32();
                  float* xp = gx.f32();
                  const int64_t n = gc.numel();
#pragma omp parallel for if (n > 65536)
                  for (int64_t i = 0; i < n; ++i) xp[i] = (*keep)[size_t(i)] ? gp[i] * scale : 0.0f;
                  return {gx};
                });
}

}  // namespace deltatune::ops
