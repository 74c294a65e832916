// Frozen weights in bfloat16: the AVX-512 BF16 GEMM (ops/cpu/gemm_bf16), ops::linear on a bfloat16
// weight (forward and the input's gradient), and nn::store_frozen_weights on a real model.
// On a CPU with AVX-512 BF16 the products must equal double sums of the bfloat16-rounded operands up
// to float32 summation; elsewhere a bfloat16 weight is widened and must give the float32 result.
// Products on the kernel are opt-in (ops::set_matmul_precision); without it a bfloat16 weight is
// widened (tests/test_models.cc: a half-precision checkpoint gives the float32 outputs).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>

#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/nn.h"
#include "deltatune/ops.h"
#include "deltatune/random.h"
#include "golden.h"
#include "ops/cpu/gemm_bf16.h"

using namespace deltatune;

namespace {

float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

std::vector<float> randoms(size_t n, Generator& gen) {
  std::vector<float> v(n);
  for (auto& x : v) x = gen.normal();
  return v;
}

// |c - sum a_i b_i| relative to sum |a_i b_i|, the bound float32 summation keeps.
struct Worst {
  double relative = 0;
  void add(double got, double exact, double magnitude) {
    relative = std::max(relative, std::fabs(got - exact) / std::max(magnitude, 1e-30));
  }
};

// Adds to `worst` every element of the kernel's C [m, n] against the double sum of the rounded operands:
// A [m, k] rows or stored transposed ([k, m]), B's element (p, j) at b[p * b_k + j * b_n], plus c0 where
// the product accumulated (c0 non-null).
void check_against_double_sums(Worst& worst, int64_t m, int64_t n, int64_t k, const std::vector<float>& a,
                               bool a_trans, const std::vector<uint16_t>& b, int64_t b_k, int64_t b_n,
                               const float* c0, const std::vector<float>& c) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double exact = c0 ? c0[i * n + j] : 0.0, magnitude = std::fabs(exact);
      for (int64_t kk = 0; kk < k; ++kk) {
        const double p = double(round_bf16(a[size_t(a_trans ? kk * m + i : i * k + kk)])) *
                         double(bf16_to_f32(b[size_t(kk * b_k + j * b_n)]));
        exact += p;
        magnitude += std::fabs(p);
      }
      worst.add(c[size_t(i * n + j)], exact, magnitude);
    }
}

TEST(Bf16Gemm, EqualsDoubleSumsOfTheRoundedOperandsForEveryShapeAndLayout) {
  if (!ops::kernels::bf16_gemm_available()) {
    EXPECT_FALSE(ops::bf16_linear_available());  // and the linear tests below check the float32 path
    return;
  }
  Generator gen(7);
  Worst worst;
  int cases = 0;
  // Tails of every block: rows past a 6-row tile (and past a 16-row tile of a transposed A), columns
  // past a 64-column strip and past one unit of strips a thread takes, odd k, k past one and two
  // 768-deep blocks; B as [k, n] rows (b_n == 1) and as a
  // transposed [n, k] weight (b_k == 1); A as [m, k] rows and stored transposed ([k, m], a_trans: a
  // weight's gradient), up to the sizes that split A's rows between threads.
  for (int64_t m : {1, 5, 6, 7, 13, 100})
    for (int64_t n : {1, 17, 64, 65, 130, 1100})
      for (int64_t k : {1, 2, 3, 31, 300, 513, 1601})
        for (bool weight_rows : {false, true})
          for (bool accumulate : {false, true})
            for (bool a_trans : {false, true}) {
              if (m * n * k > (a_trans ? 8'000'000 : 2'000'000)) continue;
              const std::vector<float> a = randoms(size_t(m * k), gen), c0 = randoms(size_t(m * n), gen);
              std::vector<uint16_t> b(size_t(k * n));
              for (auto& v : b) v = f32_to_bf16(gen.normal());
              const int64_t b_k = weight_rows ? 1 : n, b_n = weight_rows ? k : 1;
              std::vector<float> c = c0;
              ops::kernels::gemm_f32_bf16(m, n, k, a.data(), a_trans ? m : k, b.data(), b_k, b_n, c.data(), n,
                                          accumulate, a_trans);
              check_against_double_sums(worst, m, n, k, a, a_trans, b, b_k, b_n,
                                        accumulate ? c0.data() : nullptr, c);
              ++cases;
            }
  EXPECT_GT(cases, 1300);
  EXPECT_LT(worst.relative, 1e-5);  // float32 sums; a wrong element or a missed pair is O(1)
}

