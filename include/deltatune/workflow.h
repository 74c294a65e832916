#pragma once
// The workflows every front end runs (the `deltatune` command, the sweep, tests, a Python module):
// train a delta on a task and leave a run folder; evaluate or predict with a saved delta. A front end
// fills a request, calls one function, and prints what comes back.
//
//   workflow::TrainRequest r;
//   r.model_dir = "assets/models/bert-mini"; r.data = "assets/tasks/sentiment"; r.method = "lora";
//   r.options.epochs = 3; r.options.run_dir = "runs/demo";
//   workflow::TrainRun run = workflow::run_training(r);   // run.summary is summary.json
//
// A run: data and labels (bad data fails before the model loads), the model with the method's head,
// the delta made from its config and attached (or the whole model / the head set to train), the one
// max length, the Trainer, the best dev weights kept, then in the run folder: delta/, peft/ (when PEFT
// has the method), labels.json, train_config.json, log.jsonl, plot.svg, summary.json, best/ and
// checkpoint/. Defaults (each method's delta config and learning rate) come from the method table
// (deltatune/method_presets.h) and nowhere else.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/data.h"
#include "deltatune/delta.h"
#include "deltatune/generate.h"
#include "deltatune/loading.h"
#include "deltatune/metrics.h"
#include "deltatune/model.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"

namespace deltatune::workflow {

// The examples of a run, already read (labels are assigned by the run).
struct Splits {
  std::vector<data::Example> train, dev, test;
  std::string dev_origin = "dev";  // where the dev set came from, for the data line
};

struct TrainRequest {
  std::filesystem::path model_dir;
  // The data: a task folder (train/dev/test .jsonl, .csv or .tsv) or one training file, read with
  // `fields`; with k_shot > 0, K training examples drawn with the seed and up to 1000 more as dev
  // (UniPELT's protocol). Or, when `data` is empty, `splits` as given.
  std::filesystem::path data;
  data::Fields fields;
  int64_t k_shot = 0;
  // > 0: evaluate on the first N dev (after the K-shot draw) or test examples only. A K = 100 run
  // scored on 1000 dev examples every epoch spends most of its time evaluating (sweep's --max-dev).
  int64_t max_dev = 0, max_test = 0;
  Splits splits;
  std::optional<data::LabelMap> labels;  // a classifier's classes; unset: those of the training set

  std::string task = "classification";  // classification, causal-lm, masked-lm
  std::string method = "lora";          // a name of the method table
  nlohmann::json delta_config;          // the delta to train; null: the method's config in the table
  std::optional<double> lr;             // unset: the method's default learning rate
  // Every other training setting. options.lr is replaced by the resolved learning rate; options.run_dir
  // is the run folder (options.in_memory instead: nothing is written, the summary and the trained model
  // come back in memory); options.on_step can stop training (a signal): the run then returns at once.
  train::TrainOptions options;
  int64_t max_length = 128;  // capped to what the model's positions leave (train::effective_max_length)
  bool bf16 = false;         // use_bf16 once the model is frozen
  std::optional<QuantFormat> quantize;  // use_quantized once the model is frozen (before bf16)
  bool gradient_checkpointing = false;  // TransformerModel::gradient_checkpointing for the training
  int threads = 0;                      // > 0: set_num_threads

