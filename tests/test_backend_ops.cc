// The backend consistency test over every op in ops.h (in the spirit of ggml's test-backend-ops):
// each case runs forward and backward on the optimised CPU kernels and on the reference kernels
// (plain loops, double sums) with the same random inputs, and compares outputs and input gradients.
// A new op is not done without its case here: Coverage fails for an op of ops.h no case names.
// A CUDA backend is checked the same way against the reference once it has kernels.
//
// Tolerance: |cpu - reference| <= atol + rtol * |reference| per element, atol 1e-5 and rtol 1e-4 unless
// a case says otherwise (float32 sums in another order, vectorised exp/erf with ~1e-7 error).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <fstream>
#include <functional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "deltatune/autograd.h"
#include "deltatune/backend.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "deltatune/threads.h"
#include "ops/backend.h"
#include "ops/cpu/activations.h"
#include "test_names.h"

using namespace deltatune;
namespace O = deltatune::ops;

namespace {

using Inputs = std::vector<Tensor>;
using OpFn = std::function<Tensor(const Inputs&)>;

enum class Init { Normal, Positive };

struct Case {
  std::string name;  // "<op>" or "<op>_<variant>"; Coverage matches ops.h names to these
  std::vector<Shape> shapes;
  OpFn fn;
  Init init = Init::Normal;
  float atol = 1e-5f;
  float rtol = 1e-4f;
};

std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

struct Results {
  std::vector<float> out;
  std::vector<std::vector<float>> grads;  // empty where an input got no gradient
};

// The same leaves (values from the case's seed) on whichever backend this thread runs.
Results run_case(const Case& c, O::BackendKind kind) {
  O::ScopedBackend use(kind);
  Generator gen(std::hash<std::string>{}(c.name) & 0xffffffff);
  Inputs leaves;
  for (const Shape& s : c.shapes) {
    Tensor t = c.init == Init::Positive ? Tensor::uniform(s, gen, 0.5f, 2.0f) : Tensor::randn(s, gen);
    leaves.push_back(t.set_requires_grad(true));
  }
  Tensor out = c.fn(leaves);
  Results run;
  run.out = out.to_floats();
  if (out.requires_grad()) {
    std::vector<float> w(size_t(out.numel()));
    for (float& x : w) x = gen.normal();
    O::sum_all(O::mul(out, Tensor::from_floats(w, out.shape()))).backward();
  }
  for (const Tensor& leaf : leaves)
    run.grads.push_back(leaf.grad().defined() ? leaf.grad().to_floats() : std::vector<float>());
  return run;
}

// The first mismatches between two runs of one quantity, or "" when they agree.
std::string compare(const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
                    const Case& c) {
  std::ostringstream report;
  if (got.size() != want.size()) {
    report << what << ": " << got.size() << " values on cpu, " << want.size() << " on reference\n";
    return report.str();
  }
  int shown = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool both_nan = std::isnan(got[i]) && std::isnan(want[i]);
    if (both_nan || got[i] == want[i]) continue;
    if (std::abs(double(got[i]) - want[i]) <= c.atol + c.rtol * std::abs(double(want[i]))) continue;
    if (shown++ < 6) report << what << "[" << i << "]: cpu " << got[i] << ", reference " << want[i] << "\n";
  }
  return report.str();
}

Tensor ids(const std::vector<int64_t>& v, const Shape& s) { return Tensor::from_ints(v, s); }

// Runs `fn` at a matmul precision, restoring the previous one.
Tensor at_precision(O::MatmulPrecision precision, const std::function<Tensor()>& fn) {
  const O::MatmulPrecision before = O::matmul_precision();
  O::set_matmul_precision(precision);
  Tensor out;
  try {
    out = fn();
  } catch (...) {
    O::set_matmul_precision(before);
    throw;
  }
  O::set_matmul_precision(before);
  return out;
}

