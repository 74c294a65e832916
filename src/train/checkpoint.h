#pragma once
// Training checkpoints: the trainable tensors, the optimizer's state and the loop's position, in one
// folder written atomically (staged beside it, then swapped in). And the best dev weights.
//   DIR/params.safetensors     trainable tensors by name
//   DIR/optimizer.safetensors  Optimizer::state_tensors()
//   DIR/state.json             step, epoch, position in the epoch, best score, ... (the trainer's)
#include <filesystem>
#include <nlohmann/json.hpp>

#include "deltatune/optim.h"
#include "deltatune/trainer.h"

namespace deltatune::train_detail {

void save_checkpoint(const std::filesystem::path& dir, const NamedParams& params, const Optimizer& optimizer,
                     const nlohmann::json& state);
bool checkpoint_exists(const std::filesystem::path& dir);
// state.json alone: what the trainer checks (e.g. the optimizer) before loading any tensor.
nlohmann::json read_checkpoint_state(const std::filesystem::path& dir);
// Loads the tensors into `params` (same names and shapes, or an IoError naming the difference) and the
// optimizer's state; state.json is read_checkpoint_state's.
void load_checkpoint_weights(const std::filesystem::path& dir, const NamedParams& params,
                             Optimizer& optimizer);

// The best dev weights, DIR = RUN/best: the delta folder save_trained writes (what sweep and users
// load) and, for a delta, params.safetensors with its trainable tensors as they are. Restoring must
// use those: a delta's saved form may be reduced (diff pruning and masks save the projected sparse
// difference, prefix tuning its collapsed MLP), which is what inference needs, not what trains.
void save_best(const std::filesystem::path& dir, const train::TrainTarget& target, const NamedParams& params);
// Puts the tensors save_best wrote back into `params` (names and shapes checked).
void restore_best(const std::filesystem::path& dir, const train::TrainTarget& target,
                  const NamedParams& params);

}  // namespace deltatune::train_detail
