#include "models/common.h"

#include "deltatune/autograd.h"
#include "deltatune/error.h"

namespace deltatune::models {

Tensor float_mask(const Tensor& mask, int64_t batch, int64_t length) {
  if (!mask.defined()) return Tensor::ones({batch, length});
  if (mask.dim() != 2 || mask.size(0) != batch || mask.size(1) != length)
    throw ShapeError("attention_mask " + shape_str(mask.shape()) + " does not match input_ids [" +
                     std::to_string(batch) + ", " + std::to_string(length) + "]");
  return mask.float32().contiguous();
}

Tensor split_heads(const Tensor& x, int64_t heads, int64_t head_dim) {
  return x.reshape({x.size(0), x.size(1), heads, head_dim}).transpose(1, 2);
}

Tensor merge_heads(const Tensor& x) {
  return x.transpose(1, 2).contiguous().reshape({x.size(0), x.size(2), x.size(1) * x.size(3)});
}

Tensor positions(int64_t offset, int64_t length) {
  std::vector<int64_t> p(static_cast<size_t>(length));
  for (int64_t i = 0; i < length; ++i) p[size_t(i)] = offset + i;
  return Tensor::from_ints(p, {length});
}

Tensor last_token(const Tensor& hidden, const Tensor& mask) {
  const int64_t batch = hidden.size(0), length = hidden.size(1);
  std::vector<float> m = float_mask(mask, batch, length).to_floats();
  std::vector<Tensor> rows;
  for (int64_t b = 0; b < batch; ++b) {
    int64_t last = 0;
    for (int64_t t = 0; t < length; ++t)
      if (m[size_t(b * length + t)] > 0) last = t;
    rows.push_back(hidden.select(0, b).select(0, last).unsqueeze(0));
  }
  return ops::concat(rows, 0);
}

void use_cache(KVCache* cache, int64_t layer, Tensor& k, Tensor& v) {
  if (!cache) return;
  if (int64_t(cache->keys.size()) <= layer) {
    cache->keys.resize(size_t(layer + 1));
    cache->values.resize(size_t(layer + 1));
  }
  Tensor& ck = cache->keys[size_t(layer)];
  Tensor& cv = cache->values[size_t(layer)];
  if (ck.defined()) {
    k = ops::concat({ck, k}, 2);
    v = ops::concat({cv, v}, 2);
  }
  ck = k.detach();
  cv = v.detach();
}

void init_normal(Tensor& t, Generator& gen, float std) {
  NoGradGuard guard;
  Tensor r = Tensor::randn(t.shape(), gen, std);
  t.copy_(r);
}

}  // namespace deltatune::models