// Flattens and joins tensors into one (for ops with several results).
Tensor joined(const std::vector<Tensor>& parts) {
  std::vector<Tensor> flat;
  for (const Tensor& p : parts) flat.push_back(O::reshape(p, {-1}));
  return O::concat(flat, 0);
}

void add_layout_cases(std::vector<Case>& cs) {
  auto add = [&](Case c) { cs.push_back(std::move(c)); };
  add({"contiguous_transposed", {{3, 5}}, [](const Inputs& x) { return O::contiguous(x[0].t()); }});
  add({"contiguous_large_strided", {{64, 1200}}, [](const Inputs& x) {  // the threaded row copy
         return O::contiguous(O::slice(x[0], 1, 0, 1200, 2).t());
       }});
  add({"cast_bf16_roundtrip", {{4, 6}}, [](const Inputs& x) {
         return O::cast(O::cast(x[0], DType::BF16), DType::F32);
       }});
  add({"cast_bf16_large", {{300, 300}}, [](const Inputs& x) {  // the threaded dense casts
         return O::cast(O::cast(x[0], DType::BF16), DType::F32);
       }});
  add({"cast_bf16_strided", {{40, 30}}, [](const Inputs& x) {  // a transposed source: the gather
         return O::cast(O::cast(x[0].t(), DType::BF16), DType::F32);
       }});
  add({"cast_f16_strided", {{4, 6}}, [](const Inputs& x) {
         return O::cast(O::cast(x[0].t(), DType::F16), DType::F32);
       }});
  add({"cast_int_ids", {}, [](const Inputs&) {
         return O::cast(O::cast(ids({3, -2, 7, 0, 5, 1}, {2, 3}).t(), DType::I32), DType::F32);
       }});
  add({"reshape_noncontiguous", {{3, 4}}, [](const Inputs& x) { return O::reshape(x[0].t(), {2, -1}); }});
  add({"transpose", {{2, 3, 4}}, [](const Inputs& x) { return O::contiguous(O::transpose(x[0], 0, 2)); }});
  add({"permute", {{2, 3, 4}}, [](const Inputs& x) { return O::contiguous(O::permute(x[0], {1, 2, 0})); }});
  add({"slice_step", {{5, 6}}, [](const Inputs& x) {
         return O::mul_scalar(O::slice(x[0], 1, 1, 6, 2), 2.0f);
       }});
  add({"expand", {{3, 1}}, [](const Inputs& x) { return O::contiguous(O::expand(x[0], {2, 3, 4})); }});
  add({"concat", {{2, 3}, {2, 5}, {2, 1}}, [](const Inputs& x) {
         return O::concat({x[0], x[1].slice(1, 0, 5), x[2]}, 1);
       }});
  add({"concat_large_rows", {{300, 128}, {300, 64}}, [](const Inputs& x) {
         return O::concat({x[0], x[1]}, 1);
       }});
  add({"split", {{4, 6}}, [](const Inputs& x) {
         return joined(O::split(O::mul_scalar(x[0], 1.5f), {1, 3, 2}, 1));
       }});
}

