// LoRA arithmetic (PEFT's add_weighted_adapter): the algebra of each combination type on small
// factors, PEFT's element-wise merges on hand-worked values, the truncated SVD, and `deltatune
// combine` end to end on PEFT's own llama-mini adapters (the golden outputs tell what a correct
// combination must compute).
#include <gtest/gtest.h>

#include <cmath>

#include "cli_run.h"
#include "deltatune/autograd.h"
#include "deltatune/delta_io.h"
#include "deltatune/error.h"
#include "deltatune/lora_arithmetic.h"
#include "deltatune/ops.h"
#include "deltatune/random.h"
#include "deltatune/threads.h"
#include "model_compare.h"
#include "temp_dir.h"

using namespace deltatune;
using delta::LoraFactors;
using delta::LoraWeights;
namespace fs = std::filesystem;

namespace {

LoraWeights random_lora(int64_t r, int64_t in, int64_t out, double scaling, uint64_t seed) {
  Generator gen(seed);
  LoraWeights w;
  w.r = r;
  w.config = {{"method", "lora"}, {"r", r}, {"alpha", double(r) * scaling}, {"targets", {"q"}}};
  LoraFactors f;
  f.A = Tensor::randn({r, in}, gen, 0.5f);
  f.B = Tensor::randn({out, r}, gen, 0.5f);
  f.scaling = scaling;
  w.modules["layer.q"] = f;
  return w;
}

// B A as floats.
std::vector<float> product(const LoraFactors& f, double scale = 1.0) {
  NoGradGuard ng;
  std::vector<float> v = ops::matmul(f.B, f.A).to_floats();
  for (auto& x : v) x = float(x * scale);
  return v;
}

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

std::vector<float> weighted_sum(const std::vector<std::vector<float>>& parts, const std::vector<double>& w) {
  std::vector<float> out(parts[0].size(), 0.0f);
  for (size_t i = 0; i < parts.size(); ++i)
    for (size_t j = 0; j < out.size(); ++j) out[j] += float(w[i] * parts[i][j]);
  return out;
}

}  // namespace

TEST(LoraArithmetic, CatIsTheExactWeightedSumOfTheWeightChanges) {
  LoraWeights a = random_lora(4, 12, 10, 2.0, 1), b = random_lora(3, 12, 10, 0.5, 2);
  b.r = 3;
  delta::CombineOptions o;
  o.type = "cat";
  auto c = delta::combine_loras({a, b}, {0.7, -1.3}, o);
  EXPECT_EQ(c.r, 7);
  const auto& f = c.modules.at("layer.q");
  EXPECT_EQ(f.A.shape(), (Shape{7, 12}));
  EXPECT_EQ(f.B.shape(), (Shape{10, 7}));
  // ΔW = Σ w_i s_i B_i A_i, and the result has scaling 1 (alpha = r).
  auto want =
      weighted_sum({product(a.modules["layer.q"]), product(b.modules["layer.q"])}, {0.7 * 2.0, -1.3 * 0.5});
  EXPECT_LT(max_diff(product(f), want), 1e-5);
  EXPECT_EQ(c.config["alpha"].get<double>(), 7.0);
}

TEST(LoraArithmetic, LinearWeighsEachFactorByTheRootAndPutsTheSignOnA) {
  LoraWeights a = random_lora(4, 6, 5, 2.0, 3), b = random_lora(4, 6, 5, 1.0, 4);
  delta::CombineOptions o;
  o.type = "linear";
  auto c = delta::combine_loras({a, b}, {0.5, -2.0}, o);
  const auto& f = c.modules.at("layer.q");
  // PEFT: A = Σ sign(w s) sqrt|w s| A_i, B = Σ sqrt|w s| B_i (cross terms B_i A_j remain).
  const double ra = std::sqrt(0.5 * 2.0), rb = std::sqrt(2.0 * 1.0);
  auto wantA =
      weighted_sum({a.modules["layer.q"].A.to_floats(), b.modules["layer.q"].A.to_floats()}, {ra, -rb});
  auto wantB =
      weighted_sum({a.modules["layer.q"].B.to_floats(), b.modules["layer.q"].B.to_floats()}, {ra, rb});
  EXPECT_LT(max_diff(f.A.to_floats(), wantA), 1e-6);
  EXPECT_LT(max_diff(f.B.to_floats(), wantB), 1e-6);
  // One adapter alone: linear reproduces its weight change exactly.
  auto single = delta::combine_loras({a}, {1.0}, o);
  EXPECT_LT(max_diff(product(single.modules.at("layer.q")), product(a.modules["layer.q"], 2.0)), 1e-5);
}

