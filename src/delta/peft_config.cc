#include "delta/peft_config.h"

#include <cstdio>
#include <set>

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
  const std::string bias = p.value("bias", std::string("none"));
  if (bias != "none") throw ConfigError(source + ": LoRA bias '" + bias + "' is not supported yet (supported: none)");
  nlohmann::json c{{"method", "lora"}};
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
  p["bias"] = "none";
  p["init_lora_weights"] = true;
  p["inference_mode"] = true;
  p["layers_pattern"] = nullptr;
  p["layers_to_transform"] = c.contains("layers") && !c["layers"].is_null() && !c["layers"].empty() ? c["layers"] : nlohmann::json();
  p["exclude_modules"] = nullptr;
  // PEFT matches a list by exact name or dotted suffix: the last path components we attached to.
  std::set<std::string> names;
  bool fan_in_fan_out = false;
  for (const auto& path : paths) {
    names.insert(path.substr(path.rfind('.') + 1));
    auto* layer = dynamic_cast<nn::Linear*>(model.find_module(path));
    fan_in_fan_out = fan_in_fan_out || (layer && layer->fan_in_fan_out);
  }
  const auto& t = c.value("targets", nlohmann::json());
  p["target_modules"] = t.is_string() ? t : nlohmann::json(std::vector<std::string>(names.begin(), names.end()));
  p["fan_in_fan_out"] = fan_in_fan_out;
  if (!c.value("exclude", nlohmann::json()).is_null() && !c["exclude"].empty()) p["exclude_modules"] = c["exclude"];
  p["peft_version"] = "0.21.0";
  return p;
}
}  // namespace

nlohmann::json from_peft_config(const nlohmann::json& peft, const std::string& source) {
  if (!peft.is_object() || !peft.contains("peft_type") || !peft["peft_type"].is_string())
    throw ConfigError(source + ": missing 'peft_type'");
  const std::string type = peft["peft_type"];
  if (type == "LORA") return lora_from_peft(peft, source);
  throw ConfigError(source + ": peft_type '" + type + "' is not supported (supported: LORA)");
}

nlohmann::json to_peft_config(Delta& delta, TransformerModel& model) {
  if (delta.method() == "lora") return lora_to_peft(delta.config(), model, delta.attached_modules());
  throw ConfigError("the " + delta.method() + " delta has no PEFT equivalent (save it in deltatune's format)");
}

std::string peft_key_to_ours(const std::string& key) { return key; }
std::string ours_key_to_peft(const std::string& key) { return key; }

}  // namespace deltatune::delta
