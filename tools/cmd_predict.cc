// deltatune predict --model DIR --delta DIR --input FILE.jsonl [--output FILE.jsonl]
// Classifies each example of the input (labels optional): one JSON line per example, in input order,
// {"label": NAME, "probabilities": {NAME: p, ...}} (plus "gold" when the input has a label).
// A delta trained with --task causal-lm continues each text instead: {"text": ..., "generated": ...}.
#include <cstdio>
#include <iostream>

#include "command.h"
#include "deltatune/atomic_file.h"
#include "deltatune/data.h"
#include "deltatune/delta_io.h"
#include "deltatune/generate.h"
#include "deltatune/threads.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"
#include "model_loading.h"

namespace {
using namespace deltatune;
using cli::ExitError;

struct Args {
  std::string model, delta, input, output;
  int64_t batch_size = 64, max_length = 0;
  int threads = 0;
  bool bf16 = false;
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

std::string setting(const std::string& flag, const nlohmann::json& run, const char* key,
                    const char* fallback) {
  if (!flag.empty()) return flag;
  if (run.is_object() && run.contains(key) && run[key].is_string()) return run[key].get<std::string>();
  return fallback;
}

// A causal LM tuned on prompts: each input's text, continued greedily up to EOS or the limit.
void run_lm(const Args& a, const nlohmann::json& run_config) {
  LoadOptions load;
  load.head = HeadKind::CausalLM;
  load.verbose = false;
  auto model = load_pretrained(a.model, load);
  train::LoadedTrained trained = train::load_trained(a.delta, *model);
  if (a.bf16) cli::use_bf16(*model, trained.model_parameters);
  auto tokenizer = Tokenizer::load(a.model);
  data::Fields fields;
  fields.text = setting(a.text_field, run_config, "text-field", "text");  // a PEFT adapter has no run config
  const std::vector<data::Example> examples = data::read_examples(a.input, fields, /*labels_optional=*/true);
  GenerationOptions options;
  options.max_new_tokens = a.max_new_tokens;
  if (tokenizer->eos_id() >= 0) options.eos_ids = {tokenizer->eos_id()};
  LineOutput out(a);
  for (const data::Example& ex : examples) {
    const std::vector<int64_t> prompt = tokenizer->encode(ex.text, true).ids;
    const std::vector<int64_t> ids = generate(*model, prompt, options);
    out.line(nlohmann::json{{"text", ex.text}, {"generated", tokenizer->decode_continuation(prompt, ids)}}.dump());
  }
  out.finish();
}

void run(const Args& a) {
  if (a.threads > 0) set_num_threads(a.threads);
  const nlohmann::json run_config = train::read_train_config(a.delta);
  // The delta's head (a PEFT adapter's task_type) or the run's task decides what to predict.
  const std::optional<HeadKind> head = delta::peek_delta(a.delta).head;
  const std::string task = run_config.is_object() ? run_config.value("task", std::string()) : std::string();
  if (head == HeadKind::CausalLM || task == "causal-lm") return run_lm(a, run_config);
  if (head == HeadKind::MaskedLM || task == "masked-lm")
    throw ExitError{a.delta + ": a masked-LM delta has no labels to predict; use `deltatune eval` for its loss"};
  train::Classifier c = train::load_classifier(a.model, a.delta);
  if (a.bf16) cli::use_bf16(*c.model, c.trained.model_parameters);
  data::Fields fields;
  fields.text = setting(a.text_field, c.train_config, "text-field", "text");
  fields.text_pair = setting(a.pair_field, c.train_config, "pair-field", "text_pair");
  fields.label = setting("", c.train_config, "label-field", "label");
  int64_t max_length = a.max_length;
  if (max_length <= 0)
    max_length = c.train_config.is_object() ? c.train_config.value("max-length", int64_t(128)) : 128;
  max_length = train::effective_max_length(*c.model, max_length);

  std::vector<data::Example> examples = data::read_examples(a.input, fields, /*labels_optional=*/true);
  // Gold labels are echoed, not scored: an unseen one is not an error here.
  std::vector<std::string> gold;
  for (auto& ex : examples) {
    gold.push_back(ex.label.value_or(""));
    ex.label.reset();
  }
  const data::EncodedDataset dataset = data::encode(examples, *c.tokenizer, max_length);
  train::Predictions p = train::predict(*c.model, dataset, a.batch_size, /*keep_probabilities=*/true);

  LineOutput out(a);
  for (size_t i = 0; i < examples.size(); ++i) {
    nlohmann::json probs = nlohmann::json::object();
    for (size_t k = 0; k < p.probabilities[i].size(); ++k)
      probs[c.labels.name(int64_t(k))] = p.probabilities[i][k];
    nlohmann::json line = {{"label", c.labels.name(p.predicted[i])}, {"probabilities", probs}};
    if (!gold[i].empty()) line["gold"] = gold[i];
    out.line(line.dump());
  }
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
