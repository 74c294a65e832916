#pragma once
// Saving and loading deltas: our format (delta_config.json + delta.safetensors, with the base model's
// name and a fingerprint of its weights) and Hugging Face PEFT's adapter format
// (adapter_config.json + adapter_model.safetensors, exact key names), read and written.
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/delta.h"

namespace deltatune::delta {

// Methods whose result is a set of the model's own tensors rather than a delta: "full" (every
// weight) and "head" (the task head alone). `train` saves them in our delta layout.
bool saves_model_weights(const std::string& method);

struct SavedDelta {
  std::unique_ptr<Delta> delta;        // null for a full or head run (saves_model_weights(method))
  std::map<std::string, Tensor> head;  // model parameters saved with it (task head; all of a full run)
  nlohmann::json config;               // as read
  std::string format;                  // "deltatune" or "peft"
  std::string method;                  // "lora", ..., "full", "head"
};

// What a saved delta needs of the model it loads into: its task head, if any, and what it is.
struct DeltaRequirements {
  std::optional<HeadKind> head;  // ours: as saved; PEFT: from task_type (SEQ_CLS, CAUSAL_LM)
  std::optional<int64_t> num_labels;
  std::string method;  // our format's method ("lora", "full", "head", ...); empty for a PEFT adapter
  // Whether it trained the base's linear weights (a full run, last-layers): a quantised base is then
  // quantised after the delta is read, not as the base loads (LoadOptions::quantize).
  bool trains_linear_weights = false;
};
DeltaRequirements peek_delta(const std::filesystem::path& dir);

// Reads a delta folder in either format (detected from its files) and attaches it to `model`,
// loading its parameters and the saved head weights. A full or head run attaches nothing: its saved
// tensors replace the model's (every weight, or the head). Warns when the base fingerprint differs.
SavedDelta load_delta(const std::filesystem::path& dir, TransformerModel& model);
// The model parameters a loaded delta trained: those saved with it (the head; every weight of a
// full run) and the model tensors it trains in place (bitfit, ln, last-layers). --bf16 keeps them
// at their precision (nn::store_frozen_weights).
std::vector<std::string> trained_model_parameters(const SavedDelta& saved, TransformerModel& model);
// Our format. `head` holds model parameters to save alongside (e.g. a classification head).
void save_delta(const std::filesystem::path& dir, Delta& delta, TransformerModel& model,
                const std::map<std::string, Tensor>& head = {});
// PEFT's format, for methods PEFT has (LoRA, IA3, prefix and prompt tuning: Delta::peft_config; the
// rest are refused with a ConfigError naming what PEFT supports).
void save_peft(const std::filesystem::path& dir, Delta& delta, TransformerModel& model,
               const std::map<std::string, Tensor>& head = {});
// A short, stable fingerprint of the base weights (hash of names, shapes and sampled values).
std::string base_fingerprint(TransformerModel& model);
// The name a saved delta records for its base (PEFT's base_model_name_or_path): the config's
// _name_or_path, which load_pretrained sets to the folder as given; empty when unknown.
std::string base_model_name(const TransformerModel& model);
// Throws a ConfigError saying so in plain words when a delta_config.json records another model type
// (base_model_type, or an old delta's base_model naming a type) than `model` has.
void check_delta_architecture(const nlohmann::json& delta_config, const std::filesystem::path& dir,
                              TransformerModel& model);
// The same check before the model is loaded (a delta's head may not even exist on another
// architecture): the delta folder against the model folder's config.json.
void check_delta_fits(const std::filesystem::path& delta_dir, const std::filesystem::path& model_dir);

}  // namespace deltatune::delta
