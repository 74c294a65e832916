#pragma once
// PEFT's adapter_config.json and tensor keys: the translation to and from our configs, which asks each
// method (its registration's from_peft, Delta::peft_config), and the helpers methods share to do it.
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "deltatune/delta.h"

namespace deltatune::delta {

// PEFT config -> our config ({"method": ...}), by the method registered for its peft_type. Unknown
// peft_type: ConfigError listing the supported. Unknown keys (newer PEFT versions) warn and are ignored.
nlohmann::json from_peft_config(const nlohmann::json& peft, const std::string& source);
// The task head an adapter was saved for, from its task_type: SEQ_CLS a sequence classifier,
// CAUSAL_LM a causal LM; none for other or missing task types (the model's config decides).
std::optional<HeadKind> peft_task_head(const nlohmann::json& peft);
// Our delta -> PEFT config fields (without base_model_name_or_path, task_type, modules_to_save):
// delta.peft_config(model), which throws for methods PEFT does not have.
nlohmann::json to_peft_config(Delta& delta, TransformerModel& model);
// Tensor key names: PEFT's (without "base_model.model.") -> ours; a layer PEFT wraps keeps its own
// bias as <module>.base_layer.bias.
std::string peft_key_to_ours(const std::string& key);
// "base_model.model." + key: where PEFT's file keeps a tensor of the model's modules.
std::string peft_model_key(const std::string& key);

// --- helpers for the methods' own translations ---
// The version written into adapter_config.json.
inline constexpr const char* kPeftVersion = "0.21.0";
// Warns on stderr about keys of `peft` that are neither PEFT's common keys nor in `known`.
void warn_unknown_peft_keys(const nlohmann::json& peft, const std::set<std::string>& known,
                            const std::string& source);
// Whether an entry of a PEFT module list selects any of `modules`: target_modules match by exact name
// or dotted suffix, IA3's feedforward_modules by a plain endswith.
bool selects_any(const std::vector<std::string>& modules, const std::string& entry, bool plain_endswith);
// The shortest dotted suffix of `path` (whole name components) that `allowed` accepts; the whole path
// when none shorter is.
std::string shortest_suffix(const std::string& path, const std::function<bool(const std::string&)>& allowed);
// The shortest dotted suffixes of `paths` that match none of `others` (PEFT's list matching), so a
// PEFT config written from them selects exactly these modules.
std::vector<std::string> minimal_suffixes(const std::vector<std::string>& paths,
                                          const std::vector<std::string>& others);
// Linear and embedding modules a PEFT config must not select: those not attached, except ones its
// layers_to_transform (`layers`, empty: all) already leaves out.
std::vector<std::string> unattached_linears(TransformerModel& model, const std::vector<std::string>& paths,
                                            const std::vector<int64_t>& layers);
// Our config's "layers" as a list (empty: every layer).
std::vector<int64_t> layer_list(const nlohmann::json& config);
// Prompt learning (prefix and prompt tuning): PEFT's prompt-learning keys (plus `extra`) are known,
// one transformer submodule, an integer num_virtual_tokens; returns our config for `method` with it.
nlohmann::json prompt_learning_from_peft(const nlohmann::json& peft, const std::set<std::string>& extra,
                                         const std::string& source, const char* method);
// The fields prefix and prompt tuning's PEFT configs share.
nlohmann::json prompt_learning_to_peft(const nlohmann::json& config, int64_t token_dim, int64_t heads,
                                       int64_t layers);
// to[as] = from[key] when that is an integer.
void copy_if_int(const nlohmann::json& from, const char* key, nlohmann::json& to, const char* as);

}  // namespace deltatune::delta
