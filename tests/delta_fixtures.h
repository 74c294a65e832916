#pragma once
// What the delta-method tests share: a tiny fixed batch with padding and targets, logits and loss on
// it, the largest difference of two tensors, a delta moved off its initial values (so that it changes
// the output) and a copy of a delta into another model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/model.h"
#include "deltatune/ops.h"
#include "deltatune/random.h"

namespace test_support {

// Two rows of 10 ids, the second padded after 7, and random targets [B, T].
struct Batch {
  deltatune::ModelInput input;
  deltatune::Tensor targets;
};
inline Batch make_batch(const deltatune::TransformerModel& model, uint64_t seed = 7) {
  using deltatune::Tensor;
  deltatune::Generator gen(seed);
  const int64_t B = 2, T = 10, V = std::min<int64_t>(model.config.vocab_size, 1000);
  std::vector<int64_t> ids, targets;
  std::vector<float> mask;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      ids.push_back(5 + int64_t(gen.below(uint64_t(V - 5))));
      targets.push_back(5 + int64_t(gen.below(uint64_t(V - 5))));
      mask.push_back(b == 1 && t >= 7 ? 0.0f : 1.0f);
    }
  Batch batch;
  batch.input.input_ids = Tensor::from_ints(ids, {B, T});
  batch.input.attention_mask = Tensor::from_floats(mask, {B, T});
  batch.targets = Tensor::from_ints(targets, {B, T});
  return batch;
}

inline deltatune::Tensor logits_of(deltatune::TransformerModel& model, const deltatune::ModelInput& input) {
  deltatune::NoGradGuard no_grad;
  return model.forward(input).logits.contiguous();
}

inline deltatune::Tensor logits_of(deltatune::TransformerModel& model, const Batch& batch) {
  return logits_of(model, batch.input);
}

// Cross-entropy of the last T positions (prompt tokens come first) against the batch's targets,
// padding ignored.
inline deltatune::Tensor loss_of(deltatune::TransformerModel& model, const Batch& batch) {
  using deltatune::Tensor;
  Tensor logits = model.forward(batch.input).logits;
  const int64_t B = batch.targets.size(0), T = batch.targets.size(1), V = logits.size(-1);
  logits = logits.slice(1, logits.size(1) - T, logits.size(1));
  std::vector<int64_t> t = batch.targets.to_ints();
  std::vector<float> m = batch.input.attention_mask.to_floats();
  for (size_t i = 0; i < t.size(); ++i)
    if (m[i] == 0) t[i] = -100;
  return deltatune::ops::cross_entropy(logits.reshape({B * T, V}), Tensor::from_ints(t, {B * T}));
}

// The largest absolute difference; a shape mismatch fails the test and counts as huge.
inline float max_diff(const deltatune::Tensor& a, const deltatune::Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  if (a.shape() != b.shape()) return 1e30f;
  auto x = a.to_floats(), y = b.to_floats();
  float m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::fabs(x[i] - y[i]));
  return m;
}

// `config` attached to `model` with every tensor moved a little (N(0, 0.05)), so it changes the output.
inline std::unique_ptr<deltatune::delta::Delta> moved_delta(deltatune::TransformerModel& model,
                                                            const nlohmann::json& config, uint64_t seed) {
  auto d = deltatune::delta::make_delta(config);
  d->attach(model);
  deltatune::Generator gen(seed);
  std::map<std::string, deltatune::Tensor> values;
  for (auto& [n, t] : d->parameters()) {
    deltatune::NoGradGuard no_grad;
    values[n] = deltatune::ops::add(t, deltatune::Tensor::randn(t.shape(), gen, 0.05f)).contiguous();
  }
  d->load_parameters(values);
  return d;
}

// The same delta's values in a fresh delta attached to `model`.
inline std::unique_ptr<deltatune::delta::Delta> copy_into(deltatune::TransformerModel& model,
                                                          deltatune::delta::Delta& d) {
  auto c = deltatune::delta::make_delta(d.config());
  c->attach(model);
  std::map<std::string, deltatune::Tensor> values;
  for (auto& [n, t] : d.parameters()) values[n] = t;
  c->load_parameters(values);
  return c;
}

}  // namespace test_support