  bool overwrite = false;     // remove an earlier run's files from the run folder first
  bool test_before = true;    // evaluate the untrained model on a test set of at most 5000 examples
  bool evaluate_test = true;  // evaluate the trained model on the test set
  // Write delta/, peft/, train_config.json, summary.json and plot.svg (false: the Trainer's own files
  // and labels.json only; the caller keeps the trained model in memory and writes what it wants).
  bool write_run_files = true;
  // What train_config.json records (a front end's settings, under its own names, so that the run can be
  // repeated); "lr" and "max-length" are set to what the run resolved. Null: nothing beyond those two.
  nlohmann::json recorded_settings;
  std::function<void(const std::string&)> note;  // progress lines ("data: ...", "training ..."); may be empty
};

// The learning rate a request trains with: its lr, else the method's default in the method table.
// Also the check that the method name exists (a ConfigError listing every name).
double learning_rate(const TrainRequest& request);

// What a request trains when it is not given a delta config: the method table's config.
nlohmann::json delta_config(const TrainRequest& request);

// The delta a run of `method` trains given a delta config file's contents (null: no file): the
// method's config in the method table; a file of that same delta method, as written (what it leaves
// out takes the method's own defaults, as in every other command); a file naming no method, a preset
// (houlsby) or another method: its fields over the table's config (PEFT's "lora_alpha" replacing
// the table's "alpha").
nlohmann::json delta_config_over_method(const std::string& method, const nlohmann::json& file);

// Checks a request before any work (names, files, settings, the delta config): a ConfigError or
// IoError saying what is wrong. run_training starts with it.
void check_request(const TrainRequest& request);

// A finished (or stopped) run, with the trained model kept in memory.
struct TrainRun {
  nlohmann::json summary;     // what summary.json holds (null when training was stopped)
  train::TrainResult result;  // the Trainer's
  double lr = 0;              // as resolved
  int64_t max_length = 0;     // as resolved
  data::LabelMap labels;      // a classifier's classes
  data::EncodedDataset train_set, dev_set, test_set;
  std::optional<data::MlmMasking> masking;  // masked LMs
  // The trained model (the best dev weights unless options.restore_best is off). Declared in this
  // order so that the delta goes before the model it is attached to.
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<TransformerModel> model;
  std::unique_ptr<delta::Delta> delta;  // null for full / head runs
  train::TrainTarget target;
};

TrainRun run_training(const TrainRequest& request);

// --- a saved delta at work ---

// Field names and max length a saved run was trained with (its train_config.json), where a request
// does not give them.
struct RunSettings {
  std::string text_field, pair_field, label_field;  // empty: the run's, else text / text_pair / label
  int64_t max_length = 0;                           // 0: the run's, else 128
};

struct EvaluateRequest {
  std::filesystem::path model_dir;
  std::filesystem::path delta;  // a folder `train` wrote; empty: the base with an untrained head
  std::filesystem::path data_file;
  // Without a delta: the file whose labels name the classes (a task's train split), else data_file.
  std::filesystem::path labels_source;
  RunSettings settings;
  int64_t batch_size = 64;
  bool bf16 = false;
  std::optional<QuantFormat> quantize;  // a quantised frozen base (use_quantized)
};

struct Evaluation {
  nlohmann::json metrics;                       // {"data", "examples", then the metrics}
  std::vector<metrics::ClassReport> per_class;  // classifiers
};

// A classifier's accuracy, macro-F1, MCC, loss and per-class report on a labelled file; a causal or
// masked LM delta's loss and perplexity on its texts.
Evaluation evaluate_run(const EvaluateRequest& request);

struct PredictRequest {
  std::filesystem::path model_dir;
  std::filesystem::path delta;
  std::filesystem::path input;
  RunSettings settings;
  int64_t batch_size = 64;
  int64_t max_new_tokens = 32;  // causal-LM deltas
  bool bf16 = false;
  std::optional<QuantFormat> quantize;  // a quantised frozen base (use_quantized)
};

// One JSON object per input example, in order, handed to `emit` as it is ready: a classifier's
// {"label", "probabilities", "gold" (when given)}; a causal-LM delta's {"text", "generated"}.
void predict(const PredictRequest& request, const std::function<void(const nlohmann::json&)>& emit);

// --- generation ---

struct TextGeneration {
  std::vector<int64_t> prompt_ids;  // the prompt as encoded (with the tokenizer's special tokens)
  std::vector<int64_t> ids;         // the new tokens
  std::string text;                 // the continuation, decoded in the prompt's context
  StopReason stop = StopReason::MaxNewTokens;
  double seconds = 0;  // generation's wall time, the prompt's prefill included
};

// Adds the model's (config.json) and the tokenizer's end-of-sequence ids to options.eos_ids (each once):
// where every front end that generates (generate_text, the server's sequences) stops.
void add_model_stop_ids(GenerationOptions& options, const TransformerModel& model,
                        const Tokenizer& tokenizer);

// Continues `prompt` with a loaded decoder. Generation stops at the model's (config.json) and the
// tokenizer's end-of-sequence ids besides those in options. on_text (optional) receives the new text
// piece by piece as it becomes printable: a piece never ends inside a multi-byte character, and the
// pieces together are `text`. An empty prompt (no tokens) is a ConfigError.
TextGeneration generate_text(TransformerModel& model, const Tokenizer& tokenizer, const std::string& prompt,
                             GenerationOptions options,
                             const std::function<void(const std::string&)>& on_text = nullptr);

struct GenerateRequest {
  std::filesystem::path model_dir;
  std::filesystem::path delta;  // a folder `train` (or PEFT) wrote; empty: the base model
  std::string prompt;
  GenerationOptions options;
  bool bf16 = false;
  std::optional<QuantFormat> quantize;  // a quantised frozen base (use_quantized)
};

// Loads the model (causal-LM head) with the delta through the one loader and generates.
TextGeneration generate_text(const GenerateRequest& request,
                             const std::function<void(const std::string&)>& on_text = nullptr);

// predict's classifier step on examples already in memory (a Python list of texts, a request body): each
// example's {"label", "probabilities", "gold" (when labelled)}, in order, for a loaded classifier whose
// classes are `labels`. Texts are cut to max_length tokens (effective_max_length's).
void classify(TransformerModel& model, const Tokenizer& tokenizer, const data::LabelMap& labels,
              std::vector<data::Example> examples, int64_t max_length, int64_t batch_size,
              const std::function<void(const nlohmann::json&)>& emit);

}  // namespace deltatune::workflow
