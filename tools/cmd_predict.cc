// deltatune predict --model DIR --delta DIR --input FILE.jsonl [--output FILE.jsonl]
// Classifies each example of the input (labels optional): one JSON line per example, in input order,
// {"label": NAME, "probabilities": {NAME: p, ...}} (plus "gold" when the input has a label).
// A delta trained with --task causal-lm continues each text instead: {"text": ..., "generated": ...}.
#include <cstdio>
#include <iostream>

#include "command.h"
#include "deltatune/atomic_file.h"
#include "deltatune/threads.h"
#include "deltatune/workflow.h"
#include "model_loading.h"

namespace {
using namespace deltatune;
using cli::ExitError;

struct Args {
  std::string model, delta, input, output;
  int64_t batch_size = 64, max_length = 0;
  int threads = 0;
  bool bf16 = false;
  std::optional<QuantFormat> quantize;
  std::string text_field, pair_field;
  int64_t max_new_tokens = 32;
};

// Lines go to stdout as they come, or into --output, written atomically once all are there (an
// interrupted run leaves the previous file, not a part of the new one).
class LineOutput {
 public:
  explicit LineOutput(const Args& a) : file_(a.output) {}
  void line(const std::string& text) {
    if (file_.empty())
      std::cout << text << "\n";
    else
      buffer_ += text + "\n";
  }
  void finish() {
    if (file_.empty()) {
      std::cout.flush();
      if (!std::cout) throw ExitError{"write to stdout failed"};
    } else {
      write_file_atomic(file_, buffer_);
    }
  }

 private:
  std::string file_, buffer_;
};

void run(const Args& a) {
  if (a.threads > 0) set_num_threads(a.threads);
  workflow::PredictRequest r;
  r.model_dir = a.model;
  r.delta = a.delta;
  r.input = a.input;
  r.settings = {a.text_field, a.pair_field, "", a.max_length};
  r.batch_size = a.batch_size;
  r.max_new_tokens = a.max_new_tokens;
  r.bf16 = a.bf16;
  r.quantize = a.quantize;
  LineOutput out(a);
  workflow::predict(r, [&](const nlohmann::json& line) { out.line(line.dump()); });
  out.finish();
}

void setup(CLI::App& app) {
  auto a = std::make_shared<Args>();
  app.add_option("--model", a->model, "Hugging Face model folder")->required();
  app.add_option("--delta", a->delta, "Delta folder written by `deltatune train`")->required();
  app.add_option("--input", a->input, "Examples to classify (.jsonl, .csv, .tsv; labels optional)")
      ->required();
  app.add_option("--output,--out", a->output, "JSONL file to write (default: stdout)");
  app.add_option("--batch-size", a->batch_size, "Examples per batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  app.add_option("--max-length", a->max_length, "Tokens per example (default: the run's)")
      ->check(CLI::Range(2, 1 << 20));
  cli::add_threads_option(app, &a->threads);
  app.add_flag("--bf16", a->bf16, cli::kBf16Help);
  cli::add_quantize_option(app, a->quantize);
  app.add_option("--max-new-tokens", a->max_new_tokens, "Causal-LM deltas: tokens to generate per text")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--text-field", a->text_field, "Field holding the text (default: the run's, else text)");
  app.add_option("--pair-field", a->pair_field,
                 "Field holding the second text (default: the run's, else text_pair)");
  app.callback([a] { run(*a); });
}
deltatune::cli::Register reg("predict",
                             "Classify examples with a trained delta (or continue texts with a causal-LM "
                             "delta): one JSON line each",
                             setup);
}  // namespace
