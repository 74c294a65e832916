// Prefix tuning (Li & Liang), PEFT's PREFIX_TUNING layout exactly: one matrix
// prompt_embeddings [P, num_layers * 2 * Hkv * D] whose row p holds, for every layer l, the key
// (column block 2l) and the value (block 2l + 1) of virtual token p, split into Hkv heads of D.
// (PEFT views it as [B, P, L*2, Hkv, D], permutes to [L*2, B, Hkv, P, D] and splits in pairs.)
// In each layer the prefix keys/values are prepended to the real ones, with ones in the key mask; the
// model offsets the real tokens' positions by P (transformers' cache_position with a filled cache),
// and Llama's prefix keys are used as stored, without rotation.
//
// While training, the prefix may be reparameterised (PEFT's prefix_projection, its PrefixEncoder):
// Embedding [P, token_dim] -> Linear(token_dim, encoder_hidden_size) -> tanh -> Linear(...,
// num_layers * 2 * token_dim). It is saved collapsed to the plain prompt_embeddings, as PEFT saves it.
#include <algorithm>
#include <cmath>

#include "delta/methods.h"
#include "delta/peft_config.h"
#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/delta_method.h"
#include "deltatune/error.h"

namespace deltatune::delta {
namespace {

struct PrefixParams {
  Tensor embeddings;      // [P, L*2*T] plain, or [P, T] with the projection
  Tensor w1, b1, w2, b2;  // projection only
  bool projection() const { return w1.defined(); }
  // The prefix matrix [P, L*2*T].
  Tensor prefix() const {
    if (!projection()) return embeddings;
    return ops::linear(ops::tanh(ops::linear(embeddings, w1, b1)), w2, b2);
  }
};

struct PrefixHook : AttentionHook {
  PrefixParams params;  // handles shared with the delta: the hook stays valid on its own
  int64_t tokens = 0, layers = 0, kv_heads = 0, head_dim = 0;

  void extend(int64_t layer, const Tensor& hidden, Tensor& k, Tensor& v, Tensor& key_mask) override {
    if (layer < 0 || layer >= layers)
      throw ShapeError("prefix: layer " + std::to_string(layer) + " is outside the " +
                       std::to_string(layers) + " layers the prefix was built for");
    if (k.size(1) != kv_heads || k.size(3) != head_dim)
      throw ShapeError("prefix: keys " + shape_str(k.shape()) + " do not fit a prefix of " +
                       std::to_string(kv_heads) + " heads of " + std::to_string(head_dim));
    // Layer 0 starts a forward pass: (re)build the per-layer view [L*2, Hkv, P, D] once, so the
    // projection runs once per call; the view belongs to the call (its ForwardContext).
    ForwardContext& call = ForwardContext::current();
    Tensor& per_layer = call.slot<Tensor>(this);
    if (layer == 0 || !per_layer.defined())
      per_layer =
          ops::permute(ops::reshape(params.prefix(), {tokens, layers * 2, kv_heads, head_dim}), {1, 2, 0, 3});
    const int64_t batch = k.size(0);
    const Shape shape{batch, kv_heads, tokens, head_dim};
    Tensor pk = ops::expand(per_layer.select(0, 2 * layer).unsqueeze(0), shape);
    Tensor pv = ops::expand(per_layer.select(0, 2 * layer + 1).unsqueeze(0), shape);
    k = ops::concat({pk, k}, 2);
    v = ops::concat({pv, v}, 2);
    key_mask = ops::concat({Tensor::ones({batch, tokens}), key_mask.float32()}, 1);
    if (layer == layers - 1) call.erase(this);  // do not keep the graph past the pass
  }
  int64_t length() const override { return tokens; }
};

class Prefix : public Delta {
 public:
  explicit Prefix(const nlohmann::json& c) : config_(c) {
    tokens_ = c.value("num_virtual_tokens", int64_t(10));
    projection_ = c.value("projection", false);
    if (tokens_ < 1)
      throw ConfigError("prefix: num_virtual_tokens must be at least 1, got " + std::to_string(tokens_));
    if (c.contains("encoder_hidden_size") && c["encoder_hidden_size"].is_number_integer())
      encoder_hidden_ = c["encoder_hidden_size"].get<int64_t>();
    if (projection_ && encoder_hidden_ == 0 && c.contains("encoder_hidden_size") &&
        !c["encoder_hidden_size"].is_null())
      throw ConfigError("prefix: encoder_hidden_size must be an integer");
    seed = c.value("seed", uint64_t(0));
  }