TEST(LoraArithmetic, SvdApproximatesTheWeightedSumWithScalingCountedTwiceAsPeftDoes) {
  LoraWeights a = random_lora(3, 16, 12, 2.0, 5), b = random_lora(2, 16, 12, 0.5, 6);
  b.r = 2;
  delta::CombineOptions o;
  o.type = "svd";
  o.svd_rank = 5;  // rank(ΔW) <= 3 + 2: exact
  auto c = delta::combine_loras({a, b}, {1.0, 3.0}, o);
  // PEFT: ΔW = Σ (w_i s_i) get_delta_weight_i, and get_delta_weight already holds s_i.
  auto want =
      weighted_sum({product(a.modules["layer.q"]), product(b.modules["layer.q"])}, {1.0 * 4.0, 3.0 * 0.25});
  EXPECT_LT(max_diff(product(c.modules.at("layer.q")), want), 1e-4);
  EXPECT_EQ(c.r, 5);
  // Default rank: the largest input rank (3), so the result is the best rank-3 approximation.
  o.svd_rank.reset();
  auto low = delta::combine_loras({a, b}, {1.0, 3.0}, o);
  EXPECT_EQ(low.r, 3);
  EXPECT_GT(max_diff(product(low.modules.at("layer.q")), want), 1e-3);
}

TEST(LoraArithmetic, TruncatedSvdRecoversAKnownSpectrum) {
  // M = U diag(9, 4, 1) V^T with orthonormal U, V (Gram-Schmidt of random columns).
  Generator gen(7);
  auto orthonormal = [&](int64_t n, int64_t k) {
    std::vector<std::vector<double>> cols;
    for (int64_t j = 0; j < k; ++j) {
      std::vector<double> c(static_cast<size_t>(n));
      for (auto& x : c) x = gen.normal();
      for (const auto& p : cols) {
        double d = 0;
        for (int64_t i = 0; i < n; ++i) d += c[size_t(i)] * p[size_t(i)];
        for (int64_t i = 0; i < n; ++i) c[size_t(i)] -= d * p[size_t(i)];
      }
      double norm = 0;
      for (double x : c) norm += x * x;
      for (auto& x : c) x /= std::sqrt(norm);
      cols.push_back(c);
    }
    return cols;
  };
  const std::vector<double> sigma = {4.0, 9.0, 1.0};  // unsorted on purpose
  for (auto [m, n] : std::vector<std::pair<int64_t, int64_t>>{{10, 6}, {5, 11}}) {
    auto U = orthonormal(m, 3), V = orthonormal(n, 3);
    std::vector<float> M(size_t(m * n), 0.0f);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j)
        for (int k = 0; k < 3; ++k)
          M[size_t(i * n + j)] += float(U[k][size_t(i)] * sigma[size_t(k)] * V[k][size_t(j)]);
    auto [us, vt] = delta::truncated_svd(Tensor::from_floats(M, {m, n}), 2);
    ASSERT_EQ(us.shape(), (Shape{m, 2}));
    ASSERT_EQ(vt.shape(), (Shape{2, n}));
    // Rows of V^T are unit vectors; U S's column norms are the two largest singular values.
    std::vector<float> u = us.to_floats(), v = vt.to_floats();
    for (int64_t r = 0; r < 2; ++r) {
      double un = 0, vn = 0;
      for (int64_t i = 0; i < m; ++i) un += double(u[size_t(i * 2 + r)]) * u[size_t(i * 2 + r)];
      for (int64_t j = 0; j < n; ++j) vn += double(v[size_t(r * n + j)]) * v[size_t(r * n + j)];
      EXPECT_NEAR(std::sqrt(vn), 1.0, 1e-5);
      EXPECT_NEAR(std::sqrt(un), r == 0 ? 9.0 : 4.0, 1e-4);
    }
    // The rank-2 remainder is exactly the dropped component: its largest entry is bounded by sigma_3 = 1.
    NoGradGuard ng;
    std::vector<float> approx = ops::matmul(us, vt).to_floats();
    double err2 = 0;
    for (size_t i = 0; i < M.size(); ++i) err2 += double(M[i] - approx[i]) * (M[i] - approx[i]);
    EXPECT_NEAR(std::sqrt(err2), 1.0, 1e-4);  // Eckart-Young: the Frobenius error is sigma_3
  }
}

