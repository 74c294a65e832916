// Small task folders cut from the built-in sentiment task (assets/tasks/sentiment): the first lines of
// each split, so a training test runs in seconds.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

#include "deltatune/data.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"

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

// The train and dev splits of a task folder, labelled and encoded with the tokenizer of `model_dir` at
// 32 tokens: what the trainer tests train on.
struct EncodedTask {
  deltatune::data::LabelMap labels;
  deltatune::data::EncodedDataset train, dev;
};
inline EncodedTask encoded_task(const std::filesystem::path& task_dir,
                                const std::filesystem::path& model_dir) {
  using namespace deltatune;
  data::Task task = data::load_task(task_dir);
  EncodedTask out;
  out.labels = data::LabelMap::from_examples(task.train);
  data::assign_labels(task.dev, out.labels);
  auto tok = Tokenizer::load(model_dir);
  out.train = data::encode(task.train, *tok, 32);
  out.dev = data::encode(task.dev, *tok, 32);
  return out;
}

// Two epochs of batch 8 at lr 3e-3, seeded, quiet: a trainer test's run.
inline deltatune::train::TrainOptions small_train_options(const std::filesystem::path& run_dir,
                                                          uint64_t seed) {
  deltatune::train::TrainOptions o;
  o.epochs = 2;
  o.batch_size = 8;
  o.lr = 3e-3;
  o.seed = seed;
  o.run_dir = run_dir;
  o.progress = false;
  return o;
}

}  // namespace test_support
