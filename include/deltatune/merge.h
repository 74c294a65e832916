#pragma once
// Folding a delta into the base weights (LoRA, DoRA, IA3 where mergeable) and taking it out again.
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/delta.h"

namespace deltatune::delta {

// W += scaling * B A for each LoRA target (DoRA: W = m / ||W + s B A|| * (W + s B A)); LoRA on an
// embedding table adds s (B A)^T to it; biases a LoRA trained (bias "all"/"lora_only") replace the
// model's; IA3 multiplies the weight's rows (and the bias) or, on feed-forward layers, its columns by
// its vector. The delta's hooks are then detached. Throws ConfigError for methods that cannot be
// merged (UniPELT's gated LoRA, adapters, prefixes, ...), saying why. Each method knows its own rule:
// these call Delta::merge_into / unmerge_from (Delta::can_merge says which can).
void merge_into(TransformerModel& model, Delta& delta);
// The inverse of merge_into for LoRA (W -= scaling * B A) and IA3 (divides by the vector): restores the
// base within float rounding. DoRA and LoRA with trained biases cannot be undone (reload the base).
void unmerge_from(TransformerModel& model, Delta& delta);
struct CheckpointOptions {
  // The weights' dtype; default: the base checkpoint's (its config's dtype, else its tensors').
  std::optional<DType> dtype;
  // Class names by id for a sequence-classification model (written as id2label / label2id); empty:
  // the model config's.
  std::vector<std::string> labels;
};
// Writes the model as a Hugging Face checkpoint folder (config.json, model.safetensors, and the
// tokenizer files copied from `source_dir`, the base's folder), loadable by transformers as the
// class of the model's head (e.g. BertForSequenceClassification with its label map).
void save_checkpoint(TransformerModel& model, const std::filesystem::path& source_dir,
                     const std::filesystem::path& out_dir, const CheckpointOptions& options = {});
// transformers' class name for a model type and head: "BertForSequenceClassification", "GPT2LMHeadModel".
std::string architecture_name(const std::string& model_type, HeadKind head);

}  // namespace deltatune::delta
