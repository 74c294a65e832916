#pragma once
// The ops. Each computes in float32 on the CPU (half-precision inputs are converted on entry) and is
// recorded for backward when an input requires grad. Shape or dtype mismatches throw ShapeError /
// DtypeError naming the op and the shapes. Kernels run on the tensors' device (deltatune/backend.h);
// tensors on different devices throw DeviceError. Every op here is in the gradient check
// (tests/test_gradcheck.cc) and the backend-consistency test (tests/test_backend_ops.cc): adding an
// op means adding it to both.
#include <memory>
#include <vector>

#include "deltatune/quantize.h"
#include "deltatune/random.h"
#include "deltatune/tensor.h"

namespace deltatune::ops {

// --- layout (views share storage where the strides allow) ---
Tensor contiguous(const Tensor& a);  // always a fresh contiguous copy
Tensor cast(const Tensor& a, DType dtype);
Tensor reshape(const Tensor& a, const Shape& shape);  // one -1 allowed; copies if not viewable
Tensor transpose(const Tensor& a, int64_t d0, int64_t d1);
Tensor permute(const Tensor& a, const std::vector<int64_t>& dims);
Tensor slice(const Tensor& a, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Tensor expand(const Tensor& a, const Shape& shape);  // broadcast view (stride 0)
Tensor concat(const std::vector<Tensor>& tensors, int64_t dim);
std::vector<Tensor> split(const Tensor& a, const std::vector<int64_t>& sizes, int64_t dim);

// --- elementwise, with NumPy broadcasting ---
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add_scalar(const Tensor& a, float s);
Tensor mul_scalar(const Tensor& a, float s);
Tensor neg(const Tensor& a);
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor square(const Tensor& a);
Tensor tanh(const Tensor& a);
Tensor sigmoid(const Tensor& a);
Tensor relu(const Tensor& a);
enum class GeluKind { Erf, Tanh };  // transformers' "gelu" and "gelu_new"/"gelu_pytorch_tanh"
Tensor gelu(const Tensor& a, GeluKind kind = GeluKind::Erf);
Tensor silu(const Tensor& a);
// In place, not recorded: dst += src (src broadcast to dst). For gradient accumulation and optimizers.
void add_(Tensor& dst, const Tensor& src, float alpha = 1.0f);
// Sums `a` down to `shape` over broadcast dims: the backward of broadcasting.
Tensor sum_to(const Tensor& a, const Shape& shape);

// --- reductions ---
Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor sum_all(const Tensor& a);
Tensor mean_all(const Tensor& a);

// --- matrix products (OpenBLAS; transposed operands are passed to BLAS without copies) ---
// a [..., m, k] @ b [..., k, n] with broadcast batch dims; 2-D x 2-D is one GEMM.
Tensor matmul(const Tensor& a, const Tensor& b);
// The precision of linear products (linear, linear_cross_entropy), as torch.set_float32_matmul_precision:
//   Exact (the default): float32 products; a bfloat16 weight (a checkpoint kept at half size) is
//     widened, so the model computes as the float32 model with rounded weights.
//   Bf16, where the CPU has AVX-512 BF16 (bf16_linear_available()): products with weights of at least
//     kBf16MinDim x kBf16MinDim run on the BF16 kernel, the input and the weight rounded to bfloat16
//     (a float32 weight once per call; store frozen ones in bfloat16 for good: nn::store_frozen_weights),
//     sums in float32; a learning weight's gradient is the product of the rounded output gradient and
//     input (as torch.autocast's), summed and kept in float32; the skinny LoRA factors stay float32.
//     Mixed precision as Hugging Face's --bf16, about twice the speed of float32.
enum class MatmulPrecision { Exact, Bf16 };
constexpr int64_t kBf16MinDim = 64;
bool bf16_linear_available();
void set_matmul_precision(MatmulPrecision precision);
MatmulPrecision matmul_precision();
// x [..., in] @ weight[out, in]^T + bias[out]. bias may be undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());
// linear with a frozen quantised weight [out, in] (deltatune/quantize.h), dequantised tile by tile
// inside the product; the backward gives x and bias their gradients (the weight has none).
Tensor quantized_linear(const Tensor& x, const std::shared_ptr<const QuantizedMatrix>& weight,
                        const Tensor& bias = Tensor());

// --- normalisation and softmax (over the last dim) ---
Tensor softmax(const Tensor& a, int64_t dim = -1);
Tensor log_softmax(const Tensor& a, int64_t dim = -1);
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                  float eps);                                       // weight/bias optional
Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps);  // weight optional

// --- embeddings, dropout ---
// weight [V, D], ids integer [...] -> [..., D]; backward scatter-adds into the rows used.
Tensor embedding(const Tensor& weight, const Tensor& ids);
// Zeroes elements with probability p and scales the rest by 1/(1-p); identity when !training or p == 0.
Tensor dropout(const Tensor& a, float p, bool training, Generator& gen);

// --- structured transforms ---
// The unnormalised Walsh-Hadamard transform along the last dim (a power of two): y = x H, H the
// Sylvester matrix of ±1, in O(n log n) (the Fastfood projection's fast part). H is symmetric and
// H H = n I, so the backward is the same transform of the gradient.
Tensor hadamard_transform(const Tensor& a);

// --- attention ---
// q [B, H, T, D], k and v [B, Hkv, S, D] with H a multiple of Hkv (grouped-query heads share k/v).
// key_mask: optional [B, S] (1 = attend, 0 = padding). causal: query t sees keys s <= t + (S - T)
// (queries are the last T positions, as with a KV cache or prefix). scale: default 1/sqrt(D).
// Fully masked rows give zeros. Returns [B, H, T, D].
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& key_mask = Tensor(), bool causal = false,
                                    float scale = -1.0f);
// Rotary position embedding, transformers' Llama convention (rotate_half over the two halves of
// the last dim). x [B, H, T, D]; positions integer [T] or [B, T]; inv_freq [D/2] float.
Tensor rope(const Tensor& x, const Tensor& positions, const Tensor& inv_freq);
Tensor rope_inv_freq(int64_t head_dim, float theta);  // 1 / theta^(2i/D)

// --- losses ---
// logits [N, C], targets integer [N]; mean over targets != ignore_index (0 when none counted).
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
// cross_entropy(linear(x, weight), targets) without ever holding the [N, V] logits: x [N, H],
// weight [V, H] (an LM head), chunked over rows. The gradients are computed during the forward.
Tensor linear_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets,
                            int64_t ignore_index = -100);

// --- optimizer updates: in place, not recorded (float32 contiguous tensors of one shape) ---
// torch.optim.AdamW's single-tensor step, operation by operation, with its scalars already rounded
// to float32 as torch's kernels receive them (deltatune/optim.h computes them).
struct AdamWStep {
  float decay, beta1, one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size;
};
// max_exp_avg_sq: undefined unless AMSGrad.
void adamw_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                   Tensor& max_exp_avg_sq, const AdamWStep& step);
// torch.optim.SGD's step; momentum_buffer undefined without momentum (first: it starts as the
// decayed gradient).
struct SgdStep {
  float weight_decay, neg_lr, momentum, keep;  // keep = 1 - dampening
  bool decay, nesterov, first;
};
void sgd_update_(Tensor& param, const Tensor& grad, Tensor& momentum_buffer, const SgdStep& step);
// For gradient clipping: the sum of squares in double, and t *= s in place.
double sum_of_squares(const Tensor& t);
void scale_(Tensor& t, float s);

}  // namespace deltatune::ops