// A C narrower than the threads have column units for (n up to 64 on two threads, 100 on three or four)
// splits its rows among them as well: every element must still equal the double sum of the rounded
// operands, with the same bits on 1 to 4 threads.
TEST(Bf16Gemm, NarrowProductsSplitRowsWithTheSameBits) {
  if (!ops::kernels::bf16_gemm_available())
    GTEST_SKIP() << "no AVX-512 BF16 on this CPU: the kernel does not run";
  Generator gen(9);
  const int before = omp_get_max_threads();
  const int64_t m = 500, k = 301;
  for (int64_t n : {17, 64, 100})
    for (bool a_trans : {false, true}) {
      const std::vector<float> a = randoms(size_t(m * k), gen);
      std::vector<uint16_t> b(size_t(k * n));
      for (auto& v : b) v = f32_to_bf16(gen.normal());
      std::vector<float> first;
      for (int threads : {1, 2, 3, 4}) {
        omp_set_num_threads(threads);
        std::vector<float> c(size_t(m * n), std::nanf(""));
        ops::kernels::gemm_f32_bf16(m, n, k, a.data(), a_trans ? m : k, b.data(), 1, k, c.data(), n, false,
                                    a_trans);
        if (first.empty()) {
          first = c;
          Worst worst;
          check_against_double_sums(worst, m, n, k, a, a_trans, b, 1, k, nullptr, c);
          EXPECT_LT(worst.relative, 1e-5) << n << " columns";
        } else {
          EXPECT_EQ(c, first) << n << " columns, " << threads << " threads";
        }
      }
    }
  omp_set_num_threads(before);
}

double worst_diff(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_floats(), y = b.to_floats();
  EXPECT_EQ(x.size(), y.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(x.size(), y.size()); ++i)
    worst = std::max(worst, double(std::fabs(x[i] - y[i])));
  return worst;
}

// linear(x, W) at Bf16 precision against float32 products of what the kernel computes with: x, the
// output's gradient and W rounded to bfloat16 (as given where the CPU has no kernel). W is stored in
// bfloat16 (a frozen base) or float32 and learning (mixed precision, as autocast: its gradient is the
// product of the rounded output gradient and x, summed and kept in float32).
void check_linear(bool fan_in_fan_out, bool learning) {
  Generator gen(3);
  const int64_t batch = 3, seq = 37, in = 96, out = 130;
  Tensor x =
      Tensor::from_floats(randoms(size_t(batch * seq * in), gen), {batch, seq, in}).set_requires_grad();
  Tensor bias = Tensor::from_floats(randoms(size_t(out), gen), {out});
  // The stored weight ([out, in], or GPT-2's [in, out] read through a transposed view).
  Tensor stored = fan_in_fan_out ? Tensor::from_floats(randoms(size_t(in * out), gen), {in, out})
                                 : Tensor::from_floats(randoms(size_t(in * out), gen), {out, in});
  if (learning)
    stored.set_requires_grad();
  else
    stored = stored.to(DType::BF16);
  Tensor r = Tensor::from_floats(randoms(size_t(batch * seq * out), gen), {batch, seq, out});

  ops::set_matmul_precision(ops::MatmulPrecision::Bf16);
  Tensor y = ops::linear(x, fan_in_fan_out ? stored.t() : stored, bias);
  ASSERT_EQ(y.dtype(), DType::F32);
  ops::sum_all(ops::mul(y, r)).backward();
  ops::set_matmul_precision(ops::MatmulPrecision::Exact);  // the references below in float32
  EXPECT_EQ(stored.dtype(),
            learning ? DType::F32 : DType::BF16);  // a learning weight is rounded per call only

  const bool kernel = ops::bf16_linear_available();
  auto path = [&](const Tensor& t) {
    std::vector<float> v = t.to_floats();
    if (kernel)
      for (auto& e : v) e = round_bf16(e);
    return Tensor::from_floats(v, t.shape());
  };
  NoGradGuard no_grad;
  const Tensor w = path((fan_in_fan_out ? stored.t() : stored).contiguous());  // [out, in]
  EXPECT_LT(worst_diff(y, ops::linear(path(x), w, bias)), 1e-4);   // values ~ N(0, 96): summation order only
  EXPECT_LT(worst_diff(x.grad(), ops::matmul(path(r), w)), 1e-4);  // dL/dx = r W
  if (learning) {                                                  // dL/dW = r^T x, from r and x rounded
    const Tensor gw = ops::matmul(ops::reshape(path(r), {-1, out}).t(),
                                  ops::reshape(path(x.detach()), {-1, in}));  // [out, in]
    EXPECT_LT(worst_diff(stored.grad(), fan_in_fan_out ? gw.t().contiguous() : gw), 1e-4);
  }
}

