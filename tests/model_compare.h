#pragma once
// Compares a forward pass with a golden case: logits_head, logsumexp, argmax, last_hidden_state.
#include <gtest/gtest.h>

#include <cmath>

#include "deltatune/model.h"
#include "deltatune/ops.h"
#include "golden.h"

namespace golden {

struct Comparison {
  float max_logits = 0, max_lse = 0, max_hidden = 0;
  int64_t argmax_mismatch = 0;
  int64_t positions = 0;  // compared (real-token) positions: a comparison of nothing must fail
};

// logits [B, T, V] (or [B, C]); compares only where the golden mask marks real tokens.
inline Comparison compare(const deltatune::ModelOutput& out, const deltatune::TensorFile& expected,
                          bool classification = false) {
  using deltatune::Tensor;
  Comparison c;
  const Tensor& head = expected.tensors.at("logits_head");
  std::vector<float> want = head.to_floats();
  Tensor logits = out.logits.contiguous();
  std::vector<float> got = logits.to_floats();
  if (classification) {
    EXPECT_EQ(head.shape(), logits.shape());
    c.positions = int64_t(want.size());
    for (size_t i = 0; i < want.size(); ++i)
      c.max_logits = std::max(c.max_logits, std::fabs(want[i] - got[i]));
    return c;
  }
  const int64_t B = logits.size(0), T = logits.size(1), V = logits.size(2), Hn = head.size(2);
  std::vector<float> mask = expected.tensors.at("attention_mask").to_floats();
  std::vector<float> lse = expected.tensors.at("logsumexp").to_floats();
  std::vector<float> am = expected.tensors.at("argmax").to_floats();
  std::vector<float> hid = expected.tensors.at("last_hidden_state").to_floats();
  std::vector<float> our_hidden = out.last_hidden_state.contiguous().to_floats();
  const int64_t H = out.last_hidden_state.size(-1);
  const int64_t Tm = expected.tensors.at("attention_mask").size(1);
  const int64_t shift = T - Tm;  // prompt tokens prepended by a delta
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      if (t >= shift && mask[size_t(b * Tm + t - shift)] == 0) continue;
      ++c.positions;
      const float* row = got.data() + (b * T + t) * V;
      for (int64_t v = 0; v < Hn; ++v)
        c.max_logits = std::max(c.max_logits, std::fabs(row[v] - want[size_t((b * T + t) * Hn + v)]));
      double m = row[0];
      int64_t best = 0;
      for (int64_t v = 1; v < V; ++v)
        if (row[v] > m) m = row[v], best = v;
      double s = 0;
      for (int64_t v = 0; v < V; ++v) s += std::exp(double(row[v]) - m);
      c.max_lse = std::max(c.max_lse, float(std::fabs(m + std::log(s) - lse[size_t(b * T + t)])));
      if (float(best) != am[size_t(b * T + t)]) ++c.argmax_mismatch;
      for (int64_t h = 0; h < H; ++h)
        c.max_hidden = std::max(c.max_hidden, std::fabs(our_hidden[size_t((b * T + t) * H + h)] -
                                                        hid[size_t((b * T + t) * H + h)]));
    }
  return c;
}

inline deltatune::ModelInput input_of(const deltatune::TensorFile& expected) {
  deltatune::ModelInput in;
  in.input_ids = expected.tensors.at("input_ids").to(deltatune::DType::I64);
  in.attention_mask = expected.tensors.at("attention_mask");
  return in;
}

// max |got - want| / max |want|: how far a lossy model (quantised, converted) is from its reference.
inline double relative_max_error(const deltatune::Tensor& got_tensor, const deltatune::Tensor& want_tensor) {
  const std::vector<float> got = got_tensor.to_floats(), want = want_tensor.to_floats();
  EXPECT_EQ(got.size(), want.size());
  double worst = 0, scale = 0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    worst = std::max(worst, double(std::fabs(got[i] - want[i])));
    scale = std::max(scale, double(std::fabs(want[i])));
  }
  return worst / scale;
}

}  // namespace golden
