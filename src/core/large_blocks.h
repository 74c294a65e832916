#pragma once
// Library-internal: where tensor storage of 1 MiB and more comes from (src/core/tensor.cc).
//
// A training step frees and allocates the same activation-sized buffers every step. glibc either
// mapped each afresh (a page fault per 4 KiB page: a bert-base LoRA step 5x slower on this project's
// VM) or kept them in its heap among the small objects (tape nodes, shapes) allocated between them,
// which pin the holes: a bert-base LoRA --bf16 step held 1,096 MiB of RSS for 603 MiB of tensors.
//
// Here large blocks live apart, in segments of 64 MiB or more mapped once and kept: a request takes
// the smallest free block that fits (split when the rest is worth keeping), a freed block joins its
// free neighbours, and a segment goes back to the kernel only when it is wholly free and more than
// the limit would otherwise be kept free. PyTorch's GPU caching allocator works this way; glibc has no
// pool for large blocks alone, so it is written here (DESIGN.md). Under AddressSanitizer and
// ThreadSanitizer every block comes from malloc instead, so their checks see each tensor.
#include <cstddef>

namespace deltatune::large_blocks {

constexpr size_t kMinBytes = size_t(1) << 20;  // smaller blocks stay with malloc

struct Block {
  void* data = nullptr;
  bool zeroed = false;  // never handed out since its pages were mapped: reads as zero
};

// Whether large blocks come from the pool (false under the sanitizers).
bool pooled();
// A block of at least `bytes` (>= kMinBytes), 4 KiB aligned. Throws Error when mapping fails.
Block take(size_t bytes);
// Returns a block `take` gave.
void give_back(void* data);

struct PoolStats {
  size_t mapped_bytes = 0;  // segments held from the kernel
  size_t used_bytes = 0;    // handed out now (page-rounded)
  size_t segments = 0;
};
PoolStats stats();
// Free segments kept beyond what is in use (default 256 MiB).
void set_free_limit(size_t bytes);

}  // namespace deltatune::large_blocks
