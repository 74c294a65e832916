// The gradient check over every op in ops.h: adding an op means adding it to this list.
//
// Each case builds random float32 leaves (always contiguous; the case itself makes strided views
// with transpose/slice/expand so ops also see non-contiguous inputs), runs the op, and reduces the
// output with fixed random weights: loss = sum(out * w). The analytic gradients from backward() are
// compared with central finite differences of that loss (evaluated in float32, summed in double).
// GradcheckSelfTest below shows the tolerance rejects a gradient that is off by 10% or missing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "test_names.h"

using namespace deltatune;
namespace O = deltatune::ops;

namespace {

using Inputs = std::vector<Tensor>;
using OpFn = std::function<Tensor(const Inputs&)>;

enum class Init {
  Normal,        // N(0, 1)
  Positive,      // uniform [0.5, 2]: log, sqrt, denominators
  AwayFromZero,  // |x| in [0.2, 1.5] with random sign: relu's kink stays out of reach of eps
  Grid,          // multiples of 1/64 in [-2, 2]: exact in float16 and bfloat16, and so is x +- 1/64
};

struct Case {
  std::string name;  // "<op>" or "<op>_<variant>"; the coverage test matches ops.h names to these
  std::vector<Shape> shapes;
  OpFn fn;
  Init init = Init::Normal;
  float eps = 1e-2f;
  float atol = 5e-3f;
  float rtol = 1e-2f;
};

std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

Tensor make_leaf(const Shape& shape, Init init, Generator& gen) {
  Tensor t = Tensor::randn(shape, gen);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (init) {
      case Init::Normal:
        break;
      case Init::Positive:
        p[i] = 0.5f + 1.5f * gen.uniform();
        break;
      case Init::AwayFromZero:
        p[i] = (gen.uniform() < 0.5f ? -1.0f : 1.0f) * (0.2f + 1.3f * gen.uniform());
        break;
      case Init::Grid:
        p[i] = std::clamp(std::round(p[i] * 32.0f), -128.0f, 128.0f) / 64.0f;
        break;
    }
  }
  t.set_requires_grad(true);
  return t;
}

double weighted_sum(const Tensor& out, const std::vector<float>& w) {
  std::vector<float> v = out.to_floats();
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += double(v[i]) * w[i];
  return s;
}

struct CheckResult {
  bool ok = true;
  std::string report;  // the first mismatches
  double max_abs_err = 0;
};

// Runs the check for one case. `tamper` (self-test only) rewrites the analytic gradients.
CheckResult gradcheck(const Case& c,
                      const std::function<void(std::vector<std::vector<float>>&)>& tamper = {}) {
  Generator gen(std::hash<std::string>{}(c.name) & 0xffffffff);
  Inputs leaves;
  for (const Shape& s : c.shapes) leaves.push_back(make_leaf(s, c.init, gen));
  Tensor out = c.fn(leaves);
  std::vector<float> w(size_t(out.numel()));
  for (float& x : w) x = gen.normal();
  Tensor loss = O::sum_all(O::mul(out, Tensor::from_floats(w, out.shape())));
  loss.backward();
  std::vector<std::vector<float>> analytic;
  for (const Tensor& leaf : leaves)
    analytic.push_back(leaf.grad().defined() ? leaf.grad().to_floats()
                                             : std::vector<float>(size_t(leaf.numel()), 0.0f));
  if (tamper) tamper(analytic);

  CheckResult result;
  std::ostringstream report;
  int shown = 0;
  NoGradGuard no_grad;
  for (size_t li = 0; li < leaves.size(); ++li) {
    float* p = leaves[li].f32();
    for (int64_t i = 0; i < leaves[li].numel(); ++i) {
      const float saved = p[i];
      p[i] = saved + c.eps;
      const double plus = weighted_sum(c.fn(leaves), w);
      p[i] = saved - c.eps;
      const double minus = weighted_sum(c.fn(leaves), w);
      p[i] = saved;
      const double numeric = (plus - minus) / (2.0 * double(c.eps));
      const double got = analytic[li][size_t(i)];
      const double err = std::abs(got - numeric);
      result.max_abs_err = std::max(result.max_abs_err, err);
      if (err > c.atol + c.rtol * std::abs(numeric)) {
        result.ok = false;
        if (shown++ < 8)
          report << "  input " << li << " " << shape_str(leaves[li].shape()) << " element " << i
                 << ": analytic " << got << ", numeric " << numeric << "\n";
      }
    }
  }
  result.report = report.str();
  return result;
}

