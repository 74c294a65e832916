// config.json parsing: the three mini models, the other supported model types, the two generations
// of rope settings, and the errors for configs we cannot run.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "deltatune/error.h"
#include "deltatune/hf_config.h"

namespace fs = std::filesystem;
using namespace deltatune;
using nlohmann::json;

namespace {

const fs::path kModels = fs::path(DELTATUNE_ASSETS) / "models";

// The calling code expects a ConfigError naming the source and containing every fragment.
void expect_config_error(const json& config, const std::vector<std::string>& fragments) {
  try {
    parse_model_config(config, "test/config.json");
    ADD_FAILURE() << "no error for " << config.dump();
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("test/config.json: ", 0), 0u) << msg;
    for (const std::string& f : fragments)
      EXPECT_NE(msg.find(f), std::string::npos) << msg << "\nwants: " << f;
  }
}

// A transformers-4.x Llama config (as Llama 3 era checkpoints write it).
json llama4x() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
    "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 2, "num_attention_heads": 8,
    "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 4096, "hidden_act": "silu",
    "rms_norm_eps": 1e-06, "rope_theta": 500000.0, "rope_scaling": null, "attention_bias": false,
    "tie_word_embeddings": true, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    "pad_token_id": null, "transformers_version": "4.45.0"})");
}

TEST(HfConfig, BertMini) {
  ModelConfig c = load_model_config(kModels / "bert-mini");
  EXPECT_EQ(c.model_type, "bert");
  EXPECT_EQ(c.family, ArchFamily::Bert);
  EXPECT_FALSE(c.is_roberta);
  EXPECT_EQ(c.architectures, std::vector<std::string>{"BertForMaskedLM"});
  EXPECT_EQ(c.dtype, "float16");
  EXPECT_EQ(c.vocab_size, 8192);
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 1024);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_EQ(c.type_vocab_size, 2);
  EXPECT_EQ(c.position_offset, 0);
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-12);
  EXPECT_EQ(c.hidden_act, "gelu");
  EXPECT_TRUE(c.attention_qkv_bias && c.attention_out_bias && c.mlp_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.pad_token_id, 0);
  EXPECT_TRUE(c.bos_token_ids.empty());
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.num_labels, 2);
  EXPECT_EQ(c.id2label.at(1), "LABEL_1");
  EXPECT_EQ(c.label2id.at("LABEL_0"), 0);
  EXPECT_FALSE(c.classifier_dropout.has_value());
  EXPECT_DOUBLE_EQ(c.hidden_dropout, 0.0);
  EXPECT_DOUBLE_EQ(c.attention_dropout, 0.0);
  EXPECT_EQ(c.raw["transformers_version"], "5.17.0");
  EXPECT_EQ(summary(c), "bert: 4 layers, hidden 256, 4 heads, ffn 1024, vocab 8192");
}

TEST(HfConfig, Gpt2Mini) {
  ModelConfig c = load_model_config(kModels / "gpt2-mini/config.json");  // a file path works too
  EXPECT_EQ(c.model_type, "gpt2");
  EXPECT_EQ(c.family, ArchFamily::Gpt2);
  EXPECT_EQ(c.architectures, std::vector<std::string>{"GPT2LMHeadModel"});
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 1024);  // n_inner is null: 4 * n_embd
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_EQ(c.vocab_size, 8192);
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-5);
  EXPECT_EQ(c.hidden_act, "gelu_new");
  EXPECT_TRUE(c.scale_attn_weights);
  EXPECT_FALSE(c.scale_attn_by_inverse_layer_idx);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.attention_qkv_bias && c.mlp_bias);
  EXPECT_FALSE(c.pad_token_id.has_value());
  EXPECT_EQ(c.bos_token_ids, std::vector<int64_t>{0});
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{0});
  EXPECT_EQ(summary(c), "gpt2: 4 layers, hidden 256, 4 heads, ffn 1024, vocab 8192");
}