// A layer-sized low-rank delta (a 1024-wide layer; LAPACK handles 4096 in seconds, but CI has two
// cores): at its full rank the truncated SVD gives it back, V^T's rows are orthonormal with the
// singular values decreasing, and a lower rank leaves exactly the dropped energy (Eckart-Young).
TEST(LoraArithmetic, TruncatedSvdReconstructsALargeLowRankMatrix) {
  // One thread: LAPACK's many small BLAS calls make spinning OpenMP workers crawl on a busy machine
  // (the CLI sets a passive wait policy; a test binary keeps libgomp's default).
  const int threads_before = num_threads();
  set_num_threads(1);
  for (auto [m, n] : std::vector<std::pair<int64_t, int64_t>>{{1024, 1024}, {384, 1024}}) {
    Generator gen(11);
    const int64_t rank = 16;
    NoGradGuard ng;
    const Tensor M = ops::matmul(Tensor::randn({m, rank}, gen, 0.5f), Tensor::randn({rank, n}, gen, 0.5f));
    const std::vector<float> want = M.to_floats();
    double energy = 0, largest = 0;
    for (float x : want) energy += double(x) * x, largest = std::max(largest, double(std::fabs(x)));

    auto [us, vt] = delta::truncated_svd(M, rank);
    ASSERT_EQ(us.shape(), (Shape{m, rank}));
    ASSERT_EQ(vt.shape(), (Shape{rank, n}));
    EXPECT_LT(max_diff(ops::matmul(us, vt).to_floats(), want), 1e-5 * largest) << m << "x" << n;
    const std::vector<float> gram = ops::matmul(vt, ops::transpose(vt, 0, 1)).to_floats();
    for (int64_t i = 0; i < rank; ++i)
      for (int64_t j = 0; j < rank; ++j) EXPECT_NEAR(gram[size_t(i * rank + j)], i == j ? 1.0 : 0.0, 1e-4);
    const std::vector<float> u = us.to_floats();
    std::vector<double> sigma(size_t(rank), 0.0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t r = 0; r < rank; ++r)
        sigma[size_t(r)] += double(u[size_t(i * rank + r)]) * u[size_t(i * rank + r)];
    for (auto& s2 : sigma) s2 = std::sqrt(s2);
    for (int64_t r = 1; r < rank; ++r) EXPECT_GE(sigma[size_t(r - 1)], sigma[size_t(r)]);

    const int64_t k = 6;
    auto [us6, vt6] = delta::truncated_svd(M, k);
    const std::vector<float> approx = ops::matmul(us6, vt6).to_floats();
    double err2 = 0, kept2 = 0;
    for (size_t i = 0; i < want.size(); ++i) err2 += double(want[i] - approx[i]) * (want[i] - approx[i]);
    for (int64_t r = 0; r < k; ++r) kept2 += sigma[size_t(r)] * sigma[size_t(r)];
    EXPECT_NEAR(err2 / energy, (energy - kept2) / energy, 1e-4) << m << "x" << n;
    EXPECT_GT(err2 / energy, 1e-2);  // the dropped components are not negligible
  }
  set_num_threads(threads_before);
}