Tensor ids(const std::vector<int64_t>& v, const Shape& s) { return Tensor::from_ints(v, s); }

std::vector<Case> all_cases() {
  std::vector<Case> cs;
  auto add = [&](Case c) { cs.push_back(std::move(c)); };

  // --- elementwise, with broadcasting and strided operands ---
  add({"add", {{3, 4}, {3, 4}}, [](const Inputs& x) { return O::add(x[0], x[1]); }});
  add({"add_broadcast", {{2, 3, 4}, {3, 1}}, [](const Inputs& x) { return O::add(x[0], x[1]); }});
  add({"add_broadcast_both", {{3, 1}, {1, 4}}, [](const Inputs& x) { return O::add(x[0], x[1]); }});
  add({"add_scalar_operand", {{2, 3}, {}}, [](const Inputs& x) { return O::add(x[0], x[1]); }});
  add({"sub_broadcast", {{2, 3}, {3}}, [](const Inputs& x) { return O::sub(x[0], x[1]); }});
  add({"sub_transposed", {{4, 3}, {3, 4}}, [](const Inputs& x) { return O::sub(x[0].t(), x[1]); }});
  add({"mul", {{3, 4}, {3, 4}}, [](const Inputs& x) { return O::mul(x[0], x[1]); }});
  add({"mul_broadcast", {{2, 3, 4}, {4}}, [](const Inputs& x) { return O::mul(x[0], x[1]); }});
  add({"mul_noncontiguous", {{4, 3}, {3, 8}}, [](const Inputs& x) {
         return O::mul(x[0].t(), O::slice(x[1], 1, 0, 8, 2));
       }});
  add({"div_broadcast", {{2, 3}, {3}}, [](const Inputs& x) { return O::div(x[0], x[1]); }, Init::Positive});
  add({"div_both_broadcast",
       {{2, 1}, {1, 3}},
       [](const Inputs& x) { return O::div(x[0], x[1]); },
       Init::Positive});
  add({"add_scalar", {{2, 3}}, [](const Inputs& x) { return O::add_scalar(x[0], 0.7f); }});
  add({"mul_scalar", {{2, 3}}, [](const Inputs& x) { return O::mul_scalar(x[0], -1.3f); }});
  add({"neg", {{2, 3}}, [](const Inputs& x) { return O::neg(x[0]); }});
  add({"exp", {{2, 3}}, [](const Inputs& x) { return O::exp(x[0]); }});
  add({"exp_transposed", {{3, 2}}, [](const Inputs& x) { return O::exp(x[0].t()); }});
  add({"log", {{2, 3}}, [](const Inputs& x) { return O::log(x[0]); }, Init::Positive});
  add({"sqrt", {{2, 3}}, [](const Inputs& x) { return O::sqrt(x[0]); }, Init::Positive});
  add({"square", {{2, 3}}, [](const Inputs& x) { return O::square(x[0]); }});
  add({"tanh", {{2, 3}}, [](const Inputs& x) { return O::tanh(x[0]); }});
  add({"sigmoid", {{2, 3}}, [](const Inputs& x) { return O::sigmoid(x[0]); }});
  add({"relu", {{3, 4}}, [](const Inputs& x) { return O::relu(x[0]); }, Init::AwayFromZero});
  add({"gelu_erf", {{3, 4}}, [](const Inputs& x) { return O::gelu(x[0], O::GeluKind::Erf); }});
  add({"gelu_tanh", {{3, 4}}, [](const Inputs& x) { return O::gelu(x[0], O::GeluKind::Tanh); }});
  add({"silu", {{3, 4}}, [](const Inputs& x) { return O::silu(x[0]); }});
  add({"sum_to", {{2, 3, 4}}, [](const Inputs& x) { return O::sum_to(x[0], {3, 1}); }});

  // --- reductions ---
  add({"sum_dims", {{2, 3, 4}}, [](const Inputs& x) { return O::sum(x[0], {0, 2}); }});
  add({"sum_keepdim", {{2, 3, 4}}, [](const Inputs& x) { return O::sum(x[0], {-1}, true); }});
  add({"sum_transposed", {{3, 4}}, [](const Inputs& x) { return O::sum(x[0].t(), {1}); }});
  add({"mean_dims", {{2, 3, 4}}, [](const Inputs& x) { return O::mean(x[0], {1}); }});
  add({"mean_keepdim", {{2, 3, 4}}, [](const Inputs& x) { return O::mean(x[0], {0, 2}, true); }});
  add({"sum_all", {{2, 3, 4}}, [](const Inputs& x) { return O::sum_all(x[0]); }});
  add({"mean_all", {{2, 3, 4}}, [](const Inputs& x) { return O::mean_all(x[0]); }});

  // --- matrix products ---
  add({"matmul_2d", {{3, 4}, {4, 5}}, [](const Inputs& x) { return O::matmul(x[0], x[1]); }});
  add({"matmul_batched", {{2, 3, 4}, {2, 4, 5}}, [](const Inputs& x) { return O::matmul(x[0], x[1]); }});
  add({"matmul_broadcast_batch", {{2, 1, 3, 4}, {3, 4, 2}}, [](const Inputs& x) {
         return O::matmul(x[0], x[1]);
       }});
  add({"matmul_batch_by_matrix", {{2, 3, 4}, {4, 5}}, [](const Inputs& x) { return O::matmul(x[0], x[1]); }});
  add({"matmul_matrix_by_batch", {{3, 4}, {2, 4, 5}}, [](const Inputs& x) { return O::matmul(x[0], x[1]); }});
  add({"matmul_transposed", {{4, 3}, {5, 4}}, [](const Inputs& x) { return O::matmul(x[0].t(), x[1].t()); }});
  add({"matmul_batched_transposed", {{2, 4, 3}, {2, 5, 4}}, [](const Inputs& x) {
         return O::matmul(x[0].transpose(1, 2), x[1].transpose(1, 2));
       }});
  add({"matmul_sliced", {{3, 8}, {4, 5}}, [](const Inputs& x) {
         return O::matmul(O::slice(x[0], 1, 0, 8, 2), x[1]);
       }});
  add({"linear_bias", {{2, 3, 4}, {5, 4}, {5}}, [](const Inputs& x) { return O::linear(x[0], x[1], x[2]); }});
  add({"linear_no_bias", {{3, 4}, {5, 4}}, [](const Inputs& x) { return O::linear(x[0], x[1]); }});
  add({"linear_transposed_weight", {{2, 3, 4}, {4, 5}, {5}}, [](const Inputs& x) {
         return O::linear(x[0], x[1].t(), x[2]);
       }});
  add({"linear_transposed_input", {{4, 3}, {5, 4}}, [](const Inputs& x) {
         return O::linear(x[0].t(), x[1]);
       }});
  // The weight is fixed (quantised once; it has no gradient): the input's and the bias's gradients.
  for (QuantFormat f : all_quant_formats()) {
    const std::string name = "quantized_linear_" + test_support::identifier(quant_format_name(f));
    add({name, {{2, 3, 40}, {6}}, [f](const Inputs& x) {
           Generator gen(7);
           const Tensor w = Tensor::randn({6, 40}, gen);
           auto q = std::make_shared<const QuantizedMatrix>(quantize(w.f32(), 6, 40, f));
           return O::quantized_linear(x[0], q, x[1]);
         }});
  }

  // --- layout ---
  add({"reshape", {{2, 6}}, [](const Inputs& x) { return O::reshape(x[0], {3, -1}); }});
  add({"reshape_noncontiguous", {{4, 3}}, [](const Inputs& x) { return O::reshape(x[0].t(), {2, 6}); }});
  add({"transpose", {{2, 3, 4}}, [](const Inputs& x) { return O::transpose(x[0], 0, 2); }});
  add({"permute", {{2, 3, 4}}, [](const Inputs& x) { return O::permute(x[0], {2, 0, 1}); }});
  add({"slice_step", {{3, 8}}, [](const Inputs& x) { return O::slice(x[0], 1, 1, 8, 3); }});
  add({"slice_negative", {{5, 2}}, [](const Inputs& x) { return O::slice(x[0], 0, -3, 5); }});
  add({"expand", {{3, 1}}, [](const Inputs& x) { return O::expand(x[0], {2, 3, 4}); }});
  add({"contiguous", {{3, 4}}, [](const Inputs& x) { return O::contiguous(x[0].t()); }});
  add({"cast_f32", {{3, 4}}, [](const Inputs& x) { return O::cast(x[0], DType::F32); }});
  add({"cast_f16_roundtrip",
       {{3, 4}},
       [](const Inputs& x) { return O::cast(O::cast(x[0], DType::F16), DType::F32); },
       Init::Grid,
       1.0f / 64});
  add({"cast_bf16_roundtrip",
       {{3, 4}},
       [](const Inputs& x) { return O::cast(O::cast(x[0], DType::BF16), DType::F32); },
       Init::Grid,
       1.0f / 64});
  add({"concat", {{2, 3}, {2, 1}, {2, 2}}, [](const Inputs& x) { return O::concat({x[0], x[1], x[2]}, 1); }});
  add({"concat_dim0_strided", {{3, 2}, {1, 3}}, [](const Inputs& x) {
         return O::concat({x[0].t(), x[1]}, 0);
       }});
  add({"split", {{2, 6}}, [](const Inputs& x) {
         std::vector<Tensor> parts = O::split(x[0], {1, 2, 3}, -1);
         return O::concat({O::mul_scalar(parts[2], 2.0f), parts[0]}, 1);  // parts[1] gets no gradient
       }});

  // --- softmax and normalisation ---
  add({"softmax", {{3, 5}}, [](const Inputs& x) { return O::softmax(x[0]); }});
  add({"softmax_middle_dim", {{2, 4, 3}}, [](const Inputs& x) { return O::softmax(x[0], 1); }});
  add({"softmax_transposed", {{5, 3}}, [](const Inputs& x) { return O::softmax(x[0].t(), -1); }});
  add({"log_softmax", {{3, 5}}, [](const Inputs& x) { return O::log_softmax(x[0]); }});
  add({"log_softmax_dim0", {{4, 3}}, [](const Inputs& x) { return O::log_softmax(x[0], 0); }});
  add({"layer_norm", {{2, 3, 6}, {6}, {6}}, [](const Inputs& x) {
         return O::layer_norm(x[0], x[1], x[2], 1e-5f);
       }});
  add({"layer_norm_no_affine", {{4, 6}}, [](const Inputs& x) {
         return O::layer_norm(x[0], Tensor(), Tensor(), 1e-5f);
       }});
  add({"layer_norm_weight_only_strided", {{6, 4}, {6}}, [](const Inputs& x) {
         return O::layer_norm(x[0].t(), x[1], Tensor(), 1e-5f);
       }});
  add({"rms_norm", {{2, 3, 6}, {6}}, [](const Inputs& x) { return O::rms_norm(x[0], x[1], 1e-6f); }});
  add({"rms_norm_no_weight", {{4, 5}}, [](const Inputs& x) { return O::rms_norm(x[0], Tensor(), 1e-6f); }});

  // --- embeddings, dropout ---
  add({"embedding", {{7, 4}}, [](const Inputs& x) {
         return O::embedding(x[0], ids({1, 3, 1, 6, 0, 3}, {2, 3}));
       }});
  add({"embedding_int32_strided", {{4, 7}}, [](const Inputs& x) {
         return O::embedding(x[0].t(), Tensor::from_ints({2, 2, 5}, {3}, DType::I32));
       }});
  // --- structured transforms ---
  add({"hadamard_transform", {{2, 8}}, [](const Inputs& x) { return O::hadamard_transform(x[0]); }});
  add({"hadamard_transform_strided", {{4, 3}}, [](const Inputs& x) {
         return O::hadamard_transform(x[0].t());
       }});
  add({"dropout", {{4, 6}}, [](const Inputs& x) {
         Generator gen(1234);  // the same mask on every evaluation
         return O::dropout(x[0], 0.3f, true, gen);
       }});
  add({"dropout_eval", {{4, 6}}, [](const Inputs& x) {
         Generator gen(1234);
         return O::mul_scalar(O::dropout(x[0], 0.3f, false, gen), 1.0f);
       }});

  // --- attention ---
  add({"scaled_dot_product_attention", {{2, 2, 3, 4}, {2, 2, 3, 4}, {2, 2, 3, 4}}, [](const Inputs& x) {
         return O::scaled_dot_product_attention(x[0], x[1], x[2]);
       }});
  add({"scaled_dot_product_attention_causal",
       {{1, 2, 4, 4}, {1, 2, 4, 4}, {1, 2, 4, 4}},
       [](const Inputs& x) { return O::scaled_dot_product_attention(x[0], x[1], x[2], Tensor(), true); }});
  add({"scaled_dot_product_attention_causal_t_lt_s",
       {{1, 2, 2, 4}, {1, 2, 5, 4}, {1, 2, 5, 4}},
       [](const Inputs& x) { return O::scaled_dot_product_attention(x[0], x[1], x[2], Tensor(), true); }});
  add({"scaled_dot_product_attention_causal_t_gt_s",
       {{1, 1, 4, 4}, {1, 1, 2, 4}, {1, 1, 2, 4}},
       [](const Inputs& x) {  // the first two query rows see no key: zeros, no gradient
         return O::scaled_dot_product_attention(x[0], x[1], x[2], Tensor(), true);
       }});
  add({"scaled_dot_product_attention_padding_mask",
       {{2, 2, 3, 4}, {2, 2, 5, 4}, {2, 2, 5, 4}},
       [](const Inputs& x) {
         Tensor mask = ids({1, 1, 1, 0, 0, 0, 1, 1, 1, 1}, {2, 5});
         return O::scaled_dot_product_attention(x[0], x[1], x[2], mask);
       }});
  add({"scaled_dot_product_attention_gqa", {{2, 4, 3, 4}, {2, 2, 5, 4}, {2, 2, 5, 3}}, [](const Inputs& x) {
         return O::scaled_dot_product_attention(x[0], x[1], x[2], Tensor(), false, 0.3f);
       }});
  add({"scaled_dot_product_attention_all",
       {{2, 4, 3, 4}, {2, 1, 5, 4}, {2, 1, 5, 4}},
       [](const Inputs& x) {  // GQA (4 heads on 1), causal with T < S, padding (float mask), one empty row
         Tensor mask = Tensor::from_floats({1, 1, 0, 1, 1, 0, 0, 0, 1, 0}, {2, 5});
         return O::scaled_dot_product_attention(x[0], x[1], x[2], mask, true);
       }});
  add({"scaled_dot_product_attention_strided",
       {{2, 3, 4, 4}, {2, 3, 2, 4}, {2, 3, 2, 4}},
       [](const Inputs& x) {  // [B, T, H, D] projections viewed as [B, H, T, D]
         return O::scaled_dot_product_attention(x[0].transpose(1, 2), x[1].transpose(1, 2),
                                                x[2].transpose(1, 2), Tensor(), true);
       }});

  // --- rotary embeddings ---
  add({"rope", {{2, 2, 3, 8}}, [](const Inputs& x) {
         return O::rope(x[0], ids({0, 1, 2}, {3}), O::rope_inv_freq(8, 10000.0f));
       }});
  add({"rope_batch_positions_strided", {{2, 3, 2, 4}}, [](const Inputs& x) {
         return O::rope(x[0].transpose(1, 2), ids({5, 6, 7, 0, 1, 2}, {2, 3}), O::rope_inv_freq(4, 100.0f));
       }});

  // --- losses ---
  add({"cross_entropy", {{4, 5}}, [](const Inputs& x) {
         return O::cross_entropy(x[0], ids({1, 0, 4, 2}, {4}));
       }});
  add({"cross_entropy_ignore_index", {{5, 4}}, [](const Inputs& x) {
         return O::cross_entropy(x[0], ids({3, -100, 0, -100, 2}, {5}));
       }});
  add({"cross_entropy_custom_ignore", {{3, 4}}, [](const Inputs& x) {
         return O::cross_entropy(x[0], ids({0, 3, 3}, {3}), 3);
       }});
  add({"cross_entropy_all_ignored", {{2, 4}}, [](const Inputs& x) {
         return O::add(O::cross_entropy(x[0], ids({-100, -100}, {2})), O::sum_all(x[0]));
       }});
  add({"linear_cross_entropy", {{5, 3}, {7, 3}}, [](const Inputs& x) {
         return O::linear_cross_entropy(x[0], x[1], ids({6, -100, 0, 3, 2}, {5}));
       }});
  add({"linear_cross_entropy_scaled", {{4, 3}, {6, 3}}, [](const Inputs& x) {
         return O::mul_scalar(O::linear_cross_entropy(x[0], x[1], ids({1, 5, 0, 2}, {4})), 3.0f);
       }});
  return cs;
}

