// Saving and loading deltas in our format and in PEFT's adapter format.
#include "deltatune/delta_io.h"

#include <cstdio>
#include <fstream>
#include <set>

#include "delta/module_names.h"
#include "delta/peft_config.h"
#include "deltatune/atomic_file.h"
#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/json_file.h"
#include "deltatune/safetensors.h"

namespace deltatune::delta {
namespace fs = std::filesystem;
namespace {
const char* kPeftPrefix = "base_model.model.";

void write_json_atomic(const fs::path& file, const nlohmann::json& j) {
  write_file_atomic(file, j.dump(2) + "\n");
}

// The model type a delta of ours was trained on: its base_model_type, or for deltas saved before
// that was recorded, base_model when it names a model type (it used to default to the type).
std::string recorded_model_type(const nlohmann::json& c) {
  if (c.contains("base_model_type") && c["base_model_type"].is_string()) return c["base_model_type"];
  if (!c.contains("base_model") || !c["base_model"].is_string()) return "";
  const std::string base = c["base_model"];
  for (const auto& type : supported_model_types())
    if (type == base) return base;
  return "";
}

// "(base 'NAME', weights fingerprint F)", leaving out what is unknown.
std::string base_description(const std::string& name, const std::string& fingerprint) {
  std::string out = name.empty() ? "" : "base '" + name + "'";
  if (!fingerprint.empty())
    out += (out.empty() ? "" : ", ") + std::string("weights fingerprint ") + fingerprint;
  return out.empty() ? "" : " (" + out + ")";
}

std::string json_string(const nlohmann::json& c, const char* key) {
  return c.contains(key) && c[key].is_string() ? c[key].get<std::string>() : "";
}
}  // namespace

std::string base_model_name(const TransformerModel& model) {
  auto it = model.config.raw.find("_name_or_path");
  if (it != model.config.raw.end() && it->is_string()) return it->get<std::string>();
  return "";
}

namespace {
// The error for a delta of ours recorded for another model type than `model_type`, or "".
std::string architecture_mismatch(const nlohmann::json& c, const fs::path& dir, const std::string& model_type,
                                  const std::string& model_description) {
  const std::string type = recorded_model_type(c);
  if (type.empty() || type == model_type) return "";
  return dir.string() + " is a delta for a " + type + " model" +
         base_description(json_string(c, "base_model"), json_string(c, "base_fingerprint")) +
         ", not for this " + model_type + " model" + model_description +
         ": use it with the base model it was trained on";
}
}  // namespace

void check_delta_architecture(const nlohmann::json& c, const fs::path& dir, TransformerModel& model) {
  const std::string error = architecture_mismatch(
      c, dir, model.config.model_type, base_description(base_model_name(model), base_fingerprint(model)));
  if (!error.empty()) throw ConfigError(error);
}

void check_delta_fits(const fs::path& delta_dir, const fs::path& model_dir) {
  if (!fs::exists(delta_dir / "delta_config.json")) return;  // PEFT adapters record no model type
  const nlohmann::json c = read_json_file(delta_dir / "delta_config.json");
  const std::string error = architecture_mismatch(c, delta_dir, load_model_config(model_dir).model_type,
                                                  base_description(model_dir.string(), ""));
  if (!error.empty()) throw ConfigError(error);
}

namespace {
// Model parameters (task heads) stored with a delta are loaded into the model by name.
void load_head(TransformerModel& model, const std::map<std::string, Tensor>& head, const fs::path& file) {
  NoGradGuard guard;
  for (auto& [name, value] : head) {
    Tensor* p = model.find_parameter(name);
    if (!p) p = nn::unquantize_for_replacement(model, name);  // a layer quantised at load: replaced whole
    if (!p)
      throw ConfigError(file.string() + ": '" + name +
                        "' is neither a delta parameter nor a model parameter");
    if (p->shape() != value.shape())
      throw ShapeError(file.string() + ": '" + name + "' has shape " + shape_str(value.shape()) +
                       " but the model's is " + shape_str(p->shape()));
    *p = value.float32().contiguous().clone().detach();
  }
}

// delta_config.json's delta method ("" when it has none: make_delta then says what is wrong).
std::string saved_method(const nlohmann::json& config) {
  if (!config.contains("delta") || !config["delta"].is_object()) return "";
  const nlohmann::json& method = config["delta"].value("method", nlohmann::json());
  return method.is_string() ? method.get<std::string>() : "";
}

std::string head_task_type(HeadKind h) {
  switch (h) {
    case HeadKind::SequenceClassification:
      return "SEQ_CLS";
    case HeadKind::CausalLM:
      return "CAUSAL_LM";
    default:
      return "";
  }
}
}  // namespace

// Hashes the base weights except the head and `skip` (model tensors a delta trains itself: bitfit, ln).
static std::string fingerprint(TransformerModel& model, const std::set<std::string>& skip) {
  const std::vector<std::string> head_list = model.head_parameters();
  std::set<std::string> head(head_list.begin(), head_list.end());
  head.insert(skip.begin(), skip.end());
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  };
  for (auto& [name, t] : model.named_parameters()) {
    if (head.count(name)) continue;
    mix(name.data(), name.size());
    mix(t->shape().data(), t->shape().size() * sizeof(int64_t));
    std::vector<float> v = t->to_floats();
    for (size_t i = 0; i < v.size(); i += 997) mix(&v[i], sizeof(float));
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string base_fingerprint(TransformerModel& model) { return fingerprint(model, {}); }

// The fingerprint of the base under an attached delta: tensors the delta trains in place are left out.
static std::string base_fingerprint_under(TransformerModel& model, Delta& delta) {
  std::set<std::string> skip;
  for (auto& [n, _] : delta.parameters())
    if (model.find_parameter(n)) skip.insert(n);
  return fingerprint(model, skip);
}

DeltaRequirements peek_delta(const fs::path& dir) {
  DeltaRequirements req;
  if (fs::exists(dir / "delta_config.json")) {
    nlohmann::json c = read_json_file(dir / "delta_config.json");
    if (c.contains("head") && c["head"].is_string()) {
      std::string h = c["head"];
      if (h == "sequence-classification")
        req.head = HeadKind::SequenceClassification;
      else if (h == "causal-lm")
        req.head = HeadKind::CausalLM;
      else if (h == "masked-lm")
        req.head = HeadKind::MaskedLM;
    }
    if (c.contains("num_labels") && c["num_labels"].is_number_integer())
      req.num_labels = c["num_labels"].get<int64_t>();
    req.method = saved_method(c);
    if (req.method == "full") {
      req.trains_linear_weights = true;
    } else if (!saves_model_weights(req.method)) {
      // (c may be any JSON at all: a peek never throws for a bad config, load_delta says what is wrong.)
      try {
        req.trains_linear_weights = trains_linear_weights(
            *make_delta(c.is_object() ? c.value("delta", nlohmann::json()) : nlohmann::json()));
      } catch (const std::exception&) {
        req.trains_linear_weights = true;
      }
    }
    return req;
  }
  if (fs::exists(dir / "adapter_config.json")) {
    nlohmann::json c = read_json_file(dir / "adapter_config.json");
    req.head = peft_task_head(c);
    if (req.head == HeadKind::SequenceClassification) {
      // The classifier's output rows are the label count.
      auto file = read_safetensors(dir / "adapter_model.safetensors");
      for (auto& [key, t] : file.tensors)
        if (t.dim() == 2 &&
            (key.find("classifier") != std::string::npos || key.find("score") != std::string::npos) &&
            key.find("lora_") == std::string::npos && strip_suffix(key, ".weight") &&
            key.find("dense.weight") == std::string::npos)
          req.num_labels = t.size(0);
    }
    return req;
  }
  throw IoError(dir.string() + ": not a delta folder (no delta_config.json or adapter_config.json)");
}

bool saves_model_weights(const std::string& method) { return method == "full" || method == "head"; }

// A full or head run: its tensors are the model's own and replace them; no delta is attached. A head
// run left the base untouched, so its recorded fingerprint still identifies the base.
static void load_model_weights(const fs::path& dir, SavedDelta& saved, TransformerModel& model) {
  const fs::path tensor_file = dir / "delta.safetensors";
  const std::string want = saved.config.value("base_fingerprint", "");
  if (!want.empty()) {
    const std::string have = base_fingerprint(model);
    if (have != want)
      std::fprintf(stderr, "warning: %s was trained on other base weights (fingerprint %s, this model %s)\n",
                   dir.string().c_str(), want.c_str(), have.c_str());
  }
  saved.head = read_safetensors(tensor_file).tensors;
  load_head(model, saved.head, tensor_file);
}

SavedDelta load_delta(const fs::path& dir, TransformerModel& model) {
  SavedDelta saved;
  std::map<std::string, Tensor> tensors;
  fs::path tensor_file;
  if (fs::exists(dir / "delta_config.json")) {
    saved.format = "deltatune";
    saved.config = read_json_file(dir / "delta_config.json");
    if (!saved.config.contains("delta"))
      throw IoError((dir / "delta_config.json").string() + ": missing 'delta'");
    check_delta_architecture(saved.config, dir, model);
    saved.method = saved_method(saved.config);
    if (saves_model_weights(saved.method)) {
      load_model_weights(dir, saved, model);
      return saved;
    }
    saved.delta = make_delta(saved.config["delta"]);
    tensor_file = dir / "delta.safetensors";
    tensors = read_safetensors(tensor_file).tensors;
  } else if (fs::exists(dir / "adapter_config.json")) {
    saved.format = "peft";
    saved.config = read_json_file(dir / "adapter_config.json");
    saved.delta = make_delta(from_peft_config(saved.config, (dir / "adapter_config.json").string()));
    tensor_file = dir / "adapter_model.safetensors";
    if (!fs::exists(tensor_file))
      throw IoError(tensor_file.string() + ": missing (PEFT adapters are read from safetensors)");
    for (auto& [key, t] : read_safetensors(tensor_file).tensors) {
      std::string k = key.rfind(kPeftPrefix, 0) == 0 ? key.substr(std::string(kPeftPrefix).size()) : key;
      tensors[peft_key_to_ours(k)] = t;
    }
  } else {
    throw IoError(dir.string() + ": not a delta folder (no delta_config.json or adapter_config.json)");
  }
  saved.method = saved.delta->method();
  saved.delta->attach(model);
  if (saved.format == "deltatune") {
    std::string want = saved.config.value("base_fingerprint", "");
    if (!want.empty()) {
      std::string have = base_fingerprint_under(model, *saved.delta);
      if (have != want)
        std::fprintf(stderr,
                     "warning: %s was trained on other base weights (fingerprint %s, this model %s)\n",
                     dir.string().c_str(), want.c_str(), have.c_str());
    }
  }
  std::map<std::string, Tensor> delta_values;
  std::set<std::string> delta_names;
  for (auto& n : saved.delta->saved_names()) delta_names.insert(n);
  for (auto& [name, t] : tensors) {
    if (delta_names.count(name))
      delta_values[name] = t;
    else
      saved.head[name] = t;
  }
  for (const auto& n : delta_names)
    if (!delta_values.count(n)) throw IoError(tensor_file.string() + ": missing delta tensor '" + n + "'");
  try {
    saved.delta->load_saved(delta_values);
  } catch (const ShapeError& e) {
    throw ShapeError(tensor_file.string() + ": " + e.what());
  }
  load_head(model, saved.head, tensor_file);
  return saved;
}

std::vector<std::string> trained_model_parameters(const SavedDelta& saved, TransformerModel& model) {
  std::set<std::string> names;
  for (auto& [n, _] : saved.head) names.insert(n);
  if (saved.delta)
    for (auto& [n, _] : saved.delta->parameters())
      if (model.find_parameter(n)) names.insert(n);
  return {names.begin(), names.end()};
}

void save_delta(const fs::path& dir, Delta& delta, TransformerModel& model,
                const std::map<std::string, Tensor>& head) {
  fs::create_directories(dir);
  std::map<std::string, Tensor> tensors;
  for (auto& [n, t] : delta.saved_parameters()) tensors[n] = t.detach();
  for (auto& [n, t] : head) tensors[n] = t.detach();
  nlohmann::json c;
  c["format"] = "deltatune";
  c["version"] = 1;
  c["delta"] = delta.saved_config();
  c["base_model"] = base_model_name(model).empty() ? model.config.model_type : base_model_name(model);
  c["base_model_type"] = model.config.model_type;
  c["base_fingerprint"] = base_fingerprint_under(model, delta);
  c["head"] = head_name(model.head);
  if (model.head == HeadKind::SequenceClassification) c["num_labels"] = model.config.num_labels;
  std::vector<std::string> head_names;
  for (auto& [n, _] : head) head_names.push_back(n);
  c["head_parameters"] = head_names;
  write_safetensors(dir / "delta.safetensors", tensors);
  write_json_atomic(dir / "delta_config.json", c);
}

void save_peft(const fs::path& dir, Delta& delta, TransformerModel& model,
               const std::map<std::string, Tensor>& head) {
  nlohmann::json c = to_peft_config(delta, model);
  // As PEFT: the base's name_or_path (the folder it was loaded from), null when unknown; never the
  // model type, which is a real Hub id ("gpt2") that AutoPeftModel would fetch.
  const std::string base = base_model_name(model);
  c["base_model_name_or_path"] = base.empty() ? nlohmann::json() : nlohmann::json(base);
  std::string task = head_task_type(model.head);
  c["task_type"] = task.empty() ? nlohmann::json() : nlohmann::json(task);
  std::set<std::string> modules;
  for (auto& [n, _] : head) modules.insert(n.substr(0, n.rfind('.')));
  // PEFT's sequence-classification wrapper always adds both usual head names to the config.
  if (task == "SEQ_CLS") modules.insert({"classifier", "score"});
  c["modules_to_save"] = modules.empty()
                             ? nlohmann::json()
                             : nlohmann::json(std::vector<std::string>(modules.begin(), modules.end()));
  fs::create_directories(dir);
  std::map<std::string, Tensor> tensors;
  // Each method names its tensors in PEFT's file (LoRA's trained biases, prompt learning's one tensor).
  for (auto& [n, t] : delta.saved_parameters()) tensors[delta.peft_tensor_name(n)] = t.detach();
  for (auto& [n, t] : head) tensors[peft_model_key(n)] = t.detach();
  write_safetensors(dir / "adapter_model.safetensors", tensors, {{"format", "pt"}});
  write_json_atomic(dir / "adapter_config.json", c);
}

}  // namespace deltatune::delta