TEST(Bf16Linear, ForwardAndInputGradientOnAnOutInWeight) { check_linear(false, false); }
TEST(Bf16Linear, ForwardAndInputGradientOnATransposedConv1DWeight) { check_linear(true, false); }
TEST(Bf16Linear, MixedPrecisionOnALearningFloat32Weight) { check_linear(false, true); }
TEST(Bf16Linear, MixedPrecisionOnALearningConv1DWeight) { check_linear(true, true); }

// LoRA's skinny factors (r < kBf16MinDim) stay in float32 at Bf16 precision.
TEST(Bf16Linear, SkinnyWeightsStayFloat32) {
  Generator gen(4);
  const Tensor x = Tensor::from_floats(randoms(50 * 96, gen), {50, 96});
  const Tensor a = Tensor::from_floats(randoms(8 * 96, gen), {8, 96});
  const Tensor exact = ops::linear(x, a);
  ops::set_matmul_precision(ops::MatmulPrecision::Bf16);
  const Tensor got = ops::linear(x, a);
  ops::set_matmul_precision(ops::MatmulPrecision::Exact);
  EXPECT_EQ(worst_diff(got, exact), 0.0);
}

TEST(Bf16Linear, StoringFrozenWeightsSkipsLearningAndTiedOnes) {
  nn::Module root("Root");
  auto a = std::make_shared<nn::Linear>(8, 4, true), b = std::make_shared<nn::Linear>(8, 4, true),
       c = std::make_shared<nn::Linear>(8, 4, false), d = std::make_shared<nn::Linear>(8, 4, false);
  root.register_module("frozen", a);
  root.register_module("learning", b);
  root.register_module("tied_1", c);
  root.register_module("tied_2", d);
  b->weight().set_requires_grad();
  d->weight() = c->weight();  // one storage, two parameters (as tied embeddings and heads)
  EXPECT_EQ(nn::store_frozen_weights(root, DType::BF16), 1);
  EXPECT_EQ(a->weight().dtype(), DType::BF16);
  EXPECT_EQ(a->bias().dtype(), DType::F32);  // biases stay as they are (small, and may learn: BitFit)
  EXPECT_EQ(b->weight().dtype(), DType::F32);
  EXPECT_EQ(c->weight().dtype(), DType::F32);
  EXPECT_TRUE(c->weight().same(d->weight()));
}

namespace {

void freeze_all(TransformerModel& model) {
  for (auto& [name, t] : model.named_parameters()) t->set_requires_grad(false);
}

// Every parameter of both models has the same dtype and the same bits.
void expect_same_parameters(TransformerModel& a, TransformerModel& b, const std::string& what) {
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size()) << what;
  for (size_t i = 0; i < pa.size(); ++i) {
    ASSERT_EQ(pa[i].first, pb[i].first) << what;
    EXPECT_EQ(pa[i].second->dtype(), pb[i].second->dtype()) << what << ": " << pa[i].first;
    EXPECT_EQ(pa[i].second->float32().to_floats(), pb[i].second->float32().to_floats())
        << what << ": " << pa[i].first;
  }
}

