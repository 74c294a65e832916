// linear with a quantised frozen weight: the backend dequantises W a tile at a time inside the product
// (forward and the input's gradient), so a QLoRA-style base keeps its 4 or 8 bits throughout. The
// weight never learns; x and the bias get their gradients as in linear.
#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/backend.h"
#include "ops/bf16_products.h"

namespace deltatune::ops {

Tensor quantized_linear(const Tensor& x, const std::shared_ptr<const QuantizedMatrix>& weight,
                        const Tensor& bias) {
  if (!weight) throw ShapeError("quantized_linear: no weight");
  const int64_t in = weight->cols, outf = weight->rows;
  if (x.dim() < 1 || x.size(-1) != in)
    throw ShapeError("quantized_linear: input " + shape_str(x.shape()) + " does not match the " +
                     quant_format_name(weight->format) + " weight [" + std::to_string(outf) + ", " +
                     std::to_string(in) + "]");
  if (bias.defined() && (bias.dim() != 1 || bias.size(0) != outf))
    throw ShapeError("quantized_linear: bias " + shape_str(bias.shape()) + " does not match " +
                     std::to_string(outf) + " out features");
  const Backend& be = backend_for("quantized_linear", {&x, &bias});
  Tensor xc = x.float32().contiguous();
  const int64_t rows = shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  Shape out_shape = x.shape();
  out_shape.back() = outf;
  Tensor out = Tensor::empty(out_shape);
  if (bias.defined()) {
    const Tensor b = bias.float32().contiguous();
    if (rows && outf) be.fill_rows(b.f32(), out.f32(), rows, outf);
  }
  // --bf16 with a quantised base: QLoRA's recipe (a 4-bit base, bfloat16 compute), as ops::linear
  // decides for a float weight of that size.
  const bool bf16 = runs_bf16_kernel(weight->rows, weight->cols);
  be.quantized_gemm({weight.get(), rows, xc.f32(), false, out.f32(), bias.defined(), bf16});

  if (!grad_enabled() || !(x.requires_grad() || (bias.defined() && bias.requires_grad()))) return out;
  const Shape x_shape = x.shape();
  return record("quantized_linear", out, {x, bias},
                [weight, x_shape, rows, outf, bf16](const Tensor& g_in, const std::vector<bool>& needs) {
                  Tensor g = g_in.contiguous();
                  Tensor gx, gb;
                  if (needs[0]) {  // gx[rows, in] = g[rows, out] @ W[out, in]
                    gx = Tensor::empty(x_shape);
                    backend_for("quantized_linear", {&g})
                        .quantized_gemm({weight.get(), rows, g.f32(), true, gx.f32(), false, bf16});
                  }
                  if (needs[1]) gb = sum(reshape(g, {rows, outf}), {0});
                  return std::vector<Tensor>{gx, gb};
                });
}

}  // namespace deltatune::ops
