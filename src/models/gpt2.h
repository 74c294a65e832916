#pragma once
#include "deltatune/model.h"

namespace deltatune::models {

// GPT-2 (GPT2Model, GPT2LMHeadModel, GPT2ForSequenceClassification). Its Conv1D layers store weights
// as [in, out]; they are Linear layers with fan_in_fan_out.
class Gpt2Model : public TransformerModel {
 public:
  Gpt2Model(const ModelConfig& config, HeadKind head);
  std::string layers_path() const override { return "transformer.h"; }
  std::map<std::string, std::vector<std::string>> roles() const override;
  std::vector<std::string> head_parameters() const override;
  Tensor& input_embeddings() override { return wte_->weight(); }

 private:
  ModelOutput run_forward(const ModelInput& input) override;
  struct Block {
    std::shared_ptr<nn::LayerNorm> ln1, ln2;
    std::shared_ptr<nn::Linear> c_attn, attn_proj, c_fc, mlp_proj;
  };
  std::shared_ptr<nn::Embedding> wte_, wpe_;
  std::shared_ptr<nn::LayerNorm> ln_f_;
  std::vector<Block> blocks_;
  nn::Activation act_;
  std::shared_ptr<nn::Linear> score_;
};

}  // namespace deltatune::models
