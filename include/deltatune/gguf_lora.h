#pragma once
// LoRA as llama.cpp's GGUF adapter (what convert_lora_to_gguf.py writes, what `llama-cli --lora`
// reads): general.type "adapter", adapter.type "lora", adapter.lora.alpha, and for each adapted
// weight `<gguf name>.lora_a` ([r, in], ggml dims {in, r}) and `.lora_b` ([out, r]), the q/k rows of
// lora_b permuted as the base's weights are. llama.cpp scales by alpha / r (r per tensor).
//
//   gguf::write_lora_adapter(*loaded.deltas[0], *loaded.model, "adapter.gguf");
//   auto lora = gguf::attach_lora_adapter("adapter.gguf", *model);   // the same outputs again
#include <filesystem>
#include <memory>

#include "deltatune/delta.h"
#include "deltatune/gguf.h"
#include "deltatune/model.h"

namespace deltatune::gguf {

// Writes the LoRA attached to `model` (ours or a PEFT adapter's, loaded) as a GGUF adapter, its
// matrices in `type` (F32, F16, BF16). ConfigError for what the format cannot hold: another method,
// DoRA, trained biases, embedding LoRA, alpha_pattern, rsLoRA with per-module ranks, a base outside
// the llama family.
void write_lora_adapter(delta::Delta& lora, const TransformerModel& model, const std::filesystem::path& out,
                        GgmlType type = GgmlType::F32);

// Reads a GGUF LoRA adapter and attaches it to `model` (lora_b's permutation undone). IoError naming
// the file when it is no LoRA adapter, was made for another architecture, or names unknown tensors.
std::unique_ptr<delta::Delta> attach_lora_adapter(const std::filesystem::path& file, TransformerModel& model);

// Whether `file` is a GGUF file whose general.type is "adapter".
bool is_gguf_adapter(const std::filesystem::path& file);

}  // namespace deltatune::gguf
