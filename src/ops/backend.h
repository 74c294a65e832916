#pragma once
// The backend seam. An op (src/ops/*.cc) checks shapes and dtypes, makes its operands float32 and
// readable, asks backend_for() once for the kernels of its tensors' device, runs one or a few kernels,
// and records its backward. A Backend is the kernels alone: raw buffers, sizes and strides in, results
// out, no tensors, no tape. Three implement it:
//   src/ops/cpu/        the optimised kernels (OpenBLAS, OpenMP, AVX-512 BF16): what runs by default
//   src/ops/reference/  plain loops, double sums where it matters: the oracle (tests/test_backend_ops.cc)
//   src/ops/cuda/       later, for CUDA tensors
// Buffers are the device's own memory; every float buffer is contiguous unless strides are given.
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "deltatune/backend.h"
#include "deltatune/ops.h"
#include "deltatune/quantize.h"
#include "deltatune/random.h"
#include "deltatune/tensor.h"

namespace deltatune::ops {

enum class Binary : uint8_t { Add, Sub, Mul, Div };
// Scalar-parameterised and plain unary maps; the activations (Silu, Gelu*) are the vectorised ones.
enum class Unary : uint8_t {
  AddScalar,
  MulScalar,
  Exp,
  Log,
  Sqrt,
  Square,
  Tanh,
  Sigmoid,
  Relu,
  Silu,
  GeluErf,
  GeluTanh
};

// out[i] (contiguous, `shape`) = a[i] op b[i], each operand read through its own strides (0 along
// broadcast dims).
struct BinaryArgs {
  const float* a;
  const float* b;
  float* out;
  Shape shape, a_strides, b_strides;
};

// A tensor seen as [outer, n, inner], reduced or normalised along n.
struct Lines {
  int64_t outer = 1, n = 1, inner = 1;
};

// layer_norm / rms_norm over rows of d: forward fills y, and the per-row statistics backward reuses.
struct NormArgs {
  const float* x;
  const float* weight;  // null when absent
  const float* bias;    // null when absent (and always for rms_norm)
  float* y;
  float* mean;  // [rows] (layer_norm only)
  float* rstd;  // [rows]
  int64_t rows, d;
  float eps;
};
// Backward: any of gx, gweight, gbias may be null (not wanted).
struct NormBackwardArgs {
  const float* x;
  const float* weight;
  const float* g;
  const float* mean;
  const float* rstd;
  float* gx;
  float* gweight;
  float* gbias;
  int64_t rows, d;
};

// out[i, :] = weight[ids[i], :], the weight of any floating dtype read through its strides.
struct EmbeddingArgs {
  const void* weight;  // the storage base; element (r, c) at offset + r * s0 + c * s1
  DType dtype;
  int64_t offset, s0, s1;
  const int64_t* ids;
  int64_t n, d;
  float* out;
};

// Rotates x viewed as [b0, m, t, 2 * half] by the angles of table row (batches == 1 ? 0 : b, t).
struct RopeArgs {
  const float* x;
  float* out;
  const float* cos;  // [batches, t, half]
  const float* sin;
  int64_t batches, b0, m, t, half;
  bool inverse;  // rotate by -angle (the backward)
};

// B*H row-major matrices with unit column stride, matrix (b, h) at base + b * stride_b + h * stride_h.
struct HeadMatrices {
  const float* base = nullptr;
  int64_t stride_b = 0, stride_h = 0, ld = 1;
  const float* at(int64_t b, int64_t h) const { return base + b * stride_b + h * stride_h; }
};

// Scaled dot-product attention on q [B, H, T, D], k [B, Hkv, S, D], v [B, Hkv, S, Dv].
struct AttentionProblem {
  int64_t b = 0, h = 0, hkv = 0, t = 0, s = 0, d = 0, dv = 0;
  bool causal = false;
  float scale = 1;
  const uint8_t* mask = nullptr;  // [B, S], 1 = attend; null = attend everywhere
  // The products (QK^T, PV and the backward's) in bfloat16 with float32 sums, as torch.autocast runs
  // attention's matmuls: set under MatmulPrecision::Bf16 where the CPU has the BF16 kernel. The softmax
  // and the gradients stay float32. A backend without such products computes exactly.
  bool bf16 = false;
  int64_t group() const { return h / hkv; }
  // Keys [0, key_end) can be seen by some row of the block ending before row t1.
  int64_t key_end(int64_t t1) const;
  // Keys [0, limit) are visible to row ti (before the padding mask).
  int64_t row_limit(int64_t ti) const;
};
struct AttentionArgs {
  AttentionProblem p;
  HeadMatrices q, k, v;
  float* out;  // [B, H, T, Dv]
  float* lse;  // [B, H, T]: each row's logsumexp (-inf for a fully masked row)
};
// Backward: g [B, H, T, Dv] contiguous; gq, gk, gv zeroed contiguous buffers or null.
struct AttentionBackwardArgs {
  AttentionProblem p;
  HeadMatrices q, k, v;
  const float* g;
  const float* lse;
  float* gq;
  float* gk;
  float* gv;
};

// C[m, n] = alpha op(A) op(B) + beta C, row-major; op transposes when trans_* is set.
struct GemmArgs {
  int64_t m, n, k;
  const float* a;
  bool trans_a;
  int64_t lda;
  const float* b;
  bool trans_b;
  int64_t ldb;
  float alpha, beta;
  float* c;
  int64_t ldc;
};
// C[m, n] = A[m, k] B[k, n] (+ C when accumulate); A float32 rounded to bfloat16 as read, B bfloat16
// at b[kk * b_k + nn * b_n]. Only where bf16_linear_available() (the reference runs anywhere).
struct GemmBf16Args {
  int64_t m, n, k;
  const float* a;
  int64_t lda;
  const uint16_t* b;
  int64_t b_k, b_n;
  float* c;
  int64_t ldc;
  bool accumulate;
  bool a_trans = false;  // A stored transposed: A[i, kk] at a[kk * lda + i]
};

// Products with a quantised weight W [n, k] (deltatune/quantize.h), dequantised a tile of rows at a
// time (never whole): forward c[m, n] = a[m, k] W^T; transposed (the input's gradient)
// c[m, k] = a[m, n] W. accumulate: c += the product.
struct QuantizedGemmArgs {
  const QuantizedMatrix* w;
  int64_t m;
  const float* a;
  bool transposed;
  float* c;
  bool accumulate;
  // Tiles dequantised to bfloat16 and multiplied on the AVX-512 BF16 kernel (activations rounded as
  // they are read, sums in float32): QLoRA's bfloat16 compute dtype, under MatmulPrecision::Bf16.
  bool bf16 = false;
};

// Rows of logits [n, c] against integer targets; rows whose target is ignore_index are skipped.
struct CrossEntropyArgs {
  const float* logits;
  const int64_t* targets;
  int64_t n, c, ignore_index;
};

// A strided view of one storage: element i (row-major over shape) at base + (offset + o(i)) elements.
struct StridedView {
  void* base;
  DType dtype;
  int64_t offset;
  Shape shape, strides;
};

// torch.optim.AdamW's single-tensor update of n elements, in place (max_exp_avg_sq only with AMSGrad).
struct AdamWArgs {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  float* max_exp_avg_sq;  // null unless amsgrad
  int64_t n;
  AdamWStep step;
};
// torch.optim.SGD's update, in place: momentum_buffer null without momentum.
struct SgdArgs {
  float* param;
  const float* grad;
  float* momentum_buffer;
  int64_t n;
  SgdStep step;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // --- elementwise ---
  virtual void binary(Binary op, const BinaryArgs& args) const = 0;
  // y = f(x) over n contiguous elements; `scalar` is AddScalar's / MulScalar's operand.
  virtual void unary(Unary op, const float* x, float* y, int64_t n, float scalar) const = 0;
  // gx = g * f'(.) from the saved input x or output y (whichever the op keeps; the other is null).
  virtual void unary_backward(Unary op, const float* g, const float* x, const float* y, float* gx,
                              int64_t n) const = 0;
  // dst (contiguous, shape) += alpha * src read through src_strides.
  virtual void accumulate(float* dst, const float* src, const Shape& shape, const Shape& src_strides,
                          float alpha) const = 0;
  // y[i] = keep[i] ? x[i] * scale : 0 (dropout and its backward).
  virtual void masked_scale(const float* x, const uint8_t* keep, float scale, float* y, int64_t n) const = 0;
  // keep[i] = gen.uniform() >= p, one draw per element in order: the same seed gives the same mask on
  // every backend (a device backend draws on the host and copies the mask over).
  virtual void dropout_mask(Generator& gen, float p, uint8_t* keep, int64_t n) const = 0;
  // mask[i] = x[i] != 0 (an attention key mask as bytes).
  virtual void nonzero_mask(const float* x, uint8_t* mask, int64_t n) const = 0;

