#pragma once
// Library-internal: DELTATUNE_SANITIZED is defined in builds under AddressSanitizer or
// ThreadSanitizer (GCC's and clang's spellings). Their allocator replaces glibc's, and they check
// each heap block: the heap tuning (runtime.cc) and the large-block pool (large_blocks.cc) step
// aside there.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DELTATUNE_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define DELTATUNE_SANITIZED 1
#endif
#endif
