// The delta interface's shared parts: making a delta by name (the registry of delta_method.h), what
// a method without a given ability answers, parameter loading and freezing.
#include "deltatune/delta.h"

#include <algorithm>
#include <set>

#include "delta/composite.h"
#include "delta/methods.h"
#include "delta/peft_config.h"
#include "deltatune/autograd.h"
#include "deltatune/delta_method.h"
#include "deltatune/error.h"
#include "deltatune/method_presets.h"

namespace deltatune::delta {
namespace {
std::string comma_list(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// Why a name is not a delta method: `full`/`head`/`none` train no delta, a preset name (houlsby, ...)
// stands for a config of another method; anything else is unknown, and every name is listed.
std::string not_a_delta_method(const std::string& method) {
  const std::string methods = comma_list(supported_methods());
  if (const MethodPreset* preset = find_method_preset(method)) {
    if (preset->delta_config.is_null())
      return "'" + method + "' is a --method of train and sweep (" + preset->description +
             "), not a delta method; a delta config takes one of: " + methods;
    return "'" + method +
           "' is a method preset of train and sweep, not a delta method; as a delta config it is " +
           preset->delta_config.dump();
  }
  std::vector<std::string> others;  // the names train and sweep take besides the delta methods
  for (const auto& m : method_presets())
    if (std::find(supported_methods().begin(), supported_methods().end(), m.name) ==
        supported_methods().end())
      others.push_back(m.name);
  return "unknown delta method '" + method + "' (delta methods: " + methods +
         "; train and sweep --method also take: " + comma_list(others) + ")";
}

// Fields that are numbers in every method's config: a wrong type names the field, instead of
// surfacing later as a JSON library error.
void check_number_fields(const std::string& method, const nlohmann::json& c) {
  static const char* const numbers[] = {"r",
                                        "alpha",
                                        "lora_alpha",
                                        "dropout",
                                        "lora_dropout",
                                        "rank",
                                        "phm_dim",
                                        "bottleneck",
                                        "reduction_factor",
                                        "scaling",
                                        "target_sparsity",
                                        "l0_weight",
                                        "init_log_alpha",
                                        "threshold",
                                        "init_score",
                                        "num_virtual_tokens",
                                        "encoder_hidden_size",
                                        "token_dim",
                                        "k",
                                        "seed"};
  for (const char* f : numbers)
    if (c.contains(f) && !c[f].is_number())
      throw ConfigError(method + ": " + f + " must be a number, got " + c[f].dump());
}
}  // namespace

const std::vector<std::string>& supported_methods() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& m : delta_methods()) out.push_back(m.name);
    return out;
  }();
  return names;
}

std::unique_ptr<Delta> make_delta(const nlohmann::json& config) {
  if (config.is_array()) return make_combination(config);  // a list of configs: their combination
  if (!config.is_object() || !config.contains("method") || !config["method"].is_string())
    throw ConfigError("a delta config needs a \"method\" (one of: " + comma_list(supported_methods()) + ")");
  const std::string method = config["method"].get<std::string>();
  const DeltaMethod* known = find_delta_method(method);
  if (!known) throw ConfigError(not_a_delta_method(method));
  check_number_fields(method, config);
  try {
    return known->make(config);
  } catch (const nlohmann::json::exception& e) {  // a field of an unexpected type
    throw ConfigError(method + " config " + config.dump() + ": " + e.what());
  }
}

bool trains_linear_weights(Delta& delta) {
  if (auto* composite = dynamic_cast<CompositeDelta*>(&delta)) {
    for (Delta* member : composite->members())
      if (trains_linear_weights(*member)) return true;
    return false;
  }
  return delta.trains_linear_weights();
}

