#include "delta/peft_config.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

#include "delta/methods.h"
#include "delta/module_names.h"
#include "deltatune/error.h"

namespace deltatune::delta {
namespace {
// Keys PEFT 0.21 writes for every adapter; they carry nothing we need to act on.
const std::set<std::string>& common_keys() {
  static const std::set<std::string> keys{
      "peft_type", "peft_version", "task_type", "base_model_name_or_path", "revision", "inference_mode",
      "auto_mapping", "modules_to_save", "target_modules", "exclude_modules", "layers_to_transform",
      "layers_pattern", "fan_in_fan_out", "init_lora_weights", "target_parameters"};
  return keys;
}
const std::set<std::string>& lora_keys() {
  static const std::set<std::string> keys{
      "r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "bias",
      "lora_bias", "alora_invocation_tokens", "arrow_config", "corda_config", "ensure_weight_tying", "eva_config",
      "kasa_config", "layer_replication", "loftq_config", "lora_ga_config", "megatron_config", "megatron_core",
      "monteclora_config", "qalora_group_size", "trainable_token_indices", "use_bdlora", "use_qalora",
      "velora_config"};
  return keys;
}

void warn_unknown(const nlohmann::json& peft, const std::set<std::string>& known, const std::string& source) {
  std::string unknown;
  for (auto it = peft.begin(); it != peft.end(); ++it)
    if (!known.count(it.key()) && !common_keys().count(it.key())) unknown += (unknown.empty() ? "" : ", ") + it.key();
  if (!unknown.empty())
    std::fprintf(stderr, "warning: %s: ignoring adapter config keys this version does not know: %s\n", source.c_str(),
                 unknown.c_str());
}

nlohmann::json lora_from_peft(const nlohmann::json& p, const std::string& source) {
  warn_unknown(p, lora_keys(), source);
  const nlohmann::json bias = p.value("bias", nlohmann::json("none"));
  if (!bias.is_null() && (!bias.is_string() || (bias != "none" && bias != "all" && bias != "lora_only")))
    throw ConfigError(source + ": LoRA bias " + bias.dump() + " is not supported (supported: none, all, lora_only)");
  if (p.value("lora_bias", false) == true)
    throw ConfigError(source + ": lora_bias (a bias on lora_B) is not supported");
  nlohmann::json c{{"method", "lora"}};
  c["bias"] = bias.is_null() ? nlohmann::json("none") : bias;
  c["r"] = p.value("r", 8);
  c["alpha"] = p.value("lora_alpha", 8.0);
  c["dropout"] = p.value("lora_dropout", 0.0);
  c["rslora"] = p.value("use_rslora", false);
  c["dora"] = p.value("use_dora", false);
  c["targets"] = p.value("target_modules", nlohmann::json());
  if (c["targets"].is_null()) throw ConfigError(source + ": target_modules is null (PEFT's per-model defaults are not supported; name the modules)");
  c["exclude"] = p.value("exclude_modules", nlohmann::json());
  c["layers"] = p.value("layers_to_transform", nlohmann::json());
  c["rank_pattern"] = p.value("rank_pattern", nlohmann::json::object());
  c["alpha_pattern"] = p.value("alpha_pattern", nlohmann::json::object());
  return c;
}

// Whether an entry of a PEFT module list selects any of `modules`: target_modules match by exact name
// or dotted suffix, IA3's feedforward_modules by a plain endswith.
bool selects_any(const std::vector<std::string>& modules, const std::string& entry, bool plain_endswith) {
  for (const auto& m : modules)
    if (plain_endswith ? m.ends_with(entry) : selects_module(m, entry)) return true;
  return false;
}

// The shortest dotted suffix of `path` (whole name components) that `allowed` accepts; the whole
// path when none shorter is.
template <class Allowed>
std::string shortest_suffix(const std::string& path, Allowed allowed) {
  size_t at = path.size();
  while (true) {
    const size_t dot = at == 0 ? std::string::npos : path.rfind('.', at - 1);
    if (dot == std::string::npos) return path;
    const std::string suffix = path.substr(dot + 1);
    if (allowed(suffix)) return suffix;
    at = dot;
  }
}

// The shortest dotted suffixes of `paths` that match none of `others` (PEFT's list matching), so a
// PEFT config written from them selects exactly these modules.
std::vector<std::string> minimal_suffixes(const std::vector<std::string>& paths,
                                          const std::vector<std::string>& others) {
  std::set<std::string> out;
  for (const auto& path : paths)
    out.insert(shortest_suffix(path, [&](const std::string& s) { return !selects_any(others, s, false); }));
  return {out.begin(), out.end()};
}

// Linear modules a PEFT config must not select: those not attached, except ones its
// layers_to_transform already leaves out.
std::vector<std::string> unattached_linears(TransformerModel& model, const std::vector<std::string>& paths,
                                            const std::vector<int64_t>& layers) {
  std::set<std::string> attached(paths.begin(), paths.end());
  std::vector<std::string> out;
  for (auto& [path, m] : model.named_modules()) {
    if ((m->type_name() != "Linear" && m->type_name() != "Embedding") || attached.count(path)) continue;
    const int64_t l = layer_index(model, path);
    if (!layers.empty() && std::find(layers.begin(), layers.end(), l) == layers.end()) continue;
    out.push_back(path);
  }
  return out;
}

std::vector<int64_t> layer_list(const nlohmann::json& c) {
  std::vector<int64_t> layers;
  if (c.contains("layers") && c["layers"].is_array())
    for (const auto& l : c["layers"]) layers.push_back(l.get<int64_t>());
  else if (c.contains("layers") && c["layers"].is_number_integer())
    layers.push_back(c["layers"].get<int64_t>());
  return layers;
}

nlohmann::json lora_to_peft(const nlohmann::json& c, TransformerModel& model, const std::vector<std::string>& paths) {
  nlohmann::json p;
  p["peft_type"] = "LORA";
  p["r"] = c.value("r", 8);
  p["lora_alpha"] = c.value("alpha", 8.0);
  p["lora_dropout"] = c.value("dropout", 0.0);
  p["use_rslora"] = c.value("rslora", false);
  p["use_dora"] = c.value("dora", false);
  p["rank_pattern"] = c.value("rank_pattern", nlohmann::json::object());
  p["alpha_pattern"] = c.value("alpha_pattern", nlohmann::json::object());
  p["bias"] = c.value("bias", std::string("none"));
  p["init_lora_weights"] = true;
  p["inference_mode"] = true;
  p["layers_pattern"] = nullptr;
  p["layers_to_transform"] = c.contains("layers") && !c["layers"].is_null() && !c["layers"].empty() ? c["layers"] : nlohmann::json();
  p["exclude_modules"] = nullptr;
  // PEFT matches a list by exact name or dotted suffix: the shortest suffixes of the modules we
  // attached to that select nothing else (GPT-2's attn.c_proj and mlp.c_proj share "c_proj").
  bool fan_in_fan_out = false;
  for (const auto& path : paths) {
    auto* layer = dynamic_cast<nn::Linear*>(model.find_module(path));
    fan_in_fan_out = fan_in_fan_out || (layer && layer->fan_in_fan_out);
  }
  const auto& t = c.value("targets", nlohmann::json());
  p["target_modules"] = t.is_string() ? t : nlohmann::json(minimal_suffixes(paths, unattached_linears(model, paths, layer_list(c))));
  p["fan_in_fan_out"] = fan_in_fan_out;
  // The list above already leaves excluded modules out; a regex keeps its exclusions.
  if (t.is_string() && !c.value("exclude", nlohmann::json()).is_null() && !c["exclude"].empty())
    p["exclude_modules"] = c["exclude"];
  p["peft_version"] = "0.21.0";
  return p;
}
// --- IA3 ---
const std::set<std::string>& ia3_keys() {
  static const std::set<std::string> keys{"feedforward_modules", "init_ia3_weights"};
  return keys;
}

nlohmann::json ia3_from_peft(const nlohmann::json& p, const std::string& source) {
  warn_unknown(p, ia3_keys(), source);
  nlohmann::json c{{"method", "ia3"}};
  c["targets"] = p.value("target_modules", nlohmann::json());
  if (c["targets"].is_null()) throw ConfigError(source + ": target_modules is null (PEFT's per-model defaults are not supported; name the modules)");
  c["feedforward"] = p.value("feedforward_modules", nlohmann::json());
  if (c["feedforward"].is_null()) c["feedforward"] = nlohmann::json::array();
  c["exclude"] = p.value("exclude_modules", nlohmann::json());
  c["layers"] = p.value("layers_to_transform", nlohmann::json());
  c["init_ones"] = p.value("init_ia3_weights", true);
  return c;
}

nlohmann::json ia3_to_peft(Delta& delta, TransformerModel& model) {
  const nlohmann::json c = delta.saved_config();
  const std::vector<std::string> paths = delta.attached_modules();
  // Feed-forward modules carry an input scaling [1, in], the others an output scaling [out, 1].
  std::map<std::string, Shape> shapes;
  for (auto& [n, t] : delta.saved_parameters()) shapes[n.substr(0, n.rfind('.'))] = t.shape();
  std::vector<std::string> feedforward, plain;
  bool fan_in_fan_out = false;
  for (const auto& path : paths) {
    auto* layer = static_cast<nn::Linear*>(model.find_module(path));
    fan_in_fan_out = fan_in_fan_out || layer->fan_in_fan_out;
    if (ia3_scales_inputs(shapes[path], *layer))
      feedforward.push_back(path);
    else plain.push_back(path);
  }
  // PEFT requires feedforward_modules to be a subset of target_modules (IA3Config.__post_init__), so
  // a feed-forward module's one entry serves in both lists: it must select no unattached module (by
  // dotted suffix, as target_modules match) and, as PEFT tests feed-forward names with a plain
  // endswith, end no attached module that is not feed-forward.
  // IA3Config has no layers_to_transform: modules of unselected layers must not match either.
  const std::vector<std::string> unattached = unattached_linears(model, paths, {});
  std::set<std::string> target_entries, feedforward_entries;
  for (const auto& path : plain)
    target_entries.insert(
        shortest_suffix(path, [&](const std::string& s) { return !selects_any(unattached, s, false); }));
  for (const auto& path : feedforward) {
    const std::string entry = shortest_suffix(path, [&](const std::string& s) {
      return !selects_any(unattached, s, false) && !selects_any(plain, s, true);
    });
    target_entries.insert(entry);
    feedforward_entries.insert(entry);
  }
  nlohmann::json p;
  p["peft_type"] = "IA3";
  p["target_modules"] = std::vector<std::string>(target_entries.begin(), target_entries.end());
  p["feedforward_modules"] = std::vector<std::string>(feedforward_entries.begin(), feedforward_entries.end());
  p["exclude_modules"] = nullptr;
  p["fan_in_fan_out"] = fan_in_fan_out;
  p["init_ia3_weights"] = c.value("init_ones", true);
  p["inference_mode"] = true;
  // PEFT's IA3Config has no layers_to_transform: a layer selection is already in target_modules
  // (the entries above select none of the unselected layers' modules).
  p["revision"] = nullptr;
  p["auto_mapping"] = nullptr;
  p["peft_version"] = "0.21.0";
  return p;
}

// --- prompt learning (prefix and prompt tuning) ---
const std::set<std::string>& prompt_learning_keys() {
  static const std::set<std::string> keys{"num_virtual_tokens", "token_dim", "num_transformer_submodules",
                                          "num_attention_heads", "num_layers"};
  return keys;
}

void check_submodules(const nlohmann::json& p, const std::string& source) {
  auto n = p.value("num_transformer_submodules", nlohmann::json());
  if (!n.is_null() && n != 1)
    throw ConfigError(source + ": num_transformer_submodules " + n.dump() +
                      " (encoder-decoder models) is not supported (supported: 1)");
}

void copy_if_int(const nlohmann::json& from, const char* key, nlohmann::json& to, const char* as) {
  if (from.contains(key) && from[key].is_number_integer()) to[as] = from[key];
}

// What prefix and prompt configs share: PEFT's prompt-learning keys (plus `extra`) are known, one
// transformer submodule, an integer num_virtual_tokens. Returns our config for `method` with that count.
nlohmann::json prompt_learning_from_peft(const nlohmann::json& p, const std::set<std::string>& extra,
                                         const std::string& source, const char* method) {
  std::set<std::string> known = prompt_learning_keys();
  known.insert(extra.begin(), extra.end());
  warn_unknown(p, known, source);
  check_submodules(p, source);
  nlohmann::json c{{"method", method}};
  if (!p.contains("num_virtual_tokens") || !p["num_virtual_tokens"].is_number_integer())
    throw ConfigError(source + ": num_virtual_tokens must be an integer");
  c["num_virtual_tokens"] = p["num_virtual_tokens"];
  return c;
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

nlohmann::json prompt_learning_common(const nlohmann::json& c, int64_t token_dim, int64_t heads, int64_t layers) {
  nlohmann::json p;
  p["num_virtual_tokens"] = c.value("num_virtual_tokens", int64_t(0));
  p["token_dim"] = token_dim;
  p["num_attention_heads"] = heads;
  p["num_layers"] = layers;
  p["num_transformer_submodules"] = 1;
  p["inference_mode"] = true;
  p["revision"] = nullptr;
  p["auto_mapping"] = nullptr;
  p["peft_version"] = "0.21.0";
  return p;
}

nlohmann::json prefix_to_peft(Delta& delta, TransformerModel& model) {
  const nlohmann::json c = delta.saved_config();
  const ModelConfig& mc = model.config;
  // PEFT sizes the prefix by key/value heads (grouped-query attention).
  nlohmann::json p = prompt_learning_common(c, mc.num_kv_heads * mc.head_dim, mc.num_kv_heads, mc.num_layers);
  p["peft_type"] = "PREFIX_TUNING";
  p["encoder_hidden_size"] = c.value("encoder_hidden_size", mc.num_kv_heads * mc.head_dim);
  p["prefix_projection"] = false;  // saved collapsed
  p["init_weights"] = nullptr;
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

nlohmann::json prompt_to_peft(Delta& delta, TransformerModel& model) {
  const nlohmann::json c = delta.config();
  const ModelConfig& mc = model.config;
  nlohmann::json p = prompt_learning_common(c, mc.hidden_size, mc.num_heads, mc.num_layers);
  p["peft_type"] = "PROMPT_TUNING";
  const std::string init = c.value("init", std::string("random"));
  const bool text = init == "text" && c.contains("init_text") && c["init_text"].is_string();
  p["prompt_tuning_init"] = text ? "TEXT" : init == "vocab" ? "SAMPLE_VOCAB" : "RANDOM";
  p["prompt_tuning_init_text"] = text ? c["init_text"] : nlohmann::json();
  p["tokenizer_name_or_path"] = text && c.contains("tokenizer") ? c["tokenizer"] : nlohmann::json();
  p["tokenizer_kwargs"] = nullptr;
  return p;
}

const char* kSupportedPeft = "LORA, IA3, PREFIX_TUNING, PROMPT_TUNING";
}  // namespace

std::optional<HeadKind> peft_task_head(const nlohmann::json& peft) {
  if (!peft.is_object()) return std::nullopt;
  const nlohmann::json& task = peft.value("task_type", nlohmann::json());
  if (!task.is_string()) return std::nullopt;
  if (task == "SEQ_CLS") return HeadKind::SequenceClassification;
  if (task == "CAUSAL_LM") return HeadKind::CausalLM;
  return std::nullopt;
}

nlohmann::json from_peft_config(const nlohmann::json& peft, const std::string& source) {
  if (!peft.is_object() || !peft.contains("peft_type") || !peft["peft_type"].is_string())
    throw ConfigError(source + ": missing 'peft_type' (supported: " + kSupportedPeft + ")");
  const std::string type = peft["peft_type"];
  if (type == "LORA") return lora_from_peft(peft, source);
  if (type == "IA3") return ia3_from_peft(peft, source);
  if (type == "PREFIX_TUNING") return prefix_from_peft(peft, source);
  if (type == "PROMPT_TUNING") return prompt_from_peft(peft, source);
  throw ConfigError(source + ": peft_type '" + type + "' is not supported (supported: " + kSupportedPeft + ")");
}

nlohmann::json to_peft_config(Delta& delta, TransformerModel& model) {
  const std::string m = delta.method();
  if (m == "lora") return lora_to_peft(delta.config(), model, delta.attached_modules());
  if (m == "ia3") return ia3_to_peft(delta, model);
  if (m == "prefix") return prefix_to_peft(delta, model);
  if (m == "prompt") return prompt_to_peft(delta, model);
  throw ConfigError("the " + m + " delta has no PEFT equivalent (save it in deltatune's format; PEFT supports " +
                    kSupportedPeft + ")");
}

std::string peft_key_to_ours(const std::string& key) {
  // PEFT wraps an adapted layer, so with bias "all" its own bias is saved as <module>.base_layer.bias.
  if (auto module = strip_suffix(key, ".base_layer.bias")) return *module + ".bias";
  return key;
}
std::string ours_key_to_peft(const std::string& key) { return key; }

std::string peft_file_key(const std::string& key) {
  // Prompt learning's one tensor sits at the top level of PEFT's file, outside the model.
  if (key == "prompt_embeddings") return key;
  return "base_model.model." + ours_key_to_peft(key);
}

}  // namespace deltatune::delta
