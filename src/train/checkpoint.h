#pragma once
// Training checkpoints: the trainable tensors, the optimizer's state and the loop's position, in one
// folder written atomically (staged beside it, then swapped in).
//   DIR/params.safetensors     trainable tensors by name
//   DIR/optimizer.safetensors  Optimizer::state_tensors()
//   DIR/state.json             step, epoch, position in the epoch, best score, ... (the trainer's)
#include <filesystem>
#include <nlohmann/json.hpp>

#include "deltatune/optim.h"

namespace deltatune::train_detail {

void save_checkpoint(const std::filesystem::path& dir, const NamedParams& params, const Optimizer& optimizer,
                     const nlohmann::json& state);
bool checkpoint_exists(const std::filesystem::path& dir);
// Loads tensors into `params` (same names and shapes, or an IoError naming the difference) and the
// optimizer's state; returns state.json.
nlohmann::json load_checkpoint(const std::filesystem::path& dir, const NamedParams& params,
                               Optimizer& optimizer);

}  // namespace deltatune::train_detail
