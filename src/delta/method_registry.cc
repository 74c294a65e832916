// The registry of delta methods (deltatune/delta_method.h). The library's own methods are listed
// here, the one place that names them all: each file defines its registration (NAME_method()), and
// this list keeps every one in a static link, where an object file nothing refers to would be dropped.
#include <string>

#include "deltatune/delta_method.h"
#include "deltatune/error.h"

namespace deltatune::delta {

DeltaMethod lora_method();             // lora.cc
DeltaMethod ia3_method();              // ia3.cc
DeltaMethod prefix_method();           // prefix.cc
DeltaMethod prompt_method();           // prompt.cc
DeltaMethod adapter_method();          // adapter.cc
DeltaMethod bitfit_method();           // bitfit.cc
DeltaMethod ln_tuning_method();        // bitfit.cc
DeltaMethod last_layers_method();      // bitfit.cc
DeltaMethod compacter_method();        // adapter.cc
DeltaMethod compacter_pp_method();     // adapter.cc
DeltaMethod lowrank_adapter_method();  // adapter.cc
DeltaMethod diff_pruning_method();     // sparse.cc
DeltaMethod mask_method();             // sparse.cc
DeltaMethod unipelt_method();          // unipelt.cc
DeltaMethod combination_method();      // combination.cc
DeltaMethod intrinsic_method();        // intrinsic.cc

namespace {
void add(std::vector<DeltaMethod>& methods, DeltaMethod method) {
  if (method.name.empty() || !method.make) throw Error("a delta method needs a name and a factory");
  for (const auto& m : methods) {
    if (m.name == method.name) throw Error("delta method '" + method.name + "' is registered twice");
    if (!method.peft_type.empty() && m.peft_type == method.peft_type)
      throw Error("peft_type '" + method.peft_type + "' is registered twice (" + m.name + ", " + method.name +
                  ")");
  }
  if (!method.peft_type.empty() && !method.from_peft)
    throw Error("delta method '" + method.name + "' names a peft_type but cannot read PEFT's config");
  methods.push_back(std::move(method));
}

std::vector<DeltaMethod>& registry() {
  static std::vector<DeltaMethod> methods = [] {
    std::vector<DeltaMethod> out;
    for (auto* builtin :
         {lora_method, ia3_method, prefix_method, prompt_method, adapter_method, bitfit_method,
          ln_tuning_method, last_layers_method, compacter_method, compacter_pp_method, lowrank_adapter_method,
          diff_pruning_method, mask_method, unipelt_method, combination_method, intrinsic_method})
      add(out, builtin());
    return out;
  }();
  return methods;
}
}  // namespace

void register_method(DeltaMethod method) { add(registry(), std::move(method)); }

const std::vector<DeltaMethod>& delta_methods() { return registry(); }

const DeltaMethod* find_delta_method(const std::string& name) {
  for (const auto& m : registry())
    if (m.name == name) return &m;
  return nullptr;
}

const DeltaMethod* find_peft_method(const std::string& peft_type) {
  if (peft_type.empty()) return nullptr;
  for (const auto& m : registry())
    if (m.peft_type == peft_type) return &m;
  return nullptr;
}

std::string supported_peft_types() {
  std::string out;
  for (const auto& m : registry())
    if (!m.peft_type.empty()) out += (out.empty() ? "" : ", ") + m.peft_type;
  return out;
}

}  // namespace deltatune::delta
