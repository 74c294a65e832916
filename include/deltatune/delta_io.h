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

struct SavedDelta {
  std::unique_ptr<Delta> delta;
  std::map<std::string, Tensor> head;  // model parameters saved with the delta (task heads)
  nlohmann::json config;               // as read
  std::string format;                  // "deltatune" or "peft"
};

// What a saved delta needs of the model it loads into: its task head, if any.
struct DeltaRequirements {
  std::optional<HeadKind> head;
  std::optional<int64_t> num_labels;
};
DeltaRequirements peek_delta(const std::filesystem::path& dir);

// Reads a delta folder in either format (detected from its files) and attaches it to `model`,
// loading its parameters and the saved head weights. Warns when the base fingerprint differs.
SavedDelta load_delta(const std::filesystem::path& dir, TransformerModel& model);
// Our format. `head` holds model parameters to save alongside (e.g. a classification head).
void save_delta(const std::filesystem::path& dir, Delta& delta, TransformerModel& model,
                const std::map<std::string, Tensor>& head = {});
// PEFT's format (LoRA, IA3, prefix and prompt tuning).
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