  // --- reductions, softmax, norms ---
  // out (shape with reduced dims 1) = sum of x (contiguous, shape) over the dims marked in reduce.
  virtual void sum(const float* x, const Shape& shape, const std::vector<bool>& reduce, float* out) const = 0;
  virtual void softmax(const float* x, float* y, const Lines& lines, bool log) const = 0;
  virtual void softmax_backward(const float* y, const float* g, float* gx, const Lines& lines,
                                bool log) const = 0;
  virtual void layer_norm(const NormArgs& args) const = 0;
  virtual void layer_norm_backward(const NormBackwardArgs& args) const = 0;
  virtual void rms_norm(const NormArgs& args) const = 0;
  virtual void rms_norm_backward(const NormBackwardArgs& args) const = 0;

  // --- gathers, rotations, attention ---
  virtual void embedding(const EmbeddingArgs& args) const = 0;
  // gweight [V, d] (zeroed) += g [n, d] scattered to the rows ids.
  virtual void embedding_backward(const int64_t* ids, int64_t n, int64_t d, const float* g,
                                  float* gweight) const = 0;
  virtual void rope(const RopeArgs& args) const = 0;
  // cos/sin [count, half] of the angles positions[p] * inv_freq[i] (the product in float32, as
  // transformers computes inv_freq @ positions; cos and sin in double, rounded once).
  virtual void rope_table(const float* positions, int64_t count, const float* inv_freq, int64_t half,
                          float* cos, float* sin) const = 0;
  virtual void attention(const AttentionArgs& args) const = 0;
  virtual void attention_backward(const AttentionBackwardArgs& args) const = 0;
  // x [rows, n] (n a power of two) Walsh-Hadamard-transformed in place, row by row, unnormalised.
  virtual void hadamard(float* x, int64_t rows, int64_t n) const = 0;

