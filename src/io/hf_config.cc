#include "deltatune/hf_config.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "deltatune/error.h"
#include "deltatune/gguf_model.h"
#include "deltatune/json_file.h"

namespace deltatune {

namespace fs = std::filesystem;

namespace {

using Keys = std::initializer_list<const char*>;

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out;
}

// Typed access to one JSON object; every error names the source and the key. Where a family has
// several names for one setting (GPT-2's n_embd is also reachable as hidden_size), the first present
// name wins. A key set to null counts as absent, except where noted.
class Reader {
 public:
  Reader(const nlohmann::json& j, std::string source) : j_(j), source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& problem) const { throw ConfigError(source_ + ": " + problem); }

  bool present(const char* key) const { return j_.contains(key); }  // even when null

  std::optional<int64_t> opt_int(Keys keys) const {
    auto [key, v] = find(keys);
    if (!v) return std::nullopt;
    return to_int(*v, key);
  }
  int64_t int_or(Keys keys, int64_t fallback) const { return opt_int(keys).value_or(fallback); }
  // A key the architecture cannot do without: "missing 'n_embd' (or 'hidden_size')".
  int64_t req_int(Keys keys) const {
    if (std::optional<int64_t> v = opt_int(keys)) return *v;
    std::ostringstream names;
    bool first = true;
    for (const char* k : keys) {
      names << (first ? "'" : " (or '") << k << (first ? "'" : "')");
      first = false;
    }
    fail("missing " + names.str());
  }

  std::optional<double> opt_double(Keys keys) const {
    auto [key, v] = find(keys);
    if (!v) return std::nullopt;
    if (!v->is_number()) fail("'" + std::string(key) + "' must be a number, got " + v->dump());
    return v->get<double>();
  }
  double double_or(Keys keys, double fallback) const { return opt_double(keys).value_or(fallback); }

  bool bool_or(const char* key, bool fallback) const {
    auto [k, v] = find({key});
    if (!v) return fallback;
    if (!v->is_boolean()) fail("'" + std::string(key) + "' must be true or false, got " + v->dump());
    return v->get<bool>();
  }

  std::optional<std::string> opt_string(Keys keys) const {
    auto [key, v] = find(keys);
    if (!v) return std::nullopt;
    if (!v->is_string()) fail("'" + std::string(key) + "' must be a string, got " + v->dump());
    return v->get<std::string>();
  }

  // A token id: the class default when the key is absent, none when it is null.
  std::optional<int64_t> token_id(const char* key, std::optional<int64_t> fallback) const {
    if (!present(key)) return fallback;
    return opt_int({key});
  }
  // Like token_id, but the value may also be a list (several end-of-sequence tokens).
  std::vector<int64_t> token_ids(const char* key, std::optional<int64_t> fallback) const {
    if (!present(key)) return fallback ? std::vector<int64_t>{*fallback} : std::vector<int64_t>{};
    auto [k, v] = find({key});
    if (!v) return {};
    if (!v->is_array()) return {to_int(*v, key)};
    std::vector<int64_t> ids;
    for (const nlohmann::json& id : *v) ids.push_back(to_int(id, key));
    return ids;
  }

  // An optional nested object; an error when the key holds anything else.
  const nlohmann::json* object(const char* key) const {
    auto [k, v] = find({key});
    if (v && !v->is_object()) fail("'" + std::string(key) + "' must be an object, got " + v->dump());
    return v;
  }

  int64_t to_int(const nlohmann::json& v, const std::string& key) const {
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float()) {  // some tools write integers as 256.0
      double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e18) return int64_t(d);
    }
    fail("'" + key + "' must be an integer, got " + v.dump());
  }

 private:
  std::pair<const char*, const nlohmann::json*> find(Keys keys) const {
    for (const char* k : keys) {
      auto it = j_.find(k);
      if (it != j_.end() && !it->is_null()) return {k, &*it};
    }
    return {*keys.begin(), nullptr};
  }

  const nlohmann::json& j_;
  std::string source_;
};

