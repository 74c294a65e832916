// Prompt tuning (Lester et al.), PEFT's PROMPT_TUNING: a soft prompt prompt_embeddings [P, hidden] is
// prepended to the input embeddings (the mask gets P ones), so the virtual tokens take the first
// positions. Initialisation as PEFT's: "random" (normal(0, 1), torch's Embedding default),
// "vocab" (PEFT's SAMPLE_VOCAB: rows of the embedding matrix drawn at random), or "text" (the
// embeddings of init_ids, or of init_text tokenized with the tokenizer folder given, cut or
// repeated to P tokens).
#include <algorithm>

#include "delta/methods.h"
#include "delta/peft_config.h"
#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/delta_method.h"
#include "deltatune/error.h"
#include "deltatune/tokenizer.h"

namespace deltatune::delta {
namespace {

struct PromptHook : EmbeddingHook {
  Tensor prompt;  // [P, H], shared with the delta

  void extend(Tensor& embeddings, Tensor& mask) override {
    if (embeddings.size(-1) != prompt.size(1))
      throw ShapeError("prompt: embeddings " + shape_str(embeddings.shape()) +
                       " do not fit a prompt of width " + std::to_string(prompt.size(1)));
    const int64_t batch = embeddings.size(0), tokens = prompt.size(0);
    Tensor p = ops::expand(prompt.unsqueeze(0), {batch, tokens, prompt.size(1)});
    embeddings = ops::concat({p, embeddings.float32()}, 1);
    mask = ops::concat({Tensor::ones({batch, tokens}), mask.float32()}, 1);
  }
  int64_t length() const override { return prompt.size(0); }
};

class Prompt : public Delta {
 public:
  explicit Prompt(const nlohmann::json& c) : config_(c) {
    tokens_ = c.value("num_virtual_tokens", int64_t(8));
    if (tokens_ < 1)
      throw ConfigError("prompt: num_virtual_tokens must be at least 1, got " + std::to_string(tokens_));
    init_ = c.contains("init") && c["init"].is_string() ? c["init"].get<std::string>() : "random";
    if (init_ != "random" && init_ != "vocab" && init_ != "text")
      throw ConfigError("prompt: unknown init '" + init_ + "' (supported: random, vocab, text)");
    if (init_ == "text") {
      if (c.contains("init_ids") && c["init_ids"].is_array()) {
        for (const auto& id : c["init_ids"]) {
          if (!id.is_number_integer()) throw ConfigError("prompt: init_ids must be a list of token ids");
          init_ids_.push_back(id.get<int64_t>());
        }
      } else if (c.contains("init_text") && c["init_text"].is_string()) {
        if (!c.contains("tokenizer") || !c["tokenizer"].is_string())
          throw ConfigError(
              "prompt: init 'text' with init_text needs \"tokenizer\" (a folder with the model's tokenizer)");
        auto tok = Tokenizer::load(c["tokenizer"].get<std::string>());
        // PEFT tokenizes with the tokenizer's defaults: special tokens included.
        init_ids_ = tok->encode(c["init_text"].get<std::string>()).ids;
      } else {
        throw ConfigError("prompt: init 'text' needs init_ids (token ids) or init_text with a tokenizer");
      }
      if (init_ids_.empty()) throw ConfigError("prompt: the init text has no tokens");
    }
    seed = c.value("seed", uint64_t(0));
  }

  std::string method() const override { return "prompt"; }

  void attach(TransformerModel& model) override {
    if (model_) throw Error("prompt delta '" + name + "' is already attached");
    const int64_t hidden = model.config.hidden_size;
    if (config_.contains("token_dim") && config_["token_dim"].is_number_integer() &&
        config_["token_dim"].get<int64_t>() != hidden)
      throw ConfigError("prompt: token_dim is " + std::to_string(config_["token_dim"].get<int64_t>()) +
                        " but this " + model.config.model_type + " model's hidden size is " +
                        std::to_string(hidden));
    if (!prompt_.defined() || prompt_.size(1) != hidden) {
      Generator gen(seed);
      if (init_ == "random") {
        prompt_ = Tensor::randn({tokens_, hidden}, gen);
      } else {
        std::vector<int64_t> ids;
        const int64_t vocab = model.input_embeddings().size(0);
        if (init_ == "vocab") {
          for (int64_t i = 0; i < tokens_; ++i) ids.push_back(int64_t(gen.below(uint64_t(vocab))));
        } else {
          for (int64_t i = 0; i < tokens_; ++i) ids.push_back(init_ids_[size_t(i) % init_ids_.size()]);
          for (int64_t id : ids)
            if (id < 0 || id >= vocab)
              throw ConfigError("prompt: init token id " + std::to_string(id) +
                                " is outside the vocabulary (size " + std::to_string(vocab) + ")");
        }
        NoGradGuard no_grad;
        prompt_ = ops::embedding(model.input_embeddings(), Tensor::from_ints(ids, {tokens_}))
                      .float32()
                      .contiguous()
                      .clone()
                      .detach();
      }
    }
    hook_ = std::make_shared<PromptHook>();
    hook_->owner = name;
    hook_->prompt = prompt_;
    hook_->enabled = enabled_;
    model.embedding_hooks.push_back(hook_);
    model_ = &model;
  }

