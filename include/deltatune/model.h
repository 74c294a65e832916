#pragma once
// Pretrained transformers as module trees with Hugging Face names: BERT/RoBERTa encoders, GPT-2, and
// the Llama family (Llama, Mistral, Qwen2). Besides the per-linear hooks (nn.h), a model exposes the
// hook points that act across a layer: attention keys/values (prefix tuning) and the input
// embeddings (prompt tuning).
#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/checkpoint.h"
#include "deltatune/forward_context.h"
#include "deltatune/hf_config.h"
#include "deltatune/nn.h"
#include "deltatune/random.h"

namespace deltatune {

enum class HeadKind { None, CausalLM, MaskedLM, SequenceClassification };
const char* head_name(HeadKind h);

// Keys and values of earlier positions, per layer, for generation. Each layer holds a preallocated
// buffer [B, Hkv, capacity, D] whose first `length` positions are filled: a forward pass writes its
// new keys/values in place after them and attends to the filled prefix as a view, so a generated
// token costs no copy of the whole cache. A full buffer grows geometrically (doubling).
struct KVCache {
  std::vector<Tensor> keys, values;  // the buffers, one per layer (capacity = size(2))
  int64_t length = 0;                // positions filled (advanced once per forward pass)
  int64_t reserve = 0;               // positions the first allocation makes room for (0: just the first pass)
};

struct ModelInput {
  Tensor input_ids;          // integer [B, T]
  Tensor attention_mask;     // optional [B, T]: 1 = token, 0 = padding (right padding)
  Tensor token_type_ids;     // optional, BERT-style segment ids
  KVCache* cache = nullptr;  // decoders: extended in place when given
  // false: an LM head leaves `logits` undefined, for a caller that computes a fused, chunked loss
  // from last_hidden_state (ops::linear_cross_entropy) instead of holding [B, T, V] logits.
  bool compute_logits = true;
  // The call's own state (dropout generator, hooks' per-call values): forward_context.h. nullptr: the
  // forward makes a fresh one.
  ForwardContext* context = nullptr;
  // A batch of independent sequences (a server's requests): row b continues the sequence whose keys
  // and values are in row_caches[b], at that sequence's own position. Each row attends over its own
  // cache; every other product runs once for the whole batch. Decoders only; `cache` and
  // `attention_mask` stay unset. An empty cache is a prompt's prefill: prompts of different lengths go
  // right-padded to the longest (causal attention keeps each real position from seeing the padding),
  // and the caller then sets each cache's length to its prompt's. A soft prompt (prompt tuning) cannot
  // join such a batch.
  std::vector<KVCache*> row_caches;
};

struct ModelOutput {
  Tensor last_hidden_state;  // [B, T, H] (after the final norm for decoders)
  Tensor logits;             // [B, T, V] for LM heads, [B, num_labels] for classification
  Tensor attention_mask;     // the mask over hidden states, after any prompt tokens were prepended
};

// Prefix tuning: prepends keys/values (and their mask) in one layer's attention.
struct AttentionHook {
  virtual ~AttentionHook() = default;
  // k, v: [B, Hkv, S, D]; key_mask: [B, S] float (1 = attend). `hidden` is the layer's input.
  virtual void extend(int64_t layer, const Tensor& hidden, Tensor& k, Tensor& v, Tensor& key_mask) = 0;
  virtual int64_t length() const = 0;  // keys prepended per layer
  std::string owner;
  bool enabled = true;
};

// Prompt tuning: transforms the input embeddings [B, T, H] and the mask [B, T] (float).
struct EmbeddingHook {
  virtual ~EmbeddingHook() = default;
  virtual void extend(Tensor& embeddings, Tensor& mask) = 0;
  virtual int64_t length() const { return 0; }  // positions prepended (virtual tokens)
  std::string owner;
  bool enabled = true;
};

class TransformerModel : public nn::Module {
 public:
  TransformerModel(std::string type_name, ModelConfig config, HeadKind head)
      : nn::Module(std::move(type_name)), config(std::move(config)), head(head) {}
  // Safe to call from several threads at once on different inputs: everything a call changes lives
  // in its ForwardContext (input.context, or a fresh one) or in its own KV cache.
  ModelOutput forward(const ModelInput& input);

  // Where the blocks live ("bert.encoder.layer", "transformer.h", "model.layers").
  virtual std::string layers_path() const = 0;
  // Module names inside a block for the common roles (attn.q, attn.k, attn.v, attn.o, ffn.up,
  // ffn.gate, ffn.down, ln), and outside the blocks (embed, head). One config fits every model.
  virtual std::map<std::string, std::vector<std::string>> roles() const = 0;
  // Parameter names of the task head (trained and saved with a delta, like PEFT's modules_to_save).
  virtual std::vector<std::string> head_parameters() const = 0;
  // The token embedding matrix [V, H].
  virtual Tensor& input_embeddings() = 0;
  // Tokens one input may have: the position embeddings less the positions the enabled deltas'
  // virtual tokens take (a prompt's everywhere; a prefix's in GPT-2, whose positions continue after
  // the prefix keys). nullopt for rotary positions, which have no table to run out of.
  std::optional<int64_t> max_input_length() const;