class Gradcheck : public ::testing::TestWithParam<Case> {};

TEST_P(Gradcheck, MatchesFiniteDifferences) {
  const Case& c = GetParam();
  CheckResult r = gradcheck(c);
  if (std::getenv("GRADCHECK_VERBOSE"))
    std::printf("%-50s max abs error %.3g\n", c.name.c_str(), r.max_abs_err);
  EXPECT_TRUE(r.ok) << c.name << ": analytic and numeric gradients differ (atol " << c.atol << ", rtol "
                    << c.rtol << ", max abs error " << r.max_abs_err << ")\n"
                    << r.report;
}

INSTANTIATE_TEST_SUITE_P(AllOps, Gradcheck, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// The tolerance must be tight enough to catch real mistakes.
TEST(GradcheckSelfTest, RejectsScaledGradient) {
  for (const char* name :
       {"mul", "softmax", "layer_norm", "scaled_dot_product_attention_all", "cross_entropy"}) {
    Case c;
    for (Case& k : all_cases())
      if (k.name == name) c = k;
    ASSERT_FALSE(c.name.empty()) << name;
    EXPECT_TRUE(gradcheck(c).ok) << name;
    CheckResult r = gradcheck(c, [](std::vector<std::vector<float>>& g) {
      for (auto& v : g)
        for (float& x : v) x *= 1.1f;
    });
    EXPECT_FALSE(r.ok) << name << ": a gradient 10% too large passed";
  }
}

TEST(GradcheckSelfTest, RejectsMissingGradient) {
  Case c{"mul", {{3, 4}, {3, 4}}, [](const Inputs& x) { return O::mul(x[0], x[1]); }};
  CheckResult r =
      gradcheck(c, [](std::vector<std::vector<float>>& g) { std::fill(g[1].begin(), g[1].end(), 0.0f); });
  EXPECT_FALSE(r.ok);
}

// Every op declared in ops.h has at least one case named after it (exactly, or "<op>_...").
TEST(GradcheckSelfTest, CoversEveryOpInOpsHeader) {
  const std::string path = std::string(DELTATUNE_ASSETS) + "/../include/deltatune/ops.h";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot read " << path;
  std::stringstream text;
  text << in.rdbuf();
  const std::string header = text.str();
  // Not differentiable functions of a tensor: no gradient to check.
  const std::set<std::string> exempt{"rope_inv_freq"};
  const std::regex decl(R"((?:^|\n)(?:Tensor|std::vector<Tensor>)\s+(\w+)\()");
  std::vector<Case> cases = all_cases();
  int found = 0;
  for (auto it = std::sregex_iterator(header.begin(), header.end(), decl); it != std::sregex_iterator();
       ++it) {
    const std::string op = (*it)[1];
    ++found;
    if (exempt.count(op)) continue;
    bool covered = false;
    for (const Case& c : cases) covered = covered || c.name == op || c.name.rfind(op + "_", 0) == 0;
    EXPECT_TRUE(covered) << "ops::" << op << " has no gradient-check case: add one to all_cases()";
  }
  EXPECT_GT(found, 40) << "the declaration pattern no longer matches ops.h";
}

}  // namespace