// transformers' class names start with the model's prefix: BertForMaskedLM, GPT2LMHeadModel. Used only
// for old configs written before model_type existed.
std::optional<std::string> model_type_from_architectures(const nlohmann::json& config) {
  static const std::vector<std::pair<std::string, std::string>> prefixes = {
      {"Roberta", "roberta"}, {"Bert", "bert"},       {"GPT2", "gpt2"},
      {"Llama", "llama"},     {"Mistral", "mistral"}, {"Qwen2", "qwen2"}};
  auto it = config.find("architectures");
  if (it == config.end() || !it->is_array()) return std::nullopt;
  for (const nlohmann::json& arch : *it) {
    if (!arch.is_string()) continue;
    const std::string name = arch.get<std::string>();
    for (const auto& [prefix, type] : prefixes) {
      if (!name.starts_with(prefix)) continue;
      // The rest must name a head, so that Qwen2MoeForCausalLM is not taken for a qwen2.
      const std::string rest = name.substr(prefix.size());
      if (rest.starts_with("For") || rest == "Model" || rest == "LMHeadModel" || rest == "DoubleHeadsModel")
        return type;
    }
  }
  return std::nullopt;
}

void parse_bert(const Reader& r, ModelConfig& c) {
  c.hidden_size = r.req_int({"hidden_size"});
  c.num_layers = r.req_int({"num_hidden_layers"});
  c.num_heads = r.req_int({"num_attention_heads"});
  c.num_kv_heads = c.num_heads;
  c.intermediate_size = r.req_int({"intermediate_size"});
  c.max_position_embeddings = r.int_or({"max_position_embeddings"}, 512);
  c.type_vocab_size = r.int_or({"type_vocab_size"}, 2);
  c.layer_norm_eps = r.double_or({"layer_norm_eps"}, 1e-12);
  c.hidden_act = r.opt_string({"hidden_act"}).value_or("gelu");
  c.hidden_dropout = r.double_or({"hidden_dropout_prob"}, 0.1);
  c.embedding_dropout = c.hidden_dropout;
  c.attention_dropout = r.double_or({"attention_probs_dropout_prob"}, 0.1);
  c.attention_qkv_bias = c.attention_out_bias = c.mlp_bias = true;
  c.tie_word_embeddings = r.bool_or("tie_word_embeddings", true);
  if (c.type_vocab_size < 1) r.fail("'type_vocab_size' must be at least 1");
  if (std::optional<std::string> pos = r.opt_string({"position_embedding_type"}); pos && *pos != "absolute")
    r.fail("position_embedding_type '" + *pos + "' is not supported (supported: absolute)");

  if (c.is_roberta) {
    c.pad_token_id = r.token_id("pad_token_id", 1);
    c.bos_token_ids = r.token_ids("bos_token_id", 0);
    c.eos_token_ids = r.token_ids("eos_token_id", 2);
    // RobertaEmbeddings numbers real tokens from padding_idx + 1, so the index must exist.
    if (!c.pad_token_id)
      r.fail("roberta needs 'pad_token_id' (its position ids start after the padding index)");
    c.position_offset = *c.pad_token_id + 1;
  } else {
    c.pad_token_id = r.token_id("pad_token_id", 0);
    c.bos_token_ids = r.token_ids("bos_token_id", std::nullopt);
    c.eos_token_ids = r.token_ids("eos_token_id", std::nullopt);
  }
}

void parse_gpt2(const Reader& r, ModelConfig& c) {
  c.hidden_size = r.req_int({"n_embd", "hidden_size"});
  c.num_layers = r.req_int({"n_layer", "num_hidden_layers"});
  c.num_heads = r.req_int({"n_head", "num_attention_heads"});
  c.num_kv_heads = c.num_heads;
  c.intermediate_size = r.int_or({"n_inner"}, 4 * c.hidden_size);  // n_inner is usually null
  c.max_position_embeddings = r.int_or({"n_positions", "max_position_embeddings"}, 1024);
  c.layer_norm_eps = r.double_or({"layer_norm_epsilon"}, 1e-5);
  c.hidden_act = r.opt_string({"activation_function"}).value_or("gelu_new");
  c.hidden_dropout = r.double_or({"resid_pdrop"}, 0.1);
  c.embedding_dropout = r.double_or({"embd_pdrop"}, 0.1);
  c.attention_dropout = r.double_or({"attn_pdrop"}, 0.1);
  c.attention_qkv_bias = c.attention_out_bias = c.mlp_bias = true;
  c.tie_word_embeddings = r.bool_or("tie_word_embeddings", true);
  c.scale_attn_weights = r.bool_or("scale_attn_weights", true);
  c.scale_attn_by_inverse_layer_idx = r.bool_or("scale_attn_by_inverse_layer_idx", false);
  c.pad_token_id = r.token_id("pad_token_id", std::nullopt);
  c.bos_token_ids = r.token_ids("bos_token_id", 50256);
  c.eos_token_ids = r.token_ids("eos_token_id", 50256);
}