// The linear weights of the body in bfloat16; the task head's parameters float32.
void expect_body_in_bf16(TransformerModel& m, const std::string& what) {
  int64_t bf16 = 0;
  for (auto& [path, module] : m.named_modules())
    if (auto* linear = dynamic_cast<nn::Linear*>(module); linear && linear->weight().dtype() == DType::BF16)
      ++bf16;
  EXPECT_GE(bf16, 4) << what;  // q, k, v, o of a layer at least
  for (const std::string& head : m.head_parameters())
    if (Tensor* t = m.find_parameter(head)) EXPECT_EQ(t->dtype(), DType::F32) << what << ": " << head;
}

}  // namespace

// train --bf16 with a frozen base: LoadOptions::bf16 stores the body's linear weights in bfloat16 as
// the checkpoint is read (the float32 model is never held in full): the same bits as storing the
// frozen weights of the loaded model afterwards, GPT-2's [in, out] Conv1D weights included.
TEST(Bf16Linear, StoringInBfloat16AsTheCheckpointLoadsEqualsStoringAfter) {
  for (const std::string name : {"bert-mini", "gpt2-mini", "llama-mini"}) {
    LoadOptions options;
    options.verbose = false;
    options.head = HeadKind::SequenceClassification;
    options.num_labels = 3;
    auto after = load_pretrained(golden::model_dir(name), options);
    options.bf16 = true;
    auto at_load = load_pretrained(golden::model_dir(name), options);
    expect_body_in_bf16(*at_load, name);
    freeze_all(*after);
    freeze_all(*at_load);
    nn::store_frozen_weights(*after, DType::BF16);
    nn::store_frozen_weights(*at_load, DType::BF16);
    expect_same_parameters(*after, *at_load, name);
  }
}

// bench --bf16's models: stored in bfloat16 one weight at a time as they are initialised.
TEST(Bf16Linear, BuildingInBfloat16EqualsStoringTheBuiltModel) {
  for (const std::string name : {"bert-mini", "gpt2-mini", "llama-mini"}) {
    const ModelConfig config = load_model_config(golden::model_dir(name));
    auto after = build_model(config, HeadKind::SequenceClassification, 5);
    auto as_built = build_model(config, HeadKind::SequenceClassification, 5, std::nullopt, true);
    expect_body_in_bf16(*as_built, name);
    freeze_all(*after);
    freeze_all(*as_built);
    nn::store_frozen_weights(*after, DType::BF16);
    nn::store_frozen_weights(*as_built, DType::BF16);
    expect_same_parameters(*after, *as_built, name);
  }
}

