// Rotary position embedding, transformers' Llama convention:
//   out = x * cos + rotate_half(x) * sin,  rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]),
//   cos/sin = cos/sin(cat(freqs, freqs)),  freqs = position * inv_freq  (all float32).
// The cos/sin table ([T, D/2] or [B, T, D/2]) is kept for backward, which rotates by -angle.
#include <cmath>
#include <memory>
#include <string>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/backend.h"
#include "ops/f32_contiguous.h"

namespace deltatune::ops {
namespace {

struct RopeTable {
  int64_t batches = 1;  // 1 when shared by every batch row
  int64_t t = 0, half = 0;
  std::vector<float> cos, sin;  // [batches, t, half]
};

}  // namespace

Tensor rope(const Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  if (!x.defined() || !positions.defined() || !inv_freq.defined())
    throw ShapeError("rope: an input is undefined");
  if (!is_floating(x.dtype())) throw DtypeError("rope: x must be floating, got " + x.describe());
  if (x.dim() < 2) throw ShapeError("rope: x must be [B, H, T, D], got " + shape_str(x.shape()));
  const int64_t t = x.size(-2), d = x.size(-1);
  if (d % 2 != 0) throw ShapeError("rope: head dim must be even, got x " + shape_str(x.shape()));
  const int64_t h = d / 2;
  if (inv_freq.dim() != 1 || inv_freq.size(0) != h)
    throw ShapeError("rope: inv_freq " + shape_str(inv_freq.shape()) + " does not fit x " +
                     shape_str(x.shape()) + " (expected [" + std::to_string(h) + "])");
  auto tab = std::make_shared<RopeTable>();
  tab->t = t;
  tab->half = h;
  int64_t b0 = 1;
  if (positions.dim() == 1 && positions.size(0) == t) {
    tab->batches = 1;
  } else if (positions.dim() == 2 && x.dim() >= 3 && positions.size(1) == t &&
             (positions.size(0) == x.size(0) || positions.size(0) == 1)) {
    b0 = x.size(0);
    tab->batches = positions.size(0);
  } else {
    throw ShapeError("rope: positions " + shape_str(positions.shape()) + " do not fit x " +
                     shape_str(x.shape()) + " (expected [T] or [B, T] with T = " + std::to_string(t) + ")");
  }
  const Tensor pos = f32_contiguous(positions), freq = f32_contiguous(inv_freq);
  tab->cos.resize(size_t(pos.numel() * h));
  tab->sin.resize(size_t(pos.numel() * h));
  const Backend& be = backend_for("rope", {&x, &positions, &inv_freq});
  be.rope_table(pos.f32(), pos.numel(), freq.f32(), h, tab->cos.data(), tab->sin.data());
  const int64_t m = (t > 0 && d > 0 && b0 > 0) ? x.numel() / (b0 * t * d) : 0;
  Tensor xc = f32_contiguous(x);
  Tensor out = Tensor::empty(x.shape());
  if (out.numel())
    be.rope({xc.f32(), out.f32(), tab->cos.data(), tab->sin.data(), tab->batches, b0, m, t, h, false});
  return record("rope", out, {x, positions, inv_freq},
                [tab, b0, m](const Tensor& g, const std::vector<bool>& needs) -> std::vector<Tensor> {
                  if (!needs[0]) return {Tensor(), Tensor(), Tensor()};
                  Tensor gc = f32_contiguous(g);
                  Tensor gx = Tensor::empty(gc.shape());
                  if (gx.numel())
                    backend_for("rope", {&gc})
                        .rope({gc.f32(), gx.f32(), tab->cos.data(), tab->sin.data(), tab->batches, b0, m,
                               tab->t, tab->half, true});
                  return {gx, Tensor(), Tensor()};
                });
}

Tensor rope_inv_freq(int64_t head_dim, float theta) {
  if (head_dim <= 0)
    throw ConfigError("rope_inv_freq: head_dim must be positive, got " + std::to_string(head_dim));
  if (!(theta > 0.0f))
    throw ConfigError("rope_inv_freq: theta must be positive, got " + std::to_string(theta));
  // transformers: 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), in float32.
  // The exponent is a float32 division; the power is rounded once to float32; 1.0 / p is torch's
  // reciprocal (a float32 division).
  const int64_t n = (head_dim + 1) / 2;
  std::vector<float> values(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float exponent = float(2 * i) / float(head_dim);
    const float power = float(std::pow(double(theta), double(exponent)));
    values[size_t(i)] = 1.0f / power;
  }
  return Tensor::from_floats(values, {n});
}

}  // namespace deltatune::ops