void parse_rope(const Reader& r, ModelConfig& c) {
  // transformers 5 keeps theta and type in rope_parameters; 4.x has a top-level rope_theta and an
  // optional rope_scaling object (which some versions also give a rope_theta).
  std::optional<double> theta = r.opt_double({"rope_theta"});
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    const nlohmann::json* block = r.object(key);
    if (!block) continue;
    if (!theta && block->contains("rope_theta")) {
      const nlohmann::json& t = (*block)["rope_theta"];
      if (!t.is_null() && !t.is_number())
        r.fail("'" + std::string(key) + ".rope_theta' must be a number, got " + t.dump());
      if (t.is_number()) theta = t.get<double>();
    }
    for (const char* type_key : {"rope_type", "type"}) {
      auto t = block->find(type_key);
      if (t == block->end() || t->is_null()) continue;
      const std::string type = t->is_string() ? t->get<std::string>() : t->dump();
      if (type != "default")
        r.fail("rope scaling type '" + type + "' (in '" + key + "') is not supported (supported: default)");
    }
  }
  c.rope_theta = theta.value_or(10000.0);
  c.rope_type = "default";
  if (!(c.rope_theta > 0)) r.fail("'rope_theta' must be positive");
}

void parse_llama(const Reader& r, ModelConfig& c) {
  c.hidden_size = r.req_int({"hidden_size"});
  c.num_layers = r.req_int({"num_hidden_layers"});
  c.num_heads = r.req_int({"num_attention_heads"});
  c.intermediate_size = r.req_int({"intermediate_size"});
  c.num_kv_heads = r.int_or({"num_key_value_heads"}, c.model_type == "mistral" ? 8 : c.num_heads);
  c.hidden_act = r.opt_string({"hidden_act"}).value_or("silu");
  c.rms_norm_eps = r.double_or({"rms_norm_eps"}, 1e-6);
  c.attention_dropout = r.double_or({"attention_dropout"}, 0.0);
  c.tie_word_embeddings = r.bool_or("tie_word_embeddings", false);
  parse_rope(r, c);

  if (c.model_type == "llama") {
    c.max_position_embeddings = r.int_or({"max_position_embeddings"}, 2048);
    c.attention_qkv_bias = c.attention_out_bias = r.bool_or("attention_bias", false);
    c.mlp_bias = r.bool_or("mlp_bias", false);
  } else if (c.model_type == "mistral") {
    c.max_position_embeddings = r.int_or({"max_position_embeddings"}, 4096 * 32);
    // Only the window length; attention over shorter sequences is unchanged.
    c.sliding_window =
        r.present("sliding_window") ? r.opt_int({"sliding_window"}) : std::optional<int64_t>(4096);
  } else {  // qwen2: Qwen2Attention hard-codes bias on q/k/v and none on o
    c.max_position_embeddings = r.int_or({"max_position_embeddings"}, 32768);
    c.attention_qkv_bias = true;
    if (r.bool_or("use_sliding_window", false)) c.sliding_window = r.int_or({"sliding_window"}, 4096);
  }
  if (c.sliding_window && *c.sliding_window <= 0) r.fail("'sliding_window' must be positive");

  const bool qwen2 = c.model_type == "qwen2";
  c.pad_token_id = r.token_id("pad_token_id", std::nullopt);
  c.bos_token_ids = r.token_ids("bos_token_id", qwen2 ? std::nullopt : std::optional<int64_t>(1));
  c.eos_token_ids = r.token_ids("eos_token_id", qwen2 ? std::nullopt : std::optional<int64_t>(2));

  // An explicit head_dim may differ from hidden_size / num_heads (the projections are then not square).
  if (std::optional<int64_t> head_dim = r.opt_int({"head_dim"})) {
    if (*head_dim <= 0) r.fail("'head_dim' must be positive, got " + std::to_string(*head_dim));
    c.head_dim = *head_dim;
  }
}

