// What a run trains, and saving / loading the result.
#include <set>

#include "deltatune/autograd.h"
#include "deltatune/delta_io.h"
#include "deltatune/safetensors.h"
#include "deltatune/trainer.h"
#include "train/files.h"

namespace fs = std::filesystem;

namespace deltatune::train {
namespace {

std::map<std::string, Tensor> model_tensors(const TrainTarget& target) {
  std::map<std::string, Tensor> out;
  for (const auto& name : target.model_parameters) {
    Tensor* p = target.model->find_parameter(name);
    if (!p) throw ConfigError("model parameter '" + name + "' does not exist");
    out[name] = p->detach();
  }
  return out;
}

}  // namespace

TrainTarget TrainTarget::with_deltas(TransformerModel& model, std::vector<delta::Delta*> deltas,
                                     std::string method) {
  return {&model, std::move(deltas), model.head_parameters(), std::move(method)};
}

TrainTarget TrainTarget::full(TransformerModel& model) {
  TrainTarget t{&model, {}, {}, "full"};
  for (auto& [name, _] : model.named_parameters()) t.model_parameters.push_back(name);
  return t;
}

TrainTarget TrainTarget::head_only(TransformerModel& model) {
  return {&model, {}, model.head_parameters(), "head"};
}

std::pair<int64_t, int64_t> TrainTarget::freeze() const {
  if (deltas.size() > 1) throw ConfigError("training several deltas at once is not supported yet");
  return delta::freeze_for_delta(*model, deltas, model_parameters);
}

NamedParams TrainTarget::parameters() const {
  NamedParams out;
  std::set<TensorImpl*> seen;  // tied weights appear under two names but are one tensor
  for (auto& [name, t] : delta::trainable_parameters(*model, deltas))
    if (seen.insert(t.impl()).second) out.emplace_back(name, t);
  return out;
}

void save_trained(const fs::path& dir, const TrainTarget& target) {
  TransformerModel& model = *target.model;
  const std::map<std::string, Tensor> tensors = model_tensors(target);
  if (!target.deltas.empty()) {
    if (target.deltas.size() > 1) throw ConfigError("saving several deltas at once is not supported yet");
    train_detail::write_folder(
        dir, [&](const fs::path& staged) { delta::save_delta(staged, *target.deltas[0], model, tensors); });
    return;
  }
  if (!delta::saves_model_weights(target.method))
    throw ConfigError("save_trained: method '" + target.method + "' has no delta attached");
  train_detail::write_folder(dir, [&](const fs::path& staged) {
    nlohmann::json c;
    c["format"] = "deltatune";
    c["version"] = 1;
    c["delta"] = {{"method", target.method}};
    const std::string base = delta::base_model_name(model);
    c["base_model"] = base.empty() ? model.config.model_type : base;
    c["base_model_type"] = model.config.model_type;
    // A head-only run leaves the base untouched, so its fingerprint still identifies it.
    if (target.method == "head") c["base_fingerprint"] = delta::base_fingerprint(model);
    c["head"] = head_name(model.head);
    if (model.head == HeadKind::SequenceClassification) c["num_labels"] = model.config.num_labels;
    c["head_parameters"] = model.head_parameters();
    write_safetensors(staged / "delta.safetensors", tensors);
    train_detail::write_file_atomic(staged / "delta_config.json", c.dump(2) + "\n");
  });
}

bool save_trained_peft(const fs::path& dir, const TrainTarget& target) {
  if (target.deltas.size() != 1) return false;
  const std::map<std::string, Tensor> head = model_tensors(target);
  try {
    train_detail::write_folder(dir, [&](const fs::path& staged) {
      delta::save_peft(staged, *target.deltas[0], *target.model, head);
    });
  } catch (const ConfigError&) {
    return false;  // PEFT has no such method (or no such option of it)
  }
  return true;
}

fs::path find_labels_file(const fs::path& dir) {
  const fs::path delta_dir = train_detail::folder_path(dir);
  for (const fs::path& candidate : {delta_dir / "labels.json", delta_dir.parent_path() / "labels.json"})
    if (fs::is_regular_file(candidate)) return candidate;
  throw IoError(delta_dir.string() +
                ": no labels.json in the delta folder or its run folder (needed to name the classes)");
}

}  // namespace deltatune::train
