// deltatune eval --model DIR --delta RUN_DIR/delta --data FILE_OR_TASK_DIR [--split test]
// Evaluates a trained classifier: metrics as JSON on stdout (accuracy, macro_f1, mcc, loss and a
// per-class report), and the per-class report as a table on stderr. A causal-LM delta gets its loss
// and perplexity on the texts.
#include <cstdio>

#include "command.h"
#include "deltatune/atomic_file.h"
#include "deltatune/data.h"
#include "deltatune/delta_io.h"
#include "deltatune/metrics.h"
#include "deltatune/threads.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"
#include "model_loading.h"

namespace {
using namespace deltatune;
namespace fs = std::filesystem;
using cli::ExitError;

struct Args {
  std::string model, delta, data, split = "test", output;
  int64_t batch_size = 64, max_length = 0;
  int threads = 0;
  bool bf16 = false;
  std::string text_field, pair_field, label_field;
};

// Field names and max length: the flag, else what the run was trained with, else the default.
std::string setting(const std::string& flag, const nlohmann::json& run, const char* key,
                    const char* fallback) {
  if (!flag.empty()) return flag;
  if (run.is_object() && run.contains(key) && run[key].is_string()) return run[key].get<std::string>();
  return fallback;
}

fs::path data_file(const Args& a) {
  if (!fs::is_directory(a.data)) {
    if (!fs::exists(a.data)) throw ExitError{"data '" + a.data + "' does not exist"};
    return a.data;
  }
  auto file = data::split_file(a.data, a.split);
  if (!file) throw ExitError{a.data + ": no " + a.split + ".jsonl (or .csv / .tsv) in the task folder"};
  return *file;
}

// A language-model delta: the loss and perplexity of its next-token predictions over the texts (only
// the answers of prompt/answer pairs), or of a masked LM at 15% masked positions (fixed seed).
void run_lm(const Args& a, const fs::path& file, HeadKind head) {
  LoadOptions options;
  options.head = head;
  options.verbose = false;
  auto model = load_pretrained(a.model, options);
  auto tokenizer = Tokenizer::load(a.model);
  train::LoadedTrained trained = train::load_trained(a.delta, *model);
  if (a.bf16) cli::use_bf16(*model, trained.model_parameters);
  const nlohmann::json run_config = train::read_train_config(a.delta);
  const data::Fields fields{setting(a.text_field, run_config, "text-field", "text"),
                            setting(a.pair_field, run_config, "pair-field", "text_pair"), "label"};
  int64_t max_length = a.max_length;
  if (max_length <= 0)
    max_length = run_config.is_object() ? run_config.value("max-length", int64_t(128)) : 128;
  max_length = train::effective_max_length(*model, max_length);
  std::vector<data::Example> examples = data::read_examples(file, fields, /*labels_optional=*/true);
  const bool mlm = head == HeadKind::MaskedLM;
  const data::EncodedDataset dataset = mlm ? data::encode(examples, *tokenizer, max_length)
                                           : data::encode_for_lm(examples, *tokenizer, max_length);
  std::optional<data::MlmMasking> masking;
  if (mlm) masking = data::MlmMasking::for_tokenizer(*tokenizer);
  nlohmann::json out = {{"data", file.string()}, {"examples", dataset.size()}};
  out.update(train::evaluate(*model, dataset, a.batch_size, masking ? &*masking : nullptr));
  std::printf("%s\n", out.dump(2).c_str());
  if (!a.output.empty()) write_file_atomic(a.output, out.dump(2) + "\n");
}

void run(const Args& a) {
  if (a.threads > 0) set_num_threads(a.threads);
  const fs::path file = data_file(a);
  if (!a.delta.empty()) {  // the delta's head (a PEFT adapter's task_type) or the run's task decides
    const std::optional<HeadKind> head = delta::peek_delta(a.delta).head;
    const nlohmann::json run_config = train::read_train_config(a.delta);
    const std::string task = run_config.is_object() ? run_config.value("task", std::string()) : std::string();
    if (head == HeadKind::CausalLM || task == "causal-lm") return run_lm(a, file, HeadKind::CausalLM);
    if (head == HeadKind::MaskedLM || task == "masked-lm") return run_lm(a, file, HeadKind::MaskedLM);
  }
  // Without a delta the labels come from the data (a baseline with an untrained head).
  data::LabelMap baseline_labels;
  if (a.delta.empty()) {
    std::fprintf(stderr,
                 "note: no --delta: evaluating the base model with an untrained classification head\n");
    auto train = fs::is_directory(a.data) ? data::split_file(a.data, "train") : std::nullopt;
    std::vector<data::Example> source = data::read_examples(train ? *train : file, {});
    baseline_labels = data::LabelMap::from_examples(source);
  }
  train::Classifier c =
      train::load_classifier(a.model, a.delta, a.delta.empty() ? &baseline_labels : nullptr);
  if (a.bf16) cli::use_bf16(*c.model, c.trained.model_parameters);
  const data::Fields fields{setting(a.text_field, c.train_config, "text-field", "text"),
                            setting(a.pair_field, c.train_config, "pair-field", "text_pair"),
                            setting(a.label_field, c.train_config, "label-field", "label")};
  int64_t max_length = a.max_length;
  if (max_length <= 0)
    max_length = c.train_config.is_object() ? c.train_config.value("max-length", int64_t(128)) : 128;
  max_length = train::effective_max_length(*c.model, max_length);

  std::vector<data::Example> examples = data::read_examples(file, fields);
  data::assign_labels(examples, c.labels);
  const data::EncodedDataset dataset = data::encode(examples, *c.tokenizer, max_length);
  train::Predictions p = train::predict(*c.model, dataset, a.batch_size);
  const auto report = metrics::per_class_report(p.predicted, p.labels, c.labels.names());

  nlohmann::json out = {{"data", file.string()}, {"examples", dataset.size()}};
  out.update(metrics::classification_metrics(p.predicted, p.labels));
  out["loss"] = p.loss;
  out["per_class"] = metrics::report_json(report);
  std::printf("%s\n", out.dump(2).c_str());
  std::fprintf(stderr, "\n%s", metrics::format_report(report, out["accuracy"].get<double>()).c_str());
  if (!a.output.empty()) write_file_atomic(a.output, out.dump(2) + "\n");
}

void setup(CLI::App& app) {
  auto a = std::make_shared<Args>();
  app.add_option("--model", a->model, "Hugging Face model folder")->required();
  app.add_option("--delta", a->delta,
                 "Delta folder written by `deltatune train` (RUN_DIR/delta, RUN_DIR/peft)");
  app.add_option("--data", a->data, "A data file (.jsonl, .csv, .tsv) or a task folder")->required();
  app.add_option("--split", a->split, "Split of a task folder: train, dev or test")->capture_default_str();
  app.add_option("--batch-size", a->batch_size, "Examples per batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  app.add_option("--max-length", a->max_length, "Tokens per example (default: the run's)")
      ->check(CLI::Range(2, 1 << 20));
  app.add_option("--output,--out", a->output, "Also write the metrics JSON to this file");
  cli::add_threads_option(app, &a->threads);
  app.add_flag("--bf16", a->bf16, cli::kBf16Help);
  app.add_option("--text-field", a->text_field, "Field holding the text (default: the run's, else text)");
  app.add_option("--pair-field", a->pair_field,
                 "Field holding the second text (default: the run's, else text_pair)");
  app.add_option("--label-field", a->label_field, "Field holding the label (default: the run's, else label)");
  app.callback([a] { run(*a); });
}
deltatune::cli::Register reg("eval", "Evaluate a trained classifier on a data file or task split", setup);
}  // namespace