void add_elementwise_cases(std::vector<Case>& cs) {
  auto add = [&](Case c) { cs.push_back(std::move(c)); };
  add({"add", {{3, 4}, {3, 4}}, [](const Inputs& x) { return O::add(x[0], x[1]); }});
  add({"add_large_row_broadcast", {{256, 160}, {160}}, [](const Inputs& x) { return O::add(x[0], x[1]); }});
  add({"add_scalar_operand_large", {{256, 160}, {}}, [](const Inputs& x) { return O::add(x[0], x[1]); }});
  add({"add_broadcast_both", {{3, 1}, {1, 4}}, [](const Inputs& x) { return O::add(x[0], x[1]); }});
  add({"sub_transposed", {{4, 3}, {3, 4}}, [](const Inputs& x) { return O::sub(x[0].t(), x[1]); }});
  add({"mul_broadcast", {{2, 3, 4}, {4}}, [](const Inputs& x) { return O::mul(x[0], x[1]); }});
  add({"mul_noncontiguous", {{4, 3}, {3, 8}}, [](const Inputs& x) {
         return O::mul(x[0].t(), O::slice(x[1], 1, 0, 8, 2));
       }});
  add({"mul_bf16_operand", {{3, 4}, {4}}, [](const Inputs& x) {
         return O::mul(x[0], O::cast(x[1], DType::BF16));
       }});
  add({"div_broadcast", {{2, 3}, {3}}, [](const Inputs& x) { return O::div(x[0], x[1]); }, Init::Positive});
  add({"add_scalar", {{2, 3}}, [](const Inputs& x) { return O::add_scalar(x[0], 0.7f); }});
  add({"mul_scalar", {{2, 3}}, [](const Inputs& x) { return O::mul_scalar(x[0].t(), -1.3f); }});
  add({"neg", {{2, 3}}, [](const Inputs& x) { return O::neg(x[0]); }});
  add({"exp", {{2, 3}}, [](const Inputs& x) { return O::exp(x[0]); }});
  add({"exp_large", {{200, 200}}, [](const Inputs& x) { return O::exp(x[0]); }});
  add({"log", {{2, 3}}, [](const Inputs& x) { return O::log(x[0]); }, Init::Positive});
  add({"sqrt", {{2, 3}}, [](const Inputs& x) { return O::sqrt(x[0]); }, Init::Positive});
  add({"square", {{2, 3}}, [](const Inputs& x) { return O::square(x[0].t()); }});
  add({"tanh", {{2, 3}}, [](const Inputs& x) { return O::tanh(x[0]); }});
  add({"sigmoid", {{2, 3}}, [](const Inputs& x) { return O::sigmoid(x[0]); }});
  add({"relu", {{3, 4}}, [](const Inputs& x) { return O::relu(x[0]); }});
  add({"gelu_erf", {{3, 40}}, [](const Inputs& x) { return O::gelu(x[0], O::GeluKind::Erf); }});
  add({"gelu_tanh_large", {{300, 200}}, [](const Inputs& x) { return O::gelu(x[0], O::GeluKind::Tanh); }});
  add({"silu", {{3, 40}}, [](const Inputs& x) { return O::silu(x[0].t()); }});
  add({"sum_to", {{2, 3, 4}}, [](const Inputs& x) { return O::sum_to(x[0], {3, 1}); }});
  add({"dropout", {{40, 60}}, [](const Inputs& x) {
         Generator gen(1234);
         return O::dropout(x[0], 0.3f, true, gen);
       }});
  add({"hadamard_transform", {{3, 16}}, [](const Inputs& x) { return O::hadamard_transform(x[0]); }});
  add({"hadamard_transform_strided_large", {{64, 5}}, [](const Inputs& x) {
         return O::hadamard_transform(x[0].t().contiguous().reshape({5, 64}));
       }});
  add({"add_", {{3, 4}, {4}}, [](const Inputs& x) {
         Tensor dst = x[0].detach().clone();
         O::add_(dst, x[1].detach(), 0.5f);
         O::add_(dst, x[0].detach().t().t(), -2.0f);
         return dst;
       }});
}