namespace {
// The methods whose deltas say they can be merged (asked of each as `train` would make it).
std::string mergeable_methods() {
  std::vector<std::string> names;
  for (const auto& m : delta_methods()) {
    try {
      if (m.make(m.train_config.is_null() ? nlohmann::json{{"method", m.name}} : m.train_config)->can_merge())
        names.push_back(m.name);
    } catch (const Error&) {
      // a method that needs more config (a combination's members) is not one
    }
  }
  return comma_list(names);
}
}  // namespace

void Delta::merge_into(TransformerModel&) {
  throw ConfigError("merge: the " + method() + " delta cannot be merged into the weights (supported: " +
                    mergeable_methods() + "); use the delta as it is (deltatune eval/predict --delta)");
}

void Delta::unmerge_from(TransformerModel&) {
  throw ConfigError("unmerge: the " + method() +
                    " delta cannot be merged into the weights, so there is nothing to take out");
}

nlohmann::json Delta::peft_config(TransformerModel&) {
  throw ConfigError("the " + method() +
                    " delta has no PEFT equivalent (save it in deltatune's format; PEFT supports " +
                    supported_peft_types() + ")");
}

std::string Delta::peft_tensor_name(const std::string& name) const { return peft_model_key(name); }

double Delta::default_learning_rate() const {
  const DeltaMethod* known = find_delta_method(method());
  return known ? known->default_lr : kDeltaLearningRate;
}

std::vector<std::string> Delta::saved_names() {
  std::vector<std::string> out;
  for (auto& [n, _] : parameters()) out.push_back(n);
  return out;
}

void Delta::load_parameters(const std::map<std::string, Tensor>& values) {
  auto params = parameters();
  std::map<std::string, Tensor*> by_name;
  for (auto& [n, t] : params) by_name[n] = &t;
  NoGradGuard guard;
  for (auto& [name, value] : values) {
    auto it = by_name.find(name);
    if (it == by_name.end())
      throw ConfigError("delta parameter '" + name + "' does not exist in this " + method() + " delta");
    if (it->second->shape() != value.shape())
      throw ShapeError("delta parameter '" + name + "': saved shape " + shape_str(value.shape()) +
                       " does not fit " + shape_str(it->second->shape()) + " in the model");
    it->second->copy_(value);
  }
}

std::pair<int64_t, int64_t> freeze_for_delta(TransformerModel& model, std::vector<Delta*> deltas,
                                             const std::vector<std::string>& trainable) {
  std::set<std::string> keep(trainable.begin(), trainable.end());
  int64_t n_trainable = 0, total = 0;
  std::set<const TensorImpl*> in_model, counted;
  for (auto& [name, t] : model.named_parameters()) {
    const bool on = keep.count(name) > 0;
    if (on && t->dtype() != DType::F32) *t = t->float32().contiguous().detach();
    t->set_requires_grad(on);
    total += t->numel();
    in_model.insert(t->impl());
    if (on) n_trainable += t->numel(), counted.insert(t->impl());
  }
  for (Delta* d : deltas)
    for (auto& [_, t] : d->parameters()) {
      t.set_requires_grad(true);
      if (!counted.insert(t.impl()).second) continue;
      n_trainable += t.numel();
      if (!in_model.count(t.impl())) total += t.numel();  // specification deltas train model tensors
    }
  return {n_trainable, total};
}

std::vector<std::pair<std::string, Tensor>> trainable_parameters(TransformerModel& model,
                                                                 std::vector<Delta*> deltas) {
  std::vector<std::pair<std::string, Tensor>> out;
  std::set<const TensorImpl*> seen;  // specification deltas (bitfit, ln, ...) train the model's own tensors
  for (Delta* d : deltas)
    for (auto& [n, t] : d->parameters())
      if (t.requires_grad() && seen.insert(t.impl()).second)
        out.emplace_back((d->name == "default" ? "" : d->name + ".") + n, t);
  for (auto& [name, t] : model.named_parameters())
    if (t->requires_grad() && seen.insert(t->impl()).second) out.emplace_back(name, *t);
  return out;
}

}  // namespace deltatune::delta
