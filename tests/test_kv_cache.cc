// The KV cache writes each pass's keys/values in place into preallocated buffers: cached generation
// must give the ids and logits of a full forward over the whole sequence at every step, with and
// without deltas that prepend keys (prefix) or embeddings (prompt), for a batch of rows too.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/error.h"
#include "deltatune/generate.h"
#include "deltatune/model.h"
#include "golden.h"

using namespace deltatune;
using json = nlohmann::json;

namespace {

constexpr float kTolerance = 1e-4f;  // cached vs full: the same sums, in GEMMs of other shapes

std::vector<float> last_row(const Tensor& logits, int64_t batch_index) {
  const int64_t t = logits.size(1);
  return logits.select(0, batch_index).select(0, t - 1).contiguous().to_floats();
}

int64_t argmax(const std::vector<float>& v) {
  return int64_t(std::max_element(v.begin(), v.end()) - v.begin());
}

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
  return worst;
}

Tensor full_forward_logits(TransformerModel& model, const std::vector<int64_t>& ids) {
  ModelInput in;
  in.input_ids = Tensor::from_ints(ids, {1, int64_t(ids.size())});
  return model.forward(in).logits;
}

// Greedy steps two ways: with a cache that starts unreserved (so its buffers grow while generating)
// and with a full forward over the whole sequence each step. Also checks generate() gives those ids.
void expect_cache_matches_full_forward(TransformerModel& model, const std::string& what) {
  NoGradGuard no_grad;
  const std::vector<int64_t> prompt{35, 399, 501, 364};
  const int64_t steps = 6;
  std::vector<int64_t> ids = prompt;
  KVCache cache;
  std::vector<int64_t> step = prompt;
  for (int64_t s = 0; s < steps; ++s) {
    ModelInput in;
    in.input_ids = Tensor::from_ints(step, {1, int64_t(step.size())});
    in.cache = &cache;
    std::vector<float> cached = last_row(model.forward(in).logits, 0);
    std::vector<float> full = last_row(full_forward_logits(model, ids), 0);
    EXPECT_LT(max_diff(cached, full), kTolerance) << what << " step " << s;
    const int64_t next = argmax(full);
    ASSERT_EQ(argmax(cached), next) << what << " step " << s;
    ids.push_back(next);
    step = {next};
  }
  GenerationOptions options;
  options.max_new_tokens = steps;
  std::vector<int64_t> generated = generate(model, prompt, options);
  EXPECT_EQ(generated, std::vector<int64_t>(ids.begin() + int64_t(prompt.size()), ids.end())) << what;
}

}  // namespace

TEST(KvCache, CachedStepsGiveTheIdsAndLogitsOfFullForwards) {
  for (const char* name : {"gpt2-mini", "llama-mini"})
    expect_cache_matches_full_forward(*golden::load_model(name), name);
}

TEST(KvCache, CachedStepsMatchFullForwardsWithPrefixAndPromptDeltas) {
  for (const char* name : {"gpt2-mini", "llama-mini"})
    for (const json& config : {json{{"method", "prefix"}, {"num_virtual_tokens", 3}},
                               json{{"method", "prompt"}, {"num_virtual_tokens", 3}}}) {
      auto model = golden::load_model(name);
      auto d = delta::make_delta(config);
      d->attach(*model);
      {
        // Larger values than the default init, so the deltas visibly steer the logits.
        NoGradGuard no_grad;
        Generator gen(7);
        for (auto& [param_name, p] : d->parameters()) p.copy_(Tensor::randn(p.shape(), gen, 1.0f));
      }
      expect_cache_matches_full_forward(*model, std::string(name) + " " + config.dump());
    }
}

TEST(KvCache, BatchMatchesFullForwards) {
  // Two rows cached together. (A cached step's mask covers its new tokens only, so the cache is for
  // unpadded rows, as generate feeds it.)
  for (const char* name : {"gpt2-mini", "llama-mini"}) {
    auto model = golden::load_model(name);
    NoGradGuard no_grad;
    std::vector<std::vector<int64_t>> rows{{35, 399, 501, 364}, {742, 1373, 12, 99}};
    KVCache cache;
    std::vector<int64_t> step_ids{35, 399, 501, 364, 742, 1373, 12, 99};
    int64_t step_length = 4;
    for (int s = 0; s < 5; ++s) {
      const int64_t length = int64_t(rows[0].size());
      std::vector<int64_t> flat_ids = rows[0];
      flat_ids.insert(flat_ids.end(), rows[1].begin(), rows[1].end());
      ModelInput full;
      full.input_ids = Tensor::from_ints(flat_ids, {2, length});
      Tensor want = model->forward(full).logits;
      ModelInput cached;
      cached.input_ids = Tensor::from_ints(step_ids, {2, step_length});
      cached.cache = &cache;
      Tensor got = model->forward(cached).logits;
      step_ids.clear();
      for (int b = 0; b < 2; ++b) {
        std::vector<float> w = last_row(want, b), g = last_row(got, b);
        EXPECT_LT(max_diff(w, g), kTolerance) << name << " step " << s << " row " << b;
        ASSERT_EQ(argmax(g), argmax(w)) << name << " step " << s << " row " << b;
        rows[size_t(b)].push_back(argmax(w));
        step_ids.push_back(argmax(w));
      }
      step_length = 1;
    }
  }
}