void add_reduction_and_norm_cases(std::vector<Case>& cs) {
  auto add = [&](Case c) { cs.push_back(std::move(c)); };
  add({"sum_dims", {{2, 3, 4}}, [](const Inputs& x) { return O::sum(x[0], {0, 2}); }});
  add({"sum_last_large", {{300, 200}}, [](const Inputs& x) { return O::sum(x[0], {-1}, true); }});
  add({"sum_transposed", {{3, 4}}, [](const Inputs& x) { return O::sum(x[0].t(), {0}); }});
  add({"mean", {{2, 3, 4}}, [](const Inputs& x) { return O::mean(x[0], {1}); }});
  add({"sum_all", {{5, 7}}, [](const Inputs& x) { return O::sum_all(x[0]); }});
  add({"mean_all", {{5, 7}}, [](const Inputs& x) { return O::mean_all(x[0].t()); }});
  add({"softmax", {{3, 5}}, [](const Inputs& x) { return O::softmax(x[0]); }});
  add({"softmax_middle_dim_large", {{8, 64, 40}}, [](const Inputs& x) { return O::softmax(x[0], 1); }});
  add({"log_softmax", {{3, 5}}, [](const Inputs& x) { return O::log_softmax(x[0].t(), 0); }});
  add({"layer_norm", {{4, 6}, {6}, {6}}, [](const Inputs& x) {
         return O::layer_norm(x[0], x[1], x[2], 1e-5f);
       }});
  add({"layer_norm_large_no_affine", {{400, 48}}, [](const Inputs& x) {
         return O::layer_norm(x[0], Tensor(), Tensor(), 1e-5f);
       }});
  add({"layer_norm_large", {{400, 48}, {48}, {48}}, [](const Inputs& x) {
         return O::layer_norm(x[0], x[1], x[2], 1e-5f);
       }});
  add({"rms_norm", {{2, 3, 6}, {6}}, [](const Inputs& x) {
         return O::rms_norm(x[0].transpose(0, 1), x[1], 1e-6f);
       }});
  add({"rms_norm_large", {{400, 48}, {48}}, [](const Inputs& x) { return O::rms_norm(x[0], x[1], 1e-6f); }});
}

void add_product_cases(std::vector<Case>& cs) {
  auto add = [&](Case c) { cs.push_back(std::move(c)); };
  add({"matmul", {{3, 4}, {4, 5}}, [](const Inputs& x) { return O::matmul(x[0], x[1]); }});
  add({"matmul_batched_broadcast", {{2, 1, 3, 4}, {3, 4, 5}}, [](const Inputs& x) {
         return O::matmul(x[0], x[1]);
       }});
  add({"matmul_transposed_operands", {{4, 3}, {5, 4}}, [](const Inputs& x) {
         return O::matmul(x[0].t(), x[1].t());
       }});
  add({"matmul_batch_times_matrix", {{2, 3, 4}, {4, 5}}, [](const Inputs& x) {
         return O::matmul(x[0], x[1]);
       }});
  add({"matmul_bf16_weight", {{3, 4}, {4, 5}}, [](const Inputs& x) {
         return O::matmul(x[0], O::cast(x[1], DType::BF16));
       }});
  add({"linear", {{2, 3, 4}, {5, 4}, {5}}, [](const Inputs& x) { return O::linear(x[0], x[1], x[2]); }});
  add({"linear_no_bias_transposed_weight", {{3, 4}, {4, 5}}, [](const Inputs& x) {
         return O::linear(x[0], x[1].t());
       }});
  // Shapes big enough for the AVX-512 float32 kernel (ops/cpu/gemm_f32.h; OpenBLAS below them or
  // without AVX-512): the forward reads the weight transposed, the input's gradient as rows, the
  // weight's gradient reads the output gradient transposed; the bias is in C before the sum joins it.
  add({"linear_f32_kernel_shapes", {{2, 30, 70}, {130, 70}, {130}}, [](const Inputs& x) {
         return O::linear(x[0], x[1], x[2]);
       }});
  add({"matmul_f32_kernel_shapes_transposed", {{70, 48}, {70, 100}}, [](const Inputs& x) {
         return O::matmul(x[0].t(), x[1]);
       }});
  add({"linear_bf16_stored_weight", {{3, 4}, {5, 4}}, [](const Inputs& x) {
         return O::linear(x[0], O::cast(x[1], DType::BF16));
       }});
  // Quantised weights (quantised from the leaf, identically on both backends): rows whose length is
  // no multiple of a block, NF4 blocks across rows, and a weight of several dequantised tiles.
  for (QuantFormat f : all_quant_formats()) {
    auto quantized = [f](const Tensor& w) {
      const Tensor c = w.detach().contiguous();
      return std::make_shared<const QuantizedMatrix>(quantize(c.f32(), c.size(0), c.size(1), f));
    };
    const std::string name = "quantized_linear_" + test_support::identifier(quant_format_name(f));
    add({name, {{2, 3, 40}, {70, 40}, {70}}, [quantized](const Inputs& x) {
           return O::quantized_linear(x[0], quantized(x[1]), x[2]);
         }});
    add({name + "_several_tiles", {{3, 2048}, {80, 2048}}, [quantized](const Inputs& x) {
           return O::quantized_linear(x[0], quantized(x[1]));
         }});
  }
  // The AVX-512 BF16 kernel (where the CPU has it) against the reference's rounded products.
  add({"linear_bf16_precision",
       {{6, 80}, {96, 80}, {96}},
       [](const Inputs& x) {
         return at_precision(O::MatmulPrecision::Bf16, [&] { return O::linear(x[0], x[1], x[2]); });
       },
       Init::Normal,
       1e-4f,
       1e-3f});
  add({"linear_bf16_precision_frozen_bf16_weight",
       {{6, 80}, {96, 80}},
       [](const Inputs& x) {
         Tensor w = O::cast(x[1], DType::BF16).detach();
         return at_precision(O::MatmulPrecision::Bf16, [&] { return O::linear(x[0], w); });
       },
       Init::Normal,
       1e-4f,
       1e-3f});
}

