// Process-wide settings through deltatune/runtime.h: a library user sets each one, reads it back, and
// it takes effect where the library looks (threads.h and OpenMP, ops' matmul precision, glibc's heap).
#include <gtest/gtest.h>
#include <malloc.h>
#include <omp.h>

#include <cstdlib>
#include <thread>

#include "deltatune/error.h"
#include "deltatune/runtime.h"
#include "deltatune/threads.h"

using namespace deltatune;

namespace {

TEST(Runtime, ThreadsAreSetAndReadBack) {
  apply({.threads = 3});
  EXPECT_EQ(runtime_settings().threads, 3);
  EXPECT_EQ(num_threads(), 3);
  EXPECT_EQ(omp_get_max_threads(), 3);
  apply({.threads = 1});
  EXPECT_EQ(runtime_settings().threads, 1);
  EXPECT_EQ(omp_get_max_threads(), 1);
}

TEST(Runtime, MatmulPrecisionIsSetAndReadBack) {
  apply({.matmul_precision = ops::MatmulPrecision::Exact});
  EXPECT_EQ(runtime_settings().matmul_precision, ops::MatmulPrecision::Exact);
  if (ops::bf16_linear_available()) {
    apply({.matmul_precision = ops::MatmulPrecision::Bf16});
    EXPECT_EQ(ops::matmul_precision(), ops::MatmulPrecision::Bf16);
    EXPECT_EQ(runtime_settings().matmul_precision, ops::MatmulPrecision::Bf16);
  } else {
    EXPECT_THROW(apply({.matmul_precision = ops::MatmulPrecision::Bf16}), ConfigError);
    EXPECT_EQ(ops::matmul_precision(), ops::MatmulPrecision::Exact);
  }
  apply({.matmul_precision = ops::MatmulPrecision::Exact});
  EXPECT_EQ(ops::matmul_precision(), ops::MatmulPrecision::Exact);
}

// Whether glibc mapped a fresh 4 MiB allocation on its own (rather than carving it from the heap).
bool four_mib_is_mapped() {
  const size_t before = mallinfo2().hblks;
  void* p = std::malloc(size_t(4) << 20);
  static_cast<volatile char*>(p)[0] = 1;  // the allocation is used: the compiler keeps it
  const bool mapped = mallinfo2().hblks > before;
  std::free(p);
  return mapped;
}

TEST(Runtime, HeapTuningTakesEffect) {
// GCC says __SANITIZE_ADDRESS__ / __SANITIZE_THREAD__; clang (the ASan build) answers __has_feature.
#if defined(__has_feature)
#define DELTATUNE_SANITIZED_HEAP __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#else
#define DELTATUNE_SANITIZED_HEAP 0
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__) || DELTATUNE_SANITIZED_HEAP
  // The sanitizer's allocator replaces glibc's, so there is no glibc heap to tune or observe (runtime.cc
  // leaves it alone there); the ordinary build checks this.
  GTEST_SKIP() << "glibc's heap is replaced by the sanitizer's allocator in this build";
#endif
  apply({.heap = HeapTuning{size_t(1) << 20, size_t(1) << 20}});
  EXPECT_TRUE(four_mib_is_mapped());
  apply({.heap = HeapTuning::for_training()});
  EXPECT_EQ(runtime_settings().heap, HeapTuning::for_training());
  EXPECT_FALSE(four_mib_is_mapped()) << "a 4 MiB buffer should stay in the heap for reuse";
}

TEST(Runtime, UnsetFieldsAreLeftAlone) {
  apply({.threads = 2, .heap = HeapTuning::for_training()});
  apply({.matmul_precision = ops::MatmulPrecision::Exact});
  const RuntimeSettings now = runtime_settings();
  EXPECT_EQ(now.threads, 2);
  EXPECT_EQ(now.heap, HeapTuning::for_training());
}

TEST(Runtime, BadSettingsAreRefusedAndChangeNothing) {
  apply({.threads = 2});
  const RuntimeSettings before = runtime_settings();
  EXPECT_THROW(apply({.threads = 0}), ConfigError);
  EXPECT_THROW(apply({.threads = 4, .heap = HeapTuning{size_t(64) << 20, 0}}), ConfigError);
  EXPECT_EQ(runtime_settings().threads, 2);
  EXPECT_EQ(runtime_settings().heap, before.heap);
}

}  // namespace