TEST(KvCache, WritesInPlaceAndGrowsGeometrically) {
  auto model = golden::load_model("gpt2-mini");
  NoGradGuard no_grad;
  auto feed = [&](KVCache& cache, std::vector<int64_t> ids) {
    ModelInput in;
    in.input_ids = Tensor::from_ints(ids, {1, int64_t(ids.size())});
    in.cache = &cache;
    model->forward(in);
  };
  // Reserved: one buffer per layer for the whole run, never replaced.
  KVCache reserved;
  reserved.reserve = 16;
  feed(reserved, {35, 399, 501, 364});
  ASSERT_EQ(reserved.keys.size(), size_t(model->config.num_layers));
  const void* key_buffer = reserved.keys[0].storage().get();
  const void* value_buffer = reserved.values.back().storage().get();
  for (int64_t s = 0; s < 12; ++s) {
    feed(reserved, {742});
    EXPECT_EQ(reserved.keys[0].storage().get(), key_buffer) << "step " << s;
    EXPECT_EQ(reserved.values.back().storage().get(), value_buffer) << "step " << s;
    EXPECT_EQ(reserved.keys[0].size(2), 16);
  }
  EXPECT_EQ(reserved.length, 16);
  // Unreserved: sized to the first pass, then doubled when full.
  KVCache growing;
  feed(growing, {35, 399, 501});
  EXPECT_EQ(growing.keys[0].size(2), 3);
  std::vector<int64_t> capacities;
  for (int s = 0; s < 10; ++s) {
    feed(growing, {742});
    capacities.push_back(growing.keys[0].size(2));
  }
  EXPECT_EQ(capacities, (std::vector<int64_t>{6, 6, 6, 12, 12, 12, 12, 12, 12, 24}));
  EXPECT_EQ(growing.length, 13);
}

TEST(KvCache, ABatchThatDoesNotContinueTheCacheIsAnError) {
  auto model = golden::load_model("llama-mini");
  NoGradGuard no_grad;
  KVCache cache;
  ModelInput first;
  first.input_ids = Tensor::from_ints({35, 399}, {1, 2});
  first.cache = &cache;
  model->forward(first);
  ModelInput wider;
  wider.input_ids = Tensor::from_ints({742, 1373}, {2, 1});
  wider.cache = &cache;
  EXPECT_THROW(model->forward(wider), ShapeError);
}

namespace {
// The last position's logits of `prompt` prefilled alone into `cache` (what a one-row prefill gives).
std::vector<float> prefill_alone(TransformerModel& model, const std::vector<int64_t>& prompt,
                                 KVCache& cache) {
  ModelInput in;
  in.input_ids = Tensor::from_ints(prompt, {1, int64_t(prompt.size())});
  in.cache = &cache;
  return last_row(model.forward(in).logits, 0);
}

// `steps` greedy decode steps of every row in one row-cache batch (a server's decode step), each row
// continuing from its last produced id.
void decode_rows(TransformerModel& model, std::vector<KVCache>& caches,
                 std::vector<std::vector<int64_t>>& produced, int64_t steps) {
  for (int64_t s = 0; s < steps; ++s) {
    ModelInput step;
    std::vector<int64_t> last;
    for (size_t b = 0; b < caches.size(); ++b) {
      last.push_back(produced[b].back());
      step.row_caches.push_back(&caches[b]);
    }
    step.input_ids = Tensor::from_ints(last, {int64_t(last.size()), 1});
    const Tensor logits = model.forward(step).logits;
    for (size_t b = 0; b < caches.size(); ++b) produced[b].push_back(argmax(last_row(logits, int64_t(b))));
  }
}
}  // namespace