void add_model_op_cases(std::vector<Case>& cs) {
  auto add = [&](Case c) { cs.push_back(std::move(c)); };
  add({"embedding", {{7, 4}}, [](const Inputs& x) {
         return O::embedding(x[0], ids({1, 3, 1, 6, 0, 3}, {2, 3}));
       }});
  add({"embedding_bf16_strided", {{4, 7}}, [](const Inputs& x) {
         return O::embedding(O::cast(x[0], DType::BF16).t(), Tensor::from_ints({2, 2, 5}, {3}, DType::I32));
       }});
  add({"embedding_large", {{50, 300}}, [](const Inputs& x) {
         std::vector<int64_t> v(400);
         for (size_t i = 0; i < v.size(); ++i) v[i] = int64_t((i * 7) % 50);
         return O::embedding(x[0], ids(v, {400}));
       }});
  add({"scaled_dot_product_attention", {{2, 2, 3, 4}, {2, 2, 5, 4}, {2, 2, 5, 4}}, [](const Inputs& x) {
         return O::scaled_dot_product_attention(x[0], x[1], x[2]);
       }});
  add({"scaled_dot_product_attention_all", {{2, 4, 3, 4}, {2, 1, 5, 4}, {2, 1, 5, 3}}, [](const Inputs& x) {
         // GQA (4 heads on 1), causal with T < S, padding, one fully masked row, custom scale
         Tensor mask = Tensor::from_floats({1, 1, 0, 1, 1, 0, 0, 0, 1, 0}, {2, 5});
         return O::scaled_dot_product_attention(x[0], x[1], x[2], mask, true, 0.4f);
       }});
  add({"scaled_dot_product_attention_causal_t_gt_s",
       {{1, 1, 4, 4}, {1, 1, 2, 4}, {1, 1, 2, 4}},
       [](const Inputs& x) { return O::scaled_dot_product_attention(x[0], x[1], x[2], Tensor(), true); }});
  add({"scaled_dot_product_attention_large_strided",
       {{1, 300, 2, 8}, {1, 300, 2, 8}, {1, 300, 2, 8}},
       [](const Inputs& x) {  // [B, T, H, D] views, more rows than one block, the threaded path
         return O::scaled_dot_product_attention(x[0].transpose(1, 2), x[1].transpose(1, 2),
                                                x[2].transpose(1, 2), Tensor(), true);
       },
       Init::Normal,
       1e-5f,
       1e-3f});
  // Heads of 64 on 100 positions: every head product (Q K^T, P V and the backward's four) big enough for
  // the AVX-512 float32 kernel (ops/cpu/gemm_f32.h) where the CPU has it.
  add({"scaled_dot_product_attention_f32_kernel_shapes",
       {{1, 2, 100, 64}, {1, 2, 100, 64}, {1, 2, 100, 64}},
       [](const Inputs& x) { return O::scaled_dot_product_attention(x[0], x[1], x[2]); },
       Init::Normal,
       1e-5f,
       1e-3f});
  add({"rope", {{2, 2, 3, 8}}, [](const Inputs& x) {
         return O::rope(x[0], ids({0, 1, 2}, {3}), O::rope_inv_freq(8, 10000.0f));
       }});
  add({"rope_batch_positions_strided", {{2, 3, 2, 4}}, [](const Inputs& x) {
         return O::rope(x[0].transpose(1, 2), ids({5, 6, 7, 0, 1, 2}, {2, 3}), O::rope_inv_freq(4, 100.0f));
       }});
  add({"rope_inv_freq", {}, [](const Inputs&) { return O::rope_inv_freq(16, 500000.0f); }});
  add({"cross_entropy", {{5, 4}}, [](const Inputs& x) {
         return O::cross_entropy(x[0], ids({3, -100, 0, 1, 2}, {5}));
       }});
  add({"cross_entropy_large", {{64, 700}}, [](const Inputs& x) {
         std::vector<int64_t> t(64);
         for (size_t i = 0; i < t.size(); ++i) t[i] = i % 9 == 0 ? -100 : int64_t((i * 37) % 700);
         return O::cross_entropy(x[0], ids(t, {64}));
       }});
  add({"linear_cross_entropy", {{5, 3}, {7, 3}}, [](const Inputs& x) {
         return O::linear_cross_entropy(x[0], x[1], ids({6, -100, 0, 3, 2}, {5}));
       }});
  add({"linear_cross_entropy_frozen_bf16_head",
       {{9, 80}, {70, 80}},
       [](const Inputs& x) {
         Tensor w = O::cast(x[1], DType::BF16).detach();
         return at_precision(O::MatmulPrecision::Bf16, [&] {
           return O::linear_cross_entropy(x[0], w, ids({6, -100, 0, 3, 2, 69, 1, 1, 8}, {9}));
         });
       },
       Init::Normal,
       1e-4f,
       1e-3f});
}

