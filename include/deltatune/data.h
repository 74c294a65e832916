#pragma once
// Datasets for fine-tuning: labelled texts (or text pairs) read from JSONL, CSV or TSV, a label map,
// task folders (train/dev/test), few-shot sampling, and batching into padded model inputs.
//
//   data::Task task = data::load_task("assets/tasks/sentiment");
//   data::LabelMap labels = data::LabelMap::from_examples(task.train);
//   data::assign_labels(task.dev, labels);        // unknown labels: IoError naming file:line
//   data::EncodedDataset train = data::encode(task.train, *tokenizer, 128);
//   data::Batcher batcher(train, {.batch_size = 16, .shuffle = true, .seed = 42}, pad_id);
//   for (auto& indices : batcher.epoch_order(0)) { data::Batch b = batcher.make_batch(indices); ... }
//
// Every problem with a file is an IoError whose message starts with "FILE:LINE:" (or "FILE:").
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/tensor.h"

namespace deltatune {
class Tokenizer;
}

namespace deltatune::data {

// Which fields (JSONL keys, CSV/TSV header columns) hold what.
struct Fields {
  std::string text = "text";
  std::string text_pair = "text_pair";  // optional per example
  std::string label = "label";
};

struct Example {
  std::string text;
  std::optional<std::string> text_pair;
  std::optional<std::string> label;  // as written: "positive", "1" (integers are kept as their digits)
  int64_t label_id = -1;             // set by assign_labels / LabelMap::from_examples
  std::string origin;                // "FILE:LINE", for error messages
};

// Reads a JSONL (.jsonl, .json), CSV (.csv) or TSV (.tsv) file; CSV and TSV start with a header row
// naming the columns. Labels are required unless `labels_optional` (prediction inputs). A missing
// text field, a malformed line, a label of the wrong type or an empty file is an IoError.
std::vector<Example> read_examples(const std::filesystem::path& file, const Fields& fields = {},
                                   bool labels_optional = false);

// Label names <-> ids. Labels that are all non-negative integers ("0", "1", 7) keep their value as the
// id (as Hugging Face datasets do); otherwise the distinct strings are sorted and numbered from 0.
class LabelMap {
 public:
  LabelMap() = default;
  explicit LabelMap(std::vector<std::string> names, bool integer_labels = false);
  // Builds the map from labelled examples and sets their label_id.
  static LabelMap from_examples(std::vector<Example>& examples);

  int64_t size() const { return int64_t(names_.size()); }
  const std::vector<std::string>& names() const { return names_; }
  const std::string& name(int64_t id) const;
  std::optional<int64_t> find(const std::string& label) const;
  bool integer_labels() const { return integer_labels_; }

  // labels.json: {"labels": [names by id], "integer_labels": bool}.
  nlohmann::json to_json() const;
  static LabelMap from_json(const nlohmann::json& j, const std::string& source);
  void save(const std::filesystem::path& file) const;  // atomic
  static LabelMap load(const std::filesystem::path& file);