// A real model with LoRA: the frozen base stored in bfloat16 keeps the logits within bfloat16's
// precision, the delta stays float32 and learns.
TEST(Bf16Linear, LoraOnABfloat16BaseMatchesTheFloat32ModelAndTrains) {
  auto classifier = [] {  // the same seed: the same new head on both
    LoadOptions options;
    options.head = HeadKind::SequenceClassification;
    options.num_labels = 2;
    options.seed = 5;
    options.verbose = false;
    return load_pretrained(golden::model_dir("bert-mini"), options);
  };
  auto model = classifier(), reference = classifier();
  auto lora =
      delta::make_delta({{"method", "lora"}, {"r", 8}, {"alpha", 16}, {"targets", {"attn.q", "attn.v"}}});
  lora->attach(*model);
  delta::freeze_for_delta(*model, {lora.get()}, {"classifier.weight", "classifier.bias"});  // the head learns
  int64_t matrices = 0;  // linear layers and embedding tables; the classifier learns
  for (auto& [name, m] : model->named_modules())
    matrices += dynamic_cast<nn::Linear*>(m) != nullptr || dynamic_cast<nn::Embedding*>(m) != nullptr;
  const int64_t changed = nn::store_frozen_weights(*model, DType::BF16);
  EXPECT_EQ(changed, matrices - 1);
  EXPECT_EQ(model->input_embeddings().dtype(), DType::BF16);
  EXPECT_EQ(model->find_parameter("classifier.weight")->dtype(), DType::F32);
  for (auto& [name, t] : lora->parameters()) EXPECT_EQ(t.dtype(), DType::F32) << name;

  ModelInput input;
  input.input_ids = Tensor::from_ints({2, 45, 97, 311, 28, 3, 2, 61, 5, 904, 77, 3}, {2, 6});
  const std::vector<float> want = reference->forward(input).logits.to_floats();  // float32
  ops::set_matmul_precision(ops::MatmulPrecision::Bf16);
  const std::vector<float> got = model->forward(input).logits.to_floats();
  ASSERT_EQ(got.size(), want.size());
  double worst = 0, scale = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    worst = std::max(worst, double(std::fabs(got[i] - want[i])));
    scale = std::max(scale, double(std::fabs(want[i])));
  }
  EXPECT_LT(worst, 0.05 * std::max(scale, 1.0));  // bfloat16 keeps 8 bits: ~0.4% per operand

  // One step of LoRA training on the bfloat16 base: gradients reach the delta and move the loss.
  model->set_training(true);
  auto params = delta::trainable_parameters(*model, {lora.get()});
  const Tensor labels = Tensor::from_ints({0, 1}, {2});
  Tensor loss = ops::cross_entropy(model->forward(input).logits, labels);
  loss.backward();
  double grad_norm = 0;
  for (auto& [name, t] : params)
    if (t.grad().defined())
      for (float g : t.grad().to_floats()) grad_norm += double(g) * g;
  EXPECT_TRUE(std::isfinite(loss.item()));
  EXPECT_GT(grad_norm, 0.0);
}

}  // namespace

namespace {

// The fused, chunked LM-head loss (ops::linear_cross_entropy) on a frozen bfloat16 head: the loss of
// the widened head (from x rounded to bfloat16 on the kernel), and the input's gradient within
// bfloat16's precision (the softmax gradient is rounded on its way into the kernel).
TEST(Bf16Linear, FusedLmHeadLossOnABfloat16Head) {
  ops::set_matmul_precision(ops::MatmulPrecision::Bf16);
  Generator gen(11);
  const int64_t n = 70, h = 80, v = 301;  // a head of at least kBf16MinDim both ways
  std::vector<float> xs = randoms(size_t(n * h), gen);
  Tensor x = Tensor::from_floats(xs, {n, h}).set_requires_grad();
  Tensor w16 = Tensor::from_floats(randoms(size_t(v * h), gen), {v, h}).to(DType::BF16);
  std::vector<int64_t> targets(static_cast<size_t>(n));
  for (auto& t : targets) t = int64_t(gen.below(uint64_t(v)));
  targets[3] = -100;  // ignored
  const Tensor tg = Tensor::from_ints(targets, {n});
  Tensor loss = ops::linear_cross_entropy(x, w16, tg);
  loss.backward();
  ops::set_matmul_precision(ops::MatmulPrecision::Exact);

  if (ops::bf16_linear_available())
    for (auto& e : xs) e = round_bf16(e);
  Tensor x_ref = Tensor::from_floats(xs, {n, h}).set_requires_grad();
  Tensor loss_ref = ops::linear_cross_entropy(x_ref, w16.float32(), tg);
  loss_ref.backward();
  EXPECT_NEAR(loss.item(), loss_ref.item(), 1e-5 * std::fabs(loss_ref.item()));
  const std::vector<float> g = x.grad().to_floats(), g_ref = x_ref.grad().to_floats();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    diff += (double(g[i]) - g_ref[i]) * (double(g[i]) - g_ref[i]);
    norm += double(g_ref[i]) * g_ref[i];
  }
  EXPECT_GT(norm, 0.0);
  EXPECT_LT(std::sqrt(diff / norm), 1e-2);
}

