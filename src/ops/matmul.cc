// Matrix products: shapes, batching and backward here, the GEMMs behind the backend (OpenBLAS on the
// CPU). A 2-D operand whose rows or columns are contiguous is passed to the GEMM as is (transposed
// when column-major), so x @ W.t() and GPT-2's [in, out] weights cost no copy.
#include <algorithm>
#include <atomic>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "ops/backend.h"
#include "ops/bf16_products.h"
#include "ops/cpu/gemm_bf16.h"

namespace deltatune::ops {
namespace {

struct MatrixView {
  const float* data;
  bool trans;
  int64_t ld;
};

// How sgemm can read a 2-D float32 matrix with shape [rows, cols] at `data` and the given strides.
bool as_blas(const float* data, int64_t rows, int64_t cols, int64_t s0, int64_t s1, MatrixView& view) {
  if (s1 == 1 && (s0 >= cols || rows == 1)) {
    view = {data, false, std::max<int64_t>(s0, std::max<int64_t>(cols, 1))};
    return true;
  }
  if (s0 == 1 && (s1 >= rows || cols == 1)) {
    view = {data, true, std::max<int64_t>(s1, std::max<int64_t>(rows, 1))};
    return true;
  }
  return false;
}

// A float32 tensor whose last two dims sgemm can read (copied only if it must be).
Tensor blas_ready(const Tensor& t) {
  Tensor f = t.float32();
  const int64_t r = f.dim();
  MatrixView v;
  if (as_blas(nullptr, f.size(r - 2), f.size(r - 1), f.strides()[size_t(r - 2)], f.strides()[size_t(r - 1)],
              v))
    return f;
  return f.contiguous();
}

// C[m, n] = op(A) op(B) (+ beta * C), all row-major.
void gemm(const Backend& be, int64_t m, int64_t n, int64_t k, const MatrixView& a, const MatrixView& b,
          float beta, float* c, int64_t ldc) {
  be.gemm({m, n, k, a.data, a.trans, a.ld, b.data, b.trans, b.ld, 1.0f, beta, c, ldc});
}

MatrixView view_of(const Tensor& t, int64_t extra_offset = 0) {
  const int64_t r = t.dim();
  MatrixView v{};
  as_blas(t.f32() + extra_offset, t.size(r - 2), t.size(r - 1), t.strides()[size_t(r - 2)],
          t.strides()[size_t(r - 1)], v);
  return v;
}

Tensor matmul_forward(const Tensor& a_in, const Tensor& b_in) {
  if (a_in.dim() < 2 || b_in.dim() < 2)
    throw ShapeError("matmul: operands need at least 2 dims, got " + shape_str(a_in.shape()) + " and " +
                     shape_str(b_in.shape()));
  const int64_t m = a_in.size(-2), k = a_in.size(-1), n = b_in.size(-1);
  if (b_in.size(-2) != k)
    throw ShapeError("matmul: shapes " + shape_str(a_in.shape()) + " and " + shape_str(b_in.shape()) +
                     " do not match (" + std::to_string(k) + " vs " + std::to_string(b_in.size(-2)) + ")");
  const Backend& be = backend_for("matmul", {&a_in, &b_in});
  Tensor a = blas_ready(a_in), b = blas_ready(b_in);
  // Broadcast batch dims.
  Shape batch_a(a.shape().begin(), a.shape().end() - 2), batch_b(b.shape().begin(), b.shape().end() - 2);
  const size_t rank = std::max(batch_a.size(), batch_b.size());
  Shape batch(rank);
  for (size_t i = 0; i < rank; ++i) {
    int64_t da = i < rank - batch_a.size() ? 1 : batch_a[i - (rank - batch_a.size())];
    int64_t db = i < rank - batch_b.size() ? 1 : batch_b[i - (rank - batch_b.size())];
    if (da != db && da != 1 && db != 1)
      throw ShapeError("matmul: batch dims of " + shape_str(a_in.shape()) + " and " +
                       shape_str(b_in.shape()) + " do not broadcast");
    batch[i] = da == 1 ? db : da;
  }
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  // An empty inner dim (k == 0) runs no GEMM: the product is zeros.
  Tensor out = k == 0 ? Tensor::zeros(out_shape) : Tensor::empty(out_shape);
  // One GEMM when b is a plain matrix and a's batch and rows are contiguous: [batch*m, k] @ [k, n].
  if (b.dim() == 2 && a.is_contiguous()) {
    const int64_t rows = a.numel() / std::max<int64_t>(k, 1);
    MatrixView va{a.f32(), false, std::max<int64_t>(k, 1)};
    if (rows && n) gemm(be, rows, n, k, va, view_of(b), 0.0f, out.f32(), n);
    return out;
  }
  const int64_t count = shape_numel(batch);
  // Offsets of each batch entry in a and b (stride 0 along broadcast dims).
  auto batch_offset = [&](const Tensor& t, const Shape& tb, int64_t index) {
    int64_t off = 0;
    for (int64_t d = int64_t(rank) - 1; d >= 0; --d) {
      int64_t i = index % batch[size_t(d)];
      index /= batch[size_t(d)];
      int64_t td = d - int64_t(rank - tb.size());
      if (td >= 0 && tb[size_t(td)] != 1) off += i * t.strides()[size_t(td)];
    }
    return off;
  };
  for (int64_t i = 0; i < count; ++i) {
    if (m && n)
      gemm(be, m, n, k, view_of(a, batch_offset(a, batch_a, i)), view_of(b, batch_offset(b, batch_b, i)),
           0.0f, out.f32() + i * m * n, n);
  }
  return out;
}
}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  Tensor out = matmul_forward(a, b);
  const SavedTensor as(a), bs(b);
  return record("matmul", out, {a, b}, [as, bs](const Tensor& g, const std::vector<bool>& needs) {
    const Tensor ad = as.get(), bd = bs.get();
    Tensor ga, gb;
    if (needs[0]) ga = sum_to(matmul_forward(g, transpose(bd, -1, -2)), ad.shape());
    if (needs[1]) {
      if (bd.dim() == 2 && ad.dim() > 2) {  // fold a's batch into the rows: one GEMM
        const int64_t k = ad.size(-1), n = g.size(-1);
        gb = matmul_forward(transpose(reshape(ad, {-1, k}), 0, 1), reshape(g, {-1, n}));
      } else {
        gb = sum_to(matmul_forward(transpose(ad, -1, -2), g), bd.shape());
      }
    }
    return std::vector<Tensor>{ga, gb};
  });
}