 private:
  std::vector<std::string> names_;
  bool integer_labels_ = false;
};

// Sets each labelled example's label_id; a label the map does not know is an IoError naming the
// example's FILE:LINE and the known labels.
void assign_labels(std::vector<Example>& examples, const LabelMap& labels);

// A task folder: train.jsonl (required), dev.jsonl and test.jsonl (optional). .csv / .tsv files are
// accepted in place of .jsonl. labels_optional: plain texts (causal-LM tuning).
struct Task {
  std::filesystem::path dir;
  std::vector<Example> train, dev, test;
};
Task load_task(const std::filesystem::path& dir, const Fields& fields = {}, bool labels_optional = false);
// The file of a split in a task folder ("train", "dev", "test"), or nullopt when absent.
std::optional<std::filesystem::path> split_file(const std::filesystem::path& dir, const std::string& split);

// Few-shot sampling as UniPELT does: shuffle the training set with `seed`, take the first k as the
// training set and the next min(1000, rest) as the dev set.
struct FewShot {
  std::vector<Example> train, dev;
};
FewShot few_shot(const std::vector<Example>& train, int64_t k, uint64_t seed);

// Deterministic Fisher-Yates shuffle of [0, n) with our seeded generator (same on every platform).
std::vector<size_t> shuffled_indices(size_t n, uint64_t seed);

// --- tokenized examples and batches ---

struct EncodedExample {
  std::vector<int64_t> ids;
  std::vector<int64_t> type_ids;
  int64_t label = -1;     // -1: unlabelled
  int64_t loss_from = 0;  // causal LM: the first token whose prediction counts (after a prompt)
};

struct EncodedDataset {
  std::vector<EncodedExample> examples;
  int64_t truncated = 0;  // examples that reached max_length (most were cut; reported to the user)
  size_t size() const { return examples.size(); }
};

// Tokenizes each example (pairs with the tokenizer's pair template), truncating to max_length ids
// (special tokens included; the longer text of a pair is cut first). max_length <= 0: no limit.
EncodedDataset encode(const std::vector<Example>& examples, const Tokenizer& tokenizer, int64_t max_length);

// For causal-LM tuning: a plain text trains on every token; an example with a text_pair is a prompt
// (`text`) and its answer (`text_pair`, followed by EOS when the tokenizer has one), and only the
// answer's tokens count in the loss. Truncation keeps the start.
EncodedDataset encode_for_lm(const std::vector<Example>& examples, const Tokenizer& tokenizer,
                             int64_t max_length);

// Masked-LM corruption as transformers' DataCollatorForLanguageModeling: each real, non-special token
// is chosen with `probability`; a chosen token becomes [MASK] 80% of the time, a random token 10%, and
// stays 10%. The model predicts the chosen tokens only.
struct MlmMasking {
  int64_t mask_id = -1;
  int64_t vocab_size = 0;
  std::vector<int64_t> special_ids;  // never chosen ([CLS], [SEP], [PAD], ...)
  double probability = 0.15;
  static MlmMasking for_tokenizer(const Tokenizer& tokenizer);  // ConfigError without a mask token
};

// One padded batch: rows padded on the right to the batch's longest row.
struct Batch {
  Tensor input_ids;                // int64 [B, T]
  Tensor attention_mask;           // int64 [B, T]: 1 = token, 0 = padding
  Tensor token_type_ids;           // int64 [B, T]
  Tensor labels;                   // int64 [B]; undefined when the examples are unlabelled
  Tensor lm_targets;               // int64 [B, T]: masked-LM targets, -100 where nothing is predicted
  std::vector<int64_t> loss_from;  // per row: EncodedExample::loss_from
  std::vector<size_t> indices;     // the examples' positions in the dataset
  int64_t num_tokens = 0;          // real (unpadded) tokens
  int64_t size() const { return int64_t(indices.size()); }
};

// Corrupts `batch` for masked-LM training (see MlmMasking): input_ids get the masks, lm_targets the
// original ids at the chosen positions. The same seed chooses the same positions.
void apply_mlm_masking(Batch& batch, const MlmMasking& masking, uint64_t seed);

struct BatchOptions {
  int64_t batch_size = 16;
  bool shuffle = false;
  uint64_t seed = 0;
  // Groups examples of similar length (within windows of 50 batches) to cut padding; batch order
  // stays shuffled.
  bool bucket_by_length = false;
};

class Batcher {
 public:
  // pad_id fills padded positions (the mask hides them); the dataset must outlive the batcher.
  Batcher(const EncodedDataset& data, BatchOptions options, int64_t pad_id);
  int64_t batches_per_epoch() const;
  // The batches of one epoch as lists of example indices. With shuffling, epoch e's order depends only
  // on (seed, e): a resumed run replays exactly the same batches.
  std::vector<std::vector<size_t>> epoch_order(int64_t epoch) const;
  Batch make_batch(const std::vector<size_t>& indices) const;

 private:
  const EncodedDataset* data_;
  BatchOptions options_;
  int64_t pad_id_;
};

// The id that pads rows for a tokenizer: pad, else EOS, else 0 (masked either way).
int64_t padding_id(const Tokenizer& tokenizer);

}  // namespace deltatune::data
