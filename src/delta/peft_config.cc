// PEFT's adapter format: the translation asks each method (registration's from_peft for a
// peft_type, Delta::peft_config for a delta); the module-list and prompt-learning helpers the
// methods' translations share are here.
#include "delta/peft_config.h"

#include <algorithm>
#include <cstdio>

#include "delta/module_names.h"
#include "deltatune/delta_method.h"
#include "deltatune/error.h"

namespace deltatune::delta {
namespace {
// Keys PEFT 0.21 writes for every adapter; they carry nothing we need to act on.
const std::set<std::string>& common_keys() {
  static const std::set<std::string> keys{
      "peft_type",      "peft_version",      "task_type",           "base_model_name_or_path",
      "revision",       "inference_mode",    "auto_mapping",        "modules_to_save",
      "target_modules", "exclude_modules",   "layers_to_transform", "layers_pattern",
      "fan_in_fan_out", "init_lora_weights", "target_parameters"};
  return keys;
}

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
}  // namespace

void warn_unknown_peft_keys(const nlohmann::json& peft, const std::set<std::string>& known,
                            const std::string& source) {
  std::string unknown;
  for (auto it = peft.begin(); it != peft.end(); ++it)
    if (!known.count(it.key()) && !common_keys().count(it.key()))
      unknown += (unknown.empty() ? "" : ", ") + it.key();
  if (!unknown.empty())
    std::fprintf(stderr, "warning: %s: ignoring adapter config keys this version does not know: %s\n",
                 source.c_str(), unknown.c_str());
}

bool selects_any(const std::vector<std::string>& modules, const std::string& entry, bool plain_endswith) {
  for (const auto& m : modules)
    if (plain_endswith ? m.ends_with(entry) : selects_module(m, entry)) return true;
  return false;
}

std::string shortest_suffix(const std::string& path, const std::function<bool(const std::string&)>& allowed) {
  size_t at = path.size();
  while (true) {
    const size_t dot = at == 0 ? std::string::npos : path.rfind('.', at - 1);
    if (dot == std::string::npos) return path;
    const std::string suffix = path.substr(dot + 1);
    if (allowed(suffix)) return suffix;
    at = dot;
  }
}

std::vector<std::string> minimal_suffixes(const std::vector<std::string>& paths,
                                          const std::vector<std::string>& others) {
  std::set<std::string> out;
  for (const auto& path : paths)
    out.insert(shortest_suffix(path, [&](const std::string& s) { return !selects_any(others, s, false); }));
  return {out.begin(), out.end()};
}

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

void copy_if_int(const nlohmann::json& from, const char* key, nlohmann::json& to, const char* as) {
  if (from.contains(key) && from[key].is_number_integer()) to[as] = from[key];
}

nlohmann::json prompt_learning_from_peft(const nlohmann::json& p, const std::set<std::string>& extra,
                                         const std::string& source, const char* method) {
  std::set<std::string> known = prompt_learning_keys();
  known.insert(extra.begin(), extra.end());
  warn_unknown_peft_keys(p, known, source);
  check_submodules(p, source);
  nlohmann::json c{{"method", method}};
  if (!p.contains("num_virtual_tokens") || !p["num_virtual_tokens"].is_number_integer())
    throw ConfigError(source + ": num_virtual_tokens must be an integer");
  c["num_virtual_tokens"] = p["num_virtual_tokens"];
  return c;
}

nlohmann::json prompt_learning_to_peft(const nlohmann::json& c, int64_t token_dim, int64_t heads,
                                       int64_t layers) {
  nlohmann::json p;
  p["num_virtual_tokens"] = c.value("num_virtual_tokens", int64_t(0));
  p["token_dim"] = token_dim;
  p["num_attention_heads"] = heads;
  p["num_layers"] = layers;
  p["num_transformer_submodules"] = 1;
  p["inference_mode"] = true;
  p["revision"] = nullptr;
  p["auto_mapping"] = nullptr;
  p["peft_version"] = kPeftVersion;
  return p;
}

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
    throw ConfigError(source + ": missing 'peft_type' (supported: " + supported_peft_types() + ")");
  const std::string type = peft["peft_type"];
  if (const DeltaMethod* method = find_peft_method(type)) {
    try {
      return method->from_peft(peft, source);
    } catch (const nlohmann::json::exception& e) {  // a field of an unexpected type ("lora_alpha": false)
      throw ConfigError(source + ": a " + type + " field has the wrong type (" + e.what() + ")");
    }
  }
  throw ConfigError(source + ": peft_type '" + type +
                    "' is not supported (supported: " + supported_peft_types() + ")");
}

nlohmann::json to_peft_config(Delta& delta, TransformerModel& model) { return delta.peft_config(model); }

std::string peft_key_to_ours(const std::string& key) {
  // PEFT wraps an adapted layer, so with bias "all" its own bias is saved as <module>.base_layer.bias.
  if (auto module = strip_suffix(key, ".base_layer.bias")) return *module + ".bias";
  return key;
}

std::string peft_model_key(const std::string& key) { return "base_model.model." + key; }

}  // namespace deltatune::delta