  void detach() override {
    if (!model_) return;
    remove_hook(model_->embedding_hooks, std::static_pointer_cast<EmbeddingHook>(hook_));
    model_ = nullptr;
  }

  void set_enabled(bool on) override {
    enabled_ = on;
    if (hook_) hook_->enabled = on;
  }

  std::vector<std::pair<std::string, Tensor>> parameters() override {
    if (!prompt_.defined()) return {};
    return {{"prompt_embeddings", prompt_}};
  }

  nlohmann::json config() const override {
    nlohmann::json c = config_;
    c["method"] = "prompt";
    c["num_virtual_tokens"] = tokens_;
    c["init"] = init_;
    if (prompt_.defined()) c["token_dim"] = prompt_.size(1);
    return c;
  }

  // A saved prompt carries its values: loading it needs no tokenizer.
  nlohmann::json saved_config() const override {
    nlohmann::json c = config();
    c["init"] = "random";
    c.erase("init_ids");
    c.erase("init_text");
    c.erase("tokenizer");
    return c;
  }

  std::vector<std::string> attached_modules() const override {
    if (!model_) return {};
    return model_->roles().at("embed");
  }

  // What prompt tuning knows of itself: it lengthens every example's input, so it neither merges
  // into weights nor shares a mixed batch; PEFT has it as PROMPT_TUNING.
  nlohmann::json peft_config(TransformerModel& model) override;
  // Prompt learning's one tensor sits at the top level of PEFT's file, outside the model.
  std::string peft_tensor_name(const std::string& name) const override { return name; }
  int attach_stage() const override { return 2; }

 private:
  nlohmann::json config_;
  int64_t tokens_ = 8;
  std::string init_;
  std::vector<int64_t> init_ids_;
  bool enabled_ = true;
  Tensor prompt_;
  std::shared_ptr<PromptHook> hook_;
  TransformerModel* model_ = nullptr;
};

nlohmann::json Prompt::peft_config(TransformerModel& model) {
  const nlohmann::json c = config();
  const ModelConfig& mc = model.config;
  nlohmann::json p = prompt_learning_to_peft(c, mc.hidden_size, mc.num_heads, mc.num_layers);
  p["peft_type"] = "PROMPT_TUNING";
  const std::string init = c.value("init", std::string("random"));
  const bool text = init == "text" && c.contains("init_text") && c["init_text"].is_string();
  p["prompt_tuning_init"] = text ? "TEXT" : init == "vocab" ? "SAMPLE_VOCAB" : "RANDOM";
  p["prompt_tuning_init_text"] = text ? c["init_text"] : nlohmann::json();
  p["tokenizer_name_or_path"] = text && c.contains("tokenizer") ? c["tokenizer"] : nlohmann::json();
  p["tokenizer_kwargs"] = nullptr;
  return p;
}

nlohmann::json prompt_from_peft(const nlohmann::json& p, const std::string& source) {
  nlohmann::json c = prompt_learning_from_peft(
      p, {"prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path", "tokenizer_kwargs"},
      source, "prompt");
  copy_if_int(p, "token_dim", c, "token_dim");
  // The saved values replace the initialisation: loading needs no tokenizer.
  c["init"] = "random";
  return c;
}
}  // namespace

std::unique_ptr<Delta> make_prompt(const nlohmann::json& config) { return std::make_unique<Prompt>(config); }

DeltaMethod prompt_method() {
  return {.name = "prompt",
          .make = make_prompt,
          .description = "prompt tuning, 8 virtual tokens",
          .peft_type = "PROMPT_TUNING",
          .from_peft = prompt_from_peft};
}

}  // namespace deltatune::delta
