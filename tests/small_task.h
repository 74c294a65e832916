// Small task folders cut from the built-in sentiment task (assets/tasks/sentiment): the first lines of
// each split, so a training test runs in seconds.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

namespace test_support {

// The first `n` lines of the sentiment task's `split` (train, dev or test) written to `to`.
inline void copy_sentiment_lines(const std::string& split, size_t n, const std::filesystem::path& to) {
  std::ifstream in(std::filesystem::path(DELTATUNE_ASSETS) / "tasks" / "sentiment" / (split + ".jsonl"));
  std::ofstream out(to);
  std::string line;
  for (size_t i = 0; i < n && std::getline(in, line); ++i) out << line << "\n";
}

// A task folder in `dir` with `train`, `dev` and `test` examples (a split of 0 is left out).
inline std::filesystem::path write_sentiment_subset(const std::filesystem::path& dir, size_t train,
                                                    size_t dev, size_t test) {
  std::filesystem::create_directories(dir);
  for (auto [split, n] : {std::pair{"train", train}, {"dev", dev}, {"test", test}})
    if (n > 0) copy_sentiment_lines(split, n, dir / (std::string(split) + ".jsonl"));
  return dir;
}

}  // namespace test_support
