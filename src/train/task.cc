// Task folders (train/dev/test files) and UniPELT-style few-shot sampling.
#include <algorithm>

#include "deltatune/data.h"
#include "deltatune/error.h"
#include "deltatune/random.h"

namespace fs = std::filesystem;

namespace deltatune::data {

std::optional<fs::path> split_file(const fs::path& dir, const std::string& split) {
  for (const char* ext : {".jsonl", ".json", ".csv", ".tsv"}) {
    fs::path file = dir / (split + ext);
    if (fs::is_regular_file(file)) return file;
  }
  // Common alias: GLUE-style folders call the dev split "validation".
  if (split == "dev") return split_file(dir, "validation");
  return std::nullopt;
}

Task load_task(const fs::path& dir, const Fields& fields, bool labels_optional) {
  if (!fs::exists(dir)) throw IoError(dir.string() + ": task folder does not exist");
  if (!fs::is_directory(dir))
    throw IoError(dir.string() + ": not a folder (expected a task folder with train.jsonl)");
  Task task;
  task.dir = dir;
  auto train = split_file(dir, "train");
  if (!train) throw IoError(dir.string() + ": no train.jsonl (or train.csv / train.tsv) in the task folder");
  task.train = read_examples(*train, fields, labels_optional);
  if (auto dev = split_file(dir, "dev")) task.dev = read_examples(*dev, fields, labels_optional);
  if (auto test = split_file(dir, "test")) task.test = read_examples(*test, fields, labels_optional);
  return task;
}

std::vector<size_t> shuffled_indices(size_t n, uint64_t seed) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  Generator gen(seed);
  for (size_t i = n; i > 1; --i) std::swap(order[i - 1], order[size_t(gen.below(i))]);
  return order;
}

FewShot few_shot(const std::vector<Example>& train, int64_t k, uint64_t seed) {
  if (k <= 0) throw ConfigError("k-shot: k must be positive, got " + std::to_string(k));
  if (size_t(k) >= train.size())
    throw ConfigError("k-shot: k = " + std::to_string(k) + " but the training set has only " +
                      std::to_string(train.size()) + " examples (some must remain for the dev set)");
  const std::vector<size_t> order = shuffled_indices(train.size(), seed);
  FewShot out;
  const size_t dev_end = std::min(train.size(), size_t(k) + 1000);
  for (size_t i = 0; i < size_t(k); ++i) out.train.push_back(train[order[i]]);
  for (size_t i = size_t(k); i < dev_end; ++i) out.dev.push_back(train[order[i]]);
  return out;
}

}  // namespace deltatune::data
