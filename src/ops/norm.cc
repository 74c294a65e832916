// layer_norm and rms_norm over the last dim, in float32. The tape keeps the input (no copy when it
// is already float32 and contiguous) and one or two floats per row; the normalised values are
// recomputed in backward, and so is the output where a later rule saves it (SavedTensor).
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

void check_affine(const char* op, const Tensor& x, const Tensor& p, const char* what) {
  if (!p.defined()) return;
  if (!is_floating(p.dtype()))
    throw DtypeError(std::string(op) + ": " + what + " must be floating, got " + p.describe());
  if (p.dim() != 1 || p.size(0) != x.size(-1))
    throw ShapeError(std::string(op) + ": " + what + " " + shape_str(p.shape()) + " does not fit input " +
                     shape_str(x.shape()) + " (expected [" + std::to_string(x.size(-1)) + "])");
}

void check_input(const char* op, const Tensor& x) {
  if (!x.defined()) throw ShapeError(std::string(op) + ": input is undefined");
  if (!is_floating(x.dtype()))
    throw DtypeError(std::string(op) + ": needs a floating input, got " + x.describe());
  if (x.dim() == 0) throw ShapeError(std::string(op) + ": needs at least 1 dim, got " + shape_str(x.shape()));
}

}  // namespace

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  check_input("layer_norm", x);
  check_affine("layer_norm", x, weight, "weight");
  check_affine("layer_norm", x, bias, "bias");
  const int64_t d = x.size(-1), rows = d ? x.numel() / d : 0;
  Tensor xc = f32_contiguous(x).detach();
  Tensor w = weight.defined() ? f32_contiguous(weight).detach() : Tensor();
  Tensor b = bias.defined() ? f32_contiguous(bias).detach() : Tensor();
  auto mean = std::make_shared<std::vector<float>>(size_t(rows));
  auto rstd = std::make_shared<std::vector<float>>(size_t(rows));
  Tensor out = Tensor::empty(x.shape());
  if (rows)
    backend_for("layer_norm", {&x, &weight, &bias})
        .layer_norm({xc.f32(), w.defined() ? w.f32() : nullptr, b.defined() ? b.f32() : nullptr, out.f32(),
                     mean->data(), rstd->data(), rows, d, eps});
  Tensor recorded = record(
      "layer_norm", out, {x, weight, bias},
      [xc, w, mean, rstd, d, rows](const Tensor& g, const std::vector<bool>& needs) -> std::vector<Tensor> {
        Tensor gc = f32_contiguous(g);
        Tensor gx = needs[0] ? Tensor::empty(xc.shape()) : Tensor();
        Tensor gw = needs[1] ? Tensor::empty({d}) : Tensor();
        Tensor gb = needs[2] ? Tensor::empty({d}) : Tensor();
        if (rows)
          backend_for("layer_norm", {&gc, &xc})
              .layer_norm_backward({xc.f32(), w.defined() ? w.f32() : nullptr, gc.f32(), mean->data(),
                                    rstd->data(), gx.defined() ? gx.f32() : nullptr,
                                    gw.defined() ? gw.f32() : nullptr, gb.defined() ? gb.f32() : nullptr,
                                    rows, d});
        else {  // no rows: the weight and bias gradients are zeros
          if (gw.defined()) gw.fill_(0.0f);
          if (gb.defined()) gb.fill_(0.0f);
        }
        return {gx, gw, gb};
      });
  // The tape keeps x: a rule that saves the output (the next linears' weight gradients) can have
  // it rebuilt instead (autograd.h, SavedTensor). Weight and bias are detached: no tape either way.
  set_rebuild(recorded, [xc, w, b, eps] { return layer_norm(xc, w, b, eps); });
  return recorded;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps) {
  check_input("rms_norm", x);
  check_affine("rms_norm", x, weight, "weight");
  const int64_t d = x.size(-1), rows = d ? x.numel() / d : 0;
  Tensor xc = f32_contiguous(x).detach();
  Tensor w = weight.defined() ? f32_contiguous(weight).detach() : Tensor();
  auto rstd = std::make_shared<std::vector<float>>(size_t(rows));
  Tensor out = Tensor::empty(x.shape());
  if (rows)
    backend_for("rms_norm", {&x, &weight})
        .rms_norm({xc.f32(), w.defined() ? w.f32() : nullptr, nullptr, out.f32(), nullptr, rstd->data(), rows,
                   d, eps});
  Tensor recorded =
      record("rms_norm", out, {x, weight},
             [xc, w, rstd, d, rows](const Tensor& g, const std::vector<bool>& needs) -> std::vector<Tensor> {
               Tensor gc = f32_contiguous(g);
               Tensor gx = needs[0] ? Tensor::empty(xc.shape()) : Tensor();
               Tensor gw = needs[1] ? Tensor::empty({d}) : Tensor();
               if (rows)
                 backend_for("rms_norm", {&gc, &xc})
                     .rms_norm_backward({xc.f32(), w.defined() ? w.f32() : nullptr, gc.f32(), nullptr,
                                         rstd->data(), gx.defined() ? gx.f32() : nullptr,
                                         gw.defined() ? gw.f32() : nullptr, nullptr, rows, d});
               else if (gw.defined())
                 gw.fill_(0.0f);
               return {gx, gw};
             });
  set_rebuild(recorded, [xc, w, eps] { return rms_norm(xc, w, eps); });  // as layer_norm's
  return recorded;
}

}  // namespace deltatune::ops
