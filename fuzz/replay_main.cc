// Runs a fuzz target's LLVMFuzzerTestOneInput over saved inputs, without libFuzzer: the regression
// tests of the ordinary build (ctest FuzzReplay.*). Each argument is a file or a folder of inputs. An
// input the target does not survive ends the process as it would under libFuzzer (an exception that
// escapes, an abort, a crash), so the test fails; with a sanitizer build it also catches what the
// sanitizers see.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

void replay(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  const std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::fprintf(stderr, "replaying %s (%zu bytes)\n", file.c_str(), bytes.size());
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

}  // namespace

int main(int argc, char** argv) {
  int replayed = 0;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path arg = argv[i];
    if (!std::filesystem::exists(arg)) {
      std::fprintf(stderr, "%s: no such file or folder\n", argv[i]);
      return 2;
    }
    if (!std::filesystem::is_directory(arg)) {
      replay(arg), ++replayed;
      continue;
    }
    for (const auto& entry : std::filesystem::recursive_directory_iterator(arg))
      if (entry.is_regular_file()) replay(entry.path()), ++replayed;
  }
  std::printf("%d inputs replayed, none crashed\n", replayed);
  return replayed > 0 ? 0 : 1;  // an empty corpus would make the test pass without testing anything
}
