#pragma once
// `deltatune forward --mixed-delta NAME=DIR ...`: one forward pass in which each example uses its own
// delta (serve::MixedBatch). The input JSON's "deltas" list names each row's delta (null or "" for
// the base).
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "deltatune/model.h"

namespace deltatune::cli {

ModelOutput mixed_forward(const std::string& model_dir, const std::string& head,
                          const std::vector<std::string>& specs, const nlohmann::json& example_deltas,
                          const ModelInput& input, const std::string& input_file);

}  // namespace deltatune::cli
