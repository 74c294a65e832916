#pragma once
// A Hugging Face config.json, normalised across the architectures deltatune runs. Each family's own
// key names (GPT-2's n_embd, n_layer, ...) are mapped to one set of fields; keys a config may leave
// out take the defaults of the transformers class for that model_type. Invalid or unsupported
// configs give a ConfigError naming the file and key; an unreadable file or bad JSON an IoError.
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace deltatune {

// Which model code runs a config: roberta is a Bert, mistral and qwen2 are Llamas.
enum class ArchFamily { Bert, Gpt2, Llama };
const char* family_name(ArchFamily f);  // "bert", "gpt2", "llama"

struct ModelConfig {
  std::string model_type;                  // as written: bert, roberta, gpt2, llama, mistral, qwen2
  std::vector<std::string> architectures;  // e.g. {"BertForMaskedLM"}; may be empty
  ArchFamily family = ArchFamily::Bert;
  bool is_roberta = false;
  std::string dtype;  // "dtype" (transformers 5) or "torch_dtype" (4.x); empty when absent

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;              // gpt2: n_embd
  int64_t num_layers = 0;               // num_hidden_layers / n_layer
  int64_t num_heads = 0;                // num_attention_heads / n_head
  int64_t num_kv_heads = 0;             // num_key_value_heads; num_heads when absent (and for bert/gpt2)
  int64_t head_dim = 0;                 // explicit head_dim, or hidden_size / num_heads
  int64_t intermediate_size = 0;        // gpt2: n_inner, or 4 * hidden_size when null
  int64_t max_position_embeddings = 0;  // gpt2: n_positions
  int64_t type_vocab_size = 0;          // bert/roberta token types; 0 for the others
  // First position id. Roberta counts positions after its padding index: padding_idx + 1.
  int64_t position_offset = 0;

  double layer_norm_eps = 1e-5;  // LayerNorm (bert: layer_norm_eps, gpt2: layer_norm_epsilon)
  double rms_norm_eps = 1e-6;    // RMSNorm (llama family)
  std::string hidden_act;        // HF name: gelu, gelu_new, gelu_pytorch_tanh, silu, relu, ...

  double rope_theta = 10000.0;        // llama family
  std::string rope_type = "default";  // the only one supported

  // Biases. Bert and GPT-2 have them everywhere; llama follows attention_bias / mlp_bias; qwen2 has
  // them on q/k/v but not on o; mistral has none.
  bool attention_qkv_bias = false;
  bool attention_out_bias = false;
  bool mlp_bias = false;
  bool tie_word_embeddings = false;  // default: true for bert/roberta/gpt2, false for the llama family

  std::optional<int64_t> pad_token_id;
  std::vector<int64_t> bos_token_ids;  // a config may give an id, a list, or null (empty)
  std::vector<int64_t> eos_token_ids;

  // Classification heads.
  int64_t num_labels = 2;                   // from id2label's size, else num_labels, else 2
  std::map<int64_t, std::string> id2label;  // LABEL_0, LABEL_1, ... when the config has none
  std::map<std::string, int64_t> label2id;
  std::string problem_type;  // regression, single_label_classification, multi_label_classification, or ""
  std::optional<double> classifier_dropout;  // null: heads use hidden_dropout

  double hidden_dropout = 0.0;     // bert hidden_dropout_prob, gpt2 resid_pdrop
  double embedding_dropout = 0.0;  // gpt2 embd_pdrop; bert reuses hidden_dropout_prob
  // bert attention_probs_dropout_prob, gpt2 attn_pdrop, llama attention_dropout
  double attention_dropout = 0.0;

  // Mistral (and qwen2 with use_sliding_window): the attention window; nullopt when null or unused.
  std::optional<int64_t> sliding_window;
  // GPT-2 attention scaling.
  bool scale_attn_weights = true;
  bool scale_attn_by_inverse_layer_idx = false;

  nlohmann::json raw;  // the config.json as read
};

// Reads DIR/config.json, or the given file.
ModelConfig load_model_config(const std::filesystem::path& dir_or_file);
// source_name prefixes every error message (usually the file's path).
ModelConfig parse_model_config(const nlohmann::json& config, const std::string& source_name);

// One line: "bert: 4 layers, hidden 256, 4 heads, ffn 1024, vocab 8192".
std::string summary(const ModelConfig& config);

// The model types and activation names parse_model_config accepts.
const std::vector<std::string>& supported_model_types();
const std::vector<std::string>& supported_activations();

}  // namespace deltatune