  std::string method() const override { return "prefix"; }

  void attach(TransformerModel& model) override {
    if (model_) throw Error("prefix delta '" + name + "' is already attached");
    const ModelConfig& mc = model.config;
    layers_ = mc.num_layers;
    kv_heads_ = mc.num_kv_heads;
    head_dim_ = mc.head_dim;
    const int64_t token_dim = kv_heads_ * head_dim_;
    // A config written for another model (PEFT's fields) must fit this one.
    auto check = [&](const char* key, int64_t have) {
      if (config_.contains(key) && config_[key].is_number_integer() && config_[key].get<int64_t>() != have)
        throw ConfigError(std::string("prefix: ") + key + " is " +
                          std::to_string(config_[key].get<int64_t>()) + " but this " + mc.model_type +
                          " model needs " + std::to_string(have) +
                          " (num_layers x 2 x key/value heads x head_dim)");
    };
    check("num_layers", layers_);
    check("token_dim", token_dim);
    check("num_attention_heads", kv_heads_);
    if (encoder_hidden_ == 0) encoder_hidden_ = token_dim;
    const int64_t width = layers_ * 2 * token_dim;
    if (params_.embeddings.defined()) {  // re-attached: the kept prefix must fit
      const int64_t have = params_.projection() ? params_.b2.size(0) : params_.embeddings.size(1);
      if (have != width)
        throw ConfigError("prefix: the kept prefix is " + std::to_string(have) + " wide but this " +
                          mc.model_type + " model needs " + std::to_string(width));
    } else {
      Generator gen(seed);
      if (projection_) {  // torch's defaults: Embedding N(0, 1), Linear U(+-1/sqrt(in))
        params_.embeddings = Tensor::randn({tokens_, token_dim}, gen);
        float b = 1.0f / std::sqrt(float(token_dim));
        params_.w1 = Tensor::uniform({encoder_hidden_, token_dim}, gen, -b, b);
        params_.b1 = Tensor::uniform({encoder_hidden_}, gen, -b, b);
        b = 1.0f / std::sqrt(float(encoder_hidden_));
        params_.w2 = Tensor::uniform({width, encoder_hidden_}, gen, -b, b);
        params_.b2 = Tensor::uniform({width}, gen, -b, b);
      } else {
        params_.embeddings = Tensor::randn({tokens_, width}, gen);
      }
    }
    hook_ = std::make_shared<PrefixHook>();
    hook_->owner = name;
    hook_->params = params_;
    hook_->tokens = tokens_;
    hook_->layers = layers_;
    hook_->kv_heads = kv_heads_;
    hook_->head_dim = head_dim_;
    hook_->enabled = enabled_;
    model.attention_hooks.push_back(hook_);
    model_ = &model;
  }

  void detach() override {
    if (!model_) return;
    remove_hook(model_->attention_hooks, std::static_pointer_cast<AttentionHook>(hook_));
    model_ = nullptr;
  }

  void set_enabled(bool on) override {
    enabled_ = on;
    if (hook_) hook_->enabled = on;
  }

  std::vector<std::pair<std::string, Tensor>> parameters() override {
    if (!params_.embeddings.defined()) return {};
    if (!params_.projection()) return {{"prompt_embeddings", params_.embeddings}};
    return {{"prefix_encoder.embedding.weight", params_.embeddings},
            {"prefix_encoder.transform.0.weight", params_.w1},
            {"prefix_encoder.transform.0.bias", params_.b1},
            {"prefix_encoder.transform.2.weight", params_.w2},
            {"prefix_encoder.transform.2.bias", params_.b2}};
  }

