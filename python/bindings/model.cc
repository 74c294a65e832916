// deltatune.Model and load_model: a Hugging Face folder loaded with a task head (or with a saved
// delta, through the library's one loader), printed as `deltatune inspect` prints it, and called on
// numpy arrays as a transformers model is called on tensors.
#include "common.h"
#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/hf_config.h"
#include "deltatune/loading.h"
#include "deltatune/merge.h"
#include "deltatune/trainer.h"
#include "deltatune/visualise.h"

namespace deltatune::python {
namespace fs = std::filesystem;
using State = std::shared_ptr<ModelState>;

namespace {

HeadKind head_of_task(const std::string& task) {
  if (task == "classification" || task == "sequence-classification") return HeadKind::SequenceClassification;
  if (task == "causal-lm") return HeadKind::CausalLM;
  if (task == "masked-lm") return HeadKind::MaskedLM;
  if (task == "none") return HeadKind::None;
  throw ConfigError("task must be classification, causal-lm, masked-lm or none, got '" + task + "'");
}

std::string task_of_head(HeadKind head) {
  switch (head) {
    case HeadKind::SequenceClassification:
      return "classification";
    case HeadKind::CausalLM:
      return "causal-lm";
    case HeadKind::MaskedLM:
      return "masked-lm";
    default:
      return "none";
  }
}

// A saved delta's classes and max length, when its folder (or run folder) has them.
void read_run_settings(ModelState& s, const fs::path& delta_dir) {
  if (s.model->head == HeadKind::SequenceClassification) {
    try {
      s.labels = data::LabelMap::load(train::find_labels_file(delta_dir));
    } catch (const IoError&) {
      // a PEFT adapter written elsewhere: classes "0".."n-1"
    }
  }
  const nlohmann::json run = train::read_train_config(delta_dir);
  if (run.is_object()) s.max_length = run.value("max-length", s.max_length);
}

State load_model(const std::string& dir, std::optional<std::string> task, std::optional<int64_t> num_labels,
                 std::optional<std::string> delta_dir) {
  require_exists(dir, "model folder");
  if (delta_dir) require_exists(*delta_dir, "delta folder");
  if (num_labels && *num_labels < 1) throw py::value_error("num_labels must be at least 1");
  auto s = std::make_shared<ModelState>();
  s->model_dir = dir;
  py::gil_scoped_release release;
  if (delta_dir) {
    LoadRequest request;
    request.model_dir = dir;
    request.delta = *delta_dir;
    if (task) request.head = head_of_task(*task);
    LoadedModel loaded = load_with_delta(request);
    s->model = std::move(loaded.model);
    for (auto& d : loaded.trained.deltas) {
      s->methods.push_back(d->method());
      s->sources.push_back(d->config());
      s->deltas.push_back(std::move(d));
      s->merged.push_back(false);
    }
    s->trained_parameters = loaded.trained.model_parameters;
    s->pristine = false;
    read_run_settings(*s, *delta_dir);
  } else {
    LoadOptions options;
    if (task) options.head = head_of_task(*task);
    if (options.head == HeadKind::SequenceClassification) options.num_labels = num_labels.value_or(2);
    options.verbose = false;  // a new head is what was asked for
    s->model = load_pretrained(dir, options);
    s->model->set_training(false);
  }
  s->task = task_of_head(s->model->head);
  if (s->model->head == HeadKind::SequenceClassification) s->trained_parameters = s->model->head_parameters();
  s->num_labels = num_labels;
  s->freeze();
  return s;
}

// `deltatune inspect MODEL [--delta D]`: the architecture, the head, the module tree with the deltas'
// modules marked, and the trainable count when a delta is attached.
std::string describe(ModelState& s) {
  TreeOptions tree;
  const std::vector<delta::Delta*> deltas = s.attached();
  for (delta::Delta* d : deltas)
    for (const auto& path : d->attached_modules()) tree.delta_labels[path] = d->method();
  std::string out = summary(s.model->config) + "\n";
  out += std::string("head: ") + head_name(s.model->head) +
         ", parameters: " + with_thousands(s.model->parameter_count()) + "\n\n";
  out += module_tree(*s.model, tree);
  if (!deltas.empty()) {
    const auto [trainable, total] = s.freeze();
    out += "\n" + trainable_summary(trainable, total) + "\n";
  }
  return out;
}

// PEFT's print_trainable_parameters line, to the digit.
std::string trainable_line(ModelState& s) {
  const auto [trainable, total] = s.freeze();
  char percent[32];
  std::snprintf(percent, sizeof percent, "%.4f", total > 0 ? 100.0 * double(trainable) / double(total) : 0.0);
  return "trainable params: " + with_thousands(trainable) + " || all params: " + with_thousands(total) +
         " || trainable%: " + percent;
}

struct ForwardOutput {
  py::object logits, last_hidden_state, attention_mask;
};

ForwardOutput forward(ModelState& s, py::object input_ids, py::object attention_mask,
                      py::object token_type_ids) {
  ModelInput input;
  input.input_ids = ids_tensor(input_ids, "input_ids");
  if (!attention_mask.is_none()) input.attention_mask = ids_tensor(attention_mask, "attention_mask");
  if (!token_type_ids.is_none()) input.token_type_ids = ids_tensor(token_type_ids, "token_type_ids");
  for (const Tensor* t : {&input.attention_mask, &input.token_type_ids})
    if (t->defined() && t->shape() != input.input_ids.shape())
      throw py::value_error("attention_mask and token_type_ids must have input_ids' shape " +
                            shape_str(input.input_ids.shape()) + ", got " + shape_str(t->shape()));
  const int64_t vocab = s.model->config.vocab_size;
  for (int64_t id : input.input_ids.to_ints())
    if (id < 0 || id >= vocab)
      throw py::value_error("token id " + std::to_string(id) + " is outside the vocabulary (size " +
                            std::to_string(vocab) + ")");
  ModelOutput out;
  {
    py::gil_scoped_release release;
    NoGradGuard no_grad;
    if (s.model->training()) s.model->set_training(false);  // forwards on several threads only read it
    out = s.model->forward(input);
  }
  ForwardOutput result;
  result.last_hidden_state = to_numpy(out.last_hidden_state);
  result.logits = out.logits.defined() ? py::object(to_numpy(out.logits)) : py::none();
  result.attention_mask =
      out.attention_mask.defined() ? py::object(to_numpy(out.attention_mask)) : py::none();
  return result;
}

py::dict state_dict(ModelState& s) {
  py::dict out;
  for (auto& [name, t] : s.model->named_parameters())
    if (t->defined()) out[py::str(name)] = py::cast(*t);
  return out;
}

void save_pretrained(ModelState& s, const std::string& out_dir) {
  delta::CheckpointOptions options;
  if (s.labels.size() > 0) options.labels = s.labels.names();
  py::gil_scoped_release release;
  delta::save_checkpoint(*s.model, s.model_dir, out_dir, options);
}

}  // namespace

void bind_model(py::module_& m) {
  py::class_<ForwardOutput>(m, "ModelOutput",
                            "What a forward pass returns, as numpy arrays: logits ([B, T, V] for LM heads, "
                            "[B, num_labels] for a classifier; None without a head), last_hidden_state "
                            "[B, T, H] and the attention_mask over the hidden states.")
      .def_readonly("logits", &ForwardOutput::logits)
      .def_readonly("last_hidden_state", &ForwardOutput::last_hidden_state)
      .def_readonly("attention_mask", &ForwardOutput::attention_mask)
      .def("__getitem__", [](const ForwardOutput& o, const std::string& key) {
        if (key == "logits") return o.logits;
        if (key == "last_hidden_state") return o.last_hidden_state;
        if (key == "attention_mask") return o.attention_mask;
        throw py::key_error(key);
      });

  py::class_<ModelState, State>(m, "Model",
                                "A pretrained transformer (BERT/RoBERTa, GPT-2, Llama family) with its task "
                                "head and the deltas attached to it. Made by load_model.")
      .def("__call__", &forward, py::arg("input_ids"), py::arg("attention_mask") = py::none(),
           py::arg("token_type_ids") = py::none(),
           "A forward pass (no gradients) on integer arrays [batch, tokens]; returns a ModelOutput of "
           "numpy arrays. Releases the GIL while it computes.")
      .def("__str__", &describe)
      .def("__repr__",
           [](ModelState& s) {
             return "deltatune.Model(" + s.model->config.model_type + ", " + head_name(s.model->head) + ", " +
                    std::to_string(s.attached().size()) + " delta(s), '" + s.model_dir.string() + "')";
           })
      .def(
          "print_trainable_parameters", [](ModelState& s) { py::print(trainable_line(s)); },
          "Prints PEFT's line: 'trainable params: N || all params: M || trainable%: P'.")
      .def("get_nb_trainable_parameters", &ModelState::freeze,
           "(trainable, all) parameter counts, as PEFT's get_nb_trainable_parameters.")
      .def("state_dict", &state_dict, "Every model weight by its Hugging Face name, as Tensors (no copies).")
      .def("save_pretrained", &save_pretrained, py::arg("path"),
           "Writes the model (deltas merged or not: the weights as they are) as a Hugging Face checkpoint "
           "folder with the base's tokenizer files.")
      .def_property_readonly(
          "deltas",
          [](const State& s) {
            py::list out;
            for (size_t i = 0; i < s->deltas.size(); ++i) out.append(py::cast(DeltaRef{s, i, {}, {}}));
            return out;
          },
          "The deltas attached (or merged), in order, as Delta handles.")
      .def_property_readonly(
          "task", [](const ModelState& s) { return s.task; }, "classification, causal-lm, masked-lm or none.")
      .def_property_readonly(
          "path", [](const ModelState& s) { return s.model_dir.string(); }, "The model folder.")
      .def_property_readonly(
          "labels", [](ModelState& s) { return s.class_names().names(); },
          "A classifier's class names by id (its training data's; '0'.. before training).")
      .def_property_readonly(
          "config", [](const ModelState& s) { return to_python(s.model->config.raw); },
          "The model's config.json, as a dict.")
      .def_property_readonly(
          "tokenizer", [](ModelState& s) { return s.shared_tokenizer(); }, "The model folder's tokenizer.");

  m.def(
      "load_model", &load_model, py::arg("path"), py::arg("task") = py::none(),
      py::arg("num_labels") = py::none(), py::arg("delta") = py::none(),
      "Loads a Hugging Face model folder. task: classification (a new sequence-classification head of "
      "num_labels outputs, 2 by default), causal-lm, masked-lm, or None for the checkpoint's own head. "
      "delta: a folder `train` or PEFT wrote, applied with its head and classes (the library's one loader).");
}

}  // namespace deltatune::python
