#pragma once
// Translation between PEFT's adapter_config.json and our delta configs, per peft_type.
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "deltatune/delta.h"

namespace deltatune::delta {

// PEFT config -> our config ({"method": ...}). Unknown peft_type: ConfigError listing the supported.
// Unknown keys (from newer PEFT versions) warn on stderr and are ignored.
nlohmann::json from_peft_config(const nlohmann::json& peft, const std::string& source);
// The task head an adapter was saved for, from its task_type: SEQ_CLS a sequence classifier,
// CAUSAL_LM a causal LM; none for other or missing task types (the model's config decides).
std::optional<HeadKind> peft_task_head(const nlohmann::json& peft);
// Our delta -> PEFT config fields (without base_model_name_or_path, task_type, modules_to_save).
nlohmann::json to_peft_config(Delta& delta, TransformerModel& model);
// Tensor key names: PEFT's (without "base_model.model.") <-> ours.
std::string peft_key_to_ours(const std::string& key);
std::string ours_key_to_peft(const std::string& key);
// The key a tensor of ours has in PEFT's adapter_model.safetensors ("base_model.model." + key, but
// prompt learning's "prompt_embeddings" as is).
std::string peft_file_key(const std::string& key);

}  // namespace deltatune::delta
