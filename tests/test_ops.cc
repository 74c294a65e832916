// Forward values of the ops against hand-computed values and naive reference loops, dtype
// conversions, strided views, and the autograd semantics (accumulation, no-grad, frozen tensors,
// freeing the graph, error messages). Gradients themselves are checked in test_gradcheck.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "deltatune/threads.h"

using namespace deltatune;
namespace O = deltatune::ops;

namespace {

std::vector<float> iota(int64_t n, float start = 0, float step = 1) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = start + step * float(i);
  return v;
}

void expect_near_all(const std::vector<float>& got, const std::vector<float>& want, float tol,
                     const std::string& what = "") {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << what << " at " << i;
}

template <class Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Dtypes and strided views

TEST(Dtype, HalfRoundTripIsExactForRepresentableValues) {
  const std::vector<float> values{0.0f,
                                  -0.0f,
                                  1.0f,
                                  -1.5f,
                                  0.333251953125f,
                                  1023.5f,
                                  65504.0f,
                                  -65504.0f,
                                  6.103515625e-05f /* 2^-14 */,
                                  5.9604644775390625e-08f /* 2^-24 */};
  Tensor x = Tensor::from_floats(values, {int64_t(values.size())});
  Tensor h = O::cast(x, DType::F16);
  EXPECT_EQ(h.dtype(), DType::F16);
  std::vector<float> back = O::cast(h, DType::F32).to_floats();
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(back[i], values[i]) << i;
    EXPECT_EQ(std::signbit(back[i]), std::signbit(values[i])) << i;
  }
  // Round to nearest even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
  EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f + 0.00048828125f)), 1.0f);
  EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f + 3 * 0.00048828125f)), 1.0f + 0.001953125f);
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(70000.0f))));
}

TEST(Dtype, BFloat16RoundTripIsExactForRepresentableValues) {
  const std::vector<float> values{0.0f,
                                  1.0f,
                                  -1.5f,
                                  3.140625f,
                                  -256.0f,
                                  1.1754943508222875e-38f /* 2^-126 */,
                                  3.3895313892515355e38f /* largest bf16 */};
  Tensor x = Tensor::from_floats(values, {int64_t(values.size())});
  std::vector<float> back = O::cast(O::cast(x, DType::BF16), DType::F32).to_floats();
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(back[i], values[i]) << i;
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 0.00390625f)), 1.0f);  // halfway: to even
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3 * 0.00390625f)), 1.015625f);
}

