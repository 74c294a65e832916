#pragma once
// Folding a delta into the base weights (LoRA, DoRA, IA3 where mergeable) and taking it out again.
#include <filesystem>

#include "deltatune/delta.h"

namespace deltatune::delta {

// W += scaling * B A for each LoRA target (DoRA: W = m / ||W + s B A|| * (W + s B A)); the delta's
// hooks are then detached. Throws ConfigError for methods that cannot be merged, saying why.
void merge_into(TransformerModel& model, Delta& delta);
// The inverse of merge_into for LoRA (W -= scaling * B A): restores the base within float rounding.
void unmerge_from(TransformerModel& model, Delta& delta);
// Writes the model as a Hugging Face checkpoint folder (config.json, model.safetensors, and the
// tokenizer files copied from `source_dir`), loadable by transformers.
void save_checkpoint(TransformerModel& model, const std::filesystem::path& source_dir, const std::filesystem::path& out_dir);

}  // namespace deltatune::delta
