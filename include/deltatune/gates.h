#pragma once
// Reading UniPELT's gates: each gate is one scalar per example (the mean over the example's real
// tokens of sigmoid(Linear(h, 1))) in each layer for each submodule (adapter, prefix, lora.<module>).
// While recording, every forward adds its examples' gate values; the means over a dataset say which
// method the model chose for a task.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "deltatune/delta.h"

namespace deltatune::delta {

struct GateMean {
  int64_t layer = -1;
  std::string submodule;  // "adapter", "prefix", "lora.query", ...
  std::string module;     // the module path the gate belongs to
  double mean = 0;        // over the examples seen while recording
  int64_t examples = 0;
};

// True when `d` (or a member of a combination) has gates.
bool has_gates(Delta& d);
// Starts (clearing earlier sums) or stops recording the gates of `d` and of its members.
void record_gates(Delta& d, bool on);
// The recorded means, by layer then submodule.
std::vector<GateMean> gate_means(Delta& d);
// {"layers": [{"layer": 0, "adapter": 0.41, "prefix": 0.52, ...}, ...], "mean": {...}, "examples": N}
nlohmann::json gates_json(const std::vector<GateMean>& gates);
// A table: one row per layer, one column per submodule, and a mean row.
std::string gates_table(const std::vector<GateMean>& gates);

}  // namespace deltatune::delta
