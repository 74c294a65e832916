// BERT and RoBERTa encoders (BertModel, BertForMaskedLM, BertForSequenceClassification and the
// RoBERTa equivalents), with transformers' parameter names.
#include "models/bert.h"

#include "deltatune/error.h"
#include "models/common.h"

namespace deltatune::models {
namespace {
using nn::Embedding;
using nn::LayerNorm;
using nn::Linear;

std::shared_ptr<nn::Module> container(const char* type) { return std::make_shared<nn::Module>(type); }
}  // namespace

BertModel::BertModel(const ModelConfig& c, HeadKind head) : TransformerModel("BertModel", c, head) {
  const int64_t h = c.hidden_size;
  const float eps = float(c.layer_norm_eps);
  prefix_ = c.is_roberta ? "roberta" : "bert";
  auto base = register_module(prefix_, container(c.is_roberta ? "RobertaModel" : "BertModel"));
  auto emb = base->register_module("embeddings", container("BertEmbeddings"));
  word_ = emb->register_module("word_embeddings", std::make_shared<Embedding>(c.vocab_size, h));
  position_ =
      emb->register_module("position_embeddings", std::make_shared<Embedding>(c.max_position_embeddings, h));
  if (c.type_vocab_size > 0)
    token_type_ =
        emb->register_module("token_type_embeddings", std::make_shared<Embedding>(c.type_vocab_size, h));
  emb_norm_ = emb->register_module("LayerNorm", std::make_shared<LayerNorm>(h, eps));
  auto layers = base->register_module("encoder", container("BertEncoder"))
                    ->register_module("layer", container("ModuleList"));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    auto layer = layers->register_module(std::to_string(i), container("BertLayer"));
    auto attention = layer->register_module("attention", container("BertAttention"));
    auto self = attention->register_module("self", container("BertSelfAttention"));
    auto out = attention->register_module("output", container("BertSelfOutput"));
    Block b;
    b.query = self->register_module("query", std::make_shared<Linear>(h, h, true));
    b.key = self->register_module("key", std::make_shared<Linear>(h, h, true));
    b.value = self->register_module("value", std::make_shared<Linear>(h, h, true));
    b.attn_out = out->register_module("dense", std::make_shared<Linear>(h, h, true));
    b.attn_norm = out->register_module("LayerNorm", std::make_shared<LayerNorm>(h, eps));
    b.up = layer->register_module("intermediate", container("BertIntermediate"))
               ->register_module("dense", std::make_shared<Linear>(h, c.intermediate_size, true));
    auto output = layer->register_module("output", container("BertOutput"));
    b.down = output->register_module("dense", std::make_shared<Linear>(c.intermediate_size, h, true));
    b.ffn_norm = output->register_module("LayerNorm", std::make_shared<LayerNorm>(h, eps));
    blocks_.push_back(b);
  }
  act_ = nn::activation(c.hidden_act);
  if (head == HeadKind::MaskedLM) {
    if (c.is_roberta) {
      auto lm = register_module("lm_head", container("RobertaLMHead"));
      mlm_dense_ = lm->register_module("dense", std::make_shared<Linear>(h, h, true));
      mlm_norm_ = lm->register_module("layer_norm", std::make_shared<LayerNorm>(h, eps));
      mlm_bias_ = &lm->register_parameter("bias", Tensor::zeros({c.vocab_size}));
    } else {
      auto predictions = register_module("cls", container("BertOnlyMLMHead"))
                             ->register_module("predictions", container("BertLMPredictionHead"));
      auto transform = predictions->register_module("transform", container("BertPredictionHeadTransform"));
      mlm_dense_ = transform->register_module("dense", std::make_shared<Linear>(h, h, true));
      mlm_norm_ = transform->register_module("LayerNorm", std::make_shared<LayerNorm>(h, eps));
      mlm_bias_ = &predictions->register_parameter("bias", Tensor::zeros({c.vocab_size}));
    }
  } else if (head == HeadKind::SequenceClassification) {
    if (c.is_roberta) {
      auto cls = register_module("classifier", container("RobertaClassificationHead"));
      pooler_ = cls->register_module("dense", std::make_shared<Linear>(h, h, true));
      classifier_ = cls->register_module("out_proj", std::make_shared<Linear>(h, c.num_labels, true));
    } else {
      pooler_ = base->register_module("pooler", container("BertPooler"))
                    ->register_module("dense", std::make_shared<Linear>(h, h, true));
      classifier_ = register_module("classifier", std::make_shared<Linear>(h, c.num_labels, true));
    }
  } else if (head == HeadKind::CausalLM) {
    throw ConfigError("BERT models have no causal LM head here (use masked-lm or sequence-classification)");
  }
}