void add_optimizer_cases(std::vector<Case>& cs) {
  auto add = [&](Case c) { cs.push_back(std::move(c)); };
  add({"adamw_update_", {{300, 120}, {300, 120}}, [](const Inputs& x) {
         Tensor p = x[0].detach().clone(), g = x[1].detach();
         Tensor m = Tensor::zeros(p.shape()), v = Tensor::zeros(p.shape()), none;
         const O::AdamWStep k{0.9999f, 0.9f, 0.1f, 0.999f, 0.001f, 0.0316f, 1e-8f, -0.01f};
         O::adamw_update_(p, g, m, v, none, k);
         O::adamw_update_(p, O::mul_scalar(g, -0.5f), m, v, none, k);
         return joined({p, m, v});
       }});
  add({"adamw_update_amsgrad", {{5, 7}, {5, 7}}, [](const Inputs& x) {
         Tensor p = x[0].detach().clone(), g = x[1].detach();
         Tensor m = Tensor::zeros(p.shape()), v = Tensor::zeros(p.shape()), vmax = Tensor::zeros(p.shape());
         const O::AdamWStep k{1.0f, 0.8f, 0.2f, 0.99f, 0.01f, 0.1f, 1e-6f, -0.1f};
         O::adamw_update_(p, g, m, v, vmax, k);
         O::adamw_update_(p, O::mul_scalar(g, 0.1f), m, v, vmax, k);
         return joined({p, m, v, vmax});
       }});
  add({"sgd_update_", {{300, 120}, {300, 120}}, [](const Inputs& x) {
         Tensor p = x[0].detach().clone(), g = x[1].detach(), none;
         O::sgd_update_(p, g, none, {0.01f, -0.1f, 0.0f, 1.0f, true, false, false});
         return p;
       }});
  add({"sgd_update_nesterov_momentum", {{5, 7}, {5, 7}}, [](const Inputs& x) {
         Tensor p = x[0].detach().clone(), g = x[1].detach(), buf = Tensor::empty(p.shape());
         O::sgd_update_(p, g, buf, {0.0f, -0.1f, 0.9f, 1.0f, false, true, true});
         O::sgd_update_(p, g, buf, {0.0f, -0.1f, 0.9f, 1.0f, false, true, false});
         return joined({p, buf});
       }});
  add({"sum_of_squares", {{300, 120}}, [](const Inputs& x) {
         return Tensor::scalar(float(O::sum_of_squares(x[0].t())));
       }});
  add({"scale_", {{4, 6}}, [](const Inputs& x) {
         Tensor a = x[0].detach().clone(), b = x[0].detach().clone().t();
         O::scale_(a, 0.25f);
         O::scale_(b, -3.0f);  // a strided tensor: scaled through a copy
         return joined({a, b});
       }});
}

