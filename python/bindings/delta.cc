// Deltas from Python: attach (a method name, a config dict, or a combination), Delta.save in our
// format or PEFT's, load_delta, merge and combine (PEFT's add_weighted_adapter), each the library's.
#include "common.h"
#include "deltatune/delta_io.h"
#include "deltatune/error.h"
#include "deltatune/loading.h"
#include "deltatune/lora_arithmetic.h"
#include "deltatune/merge.h"
#include "deltatune/method_presets.h"
#include "deltatune/trainer.h"
#include "deltatune/workflow.h"

namespace deltatune::python {
namespace fs = std::filesystem;
using State = std::shared_ptr<ModelState>;

namespace {

constexpr uint64_t kDefaultSeed = 42;  // TrainOptions::seed's default: a delta attached now inits as train's

size_t add_delta(ModelState& s, std::unique_ptr<delta::Delta> d, std::string method, nlohmann::json source) {
  s.deltas.push_back(std::move(d));
  s.merged.push_back(false);
  s.methods.push_back(std::move(method));
  s.sources.push_back(std::move(source));
  s.freeze();
  return s.deltas.size() - 1;
}

std::string fresh_name(const ModelState& s, const std::string& asked) {
  if (!asked.empty()) return asked;
  return s.deltas.empty() ? "default" : "delta" + std::to_string(s.deltas.size());
}

DeltaRef attach(const State& s, py::object config, const std::string& name) {
  std::string method;
  nlohmann::json source, resolved;
  std::map<std::string, Tensor> values;
  if (py::isinstance<DeltaRef>(config)) {
    const DeltaRef& combined = config.cast<const DeltaRef&>();
    if (!combined.pending()) throw py::value_error("this delta is attached already; attach takes a config");
    method = "lora";
    source = resolved = combined.pending_config;
    values = combined.pending_values;
  } else if (py::isinstance<py::str>(config)) {
    method = config.cast<std::string>();
    const MethodPreset& preset = method_preset(method);  // ConfigError listing every name
    if (preset.trains != MethodPreset::Trains::Delta)
      throw ConfigError("'" + method + "' attaches no delta; train it with dt.train(model, method='" +
                        method + "', ...)");
    resolved = preset.delta_config;
  } else if (py::isinstance<py::dict>(config)) {
    source = to_json(config);
    if (!source.contains("method") || !source["method"].is_string())
      throw ConfigError("a delta config names its method: {\"method\": \"lora\", ...}");
    method = source["method"].get<std::string>();
    resolved = workflow::delta_config_over_method(method, source);
  } else {
    throw py::type_error("attach takes a method name, a config dict, a DeltaConfig or a combined Delta");
  }
  std::unique_ptr<delta::Delta> d = delta::make_delta(resolved);  // bad settings: ConfigError
  d->name = fresh_name(*s, name);
  d->seed = resolved.value("seed", kDefaultSeed);
  d->attach(*s->model);
  if (!values.empty()) d->load_parameters(values);
  return DeltaRef{s, add_delta(*s, std::move(d), method, source), {}, {}};
}

std::map<std::string, Tensor> head_tensors(ModelState& s) {
  std::map<std::string, Tensor> head;
  for (const auto& name : s.trained_parameters)
    if (Tensor* t = s.model->find_parameter(name)) head[name] = *t;
  return head;
}

void save(const DeltaRef& ref, const std::string& dir, const std::string& format) {
  if (format != "deltatune" && format != "peft")
    throw py::value_error("format must be 'deltatune' or 'peft', got '" + format + "'");
  delta::Delta& d = ref.get();
  ModelState& s = *ref.owner;
  py::gil_scoped_release release;
  fs::create_directories(dir);
  if (format == "peft")
    delta::save_peft(dir, d, *s.model, head_tensors(s));
  else
    delta::save_delta(dir, d, *s.model, head_tensors(s));
  const data::LabelMap labels = s.class_names();
  if (labels.size() > 0) labels.save(fs::path(dir) / "labels.json");
}

py::object load_delta(const State& s, const std::string& dir) {
  require_exists(dir, "delta folder");
  AppliedDelta applied;
  {
    py::gil_scoped_release release;
    applied = apply_saved_delta(dir, *s->model);
  }
  for (const auto& name : applied.model_parameters) s->trained_parameters.push_back(name);
  s->pristine = false;
  if (s->model->head == HeadKind::SequenceClassification) {
    try {
      s->labels = data::LabelMap::load(train::find_labels_file(dir));
    } catch (const IoError&) {
      // no labels.json beside it (a PEFT adapter from elsewhere): classes "0".."n-1"
    }
  }
  py::object first = py::none();
  for (auto& d : applied.deltas) {
    const std::string method = d->method();
    const nlohmann::json config = d->config();
    const size_t index = add_delta(*s, std::move(d), method, config);
    if (first.is_none()) first = py::cast(DeltaRef{s, index, {}, {}});
  }
  s->freeze();
  return first;
}

State merge(const State& s, py::object which) {
  std::vector<size_t> indices;
  if (which.is_none()) {
    for (size_t i = 0; i < s->deltas.size(); ++i)
      if (!s->merged[i]) indices.push_back(i);
  } else {
    const DeltaRef& ref = which.cast<const DeltaRef&>();
    if (ref.owner != s) throw py::value_error("that delta is attached to another model");
    ref.get();
    indices.push_back(ref.index);
  }
  for (size_t i : indices) {
    delta::merge_into(*s->model, *s->deltas[i]);  // ConfigError for methods that cannot merge
    s->merged[i] = true;
    s->pristine = false;
  }
  s->freeze();
  return s;
}

DeltaRef combine(const std::vector<DeltaRef>& refs, std::optional<std::vector<double>> weights,
                 const std::string& type, double density, std::optional<int64_t> svd_rank,
                 const std::string& majority_sign_method, uint64_t seed) {
  if (refs.empty()) throw py::value_error("combine needs at least one delta");
  std::vector<double> w = weights.value_or(std::vector<double>(refs.size(), 1.0));
  if (w.size() != refs.size())
    throw py::value_error(std::to_string(refs.size()) + " deltas but " + std::to_string(w.size()) +
                          " weights");
  std::vector<delta::LoraWeights> loras;
  for (const DeltaRef& ref : refs) loras.push_back(delta::lora_weights(ref.get()));  // LoRA only
  delta::CombineOptions options;
  options.type = type;
  options.density = density;
  options.svd_rank = svd_rank;
  options.majority_sign_method = majority_sign_method;
  options.seed = seed;
  py::gil_scoped_release release;
  const delta::CombinedLora combined = delta::combine_loras(loras, w, options);
  return DeltaRef{nullptr, 0, combined.config, combined.parameters()};
}

py::dict parameters(const DeltaRef& ref) {
  py::dict out;
  if (ref.pending()) {
    for (const auto& [name, t] : ref.pending_values) out[py::str(name)] = py::cast(t);
    return out;
  }
  for (auto& [name, t] : ref.get().parameters()) out[py::str(name)] = py::cast(t);
  return out;
}

}  // namespace

void bind_delta(py::module_& m) {
  py::class_<DeltaRef>(m, "Delta",
                       "A delta attached to a model (attach, load_delta, train), or a combination of LoRA "
                       "deltas not yet attached (combine).")
      .def("save", &save, py::arg("path"), py::arg("format") = "deltatune",
           "Saves the delta alone (with the task head it trains and labels.json): format 'deltatune' "
           "(delta_config.json + delta.safetensors) or 'peft' (adapter_config.json + "
           "adapter_model.safetensors, loadable by PEFT and by `deltatune --delta`).")
      .def(
          "save_pretrained", [](const DeltaRef& r, const std::string& path) { save(r, path, "peft"); },
          py::arg("path"), "PEFT's name for save(path, format='peft').")
      .def("state_dict", &parameters, "The delta's parameters by PEFT's names, as Tensors (no copies).")
      .def_property_readonly(
          "method", [](const DeltaRef& r) { return r.pending() ? std::string("lora") : r.get().method(); },
          "lora, adapter, prefix, ...")
      .def_property_readonly(
          "config",
          [](const DeltaRef& r) { return to_python(r.pending() ? r.pending_config : r.get().config()); },
          "The delta's config (delta_config.json's form), as a dict.")
      .def_property_readonly(
          "name", [](const DeltaRef& r) { return r.pending() ? std::string() : r.get().name; },
          "Its name on the model.")
      .def_property_readonly(
          "merged",
          [](const DeltaRef& r) {
            return !r.pending() && r.index < r.owner->merged.size() && r.owner->merged[r.index];
          },
          "Whether merge folded it into the model's weights.")
      .def(
          "set_enabled", [](const DeltaRef& r, bool on) { r.get().set_enabled(on); }, py::arg("enabled"),
          "Switches the delta off (the base model's outputs) or on again.")
      .def("__repr__", [](const DeltaRef& r) {
        if (r.pending()) return std::string("deltatune.Delta(lora, combined, not attached)");
        if (r.index >= r.owner->deltas.size())
          return std::string("deltatune.Delta(replaced by a later train)");
        if (r.owner->merged[r.index]) return "deltatune.Delta(" + r.owner->methods[r.index] + ", merged)";
        return "deltatune.Delta(" + r.get().method() + ", '" + r.get().name + "', " +
               std::to_string(r.get().attached_modules().size()) + " modules)";
      });

  m.def("attach", &attach, py::arg("model"), py::arg("config"), py::arg("name") = "",
        "Attaches a delta to the model and returns it: config is a method or preset name ('lora', "
        "'houlsby', ...: the method table's config), a dict ({'method': 'lora', 'r': 8, 'targets': "
        "['attn.q', 'attn.v']}, read as `train --delta-config` reads a file), a DeltaConfig, or a "
        "combination from combine(). Bad settings raise ValueError (deltatune.ConfigError).");
  m.def("load_delta", &load_delta, py::arg("model"), py::arg("path"),
        "Applies a saved delta (ours or a PEFT adapter) to the model and returns it (None for a full or "
        "head run, whose weights replace the model's). The model needs the delta's head.");
  m.def("merge", &merge, py::arg("model"), py::arg("delta") = py::none(),
        "Folds the delta (default: every attached one) into the model's weights (LoRA, DoRA, IA3) and "
        "returns the model; ValueError for methods that cannot merge.");
  m.def("combine", &combine, py::arg("deltas"), py::arg("weights") = py::none(), py::arg("type") = "svd",
        py::arg("density") = 1.0, py::arg("svd_rank") = py::none(), py::arg("majority_sign_method") = "total",
        py::arg("seed") = 0,
        "Combines LoRA deltas into one, with PEFT's add_weighted_adapter semantics (type: svd, linear, "
        "cat, ties, dare_linear, dare_ties, magnitude_prune and their _svd forms). The result is not "
        "attached: dt.attach(model, combined).");
}

}  // namespace deltatune::python
