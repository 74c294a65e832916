// deltatune eval --model DIR --delta RUN_DIR/delta --data FILE_OR_TASK_DIR [--split test]
// Evaluates a trained classifier: metrics as JSON on stdout (accuracy, macro_f1, mcc, loss and a
// per-class report), and the per-class report as a table on stderr. A causal-LM delta gets its loss
// and perplexity on the texts.
#include <cstdio>

#include "command.h"
#include "deltatune/atomic_file.h"
#include "deltatune/data.h"
#include "deltatune/metrics.h"
#include "deltatune/threads.h"
#include "deltatune/workflow.h"
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
  std::optional<QuantFormat> quantize;
  std::string text_field, pair_field, label_field;
};

fs::path data_file(const Args& a) {
  if (!fs::is_directory(a.data)) {
    if (!fs::exists(a.data)) throw ExitError{"data '" + a.data + "' does not exist"};
    return a.data;
  }
  auto file = data::split_file(a.data, a.split);
  if (!file) throw ExitError{a.data + ": no " + a.split + ".jsonl (or .csv / .tsv) in the task folder"};
  return *file;
}

void run(const Args& a) {
  if (a.threads > 0) set_num_threads(a.threads);
  workflow::EvaluateRequest r;
  r.model_dir = a.model;
  r.delta = a.delta;
  r.data_file = data_file(a);
  r.settings = {a.text_field, a.pair_field, a.label_field, a.max_length};
  r.batch_size = a.batch_size;
  r.bf16 = a.bf16;
  r.quantize = a.quantize;
  if (a.delta.empty()) {  // the labels come from the data (a task's train split)
    std::fprintf(stderr,
                 "note: no --delta: evaluating the base model with an untrained classification head\n");
    if (auto train = fs::is_directory(a.data) ? data::split_file(a.data, "train") : std::nullopt)
      r.labels_source = *train;
  }
  const workflow::Evaluation e = workflow::evaluate_run(r);
  std::printf("%s\n", e.metrics.dump(2).c_str());
  if (!e.per_class.empty())
    std::fprintf(stderr, "\n%s",
                 metrics::format_report(e.per_class, e.metrics["accuracy"].get<double>()).c_str());
  if (!a.output.empty()) write_file_atomic(a.output, e.metrics.dump(2) + "\n");
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
  cli::add_quantize_option(app, a->quantize);
  app.add_option("--text-field", a->text_field, "Field holding the text (default: the run's, else text)");
  app.add_option("--pair-field", a->pair_field,
                 "Field holding the second text (default: the run's, else text_pair)");
  app.add_option("--label-field", a->label_field, "Field holding the label (default: the run's, else label)");
  app.callback([a] { run(*a); });
}
deltatune::cli::Register reg("eval", "Evaluate a trained classifier on a data file or task split", setup);
}  // namespace
