#pragma once
// The delta methods' factories: one file per method, listed here and in make_delta (delta.cc).
#include <memory>
#include <nlohmann/json.hpp>

#include "deltatune/delta.h"

namespace deltatune::delta {

std::unique_ptr<Delta> make_lora(const nlohmann::json& config);

}  // namespace deltatune::delta