TEST(LoraArithmetic, MagnitudePruneKeepsTheLargestFractionAsPeft) {
  Tensor t = Tensor::from_floats({0.1f, -3.0f, 2.0f, 0.5f, -0.2f}, {5});
  // PEFT: k = int(density * numel) largest magnitudes kept.
  EXPECT_EQ(delta::magnitude_prune_tensor(t, 0.2).to_floats(), (std::vector<float>{0, -3, 0, 0, 0}));
  EXPECT_EQ(delta::magnitude_prune_tensor(t, 0.5).to_floats(), (std::vector<float>{0, -3, 2, 0, 0}));
  EXPECT_EQ(delta::magnitude_prune_tensor(t, 1.0).to_floats(), t.to_floats());
}

TEST(LoraArithmetic, TiesElectsTheMajoritySignThenAveragesTheAgreeingWeightedValues) {
  Tensor t1 = Tensor::from_floats({1.0f, -2.0f, 3.0f, 0.1f}, {4});
  Tensor t2 = Tensor::from_floats({-1.0f, -1.5f, 2.0f, -0.4f}, {4});
  // total: sign of the sums (0 -> +, -3.5 -> -, 5 -> +, -0.3 -> -); weights 1 and 0.5 are applied
  // after the election; the mean divides by the number of agreeing tensors.
  Tensor got = delta::merge_task_tensors("ties", {t1, t2}, {1.0, 0.5}, 1.0, "total", 0, false);
  std::vector<float> want = {1.0f, (-2.0f - 0.75f) / 2, (3.0f + 1.0f) / 2, -0.2f};
  EXPECT_LT(max_diff(got.to_floats(), want), 1e-6);
  // frequency: sign of the count of signs (position 0: +1-1 = 0 -> +; position 3: 0 -> +, so t1's 0.1).
  Tensor f = delta::merge_task_tensors("ties", {t1, t2}, {1.0, 0.5}, 1.0, "frequency", 0, false);
  EXPECT_LT(max_diff(f.to_floats(), {1.0f, -1.375f, 2.0f, 0.1f}), 1e-6);
  // magnitude_prune: each pruned to its 2 largest magnitudes, then the weighted sum (no election).
  Tensor mp = delta::merge_task_tensors("magnitude_prune", {t1, t2}, {1.0, 0.5}, 0.5, "total", 0, false);
  EXPECT_LT(max_diff(mp.to_floats(), {0.0f, -2.75f, 4.0f, 0.0f}), 1e-6);
  // ties with pruning: the same pruned values, then the election (-2 and -0.75 agree; 3 and 1 agree).
  Tensor tp = delta::merge_task_tensors("ties", {t1, t2}, {1.0, 0.5}, 0.5, "total", 0, false);
  EXPECT_LT(max_diff(tp.to_floats(), {0.0f, -1.375f, 2.0f, 0.0f}), 1e-6);
}

TEST(LoraArithmetic, DarePrunesAtRandomReproduciblyAtTheDensity) {
  Generator gen(9);
  Tensor t = Tensor::randn({10000}, gen);
  Tensor a = delta::random_prune_tensor(t, 0.3, false, 42), b = delta::random_prune_tensor(t, 0.3, false, 42);
  Tensor c = delta::random_prune_tensor(t, 0.3, false, 43);
  EXPECT_EQ(a.to_floats(), b.to_floats());
  EXPECT_NE(a.to_floats(), c.to_floats());
  std::vector<float> v = a.to_floats(), orig = t.to_floats(),
                     r = delta::random_prune_tensor(t, 0.3, true, 42).to_floats();
  int64_t kept = 0;
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] != 0) {
      ++kept;
      EXPECT_EQ(v[i], orig[i]);                                            // PEFT keeps values as they are
      EXPECT_NEAR(r[i], orig[i] / 0.3, 1e-5 + 1e-6 * std::fabs(orig[i]));  // --dare-rescale divides
    }
  EXPECT_NEAR(double(kept) / 10000.0, 0.3, 0.03);
}

