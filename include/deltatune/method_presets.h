#pragma once
// The method names every command takes (`train --method`, `sweep --methods`, and what comes later),
// in one table: each name stands for a delta config and a default learning rate, so a name means
// the same run wherever it is given.
//
//   const MethodPreset& m = method_preset("houlsby");   // ConfigError listing every name if unknown
//   if (m.trains == MethodPreset::Trains::Delta) delta = delta::make_delta(m.delta_config);
//   options.lr = m.lr;
//
// The names: `full` (every weight), `head` and `none` (the classification head alone), every delta
// method of make_delta under its own name (its registration's train_config and default learning rate,
// deltatune/delta_method.h: its config's defaults, except that `lora` carries alpha 16, the setting
// the README's demo was measured with), and named presets of a method config (`houlsby`,
// `pfeiffer`, `unipelt-ap`, `unipelt-apl`). A delta config file ({"method": "lora", ...}) is not a
// preset: its missing fields take the method's own defaults (PEFT's where PEFT has the method).
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace deltatune {

struct MethodPreset {
  enum class Trains { Full, Head, Delta };
  std::string name;  // what --method takes
  Trains trains = Trains::Delta;
  nlohmann::json delta_config;  // the delta to attach (null unless trains == Delta)
  double lr = 2e-3;             // default peak learning rate
  std::string description;
};

// Every accepted name, in a fixed order: full, head, none, the delta methods (make_delta's order),
// then the named presets.
const std::vector<MethodPreset>& method_presets();
// By name; an unknown name is a ConfigError that lists every accepted name.
const MethodPreset& method_preset(const std::string& name);
// Nullptr when the name is not in the table.
const MethodPreset* find_method_preset(const std::string& name);
// Every accepted name, comma-separated in table order (for errors and help texts).
std::string method_preset_names();

}  // namespace deltatune