TEST(HfConfig, LlamaMini) {
  ModelConfig c = load_model_config(kModels / "llama-mini");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.family, ArchFamily::Llama);
  EXPECT_EQ(c.dtype, "bfloat16");
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 704);
  EXPECT_EQ(c.vocab_size, 8000);
  EXPECT_EQ(c.max_position_embeddings, 1024);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);  // from rope_parameters (transformers 5)
  EXPECT_EQ(c.rope_type, "default");
  EXPECT_FALSE(c.attention_qkv_bias || c.attention_out_bias || c.mlp_bias);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.pad_token_id.has_value());
  EXPECT_EQ(c.bos_token_ids, std::vector<int64_t>{1});
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(c.type_vocab_size, 0);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_EQ(summary(c), "llama: 4 layers, hidden 256, 4 heads (2 kv), ffn 704, vocab 8000");
}

TEST(HfConfig, LlamaTransformers4Style) {
  ModelConfig c = parse_model_config(llama4x(), "llama3.json");
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.dtype, "bfloat16");
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_ids, std::vector<int64_t>{128000});
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));

  // Keys a 4.x config leaves out take LlamaConfig's defaults.
  json minimal = {{"model_type", "llama"},    {"hidden_size", 64},        {"num_hidden_layers", 1},
                  {"num_attention_heads", 4}, {"intermediate_size", 128}, {"vocab_size", 100}};
  c = parse_model_config(minimal, "minimal.json");
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_EQ(c.hidden_act, "silu");
}

TEST(HfConfig, LlamaTransformers5Style) {
  json j = llama4x();
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_theta", 1000000.0}, {"rope_type", "default"}};
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  j["head_dim"] = 128;  // explicit, and not hidden / heads
  ModelConfig c = parse_model_config(j, "config.json");
  EXPECT_DOUBLE_EQ(c.rope_theta, 1000000.0);
  EXPECT_TRUE(c.attention_qkv_bias && c.attention_out_bias && c.mlp_bias);
  EXPECT_EQ(c.head_dim, 128);

  // Some 4.x versions put rope_theta inside rope_scaling.
  j.erase("rope_parameters");
  j["rope_scaling"] = {{"rope_type", "default"}, {"rope_theta", 20000.0}};
  EXPECT_DOUBLE_EQ(parse_model_config(j, "config.json").rope_theta, 20000.0);
}

TEST(HfConfig, RejectsUnsupportedRopeScaling) {
  json j = llama4x();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  expect_config_error(j, {"rope scaling type 'linear'", "'rope_scaling'", "supported: default"});
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0}};
  expect_config_error(j, {"'llama3'", "'rope_parameters'", "supported: default"});
}

TEST(HfConfig, Qwen2) {
  json j = json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "use_sliding_window": false, "max_window_layers": 21, "tie_word_embeddings": true,
    "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu", "torch_dtype": "bfloat16"})");
  ModelConfig c = parse_model_config(j, "qwen2.json");
  EXPECT_EQ(c.family, ArchFamily::Llama);
  EXPECT_TRUE(c.attention_qkv_bias);
  EXPECT_FALSE(c.attention_out_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1000000.0);
  EXPECT_FALSE(c.sliding_window.has_value());  // use_sliding_window is false
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{151645});
  EXPECT_EQ(summary(c), "qwen2: 24 layers, hidden 896, 14 heads (2 kv), ffn 4864, vocab 151936");
}

TEST(HfConfig, Mistral) {
  json j = json::parse(R"({
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 32768, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": null, "head_dim": null,
    "hidden_act": "silu", "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2})");
  ModelConfig c = parse_model_config(j, "mistral.json");
  EXPECT_EQ(c.family, ArchFamily::Llama);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_FALSE(c.attention_qkv_bias || c.attention_out_bias || c.mlp_bias);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_kv_heads, 8);
  j["sliding_window"] = 4096;
  EXPECT_EQ(parse_model_config(j, "mistral.json").sliding_window, 4096);
}

TEST(HfConfig, Roberta) {
  json j = json::parse(R"({
    "architectures": ["RobertaForMaskedLM"], "model_type": "roberta", "hidden_size": 768,
    "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1,
    "layer_norm_eps": 1e-05, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2})");
  ModelConfig c = parse_model_config(j, "roberta.json");
  EXPECT_EQ(c.family, ArchFamily::Bert);
  EXPECT_TRUE(c.is_roberta);
  EXPECT_EQ(c.position_offset, 2);  // padding_idx + 1
  EXPECT_EQ(c.type_vocab_size, 1);
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.hidden_dropout, 0.1);
  EXPECT_DOUBLE_EQ(c.embedding_dropout, 0.1);
  EXPECT_TRUE(c.tie_word_embeddings);
  j["pad_token_id"] = nullptr;
  expect_config_error(j, {"roberta needs 'pad_token_id'"});
}

