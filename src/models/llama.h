#pragma once
#include "deltatune/model.h"

namespace deltatune::models {

// The Llama family: Llama, Mistral, Qwen2 (RMSNorm, rotary positions, SwiGLU, grouped-query heads).
class LlamaModel : public TransformerModel {
 public:
  LlamaModel(const ModelConfig& config, HeadKind head);
  std::string layers_path() const override { return "model.layers"; }
  std::map<std::string, std::vector<std::string>> roles() const override;
  std::vector<std::string> head_parameters() const override;
  Tensor& input_embeddings() override { return embed_->weight(); }

 private:
  ModelOutput run_forward(const ModelInput& input) override;
  struct Block {
    std::shared_ptr<nn::RMSNorm> input_norm, post_norm;
    std::shared_ptr<nn::Linear> q, k, v, o, gate, up, down;
  };
  std::shared_ptr<nn::Embedding> embed_;
  std::shared_ptr<nn::RMSNorm> norm_;
  std::vector<Block> blocks_;
  nn::Activation act_;
  std::shared_ptr<nn::Linear> lm_head_, score_;
  Tensor inv_freq_;
};

}  // namespace deltatune::models