std::vector<Case> all_cases() {
  std::vector<Case> cs;
  add_layout_cases(cs);
  add_elementwise_cases(cs);
  add_reduction_and_norm_cases(cs);
  add_product_cases(cs);
  add_model_op_cases(cs);
  add_optimizer_cases(cs);
  return cs;
}

class BackendOps : public ::testing::TestWithParam<Case> {};

TEST_P(BackendOps, CpuMatchesReference) {
  const Case& c = GetParam();
  const Results cpu = run_case(c, O::BackendKind::Cpu);
  const Results ref = run_case(c, O::BackendKind::Reference);
  std::string report = compare("output", cpu.out, ref.out, c);
  for (size_t i = 0; i < cpu.grads.size(); ++i)
    report += compare("grad of input " + std::to_string(i), cpu.grads[i], ref.grads[i], c);
  EXPECT_TRUE(report.empty()) << c.name << " differs between the cpu and reference backends:\n" << report;
}

INSTANTIATE_TEST_SUITE_P(AllOps, BackendOps, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// Every op of ops.h (a function returning tensors or a double, or an in-place `name_`) has a case.
TEST(BackendOpsCoverage, EveryOpInOpsHeaderHasACase) {
  const std::string path = std::string(DELTATUNE_ASSETS) + "/../include/deltatune/ops.h";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot read " << path;
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string header = buffer.str();
  std::set<std::string> names;
  for (const Case& c : all_cases()) names.insert(c.name);
  const std::regex decl(R"((?:^|\n)(?:Tensor|std::vector<Tensor>|double)\s+(\w+)\(|(?:^|\n)void\s+(\w+_)\()");
  int found = 0;
  for (auto it = std::sregex_iterator(header.begin(), header.end(), decl); it != std::sregex_iterator();
       ++it) {
    const std::string op = (*it)[1].matched ? (*it)[1].str() : (*it)[2].str();
    ++found;
    bool covered = false;
    for (const std::string& n : names) covered = covered || n == op || n.rfind(op + "_", 0) == 0;
    EXPECT_TRUE(covered) << "ops.h declares " << op << " but test_backend_ops.cc has no case for it";
  }
  EXPECT_GT(found, 45) << "the declaration pattern no longer matches ops.h";
}

TEST(BackendDispatch, ScopedBackendSelectsTheReferenceKernelsOnThisThreadOnly) {
  Tensor x = Tensor::ones({2});
  EXPECT_EQ(&O::backend_for("test", {&x}), &O::cpu_kernels());
  {
    O::ScopedBackend use(O::BackendKind::Reference);
    EXPECT_EQ(O::cpu_backend(), O::BackendKind::Reference);
    EXPECT_EQ(&O::backend_for("test", {&x}), &O::reference_kernels());
    {
      O::ScopedBackend inner(O::BackendKind::Cpu);
      EXPECT_EQ(&O::backend_for("test", {&x}), &O::cpu_kernels());
    }
    EXPECT_EQ(&O::backend_for("test", {&x}), &O::reference_kernels());
  }
  EXPECT_EQ(O::cpu_backend(), O::BackendKind::Cpu);
  EXPECT_THROW(O::ScopedBackend{O::BackendKind::Cuda}, DeviceError);
}

// A tensor tagged as living on the GPU, without memory (the device check comes before any access).
Tensor cuda_tagged(const Shape& shape) {
  auto storage = std::make_shared<Storage>();
  storage->device = Device::CUDA;
  return Tensor::from_storage(storage, DType::F32, shape);
}

TEST(BackendDispatch, MixedDevicesAreAClearError) {
  Tensor cpu = Tensor::ones({2, 3});
  Tensor gpu = cuda_tagged({2, 3});
  try {
    O::add(cpu, gpu);
    FAIL() << "add of a CPU and a CUDA tensor did not throw";
  } catch (const DeviceError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("add"), std::string::npos) << what;
    EXPECT_NE(what.find("cpu"), std::string::npos) << what;
    EXPECT_NE(what.find("cuda"), std::string::npos) << what;
  }
  EXPECT_THROW(O::matmul(cpu, cuda_tagged({3, 2})), DeviceError);
  EXPECT_THROW(O::concat({cpu, gpu}, 0), DeviceError);
  EXPECT_THROW(O::linear(cpu, cuda_tagged({4, 3})), DeviceError);
  Tensor dst = Tensor::zeros({2, 3});
  EXPECT_THROW(dst.copy_(gpu), DeviceError);
}

