// The AVX-512 float32 GEMM (ops/cpu/gemm_f32): every element must equal its double sum up to float32
// summation, for every layout of A and B and across the kernel's tile, strip, group and k-block
// edges; and its bits must not depend on the number of threads. On a CPU without AVX-512 the kernel
// does not run (CpuBackend::gemm keeps OpenBLAS; test_backend_ops covers both).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "deltatune/random.h"
#include "ops/cpu/gemm_f32.h"

using namespace deltatune;

namespace {

std::vector<float> randoms(size_t n, Generator& gen) {
  std::vector<float> v(n);
  for (auto& x : v) x = gen.normal();
  return v;
}

// A product's operands in one of the layouts the kernel reads: A row-major or transposed; B as
// [k, n] rows, as a transposed [n, k] weight, or every other column of a wider [k, 2n] matrix.
struct Product {
  int64_t m, n, k;
  bool a_trans;
  int b_layout;  // 0: rows, 1: transposed, 2: strided
  std::vector<float> a, b;
  int64_t a_row() const { return a_trans ? 1 : k; }
  int64_t a_col() const { return a_trans ? m : 1; }
  int64_t b_k() const { return b_layout == 0 ? n : b_layout == 1 ? 1 : 2 * n; }
  int64_t b_n() const { return b_layout == 0 ? 1 : b_layout == 1 ? k : 2; }
  float a_at(int64_t i, int64_t kk) const { return a[size_t(i * a_row() + kk * a_col())]; }
  float b_at(int64_t kk, int64_t j) const { return b[size_t(kk * b_k() + j * b_n())]; }
  void run(std::vector<float>& c, bool accumulate) const {
    ops::kernels::gemm_f32(m, n, k, a.data(), a_row(), a_col(), b.data(), b_k(), b_n(), c.data(), n,
                           accumulate);
  }
};

Product product(int64_t m, int64_t n, int64_t k, bool a_trans, int b_layout, Generator& gen) {
  Product p{m, n, k, a_trans, b_layout, randoms(size_t(m * k), gen), {}};
  p.b = randoms(size_t(k * n * (b_layout == 2 ? 2 : 1)), gen);
  return p;
}

}  // namespace

TEST(F32Gemm, EqualsDoubleSumsForEveryShapeAndLayout) {
  if (!ops::kernels::f32_gemm_available()) {
    EXPECT_FALSE(ops::kernels::f32_gemm_suits(1024, 1024, 1024));
    return;
  }
  Generator gen(11);
  double worst = 0;
  int cases = 0;
  // Rows past a 6-row tile and a 96-row block, columns past a 64-column strip and a group of 8
  // strips, k past a 384-deep block (and two).
  for (int64_t m : {24, 31, 100, 200})
    for (int64_t n : {64, 65, 130, 600})
      for (int64_t k : {32, 33, 385, 800})
        for (bool a_trans : {false, true})
          for (int b_layout : {0, 1, 2})
            for (bool accumulate : {false, true}) {
              if (m * n * k > 20'000'000) continue;
              const Product p = product(m, n, k, a_trans, b_layout, gen);
              const std::vector<float> c0 = randoms(size_t(m * n), gen);
              std::vector<float> c = c0;
              p.run(c, accumulate);
              for (int64_t i = 0; i < m; ++i)
                for (int64_t j = 0; j < n; ++j) {
                  double exact = accumulate ? c0[size_t(i * n + j)] : 0.0, magnitude = std::fabs(exact);
                  for (int64_t kk = 0; kk < k; ++kk) {
                    const double t = double(p.a_at(i, kk)) * double(p.b_at(kk, j));
                    exact += t;
                    magnitude += std::fabs(t);
                  }
                  worst =
                      std::max(worst, std::fabs(c[size_t(i * n + j)] - exact) / std::max(magnitude, 1e-30));
                }
              ++cases;
            }
  EXPECT_GT(cases, 700);
  EXPECT_LT(worst, 1e-5);  // float32 sums; a wrong element or a missed product is O(1)
}

TEST(F32Gemm, TheBitsDoNotDependOnTheThreads) {
  if (!ops::kernels::f32_gemm_available()) GTEST_SKIP() << "no AVX-512 on this CPU: the kernel does not run";
  Generator gen(12);
  const int before = omp_get_max_threads();
  for (bool a_trans : {false, true}) {
    const Product p = product(300, 1100, 900, a_trans, 1, gen);
    std::vector<float> first;
    for (int threads : {1, 2, 3, 4}) {
      omp_set_num_threads(threads);
      std::vector<float> c(size_t(p.m * p.n), 0.0f);
      p.run(c, false);
      if (first.empty())
        first = c;
      else
        ASSERT_EQ(c, first) << threads << " threads";
    }
  }
  omp_set_num_threads(before);
}

TEST(F32Gemm, OnlyShapesWorthPackingGoToTheKernel) {
  const bool avx512 = ops::kernels::f32_gemm_available();
  EXPECT_EQ(ops::kernels::f32_gemm_suits(1024, 768, 768), avx512);
  EXPECT_FALSE(ops::kernels::f32_gemm_suits(1, 768, 768));   // one row: a product of a vector
  EXPECT_FALSE(ops::kernels::f32_gemm_suits(1024, 8, 768));  // a LoRA factor's product
  EXPECT_FALSE(ops::kernels::f32_gemm_suits(1024, 768, 8));
}
