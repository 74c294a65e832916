// Tokenizing examples and grouping them into padded batches.
#include <algorithm>

#include "deltatune/data.h"
#include "deltatune/error.h"
#include "deltatune/tokenizer.h"

namespace deltatune::data {
namespace {

// Mixes a seed and an epoch into an independent stream seed (splitmix64's finaliser), so that epoch
// orders are reproducible one by one without replaying earlier epochs.
uint64_t epoch_seed(uint64_t seed, int64_t epoch) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * uint64_t(epoch + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

int64_t padding_id(const Tokenizer& tokenizer) {
  if (tokenizer.pad_id() >= 0) return tokenizer.pad_id();
  if (tokenizer.eos_id() >= 0) return tokenizer.eos_id();
  return 0;
}

EncodedDataset encode(const std::vector<Example>& examples, const Tokenizer& tokenizer, int64_t max_length) {
  EncodedDataset out;
  out.examples.resize(examples.size());
  // Single texts and pairs go through the tokenizer separately: a pair needs its template.
  for (const bool pairs : {false, true}) {
    std::vector<size_t> which;
    std::vector<std::string> texts, seconds;
    for (size_t i = 0; i < examples.size(); ++i) {
      if (examples[i].text_pair.has_value() != pairs) continue;
      which.push_back(i);
      texts.push_back(examples[i].text);
      if (pairs) seconds.push_back(*examples[i].text_pair);
    }
    if (which.empty()) continue;
    BatchEncoding enc = tokenizer.encode_batch(texts, pairs ? &seconds : nullptr, max_length, false);
    for (size_t j = 0; j < which.size(); ++j) {
      EncodedExample& e = out.examples[which[j]];
      e.ids = std::move(enc.input_ids[j]);
      e.type_ids = std::move(enc.token_type_ids[j]);
      e.label = examples[which[j]].label_id;
      if (e.ids.empty()) throw IoError(examples[which[j]].origin + ": the text encodes to no tokens");
      if (max_length > 0 && int64_t(e.ids.size()) >= max_length) ++out.truncated;
    }
  }
  return out;
}

Batcher::Batcher(const EncodedDataset& data, BatchOptions options, int64_t pad_id)
    : data_(&data), options_(options), pad_id_(pad_id) {
  if (options_.batch_size < 1)
    throw ConfigError("batch size must be at least 1, got " + std::to_string(options_.batch_size));
}

int64_t Batcher::batches_per_epoch() const {
  return (int64_t(data_->size()) + options_.batch_size - 1) / options_.batch_size;
}

std::vector<std::vector<size_t>> Batcher::epoch_order(int64_t epoch) const {
  const size_t n = data_->size(), bs = size_t(options_.batch_size);
  const uint64_t seed = epoch_seed(options_.seed, epoch);
  std::vector<size_t> order;
  if (options_.shuffle) {
    order = shuffled_indices(n, seed);
  } else {
    order.resize(n);
    for (size_t i = 0; i < n; ++i) order[i] = i;
  }
  if (options_.bucket_by_length) {
    // Sort by length inside windows of 50 batches: little padding, yet still random across windows.
    const size_t window = 50 * bs;
    for (size_t start = 0; start < n; start += window) {
      auto first = order.begin() + ptrdiff_t(start),
           last = order.begin() + ptrdiff_t(std::min(n, start + window));
      std::stable_sort(first, last, [&](size_t a, size_t b) {
        return data_->examples[a].ids.size() < data_->examples[b].ids.size();
      });
    }
  }
  std::vector<std::vector<size_t>> batches;
  for (size_t start = 0; start < n; start += bs)
    batches.emplace_back(order.begin() + ptrdiff_t(start),
                         order.begin() + ptrdiff_t(std::min(n, start + bs)));
  if (options_.bucket_by_length && options_.shuffle) {
    // Otherwise every window would run from its short batches to its long ones.
    const std::vector<size_t> batch_order = shuffled_indices(batches.size(), seed ^ 0x5bd1e995u);
    std::vector<std::vector<size_t>> reordered;
    for (size_t i : batch_order) reordered.push_back(std::move(batches[i]));
    batches = std::move(reordered);
  }
  return batches;
}

Batch Batcher::make_batch(const std::vector<size_t>& indices) const {
  if (indices.empty()) throw ConfigError("make_batch: no examples");
  size_t longest = 0;
  bool labelled = true;
  for (size_t i : indices) {
    if (i >= data_->size())
      throw ConfigError("make_batch: example index " + std::to_string(i) + " out of range");
    longest = std::max(longest, data_->examples[i].ids.size());
    labelled = labelled && data_->examples[i].label >= 0;
  }
  const int64_t B = int64_t(indices.size()), T = int64_t(longest);
  std::vector<int64_t> ids(size_t(B * T), pad_id_), mask(size_t(B * T), 0), types(size_t(B * T), 0), labels;
  Batch batch;
  for (int64_t b = 0; b < B; ++b) {
    const EncodedExample& e = data_->examples[indices[size_t(b)]];
    std::copy(e.ids.begin(), e.ids.end(), ids.begin() + b * T);
    std::fill_n(mask.begin() + b * T, e.ids.size(), 1);
    std::copy(e.type_ids.begin(), e.type_ids.end(), types.begin() + b * T);
    batch.num_tokens += int64_t(e.ids.size());
    batch.loss_from.push_back(e.loss_from);
    if (labelled) labels.push_back(e.label);
  }
  batch.input_ids = Tensor::from_ints(ids, {B, T});
  batch.attention_mask = Tensor::from_ints(mask, {B, T});
  batch.token_type_ids = Tensor::from_ints(types, {B, T});
  if (labelled) batch.labels = Tensor::from_ints(labels, {B});
  batch.indices = indices;
  return batch;
}

}  // namespace deltatune::data
