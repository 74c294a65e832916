#include "models/common.h"

#include <algorithm>

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

namespace {
// Writes src [B, H, T, D] into buf [B, H, capacity, D] at positions [at, at + T): a strided copy
// (float32 goes row by row with memcpy on the backend).
void write_positions(Tensor& buf, const Tensor& src, int64_t at) {
  Tensor target = buf.slice(2, at, at + src.size(2));
  target.copy_(src);
}

// A buffer shaped like `like` with room for `capacity` positions, holding the first `keep` of `old`.
Tensor cache_buffer(const Tensor& old, const Tensor& like, int64_t keep, int64_t capacity) {
  Tensor buf = Tensor::empty({like.size(0), like.size(1), capacity, like.size(3)}, like.dtype());
  if (keep > 0) {
    Tensor kept = buf.slice(2, 0, keep);
    kept.copy_(old.slice(2, 0, keep));
  }
  return buf;
}

bool continues(const Tensor& buf, const Tensor& x) {
  return buf.defined() && buf.dtype() == x.dtype() && buf.size(0) == x.size(0) && buf.size(1) == x.size(1) &&
         buf.size(3) == x.size(3);
}
}  // namespace

void use_cache(KVCache* cache, int64_t layer, Tensor& k, Tensor& v) {
  if (!cache) return;
  if (int64_t(cache->keys.size()) <= layer) {
    cache->keys.resize(size_t(layer + 1));
    cache->values.resize(size_t(layer + 1));
  }
  Tensor& ck = cache->keys[size_t(layer)];
  Tensor& cv = cache->values[size_t(layer)];
  const int64_t past = cache->length, end = past + k.size(2);
  const bool fits = continues(ck, k) && continues(cv, v);
  if (past > 0 && !fits)
    throw ShapeError("KV cache: keys " + shape_str(k.shape()) + " do not continue the " +
                     std::to_string(past) + " cached positions of layer " + std::to_string(layer));
  if (!fits || end > ck.size(2)) {
    // Doubling keeps the copies on growth to O(1) per position over a whole generation.
    const int64_t capacity = std::max({end, cache->reserve, fits ? 2 * ck.size(2) : int64_t(0)});
    ck = cache_buffer(ck, k, past, capacity);
    cv = cache_buffer(cv, v, past, capacity);
  }
  write_positions(ck, k, past);
  write_positions(cv, v, past);
  if (grad_enabled() && (k.requires_grad() || v.requires_grad())) {
    // Recording: the new keys keep their graph, so join them to the (constant) cached ones.
    if (past > 0) {
      k = ops::concat({ck.slice(2, 0, past), k}, 2);
      v = ops::concat({cv.slice(2, 0, past), v}, 2);
    }
    return;
  }
  k = ck.slice(2, 0, end);
  v = cv.slice(2, 0, end);
}

void init_normal(Tensor& t, Generator& gen, float std) {
  NoGradGuard guard;
  Tensor r = Tensor::randn(t.shape(), gen, std);
  t.copy_(r);
}

}  // namespace deltatune::models