TEST(Layout, StridedViewsReadCorrectly) {
  Tensor x = Tensor::from_floats(iota(12), {3, 4});
  EXPECT_EQ(x.t().to_floats(), (std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
  EXPECT_FALSE(x.t().is_contiguous());
  EXPECT_EQ(O::slice(x, 1, 1, 4, 2).to_floats(), (std::vector<float>{1, 3, 5, 7, 9, 11}));
  EXPECT_EQ(O::slice(x.t(), 0, 1, 3).to_floats(), (std::vector<float>{1, 5, 9, 2, 6, 10}));
  EXPECT_EQ(x.select(0, 2).to_floats(), (std::vector<float>{8, 9, 10, 11}));
  EXPECT_EQ(O::expand(Tensor::from_floats({1, 2}, {2, 1}), {2, 3}).to_floats(),
            (std::vector<float>{1, 1, 1, 2, 2, 2}));
  Tensor y = Tensor::from_floats(iota(24), {2, 3, 4});
  std::vector<float> p = O::permute(y, {2, 0, 1}).to_floats();  // p[k][i][j] = y[i][j][k]
  for (int k = 0; k < 4; ++k)
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j) EXPECT_EQ(p[size_t(k * 6 + i * 3 + j)], float(i * 12 + j * 4 + k));
  EXPECT_EQ(O::contiguous(x.t()).to_floats(), x.t().to_floats());
  EXPECT_TRUE(O::contiguous(x.t()).is_contiguous());
  EXPECT_EQ(O::reshape(x.t(), {2, 6}).to_floats(), x.t().to_floats());
  // A half-precision strided view converts element by element.
  Tensor h = O::cast(x, DType::F16);
  EXPECT_EQ(O::cast(h.t(), DType::F32).to_floats(), x.t().to_floats());
}

TEST(Layout, ConcatAndSplitValues) {
  Tensor a = Tensor::from_floats({1, 2, 3, 4}, {2, 2});
  Tensor b = Tensor::from_floats({5, 6}, {2, 1});
  EXPECT_EQ(O::concat({a, b}, 1).to_floats(), (std::vector<float>{1, 2, 5, 3, 4, 6}));
  EXPECT_EQ(O::concat({a, a.t()}, 0).to_floats(), (std::vector<float>{1, 2, 3, 4, 1, 3, 2, 4}));
  EXPECT_EQ(O::concat({a, b}, -1).shape(), (Shape{2, 3}));
  // Integer tensors keep their dtype (token ids).
  Tensor i = O::concat({Tensor::from_ints({1, 2}, {2}), Tensor::from_ints({3}, {1})}, 0);
  EXPECT_EQ(i.dtype(), DType::I64);
  EXPECT_EQ(i.to_ints(), (std::vector<int64_t>{1, 2, 3}));
  std::vector<Tensor> parts = O::split(Tensor::from_floats(iota(10), {2, 5}), {2, 3}, 1);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0].to_floats(), (std::vector<float>{0, 1, 5, 6}));
  EXPECT_EQ(parts[1].to_floats(), (std::vector<float>{2, 3, 4, 7, 8, 9}));
  EXPECT_THROW(O::split(a, {1, 2}, 0), ShapeError);
  std::string msg = error_of([&] { O::concat({a, Tensor::zeros({3, 1})}, 1); });
  EXPECT_NE(msg.find("concat"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[3, 1]"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------------
// Elementwise, reductions, matrix products

// The vectorised activations (GELU erf and tanh forms, SiLU) against their exact formulas in double,
// over a range wide enough to reach both saturated tails, and their derivatives likewise (the array is
// large enough to run chunked on several threads).
TEST(Elementwise, VectorisedActivationsMatchTheExactFormulas) {
  std::vector<float> xs;
  for (int i = -120000; i <= 120000; ++i) xs.push_back(float(i) * 1e-4f);
  struct Case {
    const char* name;
    std::function<Tensor(const Tensor&)> op;
    std::function<double(double)> f, df;
  };
  const double c = std::sqrt(2.0 / M_PI);
  auto tanh_arg = [c](double v) { return c * (v + 0.044715 * v * v * v); };
  std::vector<Case> cases = {
      {"gelu", [](const Tensor& t) { return O::gelu(t); },
       [](double v) { return v * 0.5 * (1 + std::erf(v / std::sqrt(2.0))); },
       [](double v) {
         return 0.5 * (1 + std::erf(v / std::sqrt(2.0))) + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
       }},
      {"gelu_tanh", [](const Tensor& t) { return O::gelu(t, O::GeluKind::Tanh); },
       [=](double v) { return 0.5 * v * (1 + std::tanh(tanh_arg(v))); },
       [=](double v) {
         const double t = std::tanh(tanh_arg(v));
         return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * c * (1 + 3 * 0.044715 * v * v);
       }},
      {"silu", [](const Tensor& t) { return O::silu(t); }, [](double v) { return v / (1 + std::exp(-v)); },
       [](double v) {
         const double s = 1 / (1 + std::exp(-v));
         return s * (1 + v * (1 - s));
       }},
  };
  for (const auto& k : cases) {
    Tensor x = Tensor::from_floats(xs, {int64_t(xs.size())}).set_requires_grad();
    Tensor y = k.op(x);
    O::sum(y, {0}).backward();
    std::vector<float> got = y.to_floats(), grad = x.grad().to_floats();
    double worst = 0, worst_grad = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      const double v = xs[i];
      worst = std::max(worst, std::fabs(got[i] - k.f(v)) / std::max(1.0, std::fabs(v)));
      worst_grad = std::max(worst_grad, std::fabs(grad[i] - k.df(v)));
    }
    EXPECT_LT(worst, 5e-7) << k.name;
    EXPECT_LT(worst_grad, 3e-6) << k.name << " derivative";  // a few float32 ulps of values up to ~1.1
  }
}

TEST(Elementwise, KnownValues) {
  Tensor a = Tensor::from_floats({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor row = Tensor::from_floats({10, 20, 30}, {3});
  Tensor col = Tensor::from_floats({100, 200}, {2, 1});
  EXPECT_EQ(O::add(a, row).to_floats(), (std::vector<float>{11, 22, 33, 14, 25, 36}));
  EXPECT_EQ(O::add(a, col).to_floats(), (std::vector<float>{101, 102, 103, 204, 205, 206}));
  EXPECT_EQ(O::sub(row, a).to_floats(), (std::vector<float>{9, 18, 27, 6, 15, 24}));
  EXPECT_EQ(O::mul(a.t(), col.t()).to_floats(), (std::vector<float>{100, 800, 200, 1000, 300, 1200}));
  EXPECT_EQ(O::div(a, Tensor::scalar(2)).to_floats(), (std::vector<float>{0.5, 1, 1.5, 2, 2.5, 3}));
  Tensor x = Tensor::from_floats({-1, 0, 1}, {3});
  expect_near_all(O::gelu(x).to_floats(), {-0.15865525f, 0.0f, 0.84134475f}, 1e-6f, "gelu");
  expect_near_all(O::gelu(x, O::GeluKind::Tanh).to_floats(), {-0.15880801f, 0.0f, 0.84119199f}, 1e-6f,
                  "gelu_tanh");
  expect_near_all(O::silu(x).to_floats(), {-0.26894142f, 0.0f, 0.73105858f}, 1e-6f, "silu");
  expect_near_all(O::sigmoid(x).to_floats(), {0.26894142f, 0.5f, 0.73105858f}, 1e-6f, "sigmoid");
  EXPECT_EQ(O::relu(x).to_floats(), (std::vector<float>{0, 0, 1}));
}

TEST(Reduce, KnownValues) {
  Tensor a = Tensor::from_floats(iota(24), {2, 3, 4});
  EXPECT_EQ(O::sum(a, {0, 2}).to_floats(), (std::vector<float>{6 + 54, 22 + 70, 38 + 86}));
  EXPECT_EQ(O::sum(a, {1}, true).shape(), (Shape{2, 1, 4}));
  EXPECT_EQ(O::mean(a, {-1}).to_floats(), (std::vector<float>{1.5, 5.5, 9.5, 13.5, 17.5, 21.5}));
  EXPECT_EQ(O::sum_all(a).item(), 276.0f);
  EXPECT_EQ(O::mean_all(a).item(), 11.5f);
  EXPECT_EQ(O::sum_to(a, {3, 1}).to_floats(), (std::vector<float>{6 + 54, 22 + 70, 38 + 86}));
}

std::vector<float> naive_matmul(const std::vector<float>& a, const std::vector<float>& b, int m, int k,
                                int n) {
  std::vector<float> c(size_t(m * n));
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int p = 0; p < k; ++p) s += double(a[size_t(i * k + p)]) * b[size_t(p * n + j)];
      c[size_t(i * n + j)] = float(s);
    }
  return c;
}

TEST(Matmul, MatchesNaive) {
  Generator gen(3);
  Tensor a = Tensor::randn({2, 3, 4}, gen), b = Tensor::randn({4, 5}, gen), bt = Tensor::randn({5, 4}, gen);
  std::vector<float> av = a.to_floats();
  std::vector<float> got = O::matmul(a, b).to_floats();
  for (int i = 0; i < 2; ++i) {
    std::vector<float> ai(av.begin() + i * 12, av.begin() + (i + 1) * 12);
    std::vector<float> want = naive_matmul(ai, b.to_floats(), 3, 4, 5);
    expect_near_all(std::vector<float>(got.begin() + i * 15, got.begin() + (i + 1) * 15), want, 1e-5f,
                    "matmul");
  }
  // linear: x @ W^T + b, with W given as [out, in]
  Tensor bias = Tensor::from_floats({1, 2, 3, 4, 5}, {5});
  std::vector<float> lin = O::linear(a, bt, bias).to_floats();
  std::vector<float> want = naive_matmul(av, bt.t().to_floats(), 6, 4, 5);
  for (size_t i = 0; i < want.size(); ++i) want[i] += float(i % 5 + 1);
  expect_near_all(lin, want, 1e-5f, "linear");
  expect_near_all(O::matmul(a, bt.t()).to_floats(), naive_matmul(av, bt.t().to_floats(), 6, 4, 5), 1e-5f,
                  "matmul bt");
}

TEST(Matmul, EmptyInnerDimGivesZeros) {
  for (int i = 0; i < 3; ++i)
    Tensor::full({64, 64}, 7.0f);  // leave non-zero memory for the allocator to reuse
  EXPECT_EQ(O::matmul(Tensor::zeros({4, 0}), Tensor::zeros({0, 3})).to_floats(),
            std::vector<float>(12, 0.0f));
  EXPECT_EQ(O::matmul(Tensor::zeros({2, 4, 0}), Tensor::zeros({2, 0, 3})).to_floats(),
            std::vector<float>(24, 0.0f));
  EXPECT_EQ(O::linear(Tensor::zeros({4, 0}), Tensor::zeros({3, 0})).to_floats(),
            std::vector<float>(12, 0.0f));
  EXPECT_EQ(O::linear(Tensor::zeros({2, 0}), Tensor::zeros({3, 0}), Tensor::from_floats({1, 2, 3}, {3}))
                .to_floats(),
            (std::vector<float>{1, 2, 3, 1, 2, 3}));
}

// ---------------------------------------------------------------------------------------------
// Softmax and normalisation

TEST(Softmax, RowsSumToOneAndMatchNaive) {
  Generator gen(5);
  Tensor x = Tensor::randn({3, 7}, gen, 3.0f);
  std::vector<float> xv = x.to_floats(), y = O::softmax(x).to_floats(), ly = O::log_softmax(x).to_floats();
  for (int r = 0; r < 3; ++r) {
    double mx = -1e30, s = 0, total = 0;
    for (int j = 0; j < 7; ++j) mx = std::max(mx, double(xv[size_t(r * 7 + j)]));
    for (int j = 0; j < 7; ++j) s += std::exp(xv[size_t(r * 7 + j)] - mx);
    for (int j = 0; j < 7; ++j) {
      const size_t i = size_t(r * 7 + j);
      EXPECT_NEAR(y[i], std::exp(xv[i] - mx) / s, 1e-6);
      EXPECT_NEAR(ly[i], xv[i] - mx - std::log(s), 1e-5);
      total += y[i];
    }
    EXPECT_NEAR(total, 1.0, 1e-6);
  }
}

TEST(Softmax, IsStableForLargeInputsAndAnyDim) {
  Tensor x = Tensor::from_floats({1000, 1001, 1002, -1000, 0, 1000}, {2, 3});
  std::vector<float> y = O::softmax(x, -1).to_floats();
  expect_near_all(y, {0.09003057f, 0.24472847f, 0.66524096f, 0.0f, 0.0f, 1.0f}, 1e-6f);
  std::vector<float> ly = O::log_softmax(x, -1).to_floats();
  EXPECT_NEAR(ly[0], -2.40760596f, 1e-5);
  EXPECT_NEAR(ly[3], -2000.0f, 1e-2);
  // dim 0 of [2, 3] is the same as dim 1 of its transpose.
  expect_near_all(O::softmax(x, 0).to_floats(), O::softmax(x.t(), 1).t().to_floats(), 1e-7f);
}

TEST(LayerNorm, NormalisesToMeanZeroVarianceOne) {
  Generator gen(7);
  Tensor x = Tensor::randn({4, 16}, gen, 5.0f);
  std::vector<float> y = O::layer_norm(x, Tensor(), Tensor(), 1e-5f).to_floats();
  for (int r = 0; r < 4; ++r) {
    double m = 0, v = 0;
    for (int j = 0; j < 16; ++j) m += y[size_t(r * 16 + j)];
    m /= 16;
    for (int j = 0; j < 16; ++j) v += (y[size_t(r * 16 + j)] - m) * (y[size_t(r * 16 + j)] - m);
    EXPECT_NEAR(m, 0.0, 1e-6);
    EXPECT_NEAR(v / 16, 1.0, 1e-4);
  }
  // With an affine part (weight in bfloat16, as a frozen half-precision checkpoint would have it).
  Tensor w = O::cast(Tensor::from_floats(iota(16, 0.5f, 0.25f), {16}), DType::BF16);
  Tensor b = Tensor::from_floats(iota(16, -1.0f, 0.125f), {16});
  std::vector<float> ya = O::layer_norm(x, w, b, 1e-5f).to_floats(), wv = w.to_floats(), bv = b.to_floats();
  for (size_t i = 0; i < ya.size(); ++i) EXPECT_NEAR(ya[i], y[i] * wv[i % 16] + bv[i % 16], 1e-5);
}

TEST(RmsNorm, MatchesLlamaFormula) {
  Generator gen(8);
  Tensor x = Tensor::randn({3, 8}, gen, 2.0f);
  Tensor w = Tensor::from_floats(iota(8, 0.5f, 0.1f), {8});
  std::vector<float> xv = x.to_floats(), y = O::rms_norm(x, w, 1e-6f).to_floats(),
                     y0 = O::rms_norm(x, Tensor(), 1e-6f).to_floats();
  for (int r = 0; r < 3; ++r) {
    double ms = 0;
    for (int j = 0; j < 8; ++j) ms += double(xv[size_t(r * 8 + j)]) * xv[size_t(r * 8 + j)];
    const double inv = 1.0 / std::sqrt(ms / 8 + 1e-6);
    for (int j = 0; j < 8; ++j) {
      EXPECT_NEAR(y0[size_t(r * 8 + j)], xv[size_t(r * 8 + j)] * inv, 1e-5);
      EXPECT_NEAR(y[size_t(r * 8 + j)], xv[size_t(r * 8 + j)] * inv * (0.5 + 0.1 * j), 1e-5);
    }
  }
  std::string msg = error_of([&] { O::rms_norm(x, Tensor::ones({7}), 1e-6f); });
  EXPECT_NE(msg.find("rms_norm"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[7]"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------------
// Embedding and dropout

TEST(Embedding, GathersRowsFromAnyDtype) {
  Tensor w = Tensor::from_floats(iota(12), {4, 3});
  Tensor ids = Tensor::from_ints({3, 0, 3, 1}, {2, 2});
  Tensor e = O::embedding(w, ids);
  EXPECT_EQ(e.shape(), (Shape{2, 2, 3}));
  EXPECT_EQ(e.to_floats(), (std::vector<float>{9, 10, 11, 0, 1, 2, 9, 10, 11, 3, 4, 5}));
  EXPECT_EQ(O::embedding(O::cast(w, DType::BF16), ids).to_floats(), e.to_floats());
  EXPECT_EQ(O::embedding(w, Tensor::from_ints({2}, {1}, DType::I32)).to_floats(),
            (std::vector<float>{6, 7, 8}));
  std::string msg = error_of([&] { O::embedding(w, Tensor::from_ints({1, 4}, {2})); });
  EXPECT_NE(msg.find("embedding"), std::string::npos) << msg;
  EXPECT_NE(msg.find("4"), std::string::npos) << msg;
  EXPECT_THROW(O::embedding(w, Tensor::from_floats({1}, {1})), DtypeError);
}

TEST(Embedding, BackwardScatterAddsIntoUsedRows) {
  Tensor w = Tensor::from_floats(iota(8), {4, 2});
  w.set_requires_grad(true);
  O::sum_all(O::embedding(w, Tensor::from_ints({2, 0, 2}, {3}))).backward();
  EXPECT_EQ(w.grad().to_floats(), (std::vector<float>{1, 1, 0, 0, 2, 2, 0, 0}));
}

TEST(Dropout, IdentityWhenEvaluatingOrZeroRate) {
  Generator gen(1);
  Tensor x = Tensor::from_floats(iota(6), {2, 3});
  EXPECT_TRUE(O::dropout(x, 0.5f, false, gen).same(x));
  EXPECT_TRUE(O::dropout(x, 0.0f, true, gen).same(x));
  EXPECT_THROW(O::dropout(x, 1.5f, true, gen), ConfigError);
  EXPECT_EQ(O::dropout(x, 1.0f, true, gen).to_floats(), std::vector<float>(6, 0.0f));
}

TEST(Dropout, SeededMaskScalesKeptValuesAndIsReusedInBackward) {
  const int64_t n = 20000;
  Tensor x = Tensor::ones({n});
  x.set_requires_grad(true);
  Generator gen(42), again(42);
  Tensor y = O::dropout(x, 0.25f, true, gen);
  EXPECT_EQ(y.to_floats(), O::dropout(x.detach(), 0.25f, true, again).to_floats());
  std::vector<float> v = y.to_floats();
  int64_t zeros = 0;
  for (float f : v) {
    if (f == 0.0f)
      ++zeros;
    else
      EXPECT_FLOAT_EQ(f, 1.0f / 0.75f);
  }
  EXPECT_NEAR(double(zeros) / double(n), 0.25, 0.015);
  O::sum_all(y).backward();
  EXPECT_EQ(x.grad().to_floats(), v);  // d(sum)/dx is the mask times the scale, like y itself
}

// ---------------------------------------------------------------------------------------------
// Attention

struct AttnConfig {
  int64_t b, h, hkv, t, s, d, dv;
  bool causal;
  bool mask;
  float scale;
};

// The textbook formula with a [T, S] score matrix per head.
std::vector<float> naive_attention(const AttnConfig& c, const std::vector<float>& q,
                                   const std::vector<float>& k, const std::vector<float>& v,
                                   const std::vector<float>& mask) {
  std::vector<float> out(size_t(c.b * c.h * c.t * c.dv), 0.0f);
  const float scale = c.scale < 0 ? 1.0f / std::sqrt(float(c.d)) : c.scale;
  for (int64_t b = 0; b < c.b; ++b)
    for (int64_t h = 0; h < c.h; ++h) {
      const int64_t kvh = h / (c.h / c.hkv);
      for (int64_t t = 0; t < c.t; ++t) {
        std::vector<double> sc(size_t(c.s));
        std::vector<bool> on(size_t(c.s));
        double mx = -1e300;
        bool any = false;
        for (int64_t s = 0; s < c.s; ++s) {
          on[size_t(s)] =
              (mask.empty() || mask[size_t(b * c.s + s)] != 0) && (!c.causal || s <= t + c.s - c.t);
          if (!on[size_t(s)]) continue;
          double dot = 0;
          for (int64_t j = 0; j < c.d; ++j)
            dot += double(q[size_t(((b * c.h + h) * c.t + t) * c.d + j)]) *
                   k[size_t(((b * c.hkv + kvh) * c.s + s) * c.d + j)];
          sc[size_t(s)] = dot * scale;
          mx = std::max(mx, sc[size_t(s)]);
          any = true;
        }
        if (!any) continue;
        double sum = 0;
        for (int64_t s = 0; s < c.s; ++s) sum += on[size_t(s)] ? std::exp(sc[size_t(s)] - mx) : 0.0;
        for (int64_t s = 0; s < c.s; ++s) {
          if (!on[size_t(s)]) continue;
          const double p = std::exp(sc[size_t(s)] - mx) / sum;
          for (int64_t j = 0; j < c.dv; ++j)
            out[size_t(((b * c.h + h) * c.t + t) * c.dv + j)] +=
                float(p * v[size_t(((b * c.hkv + kvh) * c.s + s) * c.dv + j)]);
        }
      }
    }
  return out;
}

TEST(Attention, MatchesNaiveReference) {
  const std::vector<AttnConfig> configs{
      {2, 2, 2, 5, 5, 8, 8, false, false, -1},    // plain
      {2, 2, 2, 5, 5, 8, 8, true, false, -1},     // causal
      {1, 2, 2, 3, 7, 8, 8, true, false, -1},     // causal with T < S (a cache or prefix before the queries)
      {1, 1, 1, 6, 3, 4, 4, true, false, -1},     // causal with T > S: the first rows see nothing
      {2, 4, 2, 4, 6, 8, 5, false, true, 0.2f},   // GQA, padding mask, custom scale, Dv != D
      {2, 6, 2, 3, 9, 4, 4, true, true, -1},      // everything at once
      {1, 2, 1, 300, 300, 8, 8, true, true, -1},  // more rows than one block of the kernel
  };
  Generator gen(11);
  for (const AttnConfig& c : configs) {
    Tensor q = Tensor::randn({c.b, c.h, c.t, c.d}, gen), k = Tensor::randn({c.b, c.hkv, c.s, c.d}, gen),
           v = Tensor::randn({c.b, c.hkv, c.s, c.dv}, gen);
    std::vector<float> mask;
    Tensor mask_t;
    if (c.mask) {
      for (int64_t i = 0; i < c.b * c.s; ++i) mask.push_back(i % 4 == 1 ? 0.0f : 1.0f);
      mask[0] = 0.0f;
      mask_t = Tensor::from_floats(mask, {c.b, c.s});
    }
    std::vector<float> got = O::scaled_dot_product_attention(q, k, v, mask_t, c.causal, c.scale).to_floats();
    std::vector<float> want = naive_attention(c, q.to_floats(), k.to_floats(), v.to_floats(), mask);
    expect_near_all(got, want, 2e-5f, "config T=" + std::to_string(c.t) + " S=" + std::to_string(c.s));
  }
}

// The fused kernel's gradients against the same attention written with the basic ops (matmul,
// softmax, an additive mask, repeated kv heads), over more query rows than one kernel block.
TEST(Attention, GradientsMatchComposedOps) {
  const int64_t b = 2, h = 4, hkv = 2, t = 260, s = 300, d = 8;
  Generator gen(17);
  Tensor q = Tensor::randn({b, h, t, d}, gen).set_requires_grad(true);
  Tensor k = Tensor::randn({b, hkv, s, d}, gen).set_requires_grad(true);
  Tensor v = Tensor::randn({b, hkv, s, d}, gen).set_requires_grad(true);
  Tensor w = Tensor::randn({b, h, t, d}, gen);
  std::vector<float> mask(size_t(b * s), 1.0f), bias(size_t(b * t * s), 0.0f);
  for (int64_t i = 0; i < b * s; ++i)
    if (i % 5 == 3) mask[size_t(i)] = 0.0f;
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t ti = 0; ti < t; ++ti)
      for (int64_t si = 0; si < s; ++si)
        if (mask[size_t(bi * s + si)] == 0.0f || si > ti + s - t)
          bias[size_t((bi * t + ti) * s + si)] = -1e9f;

  O::sum_all(O::mul(O::scaled_dot_product_attention(q, k, v, Tensor::from_floats(mask, {b, s}), true), w))
      .backward();
  const std::vector<float> gq = q.grad().to_floats(), gk = k.grad().to_floats(), gv = v.grad().to_floats();
  q.zero_grad();
  k.zero_grad();
  v.zero_grad();

  auto repeat_kv = [&](const Tensor& x) {
    return O::reshape(O::expand(x.unsqueeze(2), {b, hkv, h / hkv, s, d}), {b, h, s, d});
  };
  Tensor scores = O::mul_scalar(O::matmul(q, O::transpose(repeat_kv(k), -1, -2)), 1.0f / std::sqrt(float(d)));
  scores = O::add(scores, Tensor::from_floats(bias, {b, 1, t, s}));
  Tensor ref = O::matmul(O::softmax(scores, -1), repeat_kv(v));
  O::sum_all(O::mul(ref, w)).backward();
  expect_near_all(gq, q.grad().to_floats(), 1e-4f, "dq");
  expect_near_all(gk, k.grad().to_floats(), 1e-4f, "dk");
  expect_near_all(gv, v.grad().to_floats(), 1e-4f, "dv");
}

TEST(Attention, ReadsStridedInputsAndIntegerMasks) {
  Generator gen(12);
  // Projections come out as [B, T, H, D] and are viewed as [B, H, T, D] without a copy.
  Tensor q = Tensor::randn({2, 4, 3, 8}, gen), k = Tensor::randn({2, 6, 3, 8}, gen),
         v = Tensor::randn({2, 6, 3, 8}, gen);
  Tensor mask = Tensor::from_ints({1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1}, {2, 6});
  Tensor got =
      O::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, true);
  Tensor want =
      O::scaled_dot_product_attention(O::contiguous(q.transpose(1, 2)), O::contiguous(k.transpose(1, 2)),
                                      O::contiguous(v.transpose(1, 2)), O::cast(mask, DType::F32), true);
  expect_near_all(got.to_floats(), want.to_floats(), 1e-6f);
  AttnConfig c{2, 3, 3, 4, 6, 8, 8, true, true, -1};
  std::vector<float> mv;
  for (int64_t x : mask.to_ints()) mv.push_back(float(x));
  expect_near_all(got.to_floats(),
                  naive_attention(c, O::contiguous(q.transpose(1, 2)).to_floats(),
                                  O::contiguous(k.transpose(1, 2)).to_floats(),
                                  O::contiguous(v.transpose(1, 2)).to_floats(), mv),
                  2e-5f);
}

TEST(Attention, FullyMaskedRowsGiveZerosAndNoGradient) {
  Generator gen(13);
  Tensor q = Tensor::randn({2, 1, 2, 4}, gen), k = Tensor::randn({2, 1, 3, 4}, gen),
         v = Tensor::randn({2, 1, 3, 4}, gen);
  q.set_requires_grad(true);
  Tensor mask = Tensor::from_ints({0, 0, 0, 1, 1, 1}, {2, 3});  // batch 0 sees nothing
  Tensor out = O::scaled_dot_product_attention(q, k, v, mask);
  std::vector<float> o = out.to_floats();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(o[size_t(i)], 0.0f);
  for (int i = 8; i < 16; ++i) EXPECT_TRUE(std::isfinite(o[size_t(i)]));
  O::sum_all(out).backward();
  std::vector<float> g = q.grad().to_floats();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(g[size_t(i)], 0.0f);
}

TEST(Attention, ShapeErrorsNameTheOpAndShapes) {
  Tensor q = Tensor::zeros({1, 3, 2, 4}), k = Tensor::zeros({1, 2, 2, 4});
  std::string msg = error_of([&] { O::scaled_dot_product_attention(q, k, k); });
  EXPECT_NE(msg.find("scaled_dot_product_attention"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[1, 3, 2, 4]"), std::string::npos) << msg;
  msg = error_of([&] { O::scaled_dot_product_attention(q, q, q, Tensor::ones({1, 3})); });
  EXPECT_NE(msg.find("key_mask"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[1, 3]"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------------
// Rotary embeddings

TEST(Rope, InvFreqMatchesTransformers) {
  expect_near_all(O::rope_inv_freq(4, 10000.0f).to_floats(), {1.0f, 0.01f}, 0.0f);
  std::vector<float> f = O::rope_inv_freq(128, 500000.0f).to_floats();
  ASSERT_EQ(f.size(), 64u);
  for (int i = 0; i < 64; ++i) {
    const double want = 1.0 / std::pow(500000.0, double(float(2 * i) / 128.0f));
    EXPECT_NEAR(f[size_t(i)], want, want * 2.4e-7) << i;  // within about one float32 ulp
  }
}

TEST(Rope, MatchesNaiveRotateHalf) {
  Generator gen(14);
  const int64_t b = 2, h = 3, t = 4, d = 8;
  Tensor x = Tensor::randn({b, h, t, d}, gen);
  Tensor inv = O::rope_inv_freq(d, 10000.0f);
  std::vector<float> xv = x.to_floats(), fv = inv.to_floats();
  const std::vector<int64_t> pos_bt{3, 4, 5, 6, 0, 1, 2, 7};
  for (bool per_batch : {false, true}) {
    Tensor pos = per_batch ? Tensor::from_ints(pos_bt, {b, t}) : Tensor::from_ints({0, 1, 2, 3}, {t});
    std::vector<float> y = O::rope(x, pos, inv).to_floats();
    for (int64_t bi = 0; bi < b; ++bi)
      for (int64_t hi = 0; hi < h; ++hi)
        for (int64_t ti = 0; ti < t; ++ti) {
          const int64_t p = per_batch ? pos_bt[size_t(bi * t + ti)] : ti;
          const size_t base = size_t(((bi * h + hi) * t + ti) * d);
          for (int64_t j = 0; j < d; ++j) {
            const double angle = double(float(p) * fv[size_t(j % (d / 2))]);
            const double rot = j < d / 2 ? -xv[base + size_t(j + d / 2)] : xv[base + size_t(j - d / 2)];
            EXPECT_NEAR(y[base + size_t(j)], xv[base + size_t(j)] * std::cos(angle) + rot * std::sin(angle),
                        1e-5)
                << "per_batch " << per_batch << " b " << bi << " t " << ti << " j " << j;
          }
        }
  }
  // Position 0 is the identity.
  Tensor one = O::slice(x, 2, 0, 1);
  expect_near_all(O::rope(one, Tensor::from_ints({0}, {1}), inv).to_floats(), one.to_floats(), 0.0f);
  EXPECT_THROW(O::rope(x, Tensor::from_ints({0, 1}, {2}), inv), ShapeError);
}

// ---------------------------------------------------------------------------------------------
// Cross entropy

TEST(CrossEntropy, MatchesNaiveWithIgnoreIndex) {
  Generator gen(15);
  Tensor logits = Tensor::randn({5, 6}, gen, 2.0f);
  const std::vector<int64_t> targets{2, -100, 5, 0, -100};
  std::vector<float> lv = logits.to_floats();
  double total = 0;
  int counted = 0;
  for (int i = 0; i < 5; ++i) {
    if (targets[size_t(i)] == -100) continue;
    double s = 0;
    for (int j = 0; j < 6; ++j) s += std::exp(double(lv[size_t(i * 6 + j)]));
    total += std::log(s) - lv[size_t(i * 6 + targets[size_t(i)])];
    ++counted;
  }
  EXPECT_NEAR(O::cross_entropy(logits, Tensor::from_ints(targets, {5})).item(), total / counted, 1e-5);
  Tensor all_ignored = O::cross_entropy(logits, Tensor::from_ints({-100, -100, -100, -100, -100}, {5}));
  EXPECT_EQ(all_ignored.item(), 0.0f);
  EXPECT_EQ(all_ignored.dim(), 0);
  // A uniform row over C classes costs log(C).
  EXPECT_NEAR(O::cross_entropy(Tensor::zeros({1, 8}), Tensor::from_ints({3}, {1}, DType::I32)).item(),
              std::log(8.0), 1e-6);
}

// The fused, chunked LM-head loss equals cross_entropy(linear(x, W)) in value and gradients, over
// more rows than one chunk holds.
TEST(CrossEntropy, LinearCrossEntropyMatchesUnfused) {
  Generator gen(16);
  const int64_t n = 700, h = 16, v = 9000;
  Tensor x = Tensor::randn({n, h}, gen, 1.0f), w = Tensor::randn({v, h}, gen, 0.3f);
  std::vector<int64_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[size_t(i)] = i % 7 == 3 ? -100 : int64_t(gen.below(uint64_t(v)));
  Tensor targets = Tensor::from_ints(t, {n});
  Tensor x1 = x.detach().set_requires_grad(), w1 = w.detach().set_requires_grad();
  Tensor x2 = x.detach().set_requires_grad(), w2 = w.detach().set_requires_grad();
  Tensor fused = O::mul_scalar(O::linear_cross_entropy(x1, w1, targets), 2.0f);
  Tensor plain = O::mul_scalar(O::cross_entropy(O::linear(x2, w2), targets), 2.0f);
  EXPECT_NEAR(fused.item(), plain.item(), 1e-5);
  fused.backward();
  plain.backward();
  for (auto [a, b] : {std::pair{x1.grad(), x2.grad()}, std::pair{w1.grad(), w2.grad()}}) {
    std::vector<float> av = a.to_floats(), bv = b.to_floats();
    ASSERT_EQ(av.size(), bv.size());
    double worst = 0;
    for (size_t i = 0; i < av.size(); ++i) worst = std::max(worst, double(std::fabs(av[i] - bv[i])));
    EXPECT_LT(worst, 1e-6);
  }
  {
    NoGradGuard no_grad;  // no gradient work without grad mode
    EXPECT_NEAR(O::linear_cross_entropy(x1, w1, targets).item(), plain.item() / 2.0f, 1e-5);
  }
  EXPECT_THROW(O::linear_cross_entropy(x, w, Tensor::from_ints({int64_t(v)}, {1})), ShapeError);
}

TEST(CrossEntropy, OutOfRangeTargetNamesTargetAndClasses) {
  std::string msg = error_of([] { O::cross_entropy(Tensor::zeros({2, 5}), Tensor::from_ints({1, 9}, {2})); });
  EXPECT_NE(msg.find("cross_entropy"), std::string::npos) << msg;
  EXPECT_NE(msg.find("9"), std::string::npos) << msg;
  EXPECT_NE(msg.find("5"), std::string::npos) << msg;
  EXPECT_THROW(O::cross_entropy(Tensor::zeros({2, 5}), Tensor::from_ints({-1, 0}, {2})), ShapeError);
  EXPECT_THROW(O::cross_entropy(Tensor::zeros({2, 5}), Tensor::from_ints({0, 0, 0}, {3})), ShapeError);
}

// ---------------------------------------------------------------------------------------------
// Threaded kernels give the same values and gradients as one thread (shapes big enough to split).

struct Outputs {
  std::vector<float> out;
  std::vector<std::vector<float>> grads;
};

Outputs run_with_threads(int threads, const std::vector<Shape>& shapes,
                         const std::function<Tensor(const std::vector<Tensor>&)>& fn) {
  const int before = num_threads();
  set_num_threads(threads);
  Generator gen(21);
  std::vector<Tensor> leaves;
  for (const Shape& s : shapes) leaves.push_back(Tensor::randn(s, gen).set_requires_grad(true));
  Tensor out = fn(leaves);
  std::vector<float> w(size_t(out.numel()));
  for (float& x : w) x = gen.normal();
  O::sum_all(O::mul(out, Tensor::from_floats(w, out.shape()))).backward();
  Outputs r{out.to_floats(), {}};
  for (const Tensor& l : leaves) r.grads.push_back(l.grad().to_floats());
  set_num_threads(before);
  return r;
}

TEST(Threads, ParallelKernelsMatchOneThread) {
  struct Big {
    std::string name;
    std::vector<Shape> shapes;
    std::function<Tensor(const std::vector<Tensor>&)> fn;
  };
  const std::vector<Big> cases{
      {"attention",
       {{2, 4, 70, 16}, {2, 2, 90, 16}, {2, 2, 90, 8}},
       [](const std::vector<Tensor>& x) {
         std::vector<float> m(180, 1.0f);
         for (int i = 0; i < 180; i += 7) m[size_t(i)] = 0.0f;
         return O::scaled_dot_product_attention(x[0], x[1], x[2], Tensor::from_floats(m, {2, 90}), true);
       }},
      {"layer_norm",
       {{300, 64}, {64}, {64}},
       [](const std::vector<Tensor>& x) { return O::layer_norm(x[0], x[1], x[2], 1e-5f); }},
      {"rms_norm",
       {{300, 64}, {64}},
       [](const std::vector<Tensor>& x) { return O::rms_norm(x[0], x[1], 1e-6f); }},
      {"softmax", {{64, 30, 40}}, [](const std::vector<Tensor>& x) { return O::softmax(x[0], 1); }},
      {"log_softmax", {{300, 64}}, [](const std::vector<Tensor>& x) { return O::log_softmax(x[0]); }},
      {"cross_entropy",
       {{400, 50}},
       [](const std::vector<Tensor>& x) {
         std::vector<int64_t> t(400);
         for (int i = 0; i < 400; ++i) t[size_t(i)] = i % 9 == 0 ? -100 : (i * 7) % 50;
         return O::cross_entropy(x[0], Tensor::from_ints(t, {400}));
       }},
      {"embedding",
       {{50, 300}},
       [](const std::vector<Tensor>& x) {
         std::vector<int64_t> ids(400);
         for (int i = 0; i < 400; ++i) ids[size_t(i)] = (i * 13) % 50;
         return O::embedding(x[0], Tensor::from_ints(ids, {20, 20}));
       }},
      {"rope",
       {{2, 4, 64, 64}},
       [](const std::vector<Tensor>& x) {
         std::vector<int64_t> pos(64);
         for (int i = 0; i < 64; ++i) pos[size_t(i)] = i + 3;
         return O::rope(x[0], Tensor::from_ints(pos, {64}), O::rope_inv_freq(64, 10000.0f));
       }},
      {"concat",
       {{300, 40}, {300, 100}},
       [](const std::vector<Tensor>& x) {
         return O::concat({x[0], x[1]}, 1);
       }},
  };
  for (const Big& c : cases) {
    Outputs one = run_with_threads(1, c.shapes, c.fn), many = run_with_threads(4, c.shapes, c.fn);
    expect_near_all(many.out, one.out, 1e-5f, c.name + " output");
    for (size_t i = 0; i < one.grads.size(); ++i)
      expect_near_all(many.grads[i], one.grads[i], 1e-4f, c.name + " gradient " + std::to_string(i));
  }
}

// ---------------------------------------------------------------------------------------------
// Autograd semantics

TEST(Autograd, GradientsAccumulateAcrossBackwardCalls) {
  Tensor x = Tensor::from_floats({1, 2, 3}, {3});
  x.set_requires_grad(true);
  O::sum_all(O::square(x)).backward();
  EXPECT_EQ(x.grad().to_floats(), (std::vector<float>{2, 4, 6}));
  O::sum_all(O::square(x)).backward();
  EXPECT_EQ(x.grad().to_floats(), (std::vector<float>{4, 8, 12}));
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Tensor x = Tensor::from_floats({1, 2, 3}, {3});
  x.set_requires_grad(true);
  {
    NoGradGuard guard;
    EXPECT_FALSE(grad_enabled());
    Tensor y = O::softmax(O::mul(x, x));
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(y.grad_fn(), nullptr);
    Tensor a = O::scaled_dot_product_attention(x.reshape({1, 1, 3, 1}), x.reshape({1, 1, 3, 1}),
                                               x.reshape({1, 1, 3, 1}));
    EXPECT_FALSE(a.requires_grad());
    EXPECT_EQ(a.grad_fn(), nullptr);
  }
  EXPECT_TRUE(grad_enabled());
  Tensor y = O::mul(x, x);
  EXPECT_TRUE(y.requires_grad());
  EXPECT_NE(y.grad_fn(), nullptr);
}

TEST(Autograd, FrozenTensorsNeverGetAGradient) {
  Generator gen(16);
  Tensor x = Tensor::randn({2, 4}, gen).set_requires_grad(true);
  Tensor w = Tensor::randn({3, 4}, gen);    // frozen
  Tensor ln_w = Tensor::ones({3});          // frozen
  Tensor emb = Tensor::randn({5, 4}, gen);  // frozen
  Tensor h = O::add(O::linear(x, w), O::sum(O::embedding(emb, Tensor::from_ints({1, 2}, {2})), {1}, true));
  O::sum_all(O::layer_norm(h, ln_w, Tensor(), 1e-5f)).backward();
  EXPECT_TRUE(x.grad().defined());
  EXPECT_FALSE(w.grad().defined());
  EXPECT_FALSE(ln_w.grad().defined());
  EXPECT_FALSE(emb.grad().defined());
  // An op with only frozen inputs is not recorded at all.
  Tensor frozen_only = O::linear(Tensor::ones({1, 4}), w);
  EXPECT_FALSE(frozen_only.requires_grad());
  EXPECT_EQ(frozen_only.grad_fn(), nullptr);
}

TEST(Autograd, GraphIsFreedAfterBackward) {
  Tensor x = Tensor::from_floats({0.5f, -1.0f, 2.0f}, {3});
  x.set_requires_grad(true);
  std::weak_ptr<Storage> saved;
  Tensor loss;
  {
    Tensor mid = O::exp(x);  // saved by mul's backward (and by exp's own)
    saved = mid.storage();
    loss = O::sum_all(O::mul(mid, mid));
  }
  EXPECT_FALSE(saved.expired()) << "the tape should keep what backward needs";
  loss.backward();
  EXPECT_TRUE(saved.expired()) << "backward should free the saved tensors";
  ASSERT_NE(loss.grad_fn(), nullptr);
  EXPECT_TRUE(loss.grad_fn()->inputs.empty());
  // A second backward through the freed graph changes nothing (and does not crash).
  const std::vector<float> before = x.grad().to_floats();
  try {
    loss.backward();
  } catch (const Error&) {
  }
  EXPECT_EQ(x.grad().to_floats(), before);
}

TEST(Autograd, BackwardNeedsAScalarOrAMatchingGradient) {
  Tensor x = Tensor::from_floats({1, 2}, {2});
  x.set_requires_grad(true);
  Tensor y = O::mul_scalar(x, 3);
  EXPECT_THROW(y.backward(), ShapeError);
  EXPECT_THROW(y.backward(Tensor::ones({3})), ShapeError);
  y.backward(Tensor::from_floats({1, 10}, {2}));
  EXPECT_EQ(x.grad().to_floats(), (std::vector<float>{3, 30}));
  EXPECT_THROW(Tensor::ones({1}).backward(), Error);  // nothing requires grad
}

TEST(Autograd, ShapeMismatchMessagesNameTheOpAndBothShapes) {
  const std::string add_msg = error_of([] { O::add(Tensor::zeros({2, 3}), Tensor::zeros({4, 5})); });
  EXPECT_NE(add_msg.find("add"), std::string::npos) << add_msg;
  EXPECT_NE(add_msg.find("[2, 3]"), std::string::npos) << add_msg;
  EXPECT_NE(add_msg.find("[4, 5]"), std::string::npos) << add_msg;
  const std::string mm = error_of([] { O::matmul(Tensor::zeros({2, 3}), Tensor::zeros({4, 5})); });
  EXPECT_NE(mm.find("matmul"), std::string::npos) << mm;
  EXPECT_NE(mm.find("[2, 3]"), std::string::npos) << mm;
  EXPECT_NE(mm.find("[4, 5]"), std::string::npos) << mm;
  const std::string ln = error_of([] {
    O::layer_norm(Tensor::zeros({2, 3}), Tensor::zeros({4}), Tensor(), 1e-5f);
  });
  EXPECT_NE(ln.find("layer_norm"), std::string::npos) << ln;
  EXPECT_NE(ln.find("[2, 3]"), std::string::npos) << ln;
  EXPECT_NE(ln.find("[4]"), std::string::npos) << ln;
  EXPECT_THROW(O::mul(Tensor::zeros({2, 3}), Tensor::zeros({3, 2})), ShapeError);
}

}  // namespace

// The Walsh-Hadamard transform is the Sylvester matrix (rows of ±1), and applying it twice scales by n.
TEST(StructuredTransforms, HadamardIsTheSylvesterMatrixAndItsOwnInverseUpToN) {
  Tensor unit = Tensor::from_floats({0, 1, 0, 0}, {1, 4});
  EXPECT_EQ(O::hadamard_transform(unit).to_floats(), (std::vector<float>{1, -1, 1, -1}));
  Tensor x = Tensor::from_floats({1, 2, 3, 4, 5, 6, 7, 8}, {8});
  std::vector<float> twice = O::hadamard_transform(O::hadamard_transform(x)).to_floats();
  for (size_t i = 0; i < twice.size(); ++i) EXPECT_FLOAT_EQ(twice[i], 8.0f * float(i + 1));
  EXPECT_THROW(O::hadamard_transform(Tensor::zeros({2, 6})), ShapeError);
}
