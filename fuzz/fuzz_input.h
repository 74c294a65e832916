#pragma once
// What every fuzz target shares. The readers under test take files and folders, so an input is written
// to a scratch folder of this process first (under $TMPDIR, tmpfs on most machines). A reader may
// refuse an input only with a deltatune::Error (the clear message a user sees); any other exception
// escapes the target and libFuzzer reports it, as it reports a crash, a leak, undefined behaviour, a
// hang (-timeout) or an allocation over -rss_limit_mb.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "deltatune/error.h"

// A target's one-time fixture (a model, tokenizers, a saved checkpoint), built before the first input:
// libFuzzer would otherwise count it in that input's time, and under the sanitizers it can pass the 1 s
// hang limit. The replay driver (replay_main.cc) calls it too.
#define FUZZ_BUILD_BEFORE_FIRST_INPUT(fixture_call)    \
  extern "C" int LLVMFuzzerInitialize(int*, char***) { \
    (void)(fixture_call);                              \
    return 0;                                          \
  }

namespace fuzz {

// A scratch folder for this process, emptied for each input.
inline const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::filesystem::path d =
        std::filesystem::path(tmp && *tmp ? tmp : "/tmp") / ("deltatune-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

inline std::filesystem::path fresh_folder() {
  const std::filesystem::path dir = scratch() / "input";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline std::filesystem::path write(const std::filesystem::path& file, std::string_view bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  return file;
}

inline std::string_view bytes_of(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Runs `read` on one input: a deltatune::Error is a refusal, and fine.
template <class Read>
void refuse_or_read(Read&& read) {
  try {
    read();
  } catch (const deltatune::Error&) {
  }
}

}  // namespace fuzz
