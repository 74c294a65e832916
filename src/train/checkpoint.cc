#include "train/checkpoint.h"

#include <set>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/json_file.h"
#include "deltatune/safetensors.h"
#include "train/files.h"

namespace fs = std::filesystem;

namespace deltatune::train_detail {
namespace {

void write_named_tensors(const fs::path& file, const NamedParams& params) {
  std::map<std::string, Tensor> tensors;
  for (const auto& [name, t] : params) tensors[name] = t.detach();
  write_safetensors(file, tensors);
}

// Copies each tensor of `file` into the run's parameter of that name: the same names and shapes, or an
// IoError naming the difference.
void load_named_tensors(const fs::path& file, const NamedParams& params) {
  TensorFile saved = read_safetensors(file);
  std::set<std::string> expected;
  NoGradGuard guard;
  for (const auto& [name, param] : params) {
    expected.insert(name);
    auto it = saved.tensors.find(name);
    if (it == saved.tensors.end())
      throw IoError(file.string() + ": no tensor '" + name + "' (it was written by another configuration)");
    if (it->second.shape() != param.shape())
      throw IoError(file.string() + ": tensor '" + name + "' has shape " + shape_str(it->second.shape()) +
                    " but the run's is " + shape_str(param.shape()));
    Tensor target = param;
    target.copy_(it->second);
  }
  for (const auto& [name, _] : saved.tensors)
    if (!expected.count(name))
      throw IoError(file.string() + ": tensor '" + name +
                    "' is not trained by this run (another configuration?)");
}

const char* const kBestParams = "params.safetensors";

// state.json as the trainer wrote it: an object whose keys have the types TrainLoop::state_json gives
// them. A damaged or hand-edited file is refused here, naming the key, so the resume's reads of it
// cannot throw the JSON library's type errors.
void check_state(const nlohmann::json& state, const fs::path& file) {
  if (!state.is_object()) throw IoError(file.string() + ": expected a JSON object (a checkpoint's state)");
  auto bad = [&](const std::string& key, const char* want) {
    throw IoError(file.string() + ": '" + key + "' must be " + want + ", got " + state[key].dump());
  };
  for (const char* key : {"step", "epoch", "update_in_epoch"}) {
    if (!state.contains(key))
      throw IoError(file.string() + ": missing '" + key + "' (not a checkpoint's state)");
    if (!state[key].is_number_integer() || state[key].get<int64_t>() < 0) bad(key, "an integer >= 0");
  }
  for (const char* key : {"bad_evals", "best_step", "seed", "batch_size", "grad_accum", "processes",
                          "total_steps", "train_size"})
    if (state.contains(key) && !state[key].is_number_integer()) bad(key, "an integer");
  for (const char* key : {"optimizer", "method"})
    if (state.contains(key) && !state[key].is_string()) bad(key, "a string");
  for (const char* key : {"best_dev", "last_dev"})
    if (state.contains(key) && !state[key].is_null() && !state[key].is_object())
      bad(key, "an object or null");
  if (state.contains("best_score") && !state["best_score"].is_null() && !state["best_score"].is_number())
    bad("best_score", "a number or null");
  if (state.contains("stopped_early") && !state["stopped_early"].is_boolean())
    bad("stopped_early", "true or false");
}

}  // namespace

void save_checkpoint(const fs::path& dir, const NamedParams& params, const Optimizer& optimizer,
                     const nlohmann::json& state) {
  write_folder(dir, [&](const fs::path& staged) {
    write_named_tensors(staged / "params.safetensors", params);
    write_safetensors(staged / "optimizer.safetensors", optimizer.state_tensors());
    write_file_atomic(staged / "state.json", state.dump(2) + "\n");
  });
}

bool checkpoint_exists(const fs::path& dir) {
  recover_folder(dir);
  return fs::is_regular_file(dir / "state.json");
}

nlohmann::json read_checkpoint_state(const fs::path& dir) {
  recover_folder(dir);
  const fs::path state_file = dir / "state.json";
  nlohmann::json state = parse_json(read_file(state_file), state_file.string());
  check_state(state, state_file);
  return state;
}

void load_checkpoint_weights(const fs::path& dir, const NamedParams& params, Optimizer& optimizer) {
  recover_folder(dir);
  load_named_tensors(dir / "params.safetensors", params);
  try {
    optimizer.load_state_tensors(read_safetensors(dir / "optimizer.safetensors").tensors);
  } catch (const IoError&) {
    throw;
  } catch (const Error& e) {
    throw IoError((dir / "optimizer.safetensors").string() + ": " + e.what());
  }
}

void save_best(const fs::path& dir, const train::TrainTarget& target, const NamedParams& params) {
  fs::path staged = dir;
  staged += ".new";
  std::error_code ignored;
  fs::remove_all(staged, ignored);
  train::save_trained(staged, target);
  // Model-tensor runs (full, head) save their parameters as they are; a delta may save a reduced form.
  if (!target.deltas.empty()) write_named_tensors(staged / kBestParams, params);
  replace_folder(staged, dir);
}

void restore_best(const fs::path& dir, const train::TrainTarget& target, const NamedParams& params) {
  recover_folder(dir);
  if (!target.deltas.empty()) return load_named_tensors(dir / kBestParams, params);
  // Full and head-only runs: delta.safetensors holds the trained model tensors by name (a tied
  // weight under both of its names, hence no check for extra tensors).
  const fs::path file = dir / "delta.safetensors";
  TensorFile saved = read_safetensors(file);
  NoGradGuard guard;
  for (const auto& [name, param] : params) {
    auto it = saved.tensors.find(name);
    if (it == saved.tensors.end()) throw IoError(file.string() + ": no tensor '" + name + "'");
    Tensor target_tensor = param;
    target_tensor.copy_(it->second);
  }
}

}  // namespace deltatune::train_detail
