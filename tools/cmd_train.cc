// deltatune train --model DIR --data TASK_DIR --method lora --out RUN_DIR [--epochs N] [--lr X]
//                 [--batch-size B] [--max-length L] [--seed S] [more options: --help]
// Fine-tunes a sequence classifier on a task folder (train/dev/test .jsonl, .csv or .tsv), training only
// the delta and the classification head; with --task causal-lm, a causal LM on the texts alone.
// RUN_DIR receives delta/ (our format), peft/ (PEFT's, when the method has one), labels.json,
// train_config.json, log.jsonl, plot.svg, summary.json, best/ and checkpoint/ (for --resume).
// The flags become a workflow::TrainRequest; the run is the library's (deltatune/workflow.h); this file
// parses, checks the run folder, turns SIGINT/SIGTERM into a stop, and prints the summary.
#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "command.h"
#include "deltatune/config_file.h"
#include "deltatune/method_presets.h"
#include "deltatune/run_folder.h"
#include "deltatune/visualise.h"
#include "deltatune/workflow.h"
#include "model_loading.h"
#include "option_checks.h"
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
  int64_t lora_r = 0;     // 0: the method's (--method lora: 8)
  double lora_alpha = 0;  // 0: the method's (--method lora: 16)
  std::vector<std::string> targets;
  std::string delta_config, config;
  int64_t k_shot = 0, max_dev = 0, max_test = 0, eval_every = 0, patience = 0, grad_accum = 1, max_steps = 0,
          checkpoint_every = 0;
  double warmup_ratio = 0.06, weight_decay = 0.01, max_grad_norm = 1.0, momentum = 0;
  std::string schedule = "linear", metric = "accuracy", optimizer = "adamw";
  int threads = 0;
  bool resume = false, overwrite = false, bucket = false, quiet = false, no_test_before = false;
  int64_t log_every = 0, eval_batch_size = 64;
  std::string text_field = "text", pair_field = "text_pair", label_field = "label";
  bool bf16 = false;
  std::optional<QuantFormat> quantize;
  bool gradient_checkpointing = false;
};

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
    if (value.is_array() && value.empty())
      continue;  // an empty list (train_config.json's "targets"): not given
    std::vector<std::string> values;
    const std::string& given = raw_key;  // clang before 16 cannot capture a structured binding
    auto as_text = [&](const nlohmann::json& v) -> std::string {
      if (v.is_string()) return v.get<std::string>();
      if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
      if (v.is_number()) return v.dump();
      throw ExitError{file + ": key '" + given + "' must be a string, number, boolean or list of those"};
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

// The run's settings with the flags' names: what --config reads, so a run can be repeated exactly (the
// workflow adds the learning rate and max length it resolved).
nlohmann::json resolved_config(const Args& a) {
  nlohmann::json config = {{"model", a.model},
                           {"data", a.data},
                           {"out", a.out},
                           {"task", a.task},
                           {"method", a.method},
                           {"epochs", a.epochs},
                           {"batch-size", a.batch_size},
                           {"seed", a.seed},
                           {"lora-r", a.lora_r},
                           {"lora-alpha", a.lora_alpha},
                           {"targets", a.targets},
                           {"delta-config", a.delta_config},
                           {"k-shot", a.k_shot},
                           {"max-dev", a.max_dev},
                           {"max-test", a.max_test},
                           {"eval-every", a.eval_every},
                           {"patience", a.patience},
                           {"warmup-ratio", a.warmup_ratio},
                           {"weight-decay", a.weight_decay},
                           {"grad-accum", a.grad_accum},
                           {"max-grad-norm", a.max_grad_norm},
                           {"schedule", a.schedule},
                           {"optimizer", a.optimizer},
                           {"momentum", a.momentum},
                           {"max-steps", a.max_steps},
                           {"metric", a.metric},
                           {"bucket", a.bucket},
                           {"checkpoint-every", a.checkpoint_every},
                           {"eval-batch-size", a.eval_batch_size},
                           {"text-field", a.text_field},
                           {"pair-field", a.pair_field},
                           {"label-field", a.label_field},
                           {"bf16", a.bf16},
                           {"gradient-checkpointing", a.gradient_checkpointing}};
  if (a.quantize) config["quantize"] = quant_format_name(*a.quantize);
  return config;
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

// The delta a run trains (a.method as method_name() resolved it): the method's config in the method
// table with a --delta-config file over it (workflow::delta_config_over_method says how), then
// --lora-r, --lora-alpha (LoRA) and --targets, when given.
nlohmann::json build_delta_config(const Args& a) {
  nlohmann::json c = workflow::delta_config_over_method(
      a.method, a.delta_config.empty() ? nlohmann::json() : read_delta_config_file(a));
  if (c.value("method", "") == "lora") {
    if (a.lora_r > 0) c["r"] = a.lora_r;
    if (a.lora_alpha > 0) c["alpha"] = a.lora_alpha;
  }
  if (!a.targets.empty()) c["targets"] = a.targets;
  if (!c.contains("seed")) c["seed"] = a.seed;
  return c;
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

// --out, before any work, in the flags' words (the workflow checks again in its own).
void check_run_folder(const Args& a) {
  deltatune::check_run_folder(a.out, a.resume, a.overwrite, {"--out", "--resume", "--overwrite"});
}

// The library's request: the flags, resolved (the method from a --delta-config file, its delta config).
workflow::TrainRequest training_request(const Args& a) {
  workflow::TrainRequest r;
  r.model_dir = a.model;
  r.data = a.data;
  r.fields = {a.text_field, a.pair_field, a.label_field};
  r.k_shot = a.k_shot;
  r.max_dev = a.max_dev;
  r.max_test = a.max_test;
  r.task = a.task;
  r.method = a.method;
  const MethodPreset* preset = find_method_preset(a.method);
  if (preset && preset->trains == MethodPreset::Trains::Delta) r.delta_config = build_delta_config(a);
  if (a.lr > 0) r.lr = a.lr;
  train::TrainOptions& o = r.options;
  o.epochs = a.epochs;
  o.max_steps = a.max_steps;
  o.weight_decay = a.weight_decay;
  o.warmup_ratio = a.warmup_ratio;
  o.schedule = a.schedule;
  o.optimizer = a.optimizer;
  o.momentum = a.momentum;
  o.max_grad_norm = a.max_grad_norm;
  o.batch_size = a.batch_size;
  o.eval_batch_size = a.eval_batch_size;
  o.grad_accum = a.grad_accum;
  o.bucket_by_length = a.bucket;
  o.seed = a.seed;
  o.eval_every = a.eval_every;
  o.checkpoint_every = a.checkpoint_every;
  o.patience = a.patience;
  o.metric = a.metric;
  o.run_dir = a.out;
  o.resume = a.resume;
  o.progress = !a.quiet;
  o.log_every = a.log_every;
  o.on_step = [](int64_t) { return g_stop_signal.load() == 0; };
  // Started by mpirun (or srun): one run over every process of the job (deltatune/distributed.h).
  o.communicator = distributed::world();
  r.max_length = a.max_length;
  r.bf16 = a.bf16;
  r.quantize = a.quantize;
  r.gradient_checkpointing = a.gradient_checkpointing;
  r.threads = a.threads > 0 ? a.threads : distributed::default_threads();
  r.overwrite = a.overwrite;
  r.test_before = !a.no_test_before;
  r.recorded_settings = resolved_config(a);
  r.note = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  return r;
}

void run(Args a, CLI::App& app) {
  for (auto [value, flag] : {std::pair{&a.model, "--model"}, {&a.data, "--data"}, {&a.out, "--out"}})
    if (value->empty())
      throw ExitError{std::string(flag) + " is required (on the command line or in --config)"};
  const bool lm = a.task == "causal-lm" || a.task == "masked-lm";
  // A language model is judged by its loss unless asked otherwise.
  if (lm && app.get_option("--metric")->count() == 0) a.metric = "loss";
  a.method = method_name(a, app);
  const workflow::TrainRequest request = training_request(a);
  workflow::check_request(request);  // every option, before any work
  if (a.resume && a.overwrite)
    throw ExitError{"--resume continues the run in --out and --overwrite starts it over: give one of them"};
  const bool lead = request.options.communicator->rank() == 0;  // writes and prints for the job
  if (lead) check_run_folder(a);
  workflow::TrainRun run;
  {
    StopSignals stop_signals;
    run = workflow::run_training(request);
  }
  if (run.result.stop_reason == "stopped") {
    const int signal = g_stop_signal.load();
    throw ExitError{std::string("interrupted (") + (signal == SIGTERM ? "SIGTERM" : "Ctrl-C") + ") at step " +
                        std::to_string(run.result.steps) + "; the checkpoint in " +
                        (fs::path(a.out) / "checkpoint").string() + " continues with --resume",
                    128 + signal};
  }
  if (lead) print_summary(run.summary, a.out, lm);
}

void setup(CLI::App& app) {
  auto a = std::make_shared<Args>();
  app.add_option("--model", a->model, "Hugging Face model folder (required)");
  app.add_option("--data", a->data,
                 "Task folder (train/dev/test .jsonl|.csv|.tsv) or one training file (required)");
  app.add_option("--out,--output", a->out, "Run folder to write (required)");
  app.add_option(
         "--method", a->method,
         "What trains: full (every weight), head or none (the head alone), a delta method or a named "
         "preset of one; the same names, configs and learning rates as sweep's (sweep --list-methods): " +
             method_preset_names())
      ->capture_default_str();
  app.add_option(
         "--task", a->task,
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
  app.add_option("--max-length", a->max_length,
                 "Tokens per example, special tokens included (at most the model's positions less a prompt's "
                 "or GPT-2 prefix's virtual tokens)")
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
  app.add_option("--max-dev", a->max_dev,
                 "Evaluate on the first N dev examples only (after --k-shot's draw; 0: all)")
      ->check(cli::kNonNegative);
  app.add_option("--max-test", a->max_test, "Test on the first N test examples only (0: all)")
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
  app.add_option("--optimizer", a->optimizer,
                 "The optimizer: adamw (torch.optim.AdamW) or sgd (torch.optim.SGD)")
      ->capture_default_str()
      ->check(CLI::IsMember({"adamw", "sgd"}));
  app.add_option("--momentum", a->momentum, "SGD's momentum (--optimizer sgd)")
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
  cli::add_quantize_option(app, a->quantize);
  app.add_flag("--gradient-checkpointing", a->gradient_checkpointing,
               "Keep only each block's input through the forward and recompute the block in the backward "
               "(transformers' gradient_checkpointing): peak memory falls to about one block's activations "
               "for about a third more compute, the gradients unchanged (not with prefix tuning)");
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
