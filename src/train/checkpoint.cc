#include "train/checkpoint.h"

#include <set>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/safetensors.h"
#include "train/files.h"

namespace fs = std::filesystem;

namespace deltatune::train_detail {

void save_checkpoint(const fs::path& dir, const NamedParams& params, const Optimizer& optimizer,
                     const nlohmann::json& state) {
  fs::path staged = dir;
  staged += ".tmp";
  std::error_code ignored;
  fs::remove_all(staged, ignored);
  fs::create_directories(staged);
  std::map<std::string, Tensor> tensors;
  for (const auto& [name, t] : params) tensors[name] = t.detach();
  write_safetensors(staged / "params.safetensors", tensors);
  write_safetensors(staged / "optimizer.safetensors", optimizer.state_tensors());
  write_file_atomic(staged / "state.json", state.dump(2) + "\n");
  replace_folder(staged, dir);
}

bool checkpoint_exists(const fs::path& dir) {
  recover_folder(dir);
  return fs::is_regular_file(dir / "state.json");
}

nlohmann::json load_checkpoint(const fs::path& dir, const NamedParams& params, Optimizer& optimizer) {
  recover_folder(dir);
  const fs::path state_file = dir / "state.json";
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(read_file(state_file));
  } catch (const nlohmann::json::parse_error& e) {
    throw IoError(state_file.string() + ": not valid JSON (" + std::string(e.what()) + ")");
  }
  const fs::path param_file = dir / "params.safetensors";
  TensorFile saved = read_safetensors(param_file);
  std::set<std::string> expected;
  NoGradGuard guard;
  for (const auto& [name, param] : params) {
    expected.insert(name);
    auto it = saved.tensors.find(name);
    if (it == saved.tensors.end())
      throw IoError(param_file.string() + ": no tensor '" + name +
                    "' (the checkpoint was written by another configuration)");
    if (it->second.shape() != param.shape())
      throw IoError(param_file.string() + ": tensor '" + name + "' has shape " +
                    shape_str(it->second.shape()) + " but the run's is " + shape_str(param.shape()));
    Tensor target = param;
    target.copy_(it->second);
  }
  for (const auto& [name, _] : saved.tensors)
    if (!expected.count(name))
      throw IoError(param_file.string() + ": tensor '" + name +
                    "' is not trained by this run (another configuration?)");
  try {
    optimizer.load_state_tensors(read_safetensors(dir / "optimizer.safetensors").tensors);
  } catch (const IoError&) {
    throw;
  } catch (const Error& e) {
    throw IoError((dir / "optimizer.safetensors").string() + ": " + e.what());
  }
  return state;
}

}  // namespace deltatune::train_detail