  // The projection collapses to its output: what PEFT saves, and what inference needs.
  std::vector<std::pair<std::string, Tensor>> saved_parameters() override {
    if (!params_.projection()) return parameters();
    NoGradGuard no_grad;
    return {{"prompt_embeddings", params_.prefix().contiguous()}};
  }

  nlohmann::json config() const override {
    nlohmann::json c = config_;
    c["method"] = "prefix";
    c["num_virtual_tokens"] = tokens_;
    c["projection"] = projection_;
    if (encoder_hidden_) c["encoder_hidden_size"] = encoder_hidden_;
    if (layers_) {
      c["num_layers"] = layers_;
      c["num_attention_heads"] = kv_heads_;
      c["token_dim"] = kv_heads_ * head_dim_;
    }
    return c;
  }

  nlohmann::json saved_config() const override {
    nlohmann::json c = config();
    c["projection"] = false;
    return c;
  }

  std::vector<std::string> attached_modules() const override {
    std::vector<std::string> out;
    if (!model_) return out;
    for (int64_t l = 0; l < layers_; ++l) out.push_back(model_->layers_path() + "." + std::to_string(l));
    return out;
  }

  // What prefix tuning knows of itself: it extends every example's keys and values, so it neither
  // merges into weights nor shares a mixed batch; PEFT has it as PREFIX_TUNING.
  nlohmann::json peft_config(TransformerModel& model) override;
  // Prompt learning's one tensor sits at the top level of PEFT's file, outside the model.
  std::string peft_tensor_name(const std::string& name) const override { return name; }
  int attach_stage() const override { return 3; }

 private:
  nlohmann::json config_;
  int64_t tokens_ = 10, encoder_hidden_ = 0;
  bool projection_ = false, enabled_ = true;
  int64_t layers_ = 0, kv_heads_ = 0, head_dim_ = 0;
  PrefixParams params_;
  std::shared_ptr<PrefixHook> hook_;
  TransformerModel* model_ = nullptr;
};

nlohmann::json Prefix::peft_config(TransformerModel& model) {
  const nlohmann::json c = saved_config();
  const ModelConfig& mc = model.config;
  // PEFT sizes the prefix by key/value heads (grouped-query attention).
  nlohmann::json p =
      prompt_learning_to_peft(c, mc.num_kv_heads * mc.head_dim, mc.num_kv_heads, mc.num_layers);
  p["peft_type"] = "PREFIX_TUNING";
  p["encoder_hidden_size"] = c.value("encoder_hidden_size", mc.num_kv_heads * mc.head_dim);
  p["prefix_projection"] = false;  // saved collapsed
  p["init_weights"] = nullptr;
  return p;
}

nlohmann::json prefix_from_peft(const nlohmann::json& p, const std::string& source) {
  nlohmann::json c = prompt_learning_from_peft(
      p, {"encoder_hidden_size", "prefix_projection", "init_weights"}, source, "prefix");
  // A saved prefix is the plain matrix even when it was trained through the projection (PEFT saves
  // the projection's output, and loads it without the MLP).
  c["projection"] = false;
  copy_if_int(p, "encoder_hidden_size", c, "encoder_hidden_size");
  copy_if_int(p, "num_layers", c, "num_layers");
  copy_if_int(p, "token_dim", c, "token_dim");
  copy_if_int(p, "num_attention_heads", c, "num_attention_heads");
  return c;
}
}  // namespace

std::unique_ptr<Delta> make_prefix(const nlohmann::json& config) { return std::make_unique<Prefix>(config); }

DeltaMethod prefix_method() {
  return {.name = "prefix",
          .make = make_prefix,
          .description = "prefix tuning, 10 virtual tokens",
          .peft_type = "PREFIX_TUNING",
          .from_peft = prefix_from_peft};
}

}  // namespace deltatune::delta