TEST(BackendDispatch, CudaTensorsWithoutCudaKernelsAreAClearError) {
  try {
    O::exp(cuda_tagged({2}));
    FAIL() << "exp of a CUDA tensor did not throw";
  } catch (const DeviceError& e) {
    EXPECT_NE(std::string(e.what()).find("exp"), std::string::npos) << e.what();
  }
}

// The CPU kernels give the same bits wherever their buffers lie and on any thread count. The Python
// module and the command must train the same delta bit for bit (python/tests/test_train.py), and
// attention's rows live in each thread's own scratch.
TEST(CpuKernels, ExpGivesTheSameBitsAtEveryAlignment) {
  Generator gen(5);
  const Tensor values = Tensor::randn({64}, gen);
  std::vector<float> buffer(64 + 16), reference(64), shifted(64);
  O::kernels::exp_shifted(values.f32(), 0.75f, reference.data(), 64);
  for (int offset = 1; offset < 16; ++offset) {
    std::copy(values.f32(), values.f32() + 64, buffer.begin() + offset);
    O::kernels::exp_shifted(buffer.data() + offset, 0.75f, buffer.data() + offset, 64);
    for (int i = 0; i < 64; ++i)
      ASSERT_EQ(std::bit_cast<uint32_t>(buffer[size_t(offset + i)]),
                std::bit_cast<uint32_t>(reference[size_t(i)]))
          << "offset " << offset << ", element " << i;
  }
}

TEST(CpuKernels, AttentionGivesTheSameBitsOnOneAndTwoThreads) {
  Generator gen(6);
  const Tensor q0 = Tensor::randn({2, 4, 37, 16}, gen), k0 = Tensor::randn({2, 2, 37, 16}, gen),
               v0 = Tensor::randn({2, 2, 37, 16}, gen), r = Tensor::randn({2, 4, 37, 16}, gen);
  auto run = [&](int threads) {
    set_num_threads(threads);
    Tensor q = q0.detach(), k = k0.detach(), v = v0.detach();
    q.set_requires_grad();
    k.set_requires_grad();
    v.set_requires_grad();
    Tensor out = O::scaled_dot_product_attention(q, k, v, Tensor(), true);
    O::sum_all(O::mul(out, r)).backward();
    return std::vector<std::vector<float>>{out.to_floats(), q.grad().to_floats(), k.grad().to_floats(),
                                           v.grad().to_floats()};
  };
  const int before = num_threads();
  const auto one = run(1), two = run(2);
  set_num_threads(before);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_EQ(one[i], two[i]) << "output/gradient " << i;
}

}  // namespace