TEST(KvCache, RowCachesDecodeSequencesOfDifferentLengthsInOneBatch) {
  // A server's decode step: sequences at different positions, each with its own cache, in one batch.
  // Every row gives exactly the ids generate() gives it alone (greedy), step by step.
  for (const char* name : {"gpt2-mini", "llama-mini"}) {
    SCOPED_TRACE(name);
    auto model = golden::load_model(name);
    NoGradGuard no_grad;
    const std::vector<std::vector<int64_t>> prompts{
        {35, 399, 501, 364}, {742}, {12, 99, 1373, 5, 77, 300, 8}};
    const int64_t steps = 6;
    std::vector<KVCache> caches(prompts.size());
    std::vector<std::vector<int64_t>> produced(prompts.size());
    for (size_t b = 0; b < prompts.size(); ++b)
      produced[b].push_back(argmax(prefill_alone(*model, prompts[b], caches[b])));
    decode_rows(*model, caches, produced, steps - 1);
    GenerationOptions options;
    options.max_new_tokens = steps;
    for (size_t b = 0; b < prompts.size(); ++b) {
      EXPECT_EQ(produced[b], generate(*model, prompts[b], options)) << "row " << b;
      EXPECT_EQ(caches[b].length, int64_t(prompts[b].size()) + steps - 1);
    }
  }
}

TEST(KvCache, RowCachesPrefillPromptsOfDifferentLengthsInOneBatch) {
  // A server's batched prefill: prompts right-padded to the longest, each row with its own empty cache;
  // each cache then keeps its prompt's positions. Each row's last-position logits are those of its
  // prompt prefilled alone, and decoding on gives what generate() gives it alone.
  for (const char* name : {"gpt2-mini", "llama-mini"}) {
    SCOPED_TRACE(name);
    auto model = golden::load_model(name);
    NoGradGuard no_grad;
    const std::vector<std::vector<int64_t>> prompts{
        {35, 399, 501, 364}, {742}, {12, 99, 1373, 5, 77, 300, 8}};
    const int64_t longest = 7, steps = 5;
    std::vector<KVCache> caches(prompts.size());
    ModelInput batch;
    std::vector<int64_t> ids;
    for (size_t b = 0; b < prompts.size(); ++b) {
      ids.insert(ids.end(), prompts[b].begin(), prompts[b].end());
      ids.insert(ids.end(), size_t(longest) - prompts[b].size(), 3);  // padding: any id
      batch.row_caches.push_back(&caches[b]);
    }
    batch.input_ids = Tensor::from_ints(ids, {int64_t(prompts.size()), longest});
    const Tensor logits = model->forward(batch).logits;
    std::vector<std::vector<int64_t>> produced(prompts.size());
    for (size_t b = 0; b < prompts.size(); ++b) {
      const int64_t length = int64_t(prompts[b].size());
      caches[b].length = length;
      const std::vector<float> got =
          logits.select(0, int64_t(b)).select(0, length - 1).contiguous().to_floats();
      KVCache alone;
      const std::vector<float> want = prefill_alone(*model, prompts[b], alone);
      EXPECT_LT(max_diff(got, want), kTolerance) << "row " << b;
      produced[b].push_back(argmax(got));
    }
    decode_rows(*model, caches, produced, steps - 1);
    GenerationOptions options;
    options.max_new_tokens = steps;
    for (size_t b = 0; b < prompts.size(); ++b)
      EXPECT_EQ(produced[b], generate(*model, prompts[b], options)) << "row " << b;
  }
}

TEST(KvCache, RowCachesRefuseWhatTheyCannotServe) {
  auto model = golden::load_model("gpt2-mini");
  NoGradGuard no_grad;
  KVCache empty;
  ModelInput in;
  in.input_ids = Tensor::from_ints({35}, {1, 1});
  in.row_caches = {nullptr};
  EXPECT_THROW(model->forward(in), ConfigError);  // no cache
  {
    // A soft prompt joins a sequence's first pass: a row-cache prefill cannot run it.
    auto prompted = golden::load_model("gpt2-mini");
    auto d = delta::make_delta({{"method", "prompt"}, {"num_virtual_tokens", 3}});
    d->attach(*prompted);
    in.row_caches = {&empty};
    EXPECT_THROW(prompted->forward(in), ConfigError);
  }
  in.row_caches = {&empty};
  in.input_ids = Tensor::from_ints({35, 36}, {2, 1});
  EXPECT_THROW(model->forward(in), ShapeError);  // one cache for two rows
  auto bert = golden::load_model("bert-mini");
  in.input_ids = Tensor::from_ints({35}, {1, 1});
  EXPECT_THROW(bert->forward(in), ConfigError);
}
