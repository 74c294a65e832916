// Each setting lives with what it controls (threads.cc, ops' precision); only the heap tuning, which
// glibc cannot report, is remembered here.
#include "deltatune/runtime.h"

#include <mutex>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "core/sanitized.h"
#include "deltatune/error.h"
#include "deltatune/threads.h"

// Under AddressSanitizer or ThreadSanitizer (or another allocator replacing glibc's) mallopt is not
// glibc's and refuses every setting; the tuning only matters for glibc's own heap.

namespace deltatune {
namespace {
std::mutex g_heap_mutex;
std::optional<HeapTuning> g_heap;  // the last tuning applied

void apply_heap(const HeapTuning& heap) {
#if defined(DELTATUNE_SANITIZED)
  (void)heap;  // the sanitizer's allocator: nothing to tune
#elif defined(__GLIBC__)
  if (mallopt(M_MMAP_THRESHOLD, int(heap.mmap_threshold)) != 1)
    throw ConfigError("runtime: glibc refuses an mmap threshold of " + std::to_string(heap.mmap_threshold) +
                      " bytes (at most 32 MiB)");
  mallopt(M_TRIM_THRESHOLD, int(heap.trim_threshold));
#else
  (void)heap;
  throw ConfigError("runtime: heap tuning needs glibc");
#endif
}
}  // namespace

void apply(const RuntimeSettings& s) {
  if (s.threads && *s.threads < 1)
    throw ConfigError("runtime: threads must be at least 1, got " + std::to_string(*s.threads));
  if (s.matmul_precision == ops::MatmulPrecision::Bf16 && !ops::bf16_linear_available())
    throw ConfigError("runtime: Bf16 matmul precision needs a CPU with AVX-512 BF16");
  if (s.heap) {
    if (s.heap->mmap_threshold > size_t(32) << 20 || s.heap->trim_threshold > size_t(1) << 30)
      throw ConfigError("runtime: heap thresholds must be at most 32 MiB (mmap) and 1 GiB (trim)");
    std::lock_guard<std::mutex> lock(g_heap_mutex);
    apply_heap(*s.heap);
    g_heap = s.heap;
  }
  if (s.threads) set_num_threads(*s.threads);
  if (s.matmul_precision) ops::set_matmul_precision(*s.matmul_precision);
}

RuntimeSettings runtime_settings() {
  RuntimeSettings s;
  s.threads = num_threads();
  s.matmul_precision = ops::matmul_precision();
  std::lock_guard<std::mutex> lock(g_heap_mutex);
  s.heap = g_heap;
  return s;
}

}  // namespace deltatune
