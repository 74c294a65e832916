// train: the library's training workflow (workflow::run_training, what `deltatune train` runs) on a
// Model from Python. The model's attached delta becomes the request's method and delta config; the
// run loads the base again from the model's folder, exactly as the command does, so a run here and
// one of the command with the same settings train the same delta bit for bit; the trained model
// then replaces the Python model's. Events reach Python callbacks as dicts; the GIL is released while
// training runs; Ctrl-C (or an exception in a callback) stops it after the current update, leaving the
// run's checkpoint, and is raised once run_training has returned.
#include <cstdio>

#include "common.h"
#include "deltatune/error.h"
#include "deltatune/method_presets.h"
#include "deltatune/train_events.h"
#include "deltatune/workflow.h"

namespace deltatune::python {
namespace fs = std::filesystem;
using State = std::shared_ptr<ModelState>;

namespace {

// The first Python exception a callback (or Ctrl-C) raised; later events are not sent.
struct PendingError {
  std::optional<py::error_already_set> error;
  bool set() const { return error.has_value(); }
};

// Every event to each Python callback (GIL taken), and to the stderr progress bar when asked.
class CallbackEvents : public train::TrainEvents {
 public:
  CallbackEvents(std::vector<py::function> callbacks, bool progress, PendingError& pending)
      : callbacks_(std::move(callbacks)), pending_(pending) {
    if (progress) bar_ = train::stderr_progress(true);
  }
  ~CallbackEvents() override {
    py::gil_scoped_acquire gil;
    callbacks_.clear();
  }
  void on_start(const train::StartEvent& e) override {
    if (bar_) bar_->on_start(e);
    send({{"event", "start"},
          {"first_step", e.first_step},
          {"total_steps", e.total_steps},
          {"trainable", e.trainable},
          {"total", e.total},
          {"optimizer", e.optimizer},
          {"resumed", e.resumed}});
  }
  void on_update(const train::UpdateEvent& e) override {
    if (bar_) bar_->on_update(e);
    send({{"event", "update"},
          {"step", e.step},
          {"epoch", e.epoch},
          {"loss", e.loss},
          {"lr", e.lr},
          {"grad_norm", e.grad_norm},
          {"tokens", e.tokens},
          {"tokens_per_s", e.tokens_per_s}});
  }
  void on_eval(const train::EvalEvent& e) override {
    if (bar_) bar_->on_eval(e);
    send({{"event", "eval"},
          {"step", e.step},
          {"epoch", e.epoch},
          {"metrics", e.metrics},
          {"is_best", e.is_best},
          {"early_stopping", e.early_stopping}});
  }
  void on_checkpoint(const train::CheckpointEvent& e) override {
    if (bar_) bar_->on_checkpoint(e);
    send({{"event", "checkpoint"}, {"step", e.step}, {"dir", e.dir.string()}});
  }
  void on_warning(const std::string& message) override {
    if (bar_) bar_->on_warning(message);
    send({{"event", "warning"}, {"message", message}});
  }
  void on_diverged(int64_t step, const std::string& what) override {
    if (bar_) bar_->on_diverged(step, what);
    send({{"event", "diverged"}, {"step", step}, {"what", what}});
  }
  void on_end(const train::TrainResult& r) override {
    if (bar_) bar_->on_end(r);
    send({{"event", "end"}, {"steps", r.steps}, {"stop_reason", r.stop_reason}, {"seconds", r.seconds}});
  }
  void note(const std::string& line) {
    if (bar_) std::fprintf(stderr, "%s\n", line.c_str());
    send({{"event", "note"}, {"message", line}});
  }