  ModelConfig config;
  HeadKind head;
  std::vector<std::shared_ptr<AttentionHook>> attention_hooks;
  std::vector<std::shared_ptr<EmbeddingHook>> embedding_hooks;
  // Activation checkpointing per block in training (transformers' gradient_checkpointing_enable(),
  // deltatune/checkpoint.h): each block keeps only its input through the forward and runs again in
  // the backward. Peak memory falls to about one block's activations for about a third more compute;
  // gradients are the same. Not with attention hooks (prefix tuning: its keys are built once per call).
  bool gradient_checkpointing = false;
  // Throws a ConfigError naming the delta when gradient checkpointing cannot apply to the model as
  // attached (an enabled attention hook): a run asks before its first step, not at it.
  void check_gradient_checkpointing() const;

 protected:
  // The architecture's forward pass, run with the call's context current on this thread.
  virtual ModelOutput run_forward(const ModelInput& input) = 0;
  // The dropout generator of the call in progress.
  static Generator& dropout_rng() { return ForwardContext::current().dropout_rng; }
  // Applies the enabled attention hooks of `layer`.
  void extend_attention(int64_t layer, const Tensor& hidden, Tensor& k, Tensor& v, Tensor& key_mask);
  // Applies the enabled embedding hooks; returns the positions prepended.
  int64_t extend_embeddings(Tensor& embeddings, Tensor& mask);
  int64_t prefix_length() const;
  // A row-cache batch (ModelInput::row_caches): the positions its rows continue at [B, T] (prefix
  // keys counted), and row b's attention over its own cache (written in place) and prefix keys.
  Tensor row_positions(const ModelInput& input, int64_t length) const;
  Tensor attend_rows(const ModelInput& input, int64_t layer, const Tensor& hidden, const Tensor& q,
                     const Tensor& k, const Tensor& v, float scale = -1.0f);
  float dropout_p(double p) const { return training() ? float(p) : 0.0f; }
  // One block applied to the hidden states x: checkpointed when gradient_checkpointing is on and the
  // call trains (grad mode, training mode, no KV cache), else run as is. `block` may be run again in
  // the backward, after run_forward returned: it must hold what it uses by value (the call's
  // ForwardContext, as it was when the block began, is restored for it).
  Tensor run_block(const ModelInput& input, const BlockFn& block, const Tensor& x);

 private:
  std::atomic<uint64_t> calls_without_context_{0};  // seeds each such call's fresh context
};

// Builds a model from its config, parameters initialised as transformers does (normal(0, 0.02),
// zero biases, unit norms), seeded. With `quantize` (or else `bf16`), the body's linear weights are
// stored quantised (or in bfloat16) one by one as they are initialised: the same values as converting
// afterwards, without the float32 model in memory at once; the head stays float32.
std::unique_ptr<TransformerModel> build_model(const ModelConfig& config, HeadKind head, uint64_t seed = 0,
                                              std::optional<QuantFormat> quantize = std::nullopt,
                                              bool bf16 = false);

struct LoadOptions {
  std::optional<HeadKind> head;  // default: from config.architectures
  std::optional<int64_t> num_labels;
  bool keep_half_precision = false;  // keep float16/bfloat16 weights as stored (computed in float32)
  // Store the body's linear weights quantised as each is read (nn::quantize_weight), never holding
  // the float32 model in full: for a base whose linear weights stay frozen (QLoRA). The head, tied
  // weights and everything that is not a linear weight load as usual (use_quantized can quantise a
  // frozen head afterwards).
  std::optional<QuantFormat> quantize;
  // Store the same weights in bfloat16 as each is read (unless quantize): a frozen base under --bf16
  // (use_bf16 stores the rest), so the float32 model is never held in full. A delta initialised from
  // the base (DoRA's magnitude) then sees the bfloat16 weights the forward uses, as in PEFT on a
  // model loaded in bfloat16.
  bool bf16 = false;
  uint64_t seed = 0;    // for heads the checkpoint lacks
  bool verbose = true;  // print transformers-style missing/unexpected key reports
};

struct LoadReport {
  std::vector<std::string> missing;      // expected by the model, absent from the checkpoint
  std::vector<std::string> unexpected;   // in the checkpoint, unused
  std::vector<std::string> initialized;  // task-head parameters newly initialised
};

// Loads a Hugging Face checkpoint folder (config.json + safetensors). Missing task-head weights are
// initialised with a warning; other missing weights are an error.
std::unique_ptr<TransformerModel> load_pretrained(const std::filesystem::path& dir,
                                                  const LoadOptions& options = {},
                                                  LoadReport* report = nullptr);
HeadKind head_from_architectures(const ModelConfig& config);

}  // namespace deltatune
