#include "models/llama.h"

#include "deltatune/error.h"
#include "models/common.h"

namespace deltatune::models {
namespace {
using nn::Linear;
std::shared_ptr<nn::Module> container(const char* type) { return std::make_shared<nn::Module>(type); }
}  // namespace

LlamaModel::LlamaModel(const ModelConfig& c, HeadKind head) : TransformerModel("LlamaModel", c, head) {
  const int64_t h = c.hidden_size, hd = c.head_dim;
  const float eps = float(c.rms_norm_eps);
  auto base = register_module("model", container("LlamaModel"));
  embed_ = base->register_module("embed_tokens", std::make_shared<nn::Embedding>(c.vocab_size, h));
  auto layers = base->register_module("layers", container("ModuleList"));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    auto layer = layers->register_module(std::to_string(i), container("LlamaDecoderLayer"));
    auto attn = layer->register_module("self_attn", container("LlamaAttention"));
    Block b;
    b.q =
        attn->register_module("q_proj", std::make_shared<Linear>(h, c.num_heads * hd, c.attention_qkv_bias));
    b.k = attn->register_module("k_proj",
                                std::make_shared<Linear>(h, c.num_kv_heads * hd, c.attention_qkv_bias));
    b.v = attn->register_module("v_proj",
                                std::make_shared<Linear>(h, c.num_kv_heads * hd, c.attention_qkv_bias));
    b.o =
        attn->register_module("o_proj", std::make_shared<Linear>(c.num_heads * hd, h, c.attention_out_bias));
    auto mlp = layer->register_module("mlp", container("LlamaMLP"));
    b.gate = mlp->register_module("gate_proj", std::make_shared<Linear>(h, c.intermediate_size, c.mlp_bias));
    b.up = mlp->register_module("up_proj", std::make_shared<Linear>(h, c.intermediate_size, c.mlp_bias));
    b.down = mlp->register_module("down_proj", std::make_shared<Linear>(c.intermediate_size, h, c.mlp_bias));
    b.input_norm = layer->register_module("input_layernorm", std::make_shared<nn::RMSNorm>(h, eps));
    b.post_norm = layer->register_module("post_attention_layernorm", std::make_shared<nn::RMSNorm>(h, eps));
    blocks_.push_back(b);
  }
  norm_ = base->register_module("norm", std::make_shared<nn::RMSNorm>(h, eps));
  act_ = nn::activation(c.hidden_act);
  inv_freq_ = ops::rope_inv_freq(hd, float(c.rope_theta));
  if (head == HeadKind::CausalLM && !c.tie_word_embeddings)
    lm_head_ = register_module("lm_head", std::make_shared<Linear>(h, c.vocab_size, false));
  else if (head == HeadKind::SequenceClassification)
    score_ = register_module("score", std::make_shared<Linear>(h, c.num_labels, false));
  else if (head == HeadKind::MaskedLM)
    throw ConfigError(
        "Llama-family models have no masked-LM head (use causal-lm or sequence-classification)");
}

ModelOutput LlamaModel::run_forward(const ModelInput& in) {
  const Tensor& ids = in.input_ids;
  if (ids.dim() != 2)
    throw ShapeError("LlamaModel: input_ids must be [batch, length], got " + shape_str(ids.shape()));
  const int64_t batch = ids.size(0), length = ids.size(1);
  Tensor mask = float_mask(in.attention_mask, batch, length);
  Tensor x = embed_->forward(ids);
  // A soft prompt joins once: on a cached step it is already in the cache.
  const bool per_row = !in.row_caches.empty();  // row b continues its own cached sequence
  if (!per_row && (!in.cache || in.cache->length == 0)) extend_embeddings(x, mask);
  const int64_t total = x.size(1);
  const int64_t past = (in.cache ? in.cache->length : 0) + prefix_length();
  Tensor pos = per_row ? row_positions(in, total) : positions(past, total);
  Tensor key_mask_base = mask;
  if (in.cache && in.cache->length && mask.size(1) == total)
    key_mask_base = ops::concat({Tensor::ones({batch, in.cache->length}), mask}, 1);
  const int64_t heads = config.num_heads, kv_heads = config.num_kv_heads, hd = config.head_dim;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    // Everything by value: a checkpointed block runs again in the backward (run_block), when `in` may
    // be gone. `in` itself is read only on the row-cache path, which is never checkpointed.
    KVCache* const cache = in.cache;
    auto block = [=, this, &in](const Tensor& x) {
      const Block& b = blocks_[i];
      Tensor a_in = b.input_norm->forward(x);
      Tensor q = ops::rope(split_heads(b.q->forward(a_in), heads, hd), pos, inv_freq_);
      Tensor k = ops::rope(split_heads(b.k->forward(a_in), kv_heads, hd), pos, inv_freq_);
      Tensor v = split_heads(b.v->forward(a_in), kv_heads, hd);
      Tensor ctx;
      if (per_row) {
        ctx = merge_heads(attend_rows(in, int64_t(i), a_in, q, k, v));
      } else {
        use_cache(cache, int64_t(i), k, v);
        Tensor key_mask = key_mask_base;
        extend_attention(int64_t(i), a_in, k, v, key_mask);
        ctx = merge_heads(ops::scaled_dot_product_attention(q, k, v, key_mask, true));
      }
      Tensor h = ops::add(x, b.o->forward(ctx));
      Tensor m_in = b.post_norm->forward(h);
      return ops::add(h, b.down->forward(ops::mul(act_(b.gate->forward(m_in)), b.up->forward(m_in))));
    };
    x = run_block(in, block, x);
  }
  if (in.cache) in.cache->length += total;
  for (KVCache* c : in.row_caches) c->length += total;
  x = norm_->forward(x);
  ModelOutput out;
  out.last_hidden_state = x;
  out.attention_mask = mask;
  if (head == HeadKind::CausalLM) {
    if (in.compute_logits) out.logits = lm_head_ ? lm_head_->forward(x) : ops::linear(x, embed_->weight());
  } else if (head == HeadKind::SequenceClassification)
    out.logits = score_->forward(last_token(x, mask));
  return out;
}

std::map<std::string, std::vector<std::string>> LlamaModel::roles() const {
  return {{"attn.q", {"self_attn.q_proj"}},  {"attn.k", {"self_attn.k_proj"}},
          {"attn.v", {"self_attn.v_proj"}},  {"attn.o", {"self_attn.o_proj"}},
          {"ffn.up", {"mlp.up_proj"}},       {"ffn.gate", {"mlp.gate_proj"}},
          {"ffn.down", {"mlp.down_proj"}},   {"ln", {"input_layernorm", "post_attention_layernorm"}},
          {"embed", {"model.embed_tokens"}}, {"head", head_parameters()}};
}

std::vector<std::string> LlamaModel::head_parameters() const {
  if (head == HeadKind::SequenceClassification) return {"score.weight"};
  return {};
}

}  // namespace deltatune::models
