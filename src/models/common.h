#pragma once
// Pieces the architectures share: masks, head splitting, position ids, classification pooling.
#include "deltatune/model.h"
#include "deltatune/ops.h"

namespace deltatune::models {

// The attention mask as float [B, T] (all ones when absent).
Tensor float_mask(const Tensor& mask, int64_t batch, int64_t length);
// [B, T, H*D] -> [B, H, T, D] (a view).
Tensor split_heads(const Tensor& x, int64_t heads, int64_t head_dim);
// [B, H, T, D] -> [B, T, H*D].
Tensor merge_heads(const Tensor& x);
// Position ids [T] = offset .. offset+T-1.
Tensor positions(int64_t offset, int64_t length);
// Decoder classification: the hidden state of each example's last non-pad token: [B, T, H] -> [B, H].
Tensor last_token(const Tensor& hidden, const Tensor& mask);
// With a cache: writes k and v ([B, Hkv, T, D]) into layer `layer`'s buffer after its `length` filled
// positions (growing it when full) and replaces them with views of the filled prefix [B, Hkv, length + T, D].
void use_cache(KVCache* cache, int64_t layer, Tensor& k, Tensor& v);
// Normal(0, std) initialisation of a parameter in place.
void init_normal(Tensor& t, Generator& gen, float std);

}  // namespace deltatune::models