// Attention at Bf16 precision runs its products on the kernel (autocast's bfloat16 attention matmuls):
// the output equals float32 attention over bfloat16-rounded q, k, v up to the rounding of the
// probabilities before P V (2^-9 relative each); the gradients stay within bfloat16's precision of
// the float32 ones. Grouped-query heads, a padding mask, causal rows and two row blocks (T = 300).
void check_attention(bool causal) {
  Generator gen(11);
  const int64_t b = 2, h = 4, hkv = 2, t = 300, d = 24;
  auto make = [&](int64_t heads) {
    return Tensor::from_floats(randoms(size_t(b * heads * t * d), gen), {b, heads, t, d});
  };
  Tensor q = make(h), k = make(hkv), v = make(hkv);
  std::vector<float> mask_values(size_t(b * t), 1.0f);
  for (int64_t j = t - 7; j < t; ++j) mask_values[size_t(t + j)] = 0.0f;  // batch 1: 7 padded keys
  const Tensor mask = Tensor::from_floats(mask_values, {b, t});
  const Tensor r = make(h);  // the output's gradient, through sum(out * r)

  auto run = [&](ops::MatmulPrecision precision, const Tensor& qi, const Tensor& ki, const Tensor& vi) {
    Tensor ql = qi.detach(), kl = ki.detach(), vl = vi.detach();
    ql.set_requires_grad();
    kl.set_requires_grad();
    vl.set_requires_grad();
    ops::set_matmul_precision(precision);
    Tensor out = ops::scaled_dot_product_attention(ql, kl, vl, mask, causal);
    ops::sum_all(ops::mul(out, r)).backward();
    ops::set_matmul_precision(ops::MatmulPrecision::Exact);
    return std::vector<Tensor>{out.detach(), ql.grad(), kl.grad(), vl.grad()};
  };
  auto rounded = [](const Tensor& x) {
    std::vector<float> v = x.to_floats();
    for (auto& e : v) e = round_bf16(e);
    return Tensor::from_floats(v, x.shape());
  };
  const bool kernel = ops::bf16_linear_available();
  const auto got = run(ops::MatmulPrecision::Bf16, q, k, v);
  const auto exact = run(ops::MatmulPrecision::Exact, q, k, v);
  const auto on_rounded = run(ops::MatmulPrecision::Exact, rounded(q), rounded(k), rounded(v));
  // The outputs are weighted means of v ~ N(0, 1): the probabilities' rounding moves them < 1e-2.
  EXPECT_LT(worst_diff(got[0], kernel ? on_rounded[0] : exact[0]), kernel ? 1e-2 : 1e-6);
  if (kernel) EXPECT_GT(worst_diff(got[0], exact[0]), 1e-4);  // the products did run in bfloat16
  for (int i = 1; i < 4; ++i) {  // each gradient within a few bfloat16 roundings of float32's, norm-wise
    const std::vector<float> g = got[size_t(i)].to_floats(), e = exact[size_t(i)].to_floats();
    double diff = 0, norm = 0;
    for (size_t j = 0; j < g.size(); ++j) {
      diff += double(g[j] - e[j]) * double(g[j] - e[j]);
      norm += double(e[j]) * double(e[j]);
    }
    EXPECT_GT(norm, 0.0);
    EXPECT_LT(std::sqrt(diff / norm), kernel ? 3e-2 : 1e-6) << "gradient " << i;
  }
  // A padded key gets no gradient in either precision.
  const std::vector<float> gk = got[2].to_floats();
  for (int64_t head = 0; head < hkv; ++head)
    for (int64_t j = t - 7; j < t; ++j)
      for (int64_t c = 0; c < d; ++c) EXPECT_EQ(gk[size_t(((hkv + head) * t + j) * d + c)], 0.0f);
}

TEST(Bf16Attention, ProductsInBfloat16WithAPaddingMask) { check_attention(false); }
TEST(Bf16Attention, ProductsInBfloat16WithCausalRows) { check_attention(true); }

}  // namespace
