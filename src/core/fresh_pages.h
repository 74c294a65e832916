#pragma once
// Library-internal: storage on pages freshly mapped from the kernel. They read as zero and cost no
// memory until written, so a buffer that is zeroed first and (maybe) written later needs no memset and,
// where it is never written, no memory at all (a linear weight quantised as it loads).
#include <cstddef>
#include <memory>

#include "deltatune/tensor.h"

namespace deltatune {

// `bytes` of anonymous private mapping (reads as zero), on transparent huge pages where the kernel
// allows; nullptr when the mapping fails. Freed with munmap. The large-block pool maps its segments so.
void* map_pages(size_t bytes);

// The same as a Storage: Storage::fresh_zeros is set, munmap'ed with the last user. Throws Error when
// the mapping fails.
std::shared_ptr<Storage> map_fresh_pages(size_t bytes);

}  // namespace deltatune
