#pragma once
// Several builds of one hot loop, picked once at load time for the CPU (GCC's target_clones, an IFUNC).
// Left out under ThreadSanitizer: an IFUNC resolver runs while the library is being relocated, before
// TSan's runtime is up, and GCC instruments it, so every program crashed at load (make test-tsan). That
// build keeps the baseline version alone.
#if defined(__SANITIZE_THREAD__)
#define DELTATUNE_TARGET_CLONES(...)
#else
#define DELTATUNE_TARGET_CLONES(...) [[gnu::target_clones(__VA_ARGS__)]]
#endif