 private:
  void send(const nlohmann::json& event) {
    if (callbacks_.empty()) return;
    py::gil_scoped_acquire gil;
    if (pending_.set()) return;
    try {
      py::object value = to_python(event);
      for (auto& callback : callbacks_) callback(value);
    } catch (py::error_already_set& e) {
      pending_.error.emplace(std::move(e));
    }
  }
  std::vector<py::function> callbacks_;
  std::shared_ptr<train::TrainEvents> bar_;
  PendingError& pending_;
};

template <class T>
T take(py::dict& options, const char* key, T fallback) {
  if (!options.contains(key)) return fallback;
  py::object value = options[key];
  PyDict_DelItemString(options.ptr(), key);
  return value.is_none() ? fallback : value.cast<T>();
}

std::vector<data::Example> examples_of(const py::list& rows, const std::string& split) {
  std::vector<data::Example> out;
  for (py::handle row : rows) {
    auto [text, pair, label] =
        row.cast<std::tuple<std::string, std::optional<std::string>, std::optional<std::string>>>();
    out.push_back({text, pair, label, -1, split + "[" + std::to_string(out.size()) + "]"});
  }
  return out;
}

// The data: a path (checked here: FileNotFoundError), or splits of (text, text_pair, label) rows.
void set_data(workflow::TrainRequest& r, py::object data, py::object splits) {
  if (!data.is_none()) {
    r.data = data.cast<std::string>();
    require_exists(r.data, "data");
  } else {
    py::dict given = splits.cast<py::dict>();
    for (const char* split : {"train", "dev", "test"})
      if (given.contains(split)) {
        auto examples = examples_of(given[split].cast<py::list>(), split);
        (split[0] == 't' ? (split[1] == 'r' ? r.splits.train : r.splits.test) : r.splits.dev) =
            std::move(examples);
      }
    if (r.splits.train.empty()) throw py::value_error("the training data holds no examples");
  }
}

// The options, under the command's flag names with underscores; an unknown one is a TypeError.
void set_options(workflow::TrainRequest& r, py::dict options) {
  train::TrainOptions& o = r.options;
  const std::string out = take<std::string>(options, "out", "");
  o.run_dir = out;
  o.in_memory = out.empty();
  o.epochs = take<int64_t>(options, "epochs", o.epochs);
  o.max_steps = take<int64_t>(options, "max_steps", o.max_steps);
  const double lr = take<double>(options, "lr", 0);  // 0 (None): the method's default
  if (lr != 0) r.lr = lr;
  o.batch_size = take<int64_t>(options, "batch_size", o.batch_size);
  o.eval_batch_size = take<int64_t>(options, "eval_batch_size", o.eval_batch_size);
  o.grad_accum = take<int64_t>(options, "grad_accum", o.grad_accum);
  o.weight_decay = take<double>(options, "weight_decay", o.weight_decay);
  o.warmup_ratio = take<double>(options, "warmup_ratio", o.warmup_ratio);
  o.max_grad_norm = take<double>(options, "max_grad_norm", o.max_grad_norm);
  o.schedule = take<std::string>(options, "schedule", o.schedule);
  o.optimizer = take<std::string>(options, "optimizer", o.optimizer);
  o.momentum = take<double>(options, "momentum", o.momentum);
  o.bucket_by_length = take<bool>(options, "bucket", o.bucket_by_length);
  o.seed = take<uint64_t>(options, "seed", o.seed);
  o.eval_every = take<int64_t>(options, "eval_every", o.eval_every);
  o.checkpoint_every = take<int64_t>(options, "checkpoint_every", o.checkpoint_every);
  o.patience = take<int64_t>(options, "patience", o.patience);
  const bool lm = r.task != "classification";
  o.metric = take<std::string>(options, "metric", lm ? "loss" : o.metric);  // an LM is judged by its loss
  o.resume = take<bool>(options, "resume", false);
  o.log_every = take<int64_t>(options, "log_every", 0);
  r.overwrite = take<bool>(options, "overwrite", false);
  r.k_shot = take<int64_t>(options, "k_shot", 0);
  r.max_dev = take<int64_t>(options, "max_dev", 0);
  r.max_test = take<int64_t>(options, "max_test", 0);
  r.max_length = take<int64_t>(options, "max_length", r.max_length);
  r.threads = take<int>(options, "threads", 0);
  r.test_before = take<bool>(options, "test_before", true);
  r.fields = {take<std::string>(options, "text_field", "text"),
              take<std::string>(options, "pair_field", "text_pair"),
              take<std::string>(options, "label_field", "label")};
  if (!options.empty())
    throw py::type_error("train() got an unexpected option '" +
                         py::str(options.begin()->first).cast<std::string>() + "'");
  if (o.epochs < 1 || o.batch_size < 1 || o.grad_accum < 1 || o.max_steps < 0 || r.max_length < 2 ||
      r.max_dev < 0 || r.max_test < 0)
    throw ConfigError(
        "epochs, batch_size and grad_accum must be at least 1, max_steps, max_dev and max_test >= 0, "
        "max_length >= 2");
  if (lr < 0) throw ConfigError("lr must be positive");
}

// What trains: the attached delta (rebuilt from what it was attached with, as the command resolves
// --method and --delta-config), else `method` (lora by default).
void set_method(workflow::TrainRequest& r, ModelState& s, const std::string& method) {
  const train::TrainOptions& o = r.options;
  if (!s.pristine && !o.resume)
    throw ConfigError(
        "train starts from the model folder's weights and a fresh delta, and this model holds trained "
        "weights (a loaded, merged or trained delta) it would not continue from: load the base again "
        "(dt.load_model) and attach, or continue a run from its checkpoint with resume=True");
  const std::vector<delta::Delta*> attached = s.attached();
  size_t index = 0;
  if (attached.size() > 1)
    throw ConfigError("train trains one delta; this model has " + std::to_string(attached.size()));
  if (!attached.empty()) {
    while (s.merged[index]) ++index;
    if (!method.empty() && method != s.methods[index])
      throw ConfigError("method='" + method + "' but the attached delta is " + s.methods[index]);
    r.method = s.methods[index];
  } else {
    r.method = method.empty() ? "lora" : method;
  }
  const MethodPreset& preset = method_preset(r.method);
  if (preset.trains == MethodPreset::Trains::Delta) {
    r.delta_config =
        workflow::delta_config_over_method(r.method, attached.empty() ? nlohmann::json() : s.sources[index]);
    if (!r.delta_config.contains("seed"))
      r.delta_config["seed"] = o.seed;  // as the command's build_delta_config
  }
}

// The request `deltatune train` would make of the same settings (tools/cmd_train.cc).
workflow::TrainRequest request_of(ModelState& s, py::object data, py::object splits, py::dict options) {
  workflow::TrainRequest r;
  r.model_dir = s.model_dir;
  r.task = s.task;
  set_data(r, data, splits);
  const std::string method = take<std::string>(options, "method", "");
  set_options(r, options);
  set_method(r, s, method);
  const train::TrainOptions& o = r.options;
  r.recorded_settings = {{"model", r.model_dir.string()},
                         {"data", r.data.string()},
                         {"out", o.run_dir.string()},
                         {"task", r.task},
                         {"method", r.method},
                         {"epochs", o.epochs},
                         {"batch-size", o.batch_size},
                         {"seed", o.seed},
                         {"text-field", r.fields.text},
                         {"pair-field", r.fields.text_pair},
                         {"label-field", r.fields.label},
                         {"front-end", "python"}};
  return r;
}

// The trained model replaces the Python model's (the deltas first: they hook into the old model).
void adopt(ModelState& s, workflow::TrainRun& run, const workflow::TrainRequest& r) {
  s.deltas.clear();
  s.merged.clear();
  const std::vector<std::string> methods{r.method};
  const std::vector<nlohmann::json> sources{r.delta_config};
  s.methods.clear();
  s.sources.clear();
  s.model = std::move(run.model);
  s.model->set_training(false);
  if (run.delta) {
    s.deltas.push_back(std::move(run.delta));
    s.merged.push_back(false);
    s.methods = methods;
    s.sources = sources;
  }
  s.trained_parameters = run.target.model_parameters;
  if (r.task == "classification") s.labels = run.labels;
  s.max_length = run.max_length;
  s.pristine = false;
  s.freeze();
}

py::dict train(const State& s, py::object data, py::object splits, py::dict options,
               std::vector<py::function> callbacks, bool progress) {
  workflow::TrainRequest r = request_of(*s, data, splits, options);
  PendingError pending;
  auto events = std::make_shared<CallbackEvents>(std::move(callbacks), progress, pending);
  r.options.events = events;
  r.note = [events](const std::string& line) { events->note(line); };
  r.options.on_step = [&pending](int64_t) {
    py::gil_scoped_acquire gil;
    if (!pending.set() && PyErr_CheckSignals() != 0) pending.error.emplace();  // Ctrl-C: KeyboardInterrupt
    return !pending.set();
  };
  workflow::TrainRun run;
  {
    py::gil_scoped_release release;
    run = workflow::run_training(r);
  }
  const bool stopped = run.result.stop_reason == "stopped";
  if (!stopped) adopt(*s, run, r);
  if (pending.set()) {
    py::error_already_set error = std::move(*pending.error);
    pending.error.reset();
    throw error;
  }
  py::dict result;
  result["summary"] = to_python(run.summary);
  result["losses"] = run.result.losses;
  result["stop_reason"] = run.result.stop_reason;
  result["steps"] = run.result.steps;
  result["run_dir"] = r.options.run_dir.string();
  return result;
}

}  // namespace

void bind_training(py::module_& m) {
  m.def("_train", &train, py::arg("model"), py::arg("data"), py::arg("splits"), py::arg("options"),
        py::arg("callbacks"), py::arg("progress"),
        "The training workflow on a model (see deltatune.train, which prepares the arguments).");
  m.def("_method_names", [] {
    std::vector<std::string> names;
    for (const auto& p : method_presets()) names.push_back(p.name);
    return names;
  });
}

}  // namespace deltatune::python
