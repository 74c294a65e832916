// The AVX-512 float32 GEMM (ops/cpu/gemm_f32): every element must equal its double sum up to float32
// summation, for every layout of A and B and across the kernel's tile, strip, unit and k-block edges;
// and its bits must not depend on the number of threads. On a CPU without AVX-512 the kernel does not
// run (CpuBackend::gemm keeps OpenBLAS; test_backend_ops covers both).
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
// [k, n] rows, as a transposed [n, k] weight, or every other column of a wider [k, 2n] matrix. With
// `pad`, every row stride (A's, B's, C's) is longer than the row, as in a view of a bigger matrix.
struct Product {
  int64_t m, n, k;
  bool a_trans;
  int b_layout;  // 0: rows, 1: transposed, 2: strided
  int64_t pad;
  std::vector<float> a, b;
  int64_t lda() const { return (a_trans ? m : k) + pad; }
  int64_t a_row() const { return a_trans ? 1 : lda(); }
  int64_t a_col() const { return a_trans ? lda() : 1; }
  int64_t b_k() const { return b_layout == 0 ? n + pad : b_layout == 1 ? 1 : 2 * n + pad; }
  int64_t b_n() const { return b_layout == 0 ? 1 : b_layout == 1 ? k + pad : 2; }
  int64_t ldc() const { return n + pad; }
  float a_at(int64_t i, int64_t kk) const { return a[size_t(i * a_row() + kk * a_col())]; }
  float b_at(int64_t kk, int64_t j) const { return b[size_t(kk * b_k() + j * b_n())]; }
  void run(std::vector<float>& c, bool accumulate) const {
    ops::kernels::gemm_f32(m, n, k, a.data(), a_row(), a_col(), b.data(), b_k(), b_n(), c.data(), ldc(),
                           accumulate);
  }
};

Product product(int64_t m, int64_t n, int64_t k, bool a_trans, int b_layout, int64_t pad, Generator& gen) {
  Product p{m, n, k, a_trans, b_layout, pad, {}, {}};
  p.a = randoms(size_t((a_trans ? k : m) * p.lda()), gen);
  p.b = randoms(size_t(b_layout == 1 ? n * p.b_n() : k * p.b_k()), gen);
  return p;
}

// Restores OpenMP's thread count when a test ends, passed or not.
struct ThreadCount {
  int before = omp_get_max_threads();
  ~ThreadCount() { omp_set_num_threads(before); }
};

}  // namespace

TEST(F32Gemm, EqualsDoubleSumsForEveryShapeAndLayout) {
  if (!ops::kernels::f32_gemm_available()) {
    EXPECT_FALSE(ops::kernels::f32_gemm_suits(1024, 1024, 1024));
    return;
  }
  Generator gen(11);
  double worst = 0;
  int cases = 0;
  // Rows past a 6-row tile (every tile height 1-6) and a 96-row block; columns past a 64-column strip
  // (masks of every width) and past one unit of strips a thread takes; k past a 384-deep block (and
  // two); row strides equal to the rows and longer; C all NaN where it must not be read.
  for (int64_t m : {24, 27, 29, 31, 100, 200})
    for (int64_t n : {64, 65, 114, 130, 600})
      for (int64_t k : {32, 33, 385, 800})
        for (bool a_trans : {false, true})
          for (int b_layout : {0, 1, 2})
            for (bool accumulate : {false, true}) {
              if (m * n * k > 20'000'000) continue;
              const int64_t pad = (m + n + k) % 2 == 0 ? 3 : 0;
              const Product p = product(m, n, k, a_trans, b_layout, pad, gen);
              std::vector<float> c0 = randoms(size_t(m * p.ldc()), gen);
              if (!accumulate) std::fill(c0.begin(), c0.end(), std::nanf(""));
              std::vector<float> c = c0;
              p.run(c, accumulate);
              for (int64_t i = 0; i < m; ++i) {
                for (int64_t j = 0; j < n; ++j) {
                  const size_t at = size_t(i * p.ldc() + j);
                  double exact = accumulate ? c0[at] : 0.0, magnitude = std::fabs(exact);
                  for (int64_t kk = 0; kk < k; ++kk) {
                    const double t = double(p.a_at(i, kk)) * double(p.b_at(kk, j));
                    exact += t;
                    magnitude += std::fabs(t);
                  }
                  const double err = std::fabs(c[at] - exact) / std::max(magnitude, 1e-30);
                  worst = std::isfinite(c[at]) ? std::max(worst, err) : 1.0;
                }
                for (int64_t j = n; j < p.ldc(); ++j) {  // past the row: untouched
                  const size_t at = size_t(i * p.ldc() + j);
                  ASSERT_TRUE(std::isnan(c0[at]) ? std::isnan(c[at]) : c[at] == c0[at]);
                }
              }
              ++cases;
            }
  EXPECT_GT(cases, 1000);
  EXPECT_LT(worst, 1e-5);  // float32 sums; a wrong element, a missed product or a NaN read is O(1)
}

TEST(F32Gemm, TheBitsDoNotDependOnTheThreads) {
  if (!ops::kernels::f32_gemm_available()) GTEST_SKIP() << "no AVX-512 on this CPU: the kernel does not run";
  Generator gen(12);
  ThreadCount restore;
  // A wide C (columns split among the threads) and narrow ones with fewer column units than threads
  // (rows split too, in blocks of 96 rows that 500 and 450 do not fill), one with a padded row stride.
  struct Shape {
    int64_t m, n, k, pad;
  };
  for (const Shape& s : {Shape{300, 1100, 900, 0}, Shape{500, 100, 700, 0}, Shape{450, 64, 300, 3}})
    for (bool a_trans : {false, true}) {
      const Product p = product(s.m, s.n, s.k, a_trans, 1, s.pad, gen);
      std::vector<float> first;
      for (int threads : {1, 2, 3, 4}) {
        omp_set_num_threads(threads);
        std::vector<float> c(size_t(p.m * p.ldc()), 0.0f);
        p.run(c, false);
        if (first.empty())
          first = c;
        else
          ASSERT_EQ(c, first) << s.m << " x " << s.n << " x " << s.k << ", " << threads << " threads";
      }
    }
}

TEST(F32Gemm, OnlyShapesWorthPackingGoToTheKernel) {
  const bool avx512 = ops::kernels::f32_gemm_available();
  EXPECT_EQ(ops::kernels::f32_gemm_suits(1024, 768, 768), avx512);
  EXPECT_FALSE(ops::kernels::f32_gemm_suits(1, 768, 768));   // one row: a product of a vector
  EXPECT_FALSE(ops::kernels::f32_gemm_suits(1024, 8, 768));  // a LoRA factor's product
  EXPECT_FALSE(ops::kernels::f32_gemm_suits(1024, 768, 8));
}
