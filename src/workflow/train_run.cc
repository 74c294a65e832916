// The training workflow (see include/deltatune/workflow.h): one request in, a run folder and the trained
// model out. `deltatune train` and the sweep's cells both run it.
#include <algorithm>
#include <chrono>

#include "deltatune/atomic_file.h"
#include "deltatune/error.h"
#include "deltatune/loading.h"
#include "deltatune/method_presets.h"
#include "deltatune/ops.h"
#include "deltatune/optim.h"
#include "deltatune/run_folder.h"
#include "deltatune/threads.h"
#include "deltatune/visualise.h"
#include "deltatune/workflow.h"

namespace deltatune::workflow {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool is_lm(const TrainRequest& r) { return r.task == "causal-lm" || r.task == "masked-lm"; }

bool trains_delta(const std::string& method) {
  return method_preset(method).trains == MethodPreset::Trains::Delta;
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::string plural(int64_t n, const std::string& word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

distributed::Communicator& processes(const TrainRequest& r) {
  static const std::shared_ptr<distributed::Communicator> alone = distributed::single_process();
  return r.options.communicator ? *r.options.communicator : *alone;
}

// Rank 0 of a data-parallel run writes the run folder and speaks for every process.
bool is_lead(const TrainRequest& r) { return processes(r).rank() == 0; }

void note(const TrainRequest& r, const std::string& line) {
  if (r.note && is_lead(r)) r.note(line);
}

// The examples: read from r.data (K-shot sampled when asked), or as given; a classifier's labels assigned.
Splits read_splits(const TrainRequest& r, data::LabelMap& labels) {
  Splits s = r.splits;
  if (!r.data.empty()) {
    s = {};
    if (fs::is_directory(r.data)) {
      data::Task task = data::load_task(r.data, r.fields, is_lm(r));
      s.train = std::move(task.train);
      s.dev = std::move(task.dev);
      s.test = std::move(task.test);
    } else {
      s.train = data::read_examples(r.data, r.fields, is_lm(r));
    }
  }
  // A K-shot draw may miss classes (K = 100 of a 45-class task) that its dev set, drawn next, holds:
  // the classes are the whole training set's, as the sweep has them.
  std::optional<data::LabelMap> task_labels = r.labels;
  if (r.k_shot > 0 && !is_lm(r) && !task_labels) task_labels = data::LabelMap::from_examples(s.train);
  if (r.k_shot > 0) {
    data::FewShot shot = data::few_shot(s.train, r.k_shot, r.options.seed);
    s.train = std::move(shot.train);
    s.dev = std::move(shot.dev);
    s.dev_origin = "sampled from train";
  }
  if (r.max_dev > 0 && int64_t(s.dev.size()) > r.max_dev) s.dev.resize(size_t(r.max_dev));
  if (r.max_test > 0 && int64_t(s.test.size()) > r.max_test) s.test.resize(size_t(r.max_test));
  if (is_lm(r)) return s;
  labels = task_labels ? *task_labels : data::LabelMap::from_examples(s.train);
  if (labels.size() < 2)
    throw IoError(r.data.string() + ": the training set has a single label; a classifier needs two or more");
  if (task_labels) data::assign_labels(s.train, labels);
  data::assign_labels(s.dev, labels);
  data::assign_labels(s.test, labels);
  return s;
}

// The model with the task's head, and what trains on it: a delta (plus the head), everything, or the head.
void load_target(const TrainRequest& r, TrainRun& run) {
  const uint64_t seed = r.options.seed;
  LoadOptions load;
  load.head = r.task == "masked-lm" ? HeadKind::MaskedLM
              : is_lm(r)            ? HeadKind::CausalLM
                                    : HeadKind::SequenceClassification;
  if (!is_lm(r)) load.num_labels = run.labels.size();
  load.seed = seed;
  load.verbose = false;  // the new classification head is expected, not a problem to report
  const MethodPreset::Trains trains = method_preset(r.method).trains;
  if (trains == MethodPreset::Trains::Delta) run.delta = delta::make_delta(delta_config(r));
  // QLoRA: the body's linear weights are quantised as they are read, unless the run trains them; with
  // --bf16 they are stored in bfloat16 as read (use_bf16 would store them so once the model is frozen).
  const bool body_linears_frozen =
      trains != MethodPreset::Trains::Full && !(run.delta && delta::trains_linear_weights(*run.delta));
  if (body_linears_frozen && r.quantize)
    load.quantize = r.quantize;
  else if (body_linears_frozen && r.bf16 && ops::bf16_linear_available())
    load.bf16 = true;
  run.model = load_pretrained(r.model_dir, load);
  if (trains == MethodPreset::Trains::Full) {
    run.target = train::TrainTarget::full(*run.model);
  } else if (trains == MethodPreset::Trains::Head) {
    run.target = train::TrainTarget::head_only(*run.model);
  } else {
    run.delta->seed = seed;
    run.delta->attach(*run.model);
    run.target = train::TrainTarget::with_deltas(*run.model, {run.delta.get()}, run.delta->method());
  }
}

// "2100 train, 300 dev, 600 test examples", saying where the dev set came from and which split is missing.
std::string describe_splits(size_t train, size_t dev, size_t test, const std::string& dev_origin) {
  std::string out = std::to_string(train) + " train, ";
  if (dev == 0)
    out += "no dev set (the final weights are kept)";
  else
    out += std::to_string(dev) + " dev" + (dev_origin == "dev" ? "" : " (" + dev_origin + ")");
  out += test == 0 ? ", no test set" : ", " + std::to_string(test) + " test";
  return out + " examples";
}

// The datasets at the run's one max length; causal LMs learn only the answer of a prompt/answer pair.
void encode_splits(const TrainRequest& r, const Splits& s, TrainRun& run) {
  auto encode = [&](const std::vector<data::Example>& examples) {
    return r.task == "causal-lm" ? data::encode_for_lm(examples, *run.tokenizer, run.max_length)
                                 : data::encode(examples, *run.tokenizer, run.max_length);
  };
  run.train_set = encode(s.train);
  run.dev_set = encode(s.dev);
  run.test_set = encode(s.test);
  if (r.task == "masked-lm") {
    try {
      run.masking = data::MlmMasking::for_tokenizer(*run.tokenizer);
    } catch (const ConfigError& e) {
      throw ConfigError(r.model_dir.string() + ": " + e.what());
    }
  }
  note(r, "data: " +
              describe_splits(run.train_set.size(), run.dev_set.size(), run.test_set.size(), s.dev_origin) +
              "; " + (is_lm(r) ? r.task : std::to_string(run.labels.size()) + " labels") + "; " +
              std::to_string(run.train_set.truncated) + " train examples reach max length " +
              std::to_string(run.max_length));
}

// --overwrite: the earlier run's files go, so nothing of it (a best/ of its own, its log) mixes with the
// new run's. Only what a run writes is removed; anything else in the folder stays.
void clear_earlier_run(const TrainRequest& r) {
  const fs::path& dir = r.options.run_dir;
  bool removed = false;
  for (const char* folder : {"delta", "peft", "best", "checkpoint"})
    for (const char* suffix : {"", ".tmp", ".old"})
      removed |= fs::remove_all(dir / (folder + std::string(suffix))) > 0;
  for (const char* file : {"labels.json", "train_config.json", "log.jsonl", "plot.svg", "summary.json"})
    removed |= fs::remove(dir / file);
  if (removed) note(r, "--overwrite: removed the earlier run's files in " + dir.string());
}

json evaluate_set(const TrainRequest& r, TrainRun& run, const data::EncodedDataset& set, int64_t batch_size) {
  return train::evaluate(*run.model, set, batch_size, run.masking ? &*run.masking : nullptr, processes(r));
}

// The trained model on the test set: a classifier's metrics with a per-class report, an LM's loss.
json test_metrics(const TrainRequest& r, TrainRun& run) {
  if (run.test_set.size() == 0) return nullptr;
  const int64_t batch = r.options.eval_batch_size;
  if (is_lm(r)) return evaluate_set(r, run, run.test_set, batch);
  train::Predictions p = train::predict(*run.model, run.test_set, batch, false, processes(r));
  json test = metrics::classification_metrics(p.predicted, p.labels);
  test["loss"] = p.loss;
  test["per_class"] =
      metrics::report_json(metrics::per_class_report(p.predicted, p.labels, run.labels.names()));
  return test;
}

// The mean loss of the last updates (at most 10): what a run without a dev set reports of its end.
json final_train_loss(const std::vector<double>& losses) {
  if (losses.empty()) return nullptr;
  const size_t n = std::min<size_t>(10, losses.size());
  double sum = 0;
  for (size_t i = losses.size() - n; i < losses.size(); ++i) sum += losses[i];
  return sum / double(n);
}

// The final weights (the best on dev), PEFT's copy, and the labels beside each.
bool save_weights(const TrainRequest& r, const TrainRun& run) {
  const fs::path& dir = r.options.run_dir;
  train::save_trained(dir / "delta", run.target);
  const bool peft_saved = train::save_trained_peft(dir / "peft", run.target);
  if (!is_lm(r)) {
    run.labels.save(dir / "delta" / "labels.json");
    if (peft_saved) run.labels.save(dir / "peft" / "labels.json");
  }
  return peft_saved;
}

json summary_of(const TrainRequest& r, const TrainRun& run, const json& config, const json& test_before,
                const json& test, bool peft_saved, double total_seconds) {
  const train::TrainResult& result = run.result;
  json summary = {{"task", r.task},
                  {"method", run.target.method},
                  {"model", r.model_dir.string()},
                  {"data", r.data.string()},
                  {"trainable_params", result.trainable},
                  {"total_params", result.total},
                  {"train_seconds", result.seconds},
                  {"total_seconds", total_seconds},
                  {"steps", result.steps},
                  {"train_loss", final_train_loss(result.losses)},
                  {"stop_reason", result.stop_reason},
                  {"best_step", result.best_step},
                  {"metric", r.options.metric},
                  {"dev", result.best_dev},
                  {"dev_last", result.last_dev},
                  {"test", test},
                  {"test_before", test_before},
                  {"labels", is_lm(r) ? json() : json(run.labels.names())},
                  {"train_examples", run.train_set.size()},
                  {"dev_examples", run.dev_set.size()},
                  {"test_examples", run.test_set.size()},
                  {"peft_saved", peft_saved},
                  {"config", config}};
  const int64_t updates = int64_t(result.losses.size());
  if (result.processes > 1 && updates > 0) {  // a data-parallel run: what it cost to keep in step
    summary["processes"] = result.processes;
    summary["allreduce_bytes_per_update"] = result.allreduce_bytes / updates;
    summary["allreduce_ms_per_update"] = 1e3 * result.allreduce_seconds / double(updates);
  }
  return summary;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

double learning_rate(const TrainRequest& r) {
  const double method_default = method_preset(r.method).lr;  // an unknown name fails here
  return r.lr ? *r.lr : method_default;
}

json delta_config(const TrainRequest& r) {
  return r.delta_config.is_null() ? method_preset(r.method).delta_config : r.delta_config;
}

json delta_config_over_method(const std::string& method, const json& file) {
  json c = method_preset(method).delta_config;
  if (file.is_null()) return c;
  if (file.contains("method") && file["method"] == c["method"]) return file;
  if (file.contains("lora_alpha")) c.erase("alpha");  // PEFT's spelling wins over the preset's
  for (const auto& [key, value] : file.items())
    if (key != "method") c[key] = value;
  return c;
}

void check_request(const TrainRequest& r) {
  learning_rate(r);
  if (r.task != "classification" && r.task != "causal-lm" && r.task != "masked-lm")
    throw ConfigError("--task must be classification, causal-lm or masked-lm, got '" + r.task + "'");
  const bool lm = is_lm(r);
  const std::vector<std::string>& known_metrics = metrics::selection_metrics(lm);
  if (std::find(known_metrics.begin(), known_metrics.end(), r.options.metric) == known_metrics.end())
    throw ConfigError("--metric '" + r.options.metric + "' is not a metric of " +
                      (lm ? "a language model" : "a classifier") + " (known: " + joined(known_metrics) + ")");
  const std::vector<std::string>& schedules = LrSchedule::names();
  if (std::find(schedules.begin(), schedules.end(), r.options.schedule) == schedules.end())
    throw ConfigError("--schedule '" + r.options.schedule + "' is unknown (known: " + joined(schedules) +
                      ")");
  if (lm && method_preset(r.method).trains == MethodPreset::Trains::Head)
    throw ConfigError("--method " + r.method +
                      " trains the classification head alone; a language model has none to train");
  if (!model_exists(r.model_dir))
    throw IoError("model folder '" + r.model_dir.string() +
                  "' does not exist or is not a folder (nor a GGUF file)");
  if (!r.data.empty() && !fs::exists(r.data))
    throw IoError("data '" + r.data.string() +
                  "' does not exist (expected a task folder with train.jsonl, or a file)");
  if (r.k_shot < 0 || r.max_dev < 0 || r.max_test < 0)
    throw ConfigError("k_shot, max_dev and max_test must be >= 0 (0: off)");
  if (r.options.run_dir.empty() && !r.options.in_memory)
    throw ConfigError("a training run needs its run folder (options.run_dir) or options.in_memory");
  if (trains_delta(r.method)) delta::make_delta(delta_config(r));  // bad settings fail before any work
}

TrainRun run_training(const TrainRequest& r) {
  const auto started = std::chrono::steady_clock::now();
  check_request(r);
  // Nothing the caller had is replaced unasked: an earlier run in the folder needs overwrite or resume.
  // (Rank 0 alone looks: the others would see what it starts writing.)
  if (!r.options.in_memory && is_lead(r))
    check_run_folder(r.options.run_dir, r.options.resume, r.overwrite,
                     {"run folder", "options.resume", "TrainRequest::overwrite"});
  if (r.threads > 0) set_num_threads(r.threads);
  TrainRun run;
  run.lr = learning_rate(r);
  const Splits splits = read_splits(r, run.labels);  // bad data fails before minutes of model loading
  run.tokenizer = Tokenizer::load(r.model_dir);
  load_target(r, run);
  // Once frozen: the weights that do not learn are quantised or rounded for good. What the run saves
  // of the model (its head, the pooler with it) stays float: it is written at the end.
  if (r.quantize) use_quantized(*run.model, *r.quantize, run.target.model_parameters);
  if (r.bf16) use_bf16(*run.model);
  run.model->gradient_checkpointing = r.gradient_checkpointing;
  if (r.gradient_checkpointing) run.model->check_gradient_checkpointing();  // before any evaluation
  run.max_length = train::effective_max_length(*run.model, r.max_length);
  encode_splits(r, splits, run);

  // An in-memory run (options.in_memory) writes nothing: the caller gets the summary and the model.
  const bool on_disk = !r.options.in_memory && is_lead(r);
  const fs::path& dir = r.options.run_dir;
  json config = r.recorded_settings.is_object() ? r.recorded_settings : json::object();
  config["lr"] = run.lr;
  config["max-length"] = run.max_length;
  if (on_disk) {
    if (r.overwrite) clear_earlier_run(r);
    fs::create_directories(dir);
    if (!is_lm(r)) run.labels.save(dir / "labels.json");
    if (r.write_run_files) write_file_atomic(dir / "train_config.json", config.dump(2) + "\n");
  }

  // The untrained baseline (a fresh head; LoRA starts as the identity), when the test set is small.
  json test_before = nullptr;
  if (r.test_before && run.test_set.size() > 0 && run.test_set.size() <= 5000)
    test_before = evaluate_set(r, run, run.test_set, r.options.eval_batch_size);

  train::TrainOptions options = r.options;
  options.lr = run.lr;
  options.mlm = run.masking;
  const auto [trainable, total] = run.target.freeze();
  // max_steps decides the length of a run alone: its epochs are not what runs.
  const std::string length = options.max_steps > 0
                                 ? plural(options.max_steps, "update") + " (--max-steps) over"
                                 : plural(options.epochs, "epoch") + " of";
  char lr_text[32];
  std::snprintf(lr_text, sizeof lr_text, "%g", run.lr);
  note(r, "training " + run.target.method + ": " + trainable_summary(trainable, total) + ", lr " + lr_text +
              ", " + length + " " + std::to_string(run.train_set.size()) + " examples, batch " +
              std::to_string(options.batch_size) +
              (processes(r).size() > 1 ? " per process x " + std::to_string(processes(r).size()) +
                                             " processes (" + processes(r).name() + ")"
                                       : ""));
  train::Trainer trainer(run.target, options);
  run.result = trainer.train(run.train_set, run.dev_set.size() > 0 ? &run.dev_set : nullptr);
  if (run.result.stop_reason == "stopped" || (!r.options.in_memory && !r.write_run_files)) return run;

  const bool peft_saved = on_disk && save_weights(r, run);
  const json test = r.evaluate_test ? test_metrics(r, run) : json();
  run.summary = summary_of(r, run, config, test_before, test, peft_saved, seconds_since(started));
  if (on_disk) {
    write_file_atomic(dir / "summary.json", run.summary.dump(2) + "\n");
    train::write_training_plot(dir, options.metric);
  }
  return run;
}

}  // namespace deltatune::workflow