TEST(HfConfig, LabelsAndTokenIds) {
  json j = json::parse(std::ifstream(kModels / "bert-mini/config.json"));
  j["id2label"] = {{"0", "negative"}, {"1", "neutral"}, {"2", "positive"}};
  j["num_labels"] = 2;  // id2label wins, as in transformers
  j["problem_type"] = "single_label_classification";
  j["classifier_dropout"] = 0.2;
  j["eos_token_id"] = {5, 6};
  ModelConfig c = parse_model_config(j, "cls.json");
  EXPECT_EQ(c.num_labels, 3);
  EXPECT_EQ(c.id2label.at(2), "positive");
  EXPECT_EQ(c.label2id.at("neutral"), 1);
  EXPECT_EQ(c.problem_type, "single_label_classification");
  EXPECT_EQ(c.classifier_dropout, 0.2);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{5, 6}));

  j.erase("id2label");
  j["num_labels"] = 5;
  EXPECT_EQ(parse_model_config(j, "cls.json").id2label.at(4), "LABEL_4");

  j["problem_type"] = "ranking";
  expect_config_error(j, {"problem_type 'ranking'", "regression"});
  j["problem_type"] = nullptr;
  j["id2label"] = {{"zero", "a"}};
  expect_config_error(j, {"'id2label' key 'zero'"});
}

TEST(HfConfig, InfersModelTypeFromArchitectures) {
  json j = json::parse(std::ifstream(kModels / "gpt2-mini/config.json"));
  j.erase("model_type");
  EXPECT_EQ(parse_model_config(j, "old.json").model_type, "gpt2");
  j["architectures"] = {"Qwen2MoeForCausalLM"};
  expect_config_error(j, {"missing 'model_type'", "bert, roberta, gpt2, llama, mistral, qwen2"});
}

TEST(HfConfig, Errors) {
  json bert = json::parse(std::ifstream(kModels / "bert-mini/config.json"));

  json j = bert;
  j.erase("hidden_size");
  expect_config_error(j, {"missing 'hidden_size'"});

  j = json::parse(std::ifstream(kModels / "gpt2-mini/config.json"));
  j.erase("n_embd");
  expect_config_error(j, {"missing 'n_embd' (or 'hidden_size')"});

  j = bert;
  j["model_type"] = "t5";
  expect_config_error(j, {"model_type 't5' is not supported", "bert, roberta, gpt2, llama, mistral, qwen2"});

  j = bert;
  j["hidden_size"] = 250;
  expect_config_error(j, {"hidden_size 250 is not divisible by the number of heads 4"});

  j = llama4x();
  j["num_key_value_heads"] = 3;
  expect_config_error(j, {"heads 8 is not a multiple of the number of key/value heads 3"});

  j = bert;
  j["hidden_act"] = "mish";
  expect_config_error(j, {"activation 'mish' is not supported", "gelu, gelu_new", "silu", "relu"});

  j = bert;
  j["hidden_size"] = "256";
  expect_config_error(j, {"'hidden_size' must be an integer, got \"256\""});

  j = bert;
  j["position_embedding_type"] = "relative_key";
  expect_config_error(j, {"position_embedding_type 'relative_key'"});

  expect_config_error(json::array({1, 2}), {"not a JSON object"});
}

TEST(HfConfig, FileErrors) {
  const fs::path dir = fs::temp_directory_path() / ("deltatune-hf-config-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  EXPECT_THROW(load_model_config(dir), IoError);  // no config.json
  std::ofstream(dir / "config.json") << "{\"model_type\": \"bert\",";
  try {
    load_model_config(dir);
    ADD_FAILURE() << "no error for broken JSON";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "config.json").string()), std::string::npos) << e.what();
  }
  std::ofstream(dir / "config.json") << R"({"model_type": "bert", "vocab_size": 10})";
  try {
    load_model_config(dir);
    ADD_FAILURE() << "no error for a config without hidden_size";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), (dir / "config.json").string() + ": missing 'hidden_size'");
  }
  fs::remove_all(dir);
}

}  // namespace
