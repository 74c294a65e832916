// deltatune train --model DIR --data TASK_DIR --method lora --out RUN_DIR [--epochs N] [--lr X]
//                 [--batch-size B] [--max-length L] [--seed S] [more options: --help]
// Fine-tunes a sequence classifier on a task folder (train/dev/test .jsonl, .csv or .tsv), training only
// the delta and the classification head; with --task causal-lm, a causal LM on the texts alone.
// RUN_DIR receives delta/ (our format), peft/ (PEFT's, when the method has one), labels.json,
// train_config.json, log.jsonl, plot.svg, summary.json, best/ and checkpoint/ (for --resume).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "command.h"
#include "deltatune/atomic_file.h"
#include "deltatune/config_file.h"
#include "deltatune/data.h"
#include "deltatune/delta_io.h"
#include "deltatune/method_presets.h"
#include "deltatune/metrics.h"
#include "deltatune/threads.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"
#include "deltatune/visualise.h"
#include "model_loading.h"
#include "option_checks.h"
#include "out_folder.h"
#include "train/checkpoint.h"

namespace {
using namespace deltatune;
namespace fs = std::filesystem;
using cli::ExitError;

struct Args {
  std::string model, data, out, method = "lora", task = "classification";
  int64_t epochs = 3, batch_size = 16, max_length = 128;
  double lr = 0;  // 0: the method's default
  uint64_t seed = 42;
  int64_t lora_r = 0;      // 0: the method's (--method lora: 8)
  double lora_alpha = 0;   // 0: the method's (--method lora: 16)
  std::vector<std::string> targets;
  std::string delta_config, config;
  int64_t k_shot = 0, eval_every = 0, patience = 0, grad_accum = 1, max_steps = 0, checkpoint_every = 0;
  double warmup_ratio = 0.06, weight_decay = 0.01, max_grad_norm = 1.0;
  std::string schedule = "linear", metric = "accuracy";
  int threads = 0;
  bool resume = false, overwrite = false, bucket = false, quiet = false, no_test_before = false;
  int64_t log_every = 0, eval_batch_size = 64;
  std::string text_field = "text", pair_field = "text_pair", label_field = "label";
  bool bf16 = false;
};

// --lr, else the method's default from the method table (which also refuses an unknown --method,
// listing every name, before any work is done).
double learning_rate(const Args& a) {
  const double method_default = method_preset(a.method).lr;
  return a.lr > 0 ? a.lr : method_default;
}

// "1e-4 full, 5e-3 head/none, 2e-3 the others": the table's default learning rates, for --lr's help.
std::string default_lrs_text() {
  std::vector<std::pair<double, std::vector<std::string>>> groups;
  for (const auto& m : method_presets()) {
    auto g = std::find_if(groups.begin(), groups.end(), [&](const auto& x) { return x.first == m.lr; });
    if (g == groups.end()) g = groups.insert(groups.end(), {m.lr, {}});
    g->second.push_back(m.name);
  }
  std::string text;
  for (const auto& [lr, names] : groups) {
    std::string who;
    for (const auto& n : names) who += (who.empty() ? "" : "/") + n;
    if (names.size() > 3) who = "the others";
    char value[32];
    std::snprintf(value, sizeof value, "%g", lr);
    text += (text.empty() ? "" : ", ") + std::string(value) + " " + who;
  }
  return text;
}

// The signal that asked training to stop (SIGINT: Ctrl-C; SIGTERM: kill, a job scheduler), or 0.
std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int signal) {
  g_stop_signal = signal;
  std::signal(signal, SIG_DFL);  // a second one ends the process at once
}

// While training runs, SIGINT and SIGTERM stop it after the current update, with a checkpoint.
struct StopSignals {
  StopSignals() {
    g_stop_signal = 0;
    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGTERM, on_stop_signal);
  }
  ~StopSignals() {
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
};