  // --- products and losses ---
  virtual void gemm(const GemmArgs& args) const = 0;
  virtual void gemm_bf16(const GemmBf16Args& args) const = 0;
  virtual void quantized_gemm(const QuantizedGemmArgs& args) const = 0;
  // out[r, :] = row for each of rows (a bias broadcast before a GEMM adds the product).
  virtual void fill_rows(const float* row, float* out, int64_t rows, int64_t cols) const = 0;
  // Sum over counted rows of logsumexp - logit[target]; lse[i] gets each counted row's logsumexp.
  virtual double cross_entropy(const CrossEntropyArgs& args, float* lse) const = 0;
  // gx [n, c] (zeroed) = (softmax(row) - onehot(target)) * scale on counted rows.
  virtual void cross_entropy_backward(const CrossEntropyArgs& args, const float* lse, float scale,
                                      float* gx) const = 0;
  // The loss sum of cross_entropy; when `gradient`, each logits row is replaced in place by
  // (softmax - onehot) * scale, ignored rows by zeros (linear_cross_entropy's fused chunk).
  virtual double cross_entropy_rows(const CrossEntropyArgs& args, float* logits, bool gradient,
                                    float scale) const = 0;

  // --- layout ---
  // dst = src element by element (same shape, any dtypes; converting through float32).
  virtual void copy(const StridedView& dst, const StridedView& src) const = 0;
  virtual void fill(const StridedView& dst, float value) const = 0;
  // outer blocks of `block` bytes: dst + r * dst_stride <- src + r * src_stride (concat).
  virtual void copy_blocks(char* dst, int64_t dst_stride, const char* src, int64_t src_stride, int64_t outer,
                           int64_t block) const = 0;

  // --- optimizer updates (in place) ---
  virtual void adamw_update(const AdamWArgs& args) const = 0;
  virtual void sgd_update(const SgdArgs& args) const = 0;
  // sum of x[i]^2 in double (gradient clipping), and x *= s in place.
  virtual double sum_squares(const float* x, int64_t n) const = 0;
  virtual void scale_inplace(float* x, int64_t n, float s) const = 0;
};

// The backends this build has.
const Backend& cpu_kernels();
const Backend& reference_kernels();

// The kernels for an op on these tensors (undefined ones are skipped): by their common device, and
// for CPU tensors by this thread's choice (deltatune/backend.h). Tensors on different devices throw
// DeviceError naming the op and both devices.
const Backend& backend_for(const char* op, std::initializer_list<const Tensor*> tensors);
const Backend& backend_for(const char* op, const std::vector<Tensor>& tensors);

}  // namespace deltatune::ops