TEST(LoraArithmetic, BadOptionsAreConfigErrors) {
  LoraWeights a = random_lora(4, 6, 5, 1.0, 1), b = random_lora(2, 6, 5, 1.0, 2);
  b.r = 2;
  delta::CombineOptions o;
  o.type = "linear";
  EXPECT_THROW(delta::combine_loras({a, b}, {1, 1}, o), ConfigError);  // ranks differ
  o.type = "cat";
  EXPECT_THROW(delta::combine_loras({a, b}, {1}, o), ConfigError);  // one weight for two
  o.type = "sum";
  EXPECT_THROW(delta::combine_loras({a}, {1}, o), ConfigError);  // unknown type
  o.type = "ties";
  o.density = 1.5;
  EXPECT_THROW(delta::combine_loras({a}, {1}, o), ConfigError);
  LoraWeights other = random_lora(4, 7, 5, 1.0, 3);  // another base: in_features differ
  o.type = "cat";
  o.density = 1.0;
  EXPECT_THROW(delta::combine_loras({a, other}, {1, 1}, o), ConfigError);
}

// End to end on PEFT's llama-mini adapters: each combination below must reproduce the adapter's own
// golden outputs, because its weight change equals the original's.
class CombineCommand : public ::testing::TestWithParam<std::string> {};

TEST_P(CombineCommand, ReproducesPeftOutputs) {
  const std::string args = GetParam();
  const fs::path adapter = golden::dir() / "adapters/llama-lora-qv";
  fs::path out = test_support::temp_dir("combine");
  fs::remove_all(out);
  std::string cmd = "combine --model " + cli_test::quote(golden::model_dir("llama-mini").string()) +
                    " --out " + cli_test::quote(out.string()) + " " + args;
  for (std::string::size_type p; (p = cmd.find("ADAPTER")) != std::string::npos;)
    cmd.replace(p, 7, cli_test::quote(adapter.string()));
  auto r = cli_test::run(cmd);
  ASSERT_EQ(r.code, 0) << r.output;
  auto expected = golden::outputs("llama-lora-qv");
  auto model = golden::load_model("llama-mini");
  auto saved = delta::load_delta(out, *model);
  EXPECT_EQ(saved.delta->method(), "lora");
  NoGradGuard ng;
  auto cmp = golden::compare(model->forward(golden::input_of(expected)), expected);
  EXPECT_LT(cmp.max_logits, 1e-4) << args;
  EXPECT_GT(cmp.positions, 50);
  fs::remove_all(out);
}

// alpha/r = 2 here: cat with 0.5 + 0.5 is the adapter; linear of one is the adapter; svd counts the
// scaling twice (PEFT), so weight 0.5 gives 0.5 * 2 * 2 B A = the adapter's 2 B A, at full rank 8.
INSTANTIATE_TEST_SUITE_P(Types, CombineCommand,
                         ::testing::Values("--delta ADAPTER --delta ADAPTER --weights 0.5,0.5 --type cat",
                                           "--delta ADAPTER --weights 1 --type linear --format peft",
                                           "--delta ADAPTER --weights 0.5 --type svd --svd-rank 8"));

TEST(CombineCommandErrors, RefusesNonLoraDeltasAndMismatchedWeights) {
  fs::path out = test_support::temp_dir("combine_bad");
  fs::remove_all(out);
  const std::string base = "combine --model " + cli_test::quote(golden::model_dir("llama-mini").string()) +
                           " --out " + cli_test::quote(out.string());
  auto ia3 =
      cli_test::run(base + " --delta " + cli_test::quote((golden::dir() / "adapters/llama-ia3").string()));
  EXPECT_EQ(ia3.code, 2);
  EXPECT_NE(ia3.output.find("LoRA"), std::string::npos) << ia3.output;
  const std::string qv = cli_test::quote((golden::dir() / "adapters/llama-lora-qv").string());
  auto w = cli_test::run(base + " --delta " + qv + " --delta " + qv + " --weights 1");
  EXPECT_EQ(w.code, 2);
  EXPECT_NE(w.output.find("weights"), std::string::npos) << w.output;
  EXPECT_FALSE(fs::exists(out / "delta_config.json"));
}

