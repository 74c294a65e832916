#pragma once
// The library's process-wide settings, in one place a library user (or a front end) sets explicitly:
//
//   deltatune::apply({.threads = 8, .matmul_precision = ops::MatmulPrecision::Bf16,
//                     .heap = HeapTuning::for_training()});
//   deltatune::RuntimeSettings now = deltatune::runtime_settings();  // every field filled
//
// A field left unset is left as it is. Each setting is global to the process, not to a call:
//   - threads: our kernels' OpenMP threads and OpenBLAS's (threads.h). OpenMP keeps a count per
//     thread; every model forward adopts this one on its thread, so threads a user starts (a
//     server's request threads) use it too (threads.h: use_num_threads_on_this_thread).
//   - matmul_precision: Exact or Bf16 linear products (ops.h). Concurrent calls that need different
//     precisions cannot share a process today; a per-call precision would travel in the call's
//     ForwardContext (forward_context.h), and its backward would need it recorded with each node,
//     since backward runs outside the forward.
//   - heap: glibc allocator tuning, for tensor storage under 1 MiB and everything else the process
//     allocates (larger tensor blocks come from the library's own pool, src/core/large_blocks.h).
//     Training frees and re-allocates such buffers every step; glibc would map the larger ones
//     afresh and return them to the kernel, so every step paid page faults and zeroing again.
//     Keeping them in the heap reuses them.
// Not here: OpenMP's wait policy, which libgomp reads once when it loads (tools/wait_policy.h).
#include <cstddef>
#include <optional>

#include "deltatune/ops.h"

namespace deltatune {

struct HeapTuning {
  size_t mmap_threshold = 0;  // allocations above it are mapped on their own (M_MMAP_THRESHOLD)
  size_t trim_threshold = 0;  // free heap top kept before returning memory (M_TRIM_THRESHOLD)
  // What `deltatune` uses: buffers up to 32 MiB (glibc's largest threshold) stay in the heap, and up
  // to 512 MiB of freed heap is kept.
  static HeapTuning for_training() { return {size_t(32) << 20, size_t(512) << 20}; }
  bool operator==(const HeapTuning&) const = default;
};

struct RuntimeSettings {
  std::optional<int> threads = std::nullopt;                            // >= 1
  std::optional<ops::MatmulPrecision> matmul_precision = std::nullopt;  // Bf16: bf16_linear_available()
  std::optional<HeapTuning> heap = std::nullopt;  // read back: nullopt while glibc's defaults hold
};

// Applies the fields that are set. Throws ConfigError (changing nothing) for threads < 1, Bf16 on a
// CPU without AVX-512 BF16, or a heap threshold glibc refuses.
void apply(const RuntimeSettings& settings);
// The settings in force.
RuntimeSettings runtime_settings();

}  // namespace deltatune
