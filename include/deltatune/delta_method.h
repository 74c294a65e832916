#pragma once
// The delta methods make_delta knows, each registered by its own file: its name, how it is built from
// a config, the config `train --method NAME` attaches, its default learning rate, and PEFT's name for
// it (peft_type) with the reading of PEFT's adapter_config.json into our config. What an attached
// delta knows of itself (merging, its PEFT config, mixed batches) are virtual functions of Delta.
//
// A method outside the library is one file: a Delta subclass and one registration object,
//
//   std::unique_ptr<delta::Delta> make_scale(const nlohmann::json& c) { return std::make_unique<Scale>(c); }
//   const delta::MethodRegistration scale_method({.name = "scale", .make = make_scale,
//                                                 .description = "a learned scale per layer"});
//
// after which make_delta({"method": "scale"}), `train --method scale` and load_delta know it.
// Registration happens during static initialisation, before the method table is first read. The
// library's own methods are listed in one place (src/delta/method_registry.cc), so that a static link
// keeps them.
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "deltatune/delta.h"

namespace deltatune::delta {

// The peak learning rate a delta trains with unless told otherwise: a delta alone needs a much larger
// step than the full model. Measured on bert-mini / sentiment, 3 epochs, batch 16 (test accuracy):
// LoRA 5e-4 0.73, 1e-3 0.76, 2e-3 0.79, 5e-3 0.77.
inline constexpr double kDeltaLearningRate = 2e-3;

struct DeltaMethod {
  std::string name{};  // the config's "method"
  std::function<std::unique_ptr<Delta>(const nlohmann::json& config)> make{};
  std::string description{};  // one line for help texts and the method table
  // PEFT's peft_type for the method ("" when PEFT has none) and its config read as ours (source names
  // the file in errors). A method with a peft_type overrides Delta::peft_config.
  std::string peft_type{};
  std::function<nlohmann::json(const nlohmann::json& peft, const std::string& source)> from_peft{};
  double default_lr = kDeltaLearningRate;
  nlohmann::json train_config{};  // what `train --method NAME` attaches; null: {"method": NAME}
};

// Adds a method; a name or peft_type already registered is an Error.
void register_method(DeltaMethod method);
// Every method, the library's in a fixed order first, then those registered by other code.
const std::vector<DeltaMethod>& delta_methods();
// By name or by PEFT's peft_type; nullptr when none has it.
const DeltaMethod* find_delta_method(const std::string& name);
const DeltaMethod* find_peft_method(const std::string& peft_type);
// The peft_types of every method that has one, comma-separated (for error messages).
std::string supported_peft_types();

// Registers a method when constructed: one static object in the method's own file.
struct MethodRegistration {
  explicit MethodRegistration(DeltaMethod method) { register_method(std::move(method)); }
};

}  // namespace deltatune::delta