TEST(CombineCommandCat, TwoAdaptersEqualBothAttachedAtOnce) {
  // cat of two different adapters (weights 1, 1) computes what the two attached together compute.
  fs::path out = test_support::temp_dir("combine_two");
  fs::remove_all(out);
  const fs::path qv = golden::dir() / "adapters/llama-lora-qv",
                 all = golden::dir() / "adapters/llama-lora-all";
  auto r =
      cli_test::run("combine --model " + cli_test::quote(golden::model_dir("llama-mini").string()) +
                    " --delta " + cli_test::quote(qv.string()) + " --delta " + cli_test::quote(all.string()) +
                    " --type cat --out " + cli_test::quote(out.string()));
  ASSERT_EQ(r.code, 0) << r.output;
  auto expected = golden::outputs("llama-lora-qv");
  ModelInput input = golden::input_of(expected);
  NoGradGuard ng;
  auto both = golden::load_model("llama-mini");
  auto d1 = delta::load_delta(qv, *both);
  auto d2 = delta::load_delta(all, *both);
  std::vector<float> want = both->forward(input).logits.contiguous().to_floats();
  auto combined = golden::load_model("llama-mini");
  auto c = delta::load_delta(out, *combined);
  std::vector<float> got = combined->forward(input).logits.contiguous().to_floats();
  EXPECT_LT(max_diff(got, want), 1e-4);
  auto plain = golden::load_model("llama-mini");
  EXPECT_GT(max_diff(plain->forward(input).logits.contiguous().to_floats(), want),
            1e-3);  // the deltas matter
  fs::remove_all(out);
}

// LoRA on an embedding table combines as PEFT's add_weighted_adapter does (lora_embedding_A/B taken
// as A [r, vocab] and B [dim, r]): cat of a delta with itself at 0.5 + 0.5, and svd at full rank,
// give the delta's own outputs; the result keeps the embedding's parameter names.
TEST(LoraArithmetic, EmbeddingTablesCombineLikeLinearLayers) {
  auto model = golden::load_model("llama-mini");
  auto lora =
      delta::make_delta({{"method", "lora"}, {"r", 4}, {"alpha", 8}, {"targets", {"attn.q", "embed"}}});
  lora->attach(*model);
  Generator gen(9);
  for (auto& [name, t] : lora->parameters()) t.copy_(Tensor::randn(t.shape(), gen, 0.05f));  // A = 0 at init
  ModelInput input;
  input.input_ids = Tensor::from_ints({1, 15, 300, 7, 42, 9}, {1, 6});
  NoGradGuard ng;
  const std::vector<float> expected = model->forward(input).logits.to_floats();
  const delta::LoraWeights w = delta::lora_weights(*lora);
  ASSERT_TRUE(w.modules.count("model.embed_tokens"));
  EXPECT_TRUE(w.modules.at("model.embed_tokens").embedding);
  lora->detach();
  for (const char* type : {"cat", "svd"}) {
    delta::CombineOptions o;
    o.type = type;
    const bool cat = o.type == "cat";
    // svd counts the scaling (2) twice, as PEFT: weight 0.5 gives back s B A.
    const delta::CombinedLora combined =
        cat ? delta::combine_loras({w, w}, {0.5, 0.5}, o) : delta::combine_loras({w}, {0.5}, o);
    const auto params = combined.parameters();
    EXPECT_TRUE(params.count("model.embed_tokens.lora_embedding_A")) << type;
    EXPECT_TRUE(params.count("model.embed_tokens.lora_embedding_B")) << type;
    auto d = delta::make_delta(combined.config);
    d->attach(*model);
    d->load_parameters(params);
    EXPECT_LT(max_diff(model->forward(input).logits.to_floats(), expected), 1e-4) << type;
    d->detach();
  }
}