std::string plural(int64_t n, const std::string& word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// A JSON (or YAML: .yaml / .yml) settings file.
nlohmann::json read_json(const std::string& file, const char* what) {
  if (!fs::is_regular_file(file)) throw ExitError{std::string(what) + " '" + file + "' cannot be read"};
  try {
    return read_config_file(file);
  } catch (const IoError& e) {
    throw ExitError{e.what()};
  }
}

// --config FILE: a JSON or YAML object whose keys are the long flag names ("lr", "batch-size"; "_"
// works for "-"). Flags given on the command line win over the file.
void apply_config_file(CLI::App& app, const std::string& file) {
  const nlohmann::json j = read_json(file, "config file");
  if (!j.is_object()) throw ExitError{file + ": expected a JSON object of flag names and values"};
  for (auto& [raw_key, value] : j.items()) {
    std::string key = raw_key;
    std::replace(key.begin(), key.end(), '_', '-');
    CLI::Option* opt = key == "config" || key == "help" ? nullptr : app.get_option_no_throw("--" + key);
    if (!opt)
      throw ExitError{file + ": unknown key '" + raw_key +
                      "' (keys are the long flag names of `deltatune train`)"};
    if (opt->count() > 0) continue;
    if (value.is_array() && value.empty()) continue;  // an empty list (train_config.json's "targets"): not given
    std::vector<std::string> values;
    auto as_text = [&](const nlohmann::json& v) -> std::string {
      if (v.is_string()) return v.get<std::string>();
      if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
      if (v.is_number()) return v.dump();
      throw ExitError{file + ": key '" + raw_key + "' must be a string, number, boolean or list of those"};
    };
    if (value.is_array())
      for (const auto& v : value) values.push_back(as_text(v));
    else
      values.push_back(as_text(value));
    for (auto& v : values) opt->add_result(v);
    try {
      opt->run_callback();
    } catch (const CLI::Error& e) {
      throw ExitError{file + ": key '" + raw_key + "': " + e.what()};
    }
  }
}

// The run's settings with the flags' names: what --config reads, so a run can be repeated exactly.
nlohmann::json resolved_config(const Args& a, double lr) {
  return {{"model", a.model},
          {"data", a.data},
          {"out", a.out},
          {"task", a.task},
          {"method", a.method},
          {"epochs", a.epochs},
          {"lr", lr},
          {"batch-size", a.batch_size},
          {"max-length", a.max_length},
          {"seed", a.seed},
          {"lora-r", a.lora_r},
          {"lora-alpha", a.lora_alpha},
          {"targets", a.targets},
          {"delta-config", a.delta_config},
          {"k-shot", a.k_shot},
          {"eval-every", a.eval_every},
          {"patience", a.patience},
          {"warmup-ratio", a.warmup_ratio},
          {"weight-decay", a.weight_decay},
          {"grad-accum", a.grad_accum},
          {"max-grad-norm", a.max_grad_norm},
          {"schedule", a.schedule},
          {"max-steps", a.max_steps},
          {"metric", a.metric},
          {"bucket", a.bucket},
          {"checkpoint-every", a.checkpoint_every},
          {"eval-batch-size", a.eval_batch_size},
          {"text-field", a.text_field},
          {"pair-field", a.pair_field},
          {"label-field", a.label_field},
          {"bf16", a.bf16}};
}

nlohmann::json read_delta_config_file(const Args& a) {
  const nlohmann::json file = read_json(a.delta_config, "delta config");
  if (!file.is_object()) throw ExitError{a.delta_config + ": a delta config must be a JSON object"};
  if (file.contains("method") && !file["method"].is_string())
    throw ExitError{a.delta_config + ": \"method\" must be a method name, got " + file["method"].dump()};
  return file;
}

// The method a run trains: --method when given, else the method a --delta-config file names, else
// lora. (Recorded in train_config.json, so a repeated run resolves the same way.)
std::string method_name(const Args& a, const CLI::App& app) {
  if (app.get_option("--method")->count() > 0 || a.delta_config.empty()) return a.method;
  const nlohmann::json file = read_delta_config_file(a);
  return file.value("method", a.method);
}

// The delta a run trains (a.method as method_name() resolved it). Without a --delta-config: the
// method's config in the method table. A --delta-config file of that delta method: the file as
// written (what it leaves out takes the method's defaults, as in every other command); a file naming
// no method, a preset (houlsby) or another method than --method: its fields over the method's table
// config. Then --lora-r, --lora-alpha (LoRA) and --targets, when given, override.
nlohmann::json build_delta_config(const Args& a) {
  nlohmann::json c = method_preset(a.method).delta_config;
  if (!a.delta_config.empty()) {
    const nlohmann::json file = read_delta_config_file(a);
    if (file.contains("method") && file["method"] == c["method"]) {
      c = file;
    } else {
      if (file.contains("lora_alpha")) c.erase("alpha");  // PEFT's spelling wins over the preset's
      for (const auto& [key, value] : file.items())
        if (key != "method") c[key] = value;
    }
  }
  if (c.value("method", "") == "lora") {
    if (a.lora_r > 0) c["r"] = a.lora_r;
    if (a.lora_alpha > 0) c["alpha"] = a.lora_alpha;
  }
  if (!a.targets.empty()) c["targets"] = a.targets;
  if (!c.contains("seed")) c["seed"] = a.seed;
  return c;
}

struct Splits {
  std::vector<data::Example> train, dev, test;
  std::string dev_origin = "dev";
};

Splits load_splits(const Args& a, bool lm) {
  const data::Fields fields{a.text_field, a.pair_field, a.label_field};
  Splits s;
  if (fs::is_directory(a.data)) {
    data::Task task = data::load_task(a.data, fields, lm);
    s.train = std::move(task.train);
    s.dev = std::move(task.dev);
    s.test = std::move(task.test);
  } else {
    s.train = data::read_examples(a.data, fields, lm);
  }
  if (a.k_shot > 0) {
    // UniPELT's protocol: K training examples and up to 1000 more as dev, all drawn from train.
    data::FewShot fs = data::few_shot(s.train, a.k_shot, a.seed);
    s.train = std::move(fs.train);
    s.dev = std::move(fs.dev);
    s.dev_origin = "sampled from train";
  }
  return s;
}

double number(const nlohmann::json& m, const char* key) {
  return m.is_object() && m.contains(key) && m[key].is_number() ? m[key].get<double>() : -1.0;
}

void print_summary(const nlohmann::json& summary, const std::string& run_dir, bool lm) {
  std::printf("\n== deltatune train: %s on %s ==\n", summary["method"].get<std::string>().c_str(),
              summary["model"].get<std::string>().c_str());
  std::printf("  %s\n", trainable_summary(summary["trainable_params"], summary["total_params"]).c_str());
  const std::string key = summary["metric"];
  const nlohmann::json &dev = summary["dev"], &test = summary["test"], &before = summary["test_before"];
  if (dev.is_object()) {
    if (lm)
      std::printf("  best dev %s %.4f at step %lld (perplexity %.3f)\n", key.c_str(),
                  number(dev, key.c_str()), (long long)summary["best_step"].get<int64_t>(),
                  number(dev, "perplexity"));
    else
      std::printf("  best dev %s %.4f at step %lld (accuracy %.4f, macro-F1 %.4f)\n", key.c_str(),
                  number(dev, key.c_str()), (long long)summary["best_step"].get<int64_t>(),
                  number(dev, "accuracy"), number(dev, "macro_f1"));
  }
  if (!dev.is_object() && summary["train_loss"].is_number())
    std::printf("  final train loss %.4f (the mean of up to the last 10 updates; no dev set)\n",
                summary["train_loss"].get<double>());
  if (test.is_object()) {
    const char* main_metric = lm ? "perplexity" : "accuracy";
    const char* second = lm ? "loss" : "macro_f1";
    const char* second_name = lm ? "loss" : "macro-F1";
    if (before.is_object())
      std::printf("  test %s %.4f before -> %.4f after (%s %.4f -> %.4f)\n", main_metric,
                  number(before, main_metric), number(test, main_metric), second_name, number(before, second),
                  number(test, second));
    else
      std::printf("  test %s %.4f, %s %.4f\n", main_metric, number(test, main_metric), second_name,
                  number(test, second));
  }
  std::printf("  %s (%s) in %.1f s of training, %.1f s in all\n",
              plural(summary["steps"].get<int64_t>(), "step").c_str(),
              summary["stop_reason"].get<std::string>().c_str(), summary["train_seconds"].get<double>(),
              summary["total_seconds"].get<double>());
  std::printf("  run folder: %s (delta/, %s%ssummary.json, log.jsonl, plot.svg)\n", run_dir.c_str(),
              summary["peft_saved"].get<bool>() ? "peft/, " : "", lm ? "" : "labels.json, ");
}

// Every option is checked before any work (data, model, run folder): a typo costs nothing and leaves
// nothing behind. What CLI11 cannot check alone (names, files, combinations) is checked here.
void check_options(const Args& a, bool lm) {
  const std::vector<std::string>& known_metrics = metrics::selection_metrics(lm);
  if (std::find(known_metrics.begin(), known_metrics.end(), a.metric) == known_metrics.end())
    throw ExitError{"--metric '" + a.metric + "' is not a metric of " +
                    (lm ? "a language model" : "a classifier") + " (known: " + joined(known_metrics) + ")"};
  const std::vector<std::string>& schedules = LrSchedule::names();
  if (std::find(schedules.begin(), schedules.end(), a.schedule) == schedules.end())
    throw ExitError{"--schedule '" + a.schedule + "' is unknown (known: " + joined(schedules) + ")"};
  if (lm && (a.method == "none" || a.method == "head"))
    throw ExitError{"--method " + a.method +
                    " trains the classification head alone; a language model has none to train"};
  if (a.resume && a.overwrite)
    throw ExitError{"--resume continues the run in --out and --overwrite starts it over: give one of them"};
  if (!fs::is_directory(a.model))
    throw ExitError{"model folder '" + a.model + "' does not exist or is not a folder"};
  if (!fs::exists(a.data))
    throw ExitError{"data '" + a.data +
                    "' does not exist (expected a task folder with train.jsonl, or a file)"};
}

// --out, before any work: a folder that can be written and, unless --resume or --overwrite says what to
// do with it, holds no earlier run (whose delta, log and checkpoint this run would replace).
void check_run_folder(const Args& a) {
  cli::check_writable_folder(a.out, "--out");
  const fs::path checkpoint = fs::path(a.out) / "checkpoint";
  if (a.resume && !train_detail::checkpoint_exists(checkpoint))
    throw ExitError{"--resume: no checkpoint in '" + checkpoint.string() + "' to continue from"};
  if (!a.resume && !a.overwrite && cli::holds_files(a.out))
    throw ExitError{"--out '" + a.out +
                    "' is not empty (an earlier run?): pass --resume to continue its run " +
                    "from its checkpoint, or --overwrite to start over (its run files are removed)"};
}

// --overwrite: the earlier run's files go, so nothing of it (a best/ of its own, its log) mixes with the
// new run's. Only what `train` writes is removed; anything else in the folder stays.
void clear_earlier_run(const fs::path& run_dir) {
  bool removed = false;
  for (const char* folder : {"delta", "peft", "best", "checkpoint"})
    for (const char* suffix : {"", ".tmp", ".old"})
      removed |= fs::remove_all(run_dir / (folder + std::string(suffix))) > 0;
  for (const char* file : {"labels.json", "train_config.json", "log.jsonl", "plot.svg", "summary.json"})
    removed |= fs::remove(run_dir / file);
  if (removed) std::fprintf(stderr, "--overwrite: removed the earlier run's files in %s\n", run_dir.c_str());
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

// The mean loss of the last updates (at most 10): what a run without a dev set reports of its end.
nlohmann::json final_train_loss(const std::vector<double>& losses) {
  if (losses.empty()) return nullptr;
  const size_t n = std::min<size_t>(10, losses.size());
  double sum = 0;
  for (size_t i = losses.size() - n; i < losses.size(); ++i) sum += losses[i];
  return sum / double(n);
}

void run(Args a, CLI::App& app) {
  const auto started = std::chrono::steady_clock::now();
  for (auto [value, flag] : {std::pair{&a.model, "--model"}, {&a.data, "--data"}, {&a.out, "--out"}})
    if (value->empty())
      throw ExitError{std::string(flag) + " is required (on the command line or in --config)"};
  if (a.task != "classification" && a.task != "causal-lm" && a.task != "masked-lm")
    throw ExitError{"--task must be classification, causal-lm or masked-lm, got '" + a.task + "'"};
  const bool mlm = a.task == "masked-lm";
  const bool lm = a.task == "causal-lm" || mlm;
  // A language model is judged by its loss unless asked otherwise.
  if (lm && app.get_option("--metric")->count() == 0) a.metric = "loss";
  a.method = method_name(a, app);
  const double lr = learning_rate(a);  // an unknown method name fails here, before any work
  check_options(a, lm);
  // The delta is made from its config now (bad settings fail here) and attached once the model is loaded.
  std::unique_ptr<delta::Delta> delta;
  if (a.method != "full" && a.method != "none" && a.method != "head")
    delta = delta::make_delta(build_delta_config(a));
  check_run_folder(a);
  if (a.threads > 0) set_num_threads(a.threads);
  const fs::path run_dir = a.out;

  // Data and labels first: bad data should fail before minutes of model loading.
  Splits splits = load_splits(a, lm);
  data::LabelMap labels;
  if (!lm) {
    labels = data::LabelMap::from_examples(splits.train);
    if (labels.size() < 2)
      throw ExitError{a.data + ": the training set has a single label; a classifier needs two or more"};
    data::assign_labels(splits.dev, labels);
    data::assign_labels(splits.test, labels);
  }

  auto tokenizer = Tokenizer::load(a.model);
  LoadOptions load;
  load.head = mlm ? HeadKind::MaskedLM : lm ? HeadKind::CausalLM : HeadKind::SequenceClassification;
  if (!lm) load.num_labels = labels.size();
  load.seed = a.seed;
  load.verbose = false;  // the new classification head is expected, not a problem to report
  std::unique_ptr<TransformerModel> model = load_pretrained(a.model, load);

  // What trains: a delta (plus the head), the whole model, or the head alone.
  train::TrainTarget target;
  if (a.method == "full") {
    target = train::TrainTarget::full(*model);
  } else if (a.method == "none" || a.method == "head") {
    target = train::TrainTarget::head_only(*model);
  } else {
    delta->seed = a.seed;
    delta->attach(*model);
    target = train::TrainTarget::with_deltas(*model, {delta.get()}, delta->method());
  }
  if (a.bf16) cli::use_bf16(*model);  // once frozen: the weights that do not learn are rounded for good
  // One length for the whole run: what the positions leave once the delta's virtual tokens have
  // theirs. train_config.json records it, and eval / predict reuse it.
  const int64_t max_length = train::effective_max_length(*model, a.max_length);
  a.max_length = max_length;

  // Causal LMs: a text_pair is the answer to the text (a prompt), and only the answer is learnt.
  auto encode = [&](const std::vector<data::Example>& examples) {
    return a.task == "causal-lm" ? data::encode_for_lm(examples, *tokenizer, max_length)
                                 : data::encode(examples, *tokenizer, max_length);
  };
  const data::EncodedDataset train_set = encode(splits.train), dev_set = encode(splits.dev),
                             test_set = encode(splits.test);
  std::optional<data::MlmMasking> masking;
  if (mlm) {
    try {
      masking = data::MlmMasking::for_tokenizer(*tokenizer);
    } catch (const ConfigError& e) {
      throw ExitError{a.model + ": " + e.what()};
    }
  }
  std::fprintf(stderr, "data: %s; %s; %lld train examples reach max length %lld\n",
               describe_splits(train_set.size(), dev_set.size(), test_set.size(), splits.dev_origin).c_str(),
               lm ? a.task.c_str() : (std::to_string(labels.size()) + " labels").c_str(),
               (long long)train_set.truncated, (long long)max_length);

  if (a.overwrite) clear_earlier_run(run_dir);
  fs::create_directories(run_dir);
  if (!lm) labels.save(run_dir / "labels.json");
  const nlohmann::json config = resolved_config(a, lr);
  write_file_atomic(run_dir / "train_config.json", config.dump(2) + "\n");

  // The untrained baseline (a fresh head; LoRA starts as the identity), when the test set is small.
  nlohmann::json test_before = nullptr;
  if (!a.no_test_before && test_set.size() > 0 && test_set.size() <= 5000)
    test_before = train::evaluate(*model, test_set, a.eval_batch_size, masking ? &*masking : nullptr);

  train::TrainOptions options;
  options.epochs = a.epochs;
  options.max_steps = a.max_steps;
  options.lr = lr;
  options.weight_decay = a.weight_decay;
  options.warmup_ratio = a.warmup_ratio;
  options.schedule = a.schedule;
  options.max_grad_norm = a.max_grad_norm;
  options.batch_size = a.batch_size;
  options.eval_batch_size = a.eval_batch_size;
  options.grad_accum = a.grad_accum;
  options.bucket_by_length = a.bucket;
  options.seed = a.seed;
  options.eval_every = a.eval_every;
  options.checkpoint_every = a.checkpoint_every;
  options.patience = a.patience;
  options.metric = a.metric;
  options.run_dir = run_dir;
  options.resume = a.resume;
  options.progress = !a.quiet;
  options.log_every = a.log_every;
  options.mlm = masking;
  options.on_step = [](int64_t) { return g_stop_signal.load() == 0; };

  const auto [trainable, total] = target.freeze();
  // --max-steps decides the length of a run alone: its epochs are not what runs.
  const std::string length = a.max_steps > 0 ? plural(a.max_steps, "update") + " (--max-steps) over"
                                             : plural(a.epochs, "epoch") + " of";
  std::fprintf(stderr, "training %s: %s, lr %g, %s %zu examples, batch %lld\n", target.method.c_str(),
               trainable_summary(trainable, total).c_str(), lr, length.c_str(), train_set.size(),
               (long long)a.batch_size);
  train::Trainer trainer(target, options);
  train::TrainResult result;
  {
    StopSignals stop_signals;
    result = trainer.train(train_set, dev_set.size() > 0 ? &dev_set : nullptr);
  }
  if (result.stop_reason == "stopped") {
    const int signal = g_stop_signal.load();
    throw ExitError{std::string("interrupted (") + (signal == SIGTERM ? "SIGTERM" : "Ctrl-C") + ") at step " +
                        std::to_string(result.steps) + "; the checkpoint in " +
                        (run_dir / "checkpoint").string() + " continues with --resume",
                    128 + signal};
  }

  // The final weights (the best on dev) and where they came from.
  train::save_trained(run_dir / "delta", target);
  const bool peft_saved = train::save_trained_peft(run_dir / "peft", target);
  if (!lm) {
    labels.save(run_dir / "delta" / "labels.json");
    if (peft_saved) labels.save(run_dir / "peft" / "labels.json");
  }

  nlohmann::json test = nullptr;
  if (test_set.size() > 0 && lm) {
    test = train::evaluate(*model, test_set, a.eval_batch_size, masking ? &*masking : nullptr);
  } else if (test_set.size() > 0) {
    train::Predictions p = train::predict(*model, test_set, a.eval_batch_size);
    test = metrics::classification_metrics(p.predicted, p.labels);
    test["loss"] = p.loss;
    test["per_class"] =
        metrics::report_json(metrics::per_class_report(p.predicted, p.labels, labels.names()));
  }
  nlohmann::json summary = {
      {"task", a.task},
      {"method", target.method},
      {"model", a.model},
      {"data", a.data},
      {"trainable_params", result.trainable},
      {"total_params", result.total},
      {"train_seconds", result.seconds},
      {"total_seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()},
      {"steps", result.steps},
      {"train_loss", final_train_loss(result.losses)},
      {"stop_reason", result.stop_reason},
      {"best_step", result.best_step},
      {"metric", a.metric},
      {"dev", result.best_dev},
      {"dev_last", result.last_dev},
      {"test", test},
      {"test_before", test_before},
      {"labels", lm ? nlohmann::json() : nlohmann::json(labels.names())},
      {"train_examples", train_set.size()},
      {"peft_saved", peft_saved},
      {"config", config}};
  write_file_atomic(run_dir / "summary.json", summary.dump(2) + "\n");
  train::write_training_plot(run_dir, a.metric);
  print_summary(summary, run_dir.string(), lm);
}

void setup(CLI::App& app) {
  auto a = std::make_shared<Args>();
  app.add_option("--model", a->model, "Hugging Face model folder (required)");
  app.add_option("--data", a->data,
                 "Task folder (train/dev/test .jsonl|.csv|.tsv) or one training file (required)");
  app.add_option("--out,--output", a->out, "Run folder to write (required)");
  app.add_option("--method", a->method,
                 "What trains: full (every weight), head or none (the head alone), a delta method or a named "
                 "preset of one; the same names, configs and learning rates as sweep's (sweep --list-methods): " +
                     method_preset_names())
      ->capture_default_str();
  app.add_option("--task", a->task,
                 "classification (labelled texts), causal-lm (next-token loss on plain texts; with a text_pair, "
                 "the text is a prompt and only its answer, the text_pair, is learnt) or masked-lm (BERT-style: "
                 "15% of tokens masked, predicted)")
      ->capture_default_str();
  app.add_option("--epochs", a->epochs, "Passes over the training set")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--lr", a->lr, "Peak learning rate (default: the method's: " + default_lrs_text() + ")")
      ->check(cli::kPositive);
  app.add_option("--batch-size", a->batch_size, "Examples per batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  app.add_option("--max-length", a->max_length, "Tokens per example, special tokens included (at most the model's positions less a prompt's or GPT-2 prefix's virtual tokens)")
      ->capture_default_str()
      ->check(CLI::Range(2, 1 << 20));
  app.add_option("--seed", a->seed, "Seed of data order, delta and head init, dropout and few-shot sampling")
      ->capture_default_str();
  app.add_option("--lora-r", a->lora_r, "LoRA rank (default, or 0: the method's; 8 for --method lora)")
      ->check(CLI::Range(0, 65536));
  app.add_option("--lora-alpha", a->lora_alpha,
                 "LoRA alpha, scaling alpha/r (default, or 0: the method's: 16 for --method lora; in a "
                 "--delta-config {\"method\": \"lora\", ...} the file's, else 8 as in PEFT)")
      ->check(cli::kNonNegative);
  app.add_option(
         "--targets", a->targets,
         "Modules the delta attaches to: roles (attn.q, attn.v, ffn.up, ...) or names; comma-separated")
      ->delimiter(',');
  app.add_option("--delta-config", a->delta_config,
                 "JSON or YAML delta config ({\"method\": \"lora\", \"r\": 8, ...})");
  app.add_option("--config", a->config,
                 "JSON or YAML file of flag values (keys are the long flag names); flags given here win");
  app.add_option("--k-shot", a->k_shot,
                 "Few-shot: train on K examples sampled with the seed, dev = the next 1000")
      ->check(cli::kNonNegative);
  app.add_option("--eval-every", a->eval_every, "Also evaluate on dev every N updates (always at epoch ends)")
      ->check(cli::kNonNegative);
  app.add_option("--patience", a->patience, "Early stopping after N evaluations without improvement (0: off)")
      ->check(cli::kNonNegative);
  app.add_option("--warmup-ratio", a->warmup_ratio, "Fraction of updates spent warming up the learning rate")
      ->capture_default_str()
      ->check(cli::kFraction);
  app.add_option("--weight-decay", a->weight_decay, "AdamW weight decay (not on biases and norms)")
      ->capture_default_str()
      ->check(cli::kNonNegative);
  app.add_option("--grad-accum", a->grad_accum, "Batches per optimizer update")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  app.add_option("--max-grad-norm", a->max_grad_norm, "Gradient clipping norm (0: off)")
      ->capture_default_str()
      ->check(cli::kNonNegative);
  app.add_option("--schedule", a->schedule,
                 "Learning-rate schedule: linear, cosine, constant, constant_with_warmup")
      ->capture_default_str();
  app.add_option("--metric", a->metric,
                 "Dev metric that picks the best weights: accuracy, macro_f1, mcc, loss (causal-lm: loss, "
                 "perplexity)")
      ->capture_default_str();
  cli::add_threads_option(app, &a->threads);
  app.add_option("--max-steps", a->max_steps, "Stop after N updates (overrides --epochs)")
      ->check(cli::kNonNegative);
  app.add_option("--checkpoint-every", a->checkpoint_every,
                 "Also checkpoint every N updates (always after evaluations)")
      ->check(cli::kNonNegative);
  app.add_option("--eval-batch-size", a->eval_batch_size, "Examples per evaluation batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  app.add_option("--log-every", a->log_every, "Progress line every N updates when stderr is not a terminal")
      ->check(cli::kNonNegative);
  app.add_option("--text-field", a->text_field, "Field holding the text")->capture_default_str();
  app.add_option("--pair-field", a->pair_field, "Field holding the second text of a pair")
      ->capture_default_str();
  app.add_option("--label-field", a->label_field, "Field holding the label")->capture_default_str();
  app.add_flag("--bf16", a->bf16, std::string(cli::kBf16Help) + "; the delta and optimizer stay float32");
  app.add_flag("--resume", a->resume, "Continue from RUN_DIR/checkpoint (same flags as the interrupted run)");
  app.add_flag("--overwrite", a->overwrite,
               "Start over in a --out that holds an earlier run (its run files are removed; without --resume "
               "or --overwrite a non-empty --out is refused)");
  app.add_flag("--bucket", a->bucket, "Batch examples of similar length together (less padding)");
  app.add_flag("--no-test-before", a->no_test_before, "Skip the test evaluation before training");
  app.add_flag("--quiet", a->quiet, "No progress output");
  app.callback([a, &app] {
    if (!a->config.empty()) apply_config_file(app, a->config);
    run(*a, app);  // a copy: defaults that depend on the task are filled in
  });
}
deltatune::cli::Register reg("train", "Fine-tune a delta (LoRA, ...) and a classification head on a task",
                             setup);
}  // namespace