void parse_labels(const Reader& r, ModelConfig& c) {
  if (const nlohmann::json* id2label = r.object("id2label")) {
    for (const auto& [key, label] : id2label->items()) {
      size_t used = 0;
      int64_t id = 0;
      try {
        id = std::stoll(key, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != key.size()) r.fail("'id2label' key '" + key + "' is not an integer");
      if (!label.is_string())
        r.fail("'id2label' value for " + key + " must be a string, got " + label.dump());
      c.id2label[id] = label.get<std::string>();
    }
    c.num_labels = int64_t(c.id2label.size());  // as in transformers: id2label wins over num_labels
  } else {
    c.num_labels = r.int_or({"num_labels"}, 2);
    if (c.num_labels < 0) r.fail("'num_labels' must not be negative");
    for (int64_t i = 0; i < c.num_labels; ++i) c.id2label[i] = "LABEL_" + std::to_string(i);
  }
  if (const nlohmann::json* label2id = r.object("label2id")) {
    for (const auto& [label, id] : label2id->items()) c.label2id[label] = r.to_int(id, "label2id");
  } else {
    for (const auto& [id, label] : c.id2label) c.label2id[label] = id;
  }

  if (std::optional<std::string> p = r.opt_string({"problem_type"})) {
    if (*p != "regression" && *p != "single_label_classification" && *p != "multi_label_classification")
      r.fail("problem_type '" + *p +
             "' is not supported (supported: regression, single_label_classification, "
             "multi_label_classification)");
    c.problem_type = *p;
  }
  c.classifier_dropout = r.opt_double({"classifier_dropout"});
}

void check_dropout(const Reader& r, const char* what, double p) {
  if (!(p >= 0.0 && p < 1.0)) r.fail(std::string(what) + " " + std::to_string(p) + " is not in [0, 1)");
}

// Shapes that the model code divides by must fit together.
void validate(const Reader& r, const ModelConfig& c, bool explicit_head_dim) {
  auto positive = [&](const char* name, int64_t v) {
    if (v <= 0) r.fail(std::string(name) + " must be positive, got " + std::to_string(v));
  };
  positive("vocab_size", c.vocab_size);
  positive("hidden_size", c.hidden_size);
  positive("num_layers", c.num_layers);
  positive("num_heads", c.num_heads);
  positive("num_kv_heads", c.num_kv_heads);
  positive("intermediate_size", c.intermediate_size);
  positive("max_position_embeddings", c.max_position_embeddings);
  if (!explicit_head_dim && c.hidden_size % c.num_heads != 0)
    r.fail("hidden_size " + std::to_string(c.hidden_size) + " is not divisible by the number of heads " +
           std::to_string(c.num_heads));
  if (c.num_heads % c.num_kv_heads != 0)
    r.fail("the number of heads " + std::to_string(c.num_heads) +
           " is not a multiple of the number of key/value heads " + std::to_string(c.num_kv_heads));
  const std::vector<std::string>& acts = supported_activations();
  if (std::find(acts.begin(), acts.end(), c.hidden_act) == acts.end())
    r.fail("activation '" + c.hidden_act + "' is not supported (supported: " + join(acts) + ")");
  if (!(c.layer_norm_eps > 0) || !(c.rms_norm_eps > 0)) r.fail("normalisation epsilon must be positive");
  check_dropout(r, "hidden dropout", c.hidden_dropout);
  check_dropout(r, "embedding dropout", c.embedding_dropout);
  check_dropout(r, "attention dropout", c.attention_dropout);
  if (c.classifier_dropout) check_dropout(r, "classifier_dropout", *c.classifier_dropout);
}

}  // namespace

