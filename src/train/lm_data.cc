// Language-modelling data: prompt/answer examples for causal LMs and masked-LM corruption.
#include <algorithm>
#include <set>

#include "deltatune/data.h"
#include "deltatune/error.h"
#include "deltatune/random.h"
#include "deltatune/tokenizer.h"

namespace deltatune::data {

EncodedDataset encode_for_lm(const std::vector<Example>& examples, const Tokenizer& tokenizer,
                             int64_t max_length) {
  EncodedDataset out;
  out.examples.reserve(examples.size());
  for (const Example& x : examples) {
    EncodedExample e;
    e.ids = tokenizer.encode(x.text, true).ids;
    if (x.text_pair) {
      // A prompt ends where its template would add closing specials (BERT's [SEP]); drop those so the
      // answer follows the prompt directly, as a decoder sees it at generation time.
      const Encoding bare = tokenizer.encode(x.text, false);
      const Encoding with = tokenizer.encode(x.text, true);
      size_t lead = 0;
      while (lead < with.ids.size() && (lead >= bare.ids.size() || with.ids[lead] != bare.ids[0])) ++lead;
      e.ids.assign(with.ids.begin(), with.ids.begin() + std::min(with.ids.size(), lead + bare.ids.size()));
      e.loss_from = int64_t(e.ids.size());
      const Encoding answer = tokenizer.encode(*x.text_pair, false);
      e.ids.insert(e.ids.end(), answer.ids.begin(), answer.ids.end());
      if (tokenizer.eos_id() >= 0) e.ids.push_back(tokenizer.eos_id());
      if (answer.ids.empty()) throw IoError(x.origin + ": the answer encodes to no tokens");
    }
    if (e.ids.empty()) throw IoError(x.origin + ": the text encodes to no tokens");
    if (max_length > 0 && int64_t(e.ids.size()) >= max_length) {
      ++out.truncated;
      e.ids.resize(size_t(max_length));
      if (e.loss_from >= max_length)
        throw IoError(x.origin + ": the prompt alone fills --max-length " + std::to_string(max_length) +
                      " tokens, leaving no answer to train on");
    }
    e.type_ids.assign(e.ids.size(), 0);
    e.label = x.label_id;
    out.examples.push_back(std::move(e));
  }
  return out;
}

MlmMasking MlmMasking::for_tokenizer(const Tokenizer& tokenizer) {
  if (tokenizer.mask_id() < 0)
    throw ConfigError("masked-LM training needs a tokenizer with a mask token (BERT's [MASK]); this " +
                      tokenizer.kind() + " tokenizer has none");
  MlmMasking m;
  m.mask_id = tokenizer.mask_id();
  m.vocab_size = tokenizer.vocab_size();
  for (int64_t id : {tokenizer.pad_id(), tokenizer.cls_id(), tokenizer.sep_id(), tokenizer.bos_id(),
                     tokenizer.eos_id(), tokenizer.mask_id(), tokenizer.unk_id()})
    if (id >= 0) m.special_ids.push_back(id);
  return m;
}

void apply_mlm_masking(Batch& batch, const MlmMasking& masking, uint64_t seed) {
  if (masking.mask_id < 0 || masking.vocab_size <= 0)
    throw ConfigError("masked LM: no mask token configured");
  const std::set<int64_t> special(masking.special_ids.begin(), masking.special_ids.end());
  std::vector<int64_t> ids = batch.input_ids.to_ints();
  const std::vector<int64_t> mask = batch.attention_mask.to_ints();
  std::vector<int64_t> targets(ids.size(), -100);
  Generator rng(seed);
  for (size_t i = 0; i < ids.size(); ++i) {
    // Every position draws the same number of values, so a row's choices do not depend on the others.
    const float choose = rng.uniform(), how = rng.uniform();
    const int64_t random_token = int64_t(rng.below(uint64_t(masking.vocab_size)));
    if (!mask[i] || special.count(ids[i]) || choose >= masking.probability) continue;
    targets[i] = ids[i];
    if (how < 0.8f)
      ids[i] = masking.mask_id;
    else if (how < 0.9f)
      ids[i] = random_token;
  }
  batch.input_ids = Tensor::from_ints(ids, batch.input_ids.shape());
  batch.lm_targets = Tensor::from_ints(targets, batch.input_ids.shape());
}

}  // namespace deltatune::data
