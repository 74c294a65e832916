#pragma once
// What the delta methods' files share: hook bookkeeping, and the factories one method builds another
// with (UniPELT's parts, LoRA's trained biases). make_delta finds methods by their registrations
// (deltatune/delta_method.h, src/delta/method_registry.cc).
#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "deltatune/delta.h"

namespace deltatune::delta {

// Takes one hook out of a layer's hook list (linear, embedding or model-level lists alike).
template <class HookList, class Hook>
void remove_hook(HookList& hooks, const Hook& hook) {
  hooks.erase(std::remove(hooks.begin(), hooks.end(), hook), hooks.end());
}

// The hooks a delta put on linear layers: installed with its name and on/off state, switched
// together, and all taken out again at detach.
class LinearHooks {
 public:
  void install(nn::Linear* layer, std::shared_ptr<nn::LinearHook> hook, const std::string& owner,
               bool enabled) {
    hook->owner = owner;
    hook->enabled = enabled;
    layer->hooks.push_back(hook);
    installed_.emplace_back(layer, std::move(hook));
  }
  void set_enabled(bool on) {
    for (auto& [_, hook] : installed_) hook->enabled = on;
  }
  void remove_all() {
    for (auto& [layer, hook] : installed_) remove_hook(layer->hooks, hook);
    installed_.clear();
  }

 private:
  std::vector<std::pair<nn::Linear*, std::shared_ptr<nn::LinearHook>>> installed_;
};

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