const char* family_name(ArchFamily f) {
  switch (f) {
    case ArchFamily::Bert:
      return "bert";
    case ArchFamily::Gpt2:
      return "gpt2";
    case ArchFamily::Llama:
      return "llama";
  }
  return "?";
}

const std::vector<std::string>& supported_model_types() {
  static const std::vector<std::string> types = {"bert", "roberta", "gpt2", "llama", "mistral", "qwen2"};
  return types;
}

const std::vector<std::string>& supported_activations() {
  // gelu is the exact erf form; gelu_new, gelu_fast and gelu_pytorch_tanh are the tanh approximation;
  // swish is another name for silu.
  static const std::vector<std::string> acts = {"gelu",       "gelu_new", "gelu_fast", "gelu_pytorch_tanh",
                                                "quick_gelu", "silu",     "swish",     "relu"};
  return acts;
}

ModelConfig parse_model_config(const nlohmann::json& config, const std::string& source_name) {
  if (!config.is_object()) throw ConfigError(source_name + ": the config is not a JSON object");
  const Reader r(config, source_name);
  ModelConfig c;
  c.raw = config;

  const std::string supported = join(supported_model_types());
  if (std::optional<std::string> type = r.opt_string({"model_type"})) {
    c.model_type = *type;
  } else if (std::optional<std::string> inferred = model_type_from_architectures(config)) {
    c.model_type = *inferred;
  } else {
    r.fail("missing 'model_type' (supported: " + supported + ")");
  }
  if (c.model_type == "bert" || c.model_type == "roberta") {
    c.family = ArchFamily::Bert;
    c.is_roberta = c.model_type == "roberta";
  } else if (c.model_type == "gpt2") {
    c.family = ArchFamily::Gpt2;
  } else if (c.model_type == "llama" || c.model_type == "mistral" || c.model_type == "qwen2") {
    c.family = ArchFamily::Llama;
  } else {
    r.fail("model_type '" + c.model_type + "' is not supported (supported: " + supported + ")");
  }

  if (r.present("architectures") && !config["architectures"].is_null()) {
    const nlohmann::json& archs = config["architectures"];
    if (!archs.is_array()) r.fail("'architectures' must be a list of class names, got " + archs.dump());
    for (const nlohmann::json& a : archs) {
      if (!a.is_string()) r.fail("'architectures' must be a list of class names, got " + archs.dump());
      c.architectures.push_back(a.get<std::string>());
    }
  }
  c.dtype = r.opt_string({"dtype", "torch_dtype"}).value_or("");
  c.vocab_size = r.req_int({"vocab_size"});

  switch (c.family) {
    case ArchFamily::Bert:
      parse_bert(r, c);
      break;
    case ArchFamily::Gpt2:
      parse_gpt2(r, c);
      break;
    case ArchFamily::Llama:
      parse_llama(r, c);
      break;
  }
  const bool explicit_head_dim = c.head_dim != 0;
  if (!explicit_head_dim && c.num_heads > 0) c.head_dim = c.hidden_size / c.num_heads;
  parse_labels(r, c);
  validate(r, c, explicit_head_dim);
  return c;
}

ModelConfig load_model_config(const fs::path& dir_or_file) {
  if (gguf::is_gguf_file(dir_or_file)) return gguf::model_config(gguf::read_file(dir_or_file));
  std::error_code ec;
  const fs::path file = fs::is_directory(dir_or_file, ec) ? dir_or_file / "config.json" : dir_or_file;
  return parse_model_config(read_json_file(file), file.string());
}

std::string summary(const ModelConfig& c) {
  std::string heads = std::to_string(c.num_heads) + " heads";
  if (c.num_kv_heads != c.num_heads) heads += " (" + std::to_string(c.num_kv_heads) + " kv)";
  return c.model_type + ": " + std::to_string(c.num_layers) + " layers, hidden " +
         std::to_string(c.hidden_size) + ", " + heads + ", ffn " + std::to_string(c.intermediate_size) +
         ", vocab " + std::to_string(c.vocab_size);
}

}  // namespace deltatune
