#include "models/gpt2.h"

#include <algorithm>
#include <cmath>

#include "deltatune/error.h"
#include "models/common.h"

namespace deltatune::models {
namespace {
using nn::Linear;
std::shared_ptr<nn::Module> container(const char* type) { return std::make_shared<nn::Module>(type); }
}  // namespace

Gpt2Model::Gpt2Model(const ModelConfig& c, HeadKind head) : TransformerModel("GPT2Model", c, head) {
  const int64_t h = c.hidden_size;
  const float eps = float(c.layer_norm_eps);
  auto base = register_module("transformer", container("GPT2Model"));
  wte_ = base->register_module("wte", std::make_shared<nn::Embedding>(c.vocab_size, h));
  wpe_ = base->register_module("wpe", std::make_shared<nn::Embedding>(c.max_position_embeddings, h));
  auto layers = base->register_module("h", container("ModuleList"));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    auto layer = layers->register_module(std::to_string(i), container("GPT2Block"));
    Block b;
    b.ln1 = layer->register_module("ln_1", std::make_shared<nn::LayerNorm>(h, eps));
    auto attn = layer->register_module("attn", container("GPT2Attention"));
    b.c_attn = attn->register_module("c_attn", std::make_shared<Linear>(h, 3 * h, true, true));
    b.attn_proj = attn->register_module("c_proj", std::make_shared<Linear>(h, h, true, true));
    b.ln2 = layer->register_module("ln_2", std::make_shared<nn::LayerNorm>(h, eps));
    auto mlp = layer->register_module("mlp", container("GPT2MLP"));
    b.c_fc = mlp->register_module("c_fc", std::make_shared<Linear>(h, c.intermediate_size, true, true));
    b.mlp_proj = mlp->register_module("c_proj", std::make_shared<Linear>(c.intermediate_size, h, true, true));
    blocks_.push_back(b);
  }
  ln_f_ = base->register_module("ln_f", std::make_shared<nn::LayerNorm>(h, eps));
  act_ = nn::activation(c.hidden_act);
  if (head == HeadKind::SequenceClassification)
    score_ = register_module("score", std::make_shared<Linear>(h, c.num_labels, false));
  else if (head == HeadKind::MaskedLM)
    throw ConfigError("GPT-2 has no masked-LM head (use causal-lm or sequence-classification)");
}

ModelOutput Gpt2Model::run_forward(const ModelInput& in) {
  const Tensor& ids = in.input_ids;
  if (ids.dim() != 2)
    throw ShapeError("GPT2Model: input_ids must be [batch, length], got " + shape_str(ids.shape()));
  const int64_t batch = ids.size(0), length = ids.size(1);
  Tensor mask = float_mask(in.attention_mask, batch, length);
  Tensor x = wte_->forward(ids);
  // A soft prompt joins once: on a cached step it is already in the cache.
  const bool per_row = !in.row_caches.empty();  // row b continues its own cached sequence
  if (!per_row && (!in.cache || in.cache->length == 0)) extend_embeddings(x, mask);
  const int64_t total = x.size(1);
  // Positions continue after cached and prefix keys, as transformers' cache_position does.
  int64_t past = (in.cache ? in.cache->length : 0) + prefix_length();
  for (const KVCache* c : in.row_caches) past = std::max(past, c->length + prefix_length());
  if (past + total > config.max_position_embeddings)
    throw ShapeError("GPT2Model: positions up to " + std::to_string(past + total) + " exceed n_positions " +
                     std::to_string(config.max_position_embeddings));
  x = ops::add(x, wpe_->forward(per_row ? row_positions(in, total) : positions(past, total)));
  x = ops::dropout(x, dropout_p(config.embedding_dropout), training(), dropout_rng());
  const int64_t heads = config.num_heads, hd = config.head_dim, h = config.hidden_size;
  // With a cache the mask covers the earlier positions too: callers pass the full [B, past + T] mask.
  Tensor key_mask_base = mask;
  if (in.cache && in.cache->length && mask.size(1) == total)
    key_mask_base = ops::concat({Tensor::ones({batch, in.cache->length}), mask}, 1);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    // Everything by value: a checkpointed block runs again in the backward (run_block), when `in` may
    // be gone. `in` itself is read only on the row-cache path, which is never checkpointed.
    KVCache* const cache = in.cache;
    auto block = [=, this, &in](const Tensor& x) {
      const Block& b = blocks_[i];
      Tensor a_in = b.ln1->forward(x);
      Tensor qkv = b.c_attn->forward(a_in);
      Tensor q = split_heads(qkv.slice(-1, 0, h), heads, hd);
      Tensor k = split_heads(qkv.slice(-1, h, 2 * h), heads, hd);
      Tensor v = split_heads(qkv.slice(-1, 2 * h, 3 * h), heads, hd);
      float scale = config.scale_attn_weights ? 1.0f / std::sqrt(float(hd)) : 1.0f;
      if (config.scale_attn_by_inverse_layer_idx) scale /= float(i + 1);
      Tensor ctx;
      if (per_row) {
        ctx = merge_heads(attend_rows(in, int64_t(i), a_in, q, k, v, scale));
      } else {
        use_cache(cache, int64_t(i), k, v);
        Tensor key_mask = key_mask_base;
        extend_attention(int64_t(i), a_in, k, v, key_mask);
        ctx = merge_heads(ops::scaled_dot_product_attention(q, k, v, key_mask, true, scale));
      }
      Tensor a = ops::dropout(b.attn_proj->forward(ctx), dropout_p(config.hidden_dropout), training(),
                              dropout_rng());
      Tensor r = ops::add(x, a);
      Tensor f = b.mlp_proj->forward(act_(b.c_fc->forward(b.ln2->forward(r))));
      return ops::add(r, ops::dropout(f, dropout_p(config.hidden_dropout), training(), dropout_rng()));
    };
    x = run_block(in, block, x);
  }
  if (in.cache) in.cache->length += total;
  for (KVCache* c : in.row_caches) c->length += total;
  x = ln_f_->forward(x);
  ModelOutput out;
  out.last_hidden_state = x;
  out.attention_mask = mask;
  if (head == HeadKind::CausalLM) {
    if (in.compute_logits) out.logits = ops::linear(x, wte_->weight());
  } else if (head == HeadKind::SequenceClassification)
    out.logits = score_->forward(last_token(x, mask));
  return out;
}

std::map<std::string, std::vector<std::string>> Gpt2Model::roles() const {
  // GPT-2 fuses q, k and v into c_attn: all three roles name it.
  return {{"attn.q", {"attn.c_attn"}},
          {"attn.k", {"attn.c_attn"}},
          {"attn.v", {"attn.c_attn"}},
          {"attn.o", {"attn.c_proj"}},
          {"ffn.up", {"mlp.c_fc"}},
          {"ffn.down", {"mlp.c_proj"}},
          {"ffn.gate", {}},
          {"ln", {"ln_1", "ln_2"}},
          {"embed", {"transformer.wte"}},
          {"head", head_parameters()}};
}

std::vector<std::string> Gpt2Model::head_parameters() const {
  if (head == HeadKind::SequenceClassification) return {"score.weight"};
  return {};
}

}  // namespace deltatune::models
