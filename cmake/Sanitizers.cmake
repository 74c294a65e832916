# Instrumented builds (make test-sanitize, make test-tsan, make fuzz): every target of this project
# compiled and linked with the sanitizers asked for; the system libraries stay as Debian ships them.
#   DELTATUNE_SANITIZE=address,undefined   AddressSanitizer (with LeakSanitizer) + UndefinedBehaviorSanitizer
#   DELTATUNE_SANITIZE=thread              ThreadSanitizer
#   DELTATUNE_FUZZ=ON                      the libFuzzer targets under fuzz/ (clang), address + undefined
set(DELTATUNE_SANITIZE "" CACHE STRING "Sanitizers for every target (address,undefined | thread); empty: none")
option(DELTATUNE_FUZZ "Build the libFuzzer targets under fuzz/ (needs clang; implies address,undefined)" OFF)

if(DELTATUNE_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "DELTATUNE_FUZZ needs clang (libFuzzer): configure with -DCMAKE_CXX_COMPILER=clang++")
  endif()
  set(DELTATUNE_SANITIZE "address,undefined")
  # The library and everything linked into a fuzz target carry coverage feedback for libFuzzer.
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()

if(DELTATUNE_SANITIZE)
  # A sanitizer finding stops the program (a test fails) instead of printing and running on.
  add_compile_options(-fsanitize=${DELTATUNE_SANITIZE} -fno-sanitize-recover=all -fno-omit-frame-pointer -g)
  add_link_options(-fsanitize=${DELTATUNE_SANITIZE})
  if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    # The instrumentation keeps clang from vectorising the kernels' `omp simd` loops; it says so with a
    # -Wpass-failed warning per loop. Expected in these builds (speed is not their point), so quiet.
    add_compile_options(-Wno-pass-failed)
  endif()
endif()