namespace {
std::atomic<MatmulPrecision> g_precision{MatmulPrecision::Exact};
}  // namespace

bool bf16_linear_available() { return kernels::bf16_gemm_available(); }
void set_matmul_precision(MatmulPrecision precision) { g_precision = precision; }
MatmulPrecision matmul_precision() { return g_precision; }

bool runs_bf16_kernel(int64_t rows, int64_t cols) {
  return g_precision == MatmulPrecision::Bf16 && rows >= kBf16MinDim && cols >= kBf16MinDim &&
         kernels::bf16_gemm_available();
}

bool runs_bf16_kernel(const Tensor& weight) {
  return (weight.dtype() == DType::BF16 || weight.dtype() == DType::F32) && weight.device() == Device::CPU &&
         weight.dim() == 2 && runs_bf16_kernel(weight.size(0), weight.size(1));
}

Tensor bf16_weight(const Tensor& weight) {
  return weight.dtype() == DType::BF16 ? weight.detach() : weight.detach().to(DType::BF16);
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (weight.dim() != 2) throw ShapeError("linear: weight must be 2-D, got " + weight.describe());
  if (x.dim() < 1 || x.size(-1) != weight.size(1))
    throw ShapeError("linear: input " + shape_str(x.shape()) + " does not match weight " +
                     shape_str(weight.shape()) + " (in features " + std::to_string(weight.size(1)) + ")");
  const int64_t in = weight.size(1), outf = weight.size(0);
  if (bias.defined() && (bias.dim() != 1 || bias.size(0) != outf))
    throw ShapeError("linear: bias " + shape_str(bias.shape()) + " does not match weight " +
                     shape_str(weight.shape()));
  const Backend& be = backend_for("linear", {&x, &weight, &bias});
  Tensor xc = x.float32().contiguous();
  // Bf16 precision (see ops.h) runs on the AVX-512 BF16 kernel, a float32 weight rounded once here
  // (and kept for the input's gradient); else float32, a bfloat16 weight widened.
  const bool bf16_kernel = runs_bf16_kernel(weight);
  Tensor w = bf16_kernel ? bf16_weight(weight) : blas_ready(weight);
  const int64_t rows = shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  Shape out_shape = x.shape();
  out_shape.back() = outf;
  Tensor out = in == 0 ? Tensor::zeros(out_shape) : Tensor::empty(out_shape);  // k == 0: no GEMM runs
  float* o = out.f32();
  float beta = 0.0f;
  if (bias.defined()) {  // pre-fill with the bias and let the GEMM add the product (beta = 1)
    const Tensor b = bias.float32().contiguous();
    if (rows && outf) be.fill_rows(b.f32(), o, rows, outf);
    beta = 1.0f;
  }
  // out[rows, out] = x[rows, in] @ W^T: W is [out, in], so its transpose flips the view.
  if (bf16_kernel) {  // B[k, n] = W[n, k]
    be.gemm_bf16({rows, outf, in, xc.f32(), in, w.data<uint16_t>(), w.strides()[1], w.strides()[0], o, outf,
                  beta != 0.0f});
  } else if (rows && outf) {
    MatrixView wv = view_of(w);
    MatrixView wt{wv.data, !wv.trans, wv.ld};
    gemm(be, rows, outf, in, MatrixView{xc.f32(), false, std::max<int64_t>(in, 1)}, wt, beta, o, outf);
  }

  // The tape keeps x only when the weight learns, and W only when x needs a gradient: a frozen
  // layer holds no copy of its input, a layer on a frozen input no reference to its weight.
  if (!grad_enabled() ||
      !(x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad())))
    return out;
  const SavedTensor xs = weight.requires_grad() ? SavedTensor(xc) : SavedTensor();
  Tensor wd = x.requires_grad() ? w.detach() : Tensor();
  const Shape x_shape = x.shape();
  return record(
      "linear", out, {x, weight, bias},
      [xs, wd, x_shape, in, outf, rows, bf16_kernel](const Tensor& g_in, const std::vector<bool>& needs) {
        Tensor g = g_in.contiguous();
        const Backend& be = backend_for("linear", {&g});
        Tensor gx, gw, gb;
        MatrixView gv{g.f32(), false, std::max<int64_t>(outf, 1)};
        if (needs[0]) {  // gx[rows, in] = g[rows, out] @ W[out, in]
          gx = Tensor::empty(x_shape);
          if (bf16_kernel)  // B[k, n] = W[k, n]
            be.gemm_bf16({rows, in, outf, g.f32(), outf, wd.data<uint16_t>(), wd.strides()[0],
                          wd.strides()[1], gx.f32(), in, false});
          else if (rows && in)
            gemm(be, rows, in, outf, gv, view_of(wd), 0.0f, gx.f32(), in);
        }
        if (needs[1]) {  // gW[out, in] = g^T[out, rows] @ x[rows, in]
          Tensor gwc = Tensor::empty({outf, in});
          if (bf16_kernel) {                         // as autocast: g and x in bfloat16, sums in float32
            const Tensor x16 = xs.get(DType::BF16);  // rounded once for q, k and v
            be.gemm_bf16({outf, in, rows, g.f32(), outf, x16.data<uint16_t>(), in, 1, gwc.f32(), in, false,
                          /*a_trans=*/true});
          } else if (outf && in) {
            const Tensor xd = xs.get();
            MatrixView gt{g.f32(), true, std::max<int64_t>(outf, 1)};
            gemm(be, outf, in, rows, gt, MatrixView{xd.f32(), false, std::max<int64_t>(in, 1)}, 0.0f,
                 gwc.f32(), in);
          }
          gw = gwc;
        }
        if (needs[2]) gb = sum(reshape(g, {rows, outf}), {0});
        return std::vector<Tensor>{gx, gw, gb};
      });
}

}  // namespace deltatune::ops
