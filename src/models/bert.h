#pragma once
#include "deltatune/model.h"

namespace deltatune::models {

class BertModel : public TransformerModel {
 public:
  BertModel(const ModelConfig& config, HeadKind head);
  std::string layers_path() const override { return prefix_ + ".encoder.layer"; }
  std::map<std::string, std::vector<std::string>> roles() const override;
  std::vector<std::string> head_parameters() const override;
  Tensor& input_embeddings() override { return word_->weight(); }

 private:
  ModelOutput run_forward(const ModelInput& input) override;
  struct Block {
    std::shared_ptr<nn::Linear> query, key, value, attn_out, up, down;
    std::shared_ptr<nn::LayerNorm> attn_norm, ffn_norm;
  };
  Tensor position_ids(const Tensor& mask, int64_t batch, int64_t length) const;
  float classifier_dropout() const;

  std::string prefix_;
  std::shared_ptr<nn::Embedding> word_, position_, token_type_;
  std::shared_ptr<nn::LayerNorm> emb_norm_, mlm_norm_;
  std::vector<Block> blocks_;
  nn::Activation act_;
  std::shared_ptr<nn::Linear> mlm_dense_, pooler_, classifier_;
  Tensor* mlm_bias_ = nullptr;
};

}  // namespace deltatune::models