Tensor BertModel::position_ids(const Tensor& mask, int64_t batch, int64_t length) const {
  if (!config.is_roberta) return positions(0, length);
  // RoBERTa: positions count real tokens after padding_idx; padding gets padding_idx itself.
  const int64_t pad = config.pad_token_id.value_or(1);
  std::vector<float> m = mask.to_floats();
  std::vector<int64_t> pos(m.size());
  for (int64_t b = 0; b < batch; ++b) {
    int64_t count = 0;
    for (int64_t t = 0; t < length; ++t) {
      size_t i = size_t(b * length + t);
      pos[i] = m[i] > 0 ? pad + (++count) : pad;
    }
  }
  return Tensor::from_ints(pos, {batch, length});
}

ModelOutput BertModel::run_forward(const ModelInput& in) {
  const Tensor& ids = in.input_ids;
  if (ids.dim() != 2)
    throw ShapeError("BertModel: input_ids must be [batch, length], got " + shape_str(ids.shape()));
  const int64_t batch = ids.size(0), length = ids.size(1);
  if (length > config.max_position_embeddings - config.position_offset)
    throw ShapeError("BertModel: sequence length " + std::to_string(length) +
                     " exceeds max_position_embeddings " + std::to_string(config.max_position_embeddings));
  Tensor mask = float_mask(in.attention_mask, batch, length);
  // Prompt tokens join before positions are added, so they take the first positions (as in PEFT).
  Tensor x = word_->forward(ids);
  const int64_t prompt = extend_embeddings(x, mask);
  const int64_t total = x.size(1);
  x = ops::add(x, position_->forward(position_ids(mask, batch, total)));
  if (token_type_) {
    Tensor types =
        in.token_type_ids.defined() ? in.token_type_ids : Tensor::zeros({batch, length}, DType::I64);
    if (prompt) types = ops::concat({Tensor::zeros({batch, prompt}, types.dtype()), types}, 1);
    x = ops::add(x, token_type_->forward(types));
  }
  x = ops::dropout(emb_norm_->forward(x), dropout_p(config.hidden_dropout), training(), dropout_rng());
  const int64_t heads = config.num_heads, hd = config.head_dim;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    // Everything by value: a checkpointed block runs again in the backward (run_block).
    auto block = [=, this](const Tensor& x) {
      const Block& b = blocks_[i];
      Tensor q = split_heads(b.query->forward(x), heads, hd);
      Tensor k = split_heads(b.key->forward(x), heads, hd);
      Tensor v = split_heads(b.value->forward(x), heads, hd);
      Tensor key_mask = mask;
      extend_attention(int64_t(i), x, k, v, key_mask);
      Tensor ctx = merge_heads(ops::scaled_dot_product_attention(q, k, v, key_mask, false));
      Tensor a =
          ops::dropout(b.attn_out->forward(ctx), dropout_p(config.hidden_dropout), training(), dropout_rng());
      Tensor h = b.attn_norm->forward(ops::add(a, x));
      Tensor f = b.down->forward(act_(b.up->forward(h)));
      f = ops::dropout(f, dropout_p(config.hidden_dropout), training(), dropout_rng());
      return b.ffn_norm->forward(ops::add(f, h));
    };
    x = run_block(in, block, x);
  }
  ModelOutput out;
  out.last_hidden_state = x;
  out.attention_mask = mask;
  if (head == HeadKind::MaskedLM) {
    Tensor t = mlm_norm_->forward(act_(mlm_dense_->forward(x)));
    out.logits = ops::linear(t, word_->weight(), *mlm_bias_);
  } else if (head == HeadKind::SequenceClassification) {
    Tensor first = x.select(1, 0);  // [CLS] / <s>
    Tensor pooled;
    if (config.is_roberta) {
      pooled =
          ops::tanh(pooler_->forward(ops::dropout(first, classifier_dropout(), training(), dropout_rng())));
    } else {
      pooled = ops::tanh(pooler_->forward(first));
    }
    out.logits = classifier_->forward(ops::dropout(pooled, classifier_dropout(), training(), dropout_rng()));
  }
  return out;
}

float BertModel::classifier_dropout() const {
  return dropout_p(config.classifier_dropout.value_or(config.hidden_dropout));
}

std::map<std::string, std::vector<std::string>> BertModel::roles() const {
  return {{"attn.q", {"attention.self.query"}},
          {"attn.k", {"attention.self.key"}},
          {"attn.v", {"attention.self.value"}},
          {"attn.o", {"attention.output.dense"}},
          {"ffn.up", {"intermediate.dense"}},
          {"ffn.down", {"output.dense"}},
          {"ffn.gate", {}},
          {"ln", {"attention.output.LayerNorm", "output.LayerNorm"}},
          {"embed", {prefix_ + ".embeddings.word_embeddings"}},
          {"head", head_parameters()}};
}

std::vector<std::string> BertModel::head_parameters() const {
  if (head == HeadKind::SequenceClassification) {
    if (config.is_roberta)
      return {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
              "classifier.out_proj.bias"};
    return {prefix_ + ".pooler.dense.weight", prefix_ + ".pooler.dense.bias", "classifier.weight",
            "classifier.bias"};
  }
  return {};
}

}  // namespace deltatune::models
