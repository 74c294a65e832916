// The CUDA backend's wiring: runs on a GPU, skips cleanly without one.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "deltatune/cuda.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "deltatune/tensor.h"
#ifdef DELTATUNE_HAS_CUDA
#include "ops/cuda/cublas_library.h"
#endif

using namespace deltatune;

namespace {
bool cublas_mapped() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line))
    if (line.find("libcublas") != std::string::npos) return true;
  return false;
}
}  // namespace

// First in the file: the GPU tests below open cuBLAS when a GPU is present. Loading libcublas (and
// libcublasLt with it) costs about 210 MB resident, so only a GPU product opens it: CPU work and the
// backend's device queries leave it unmapped.
TEST(Cuda, CpuWorkDoesNotLoadCublas) {
  (void)cuda::available();
  (void)cuda::device_name();
  Tensor a = Tensor::ones({32, 32});
  EXPECT_FLOAT_EQ(ops::matmul(a, a).f32()[0], 32.0f);
  EXPECT_FALSE(cublas_mapped());
}

#ifdef DELTATUNE_HAS_CUDA
// The loader needs no GPU: it opens the library and finds the functions the backend calls.
TEST(Cuda, CublasOpensOnFirstUse) {
  const cuda::CublasLibrary& blas = cuda::cublas();
  EXPECT_NE(blas.create, nullptr);
  EXPECT_NE(blas.destroy, nullptr);
  EXPECT_NE(blas.sgemm, nullptr);
  EXPECT_TRUE(cublas_mapped());
  EXPECT_EQ(&cuda::cublas(), &blas) << "opened once";
}
#endif

TEST(Cuda, VectorAddMatchesCpu) {
  if (!cuda::available()) GTEST_SKIP() << (cuda::compiled() ? "no GPU present" : "built without CUDA");
  std::vector<float> a{1, 2, 3, 4, 5}, b{10, 20, 30, 40, 50};
  auto out = cuda::vector_add(a, b);
  ASSERT_EQ(out.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_FLOAT_EQ(out[i], a[i] + b[i]);
}

TEST(Cuda, GemmMatchesCpu) {
  if (!cuda::available()) GTEST_SKIP() << (cuda::compiled() ? "no GPU present" : "built without CUDA");
  const int m = 3, n = 4, k = 5;
  std::vector<float> a(m * k), b(k * n);
  for (int i = 0; i < m * k; ++i) a[i] = float(i % 7) - 3;
  for (int i = 0; i < k * n; ++i) b[i] = float(i % 5) * 0.5f;
  auto c = cuda::gemm(a, b, m, n, k);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      float ref = 0;
      for (int p = 0; p < k; ++p) ref += a[i * k + p] * b[p * n + j];
      EXPECT_NEAR(c[i * n + j], ref, 1e-4);
    }
}

TEST(Cuda, ReportsAbsenceClearly) {
  if (cuda::available()) GTEST_SKIP() << "a GPU is present";
  EXPECT_TRUE(cuda::device_name().empty());
  if (!cuda::compiled()) EXPECT_THROW(cuda::vector_add({1}, {2}), Error);
}

TEST(Cuda, StorageAllocatesOnTheGpu) {
  if (!cuda::available()) GTEST_SKIP() << (cuda::compiled() ? "no GPU present" : "built without CUDA");
  auto storage = Storage::allocate(1 << 20, Device::CUDA);
  EXPECT_NE(storage->data, nullptr);
  EXPECT_EQ(storage->device, Device::CUDA);
  EXPECT_EQ(storage->bytes, size_t(1) << 20);
  Tensor t = Tensor::from_storage(storage, DType::F32, {512, 512});
  EXPECT_EQ(t.device(), Device::CUDA);
}

TEST(Cuda, StorageWithoutAGpuIsAClearError) {
  if (cuda::available()) GTEST_SKIP() << "a GPU is present";
  try {
    Storage::allocate(64, Device::CUDA);
    FAIL() << "a CUDA allocation without a GPU did not throw";
  } catch (const DeviceError& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA"), std::string::npos) << e.what();
  }
}
