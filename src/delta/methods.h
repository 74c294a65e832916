#pragma once
// The delta methods' factories: one file per method, listed here and in make_delta (delta.cc).
#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>

#include "deltatune/delta.h"

namespace deltatune::delta {

// Takes one hook out of a layer's hook list (linear, embedding or model-level lists alike).
template <class HookList, class Hook>
void remove_hook(HookList& hooks, const Hook& hook) {
  hooks.erase(std::remove(hooks.begin(), hooks.end(), hook), hooks.end());
}

std::unique_ptr<Delta> make_lora(const nlohmann::json& config);
std::unique_ptr<Delta> make_ia3(const nlohmann::json& config);
std::unique_ptr<Delta> make_prefix(const nlohmann::json& config);
std::unique_ptr<Delta> make_prompt(const nlohmann::json& config);
std::unique_ptr<Delta> make_adapter(const nlohmann::json& config);
std::unique_ptr<Delta> make_compacter(const nlohmann::json& config);     // adapter.cc
std::unique_ptr<Delta> make_compacter_pp(const nlohmann::json& config);  // adapter.cc
std::unique_ptr<Delta> make_lowrank_adapter(const nlohmann::json& config);
// Specification deltas (bitfit.cc): they train the model's own tensors.
std::unique_ptr<Delta> make_bitfit(const nlohmann::json& config);
std::unique_ptr<Delta> make_ln_tuning(const nlohmann::json& config);
std::unique_ptr<Delta> make_last_layers(const nlohmann::json& config);
// Sparse weight differences (sparse.cc): diff pruning and learned binary masks.
std::unique_ptr<Delta> make_diff_pruning(const nlohmann::json& config);
std::unique_ptr<Delta> make_mask(const nlohmann::json& config);
// Deltas made of deltas: UniPELT's gated adapter + prefix + LoRA (unipelt.cc), and any union of
// deltas (combination.cc; a JSON list of configs is one too).
std::unique_ptr<Delta> make_unipelt(const nlohmann::json& config);
std::unique_ptr<Delta> make_combination(const nlohmann::json& config);
// LoRA's rank and scaling for one module path (rank_pattern / alpha_pattern / rsLoRA applied).
struct LoraShape {
  int64_t r;
  double scaling;
};
LoraShape lora_shape(const nlohmann::json& lora_config, const std::string& path);

}  // namespace deltatune::delta
