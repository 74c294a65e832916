// deltatune gates --model DIR --delta RUN_DIR/delta --data FILE_OR_TASK_DIR [--split dev]
//                 [--dump-gates gates.json]
// Reads out a UniPELT delta's gates: runs the model over the data (eval mode, no training) and
// averages each gate over the examples, per layer and submodule (adapter, prefix, lora.<module>).
// Prints a table (rows: layers; columns: submodules; a mean row) and writes the JSON when asked:
//   {"layers": [{"layer": 0, "adapter": 0.41, "prefix": 0.57, "lora.query": 0.50, ...}, ...],
//    "mean": {...}, "examples": N, "gates": [{"layer", "submodule", "module", "mean"}, ...]}
// A gate near 1 means the model uses that submodule in that layer for this data; near 0, it does not.
#include <cstdio>

#include "command.h"
#include "deltatune/atomic_file.h"
#include "deltatune/autograd.h"
#include "deltatune/data.h"
#include "deltatune/delta_io.h"
#include "deltatune/gates.h"
#include "deltatune/loading.h"
#include "deltatune/threads.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"

namespace {
using namespace deltatune;
namespace fs = std::filesystem;
using cli::ExitError;

struct Args {
  std::string model, delta, data, split = "dev", output, text_field, pair_field;
  int64_t batch_size = 32, max_length = 0, limit = 0;
  int threads = 0;
};

std::string setting(const std::string& flag, const nlohmann::json& run, const char* key,
                    const char* fallback) {
  if (!flag.empty()) return flag;
  if (run.is_object() && run.contains(key) && run[key].is_string()) return run[key].get<std::string>();
  return fallback;
}

void run(const Args& a) {
  if (a.threads > 0) set_num_threads(a.threads);
  fs::path file = a.data;
  if (fs::is_directory(a.data)) {
    auto f = data::split_file(a.data, a.split);
    if (!f) throw ExitError{a.data + ": no " + a.split + ".jsonl (or .csv / .tsv) in the task folder"};
    file = *f;
  } else if (!fs::exists(a.data)) {
    throw ExitError{"data '" + a.data + "' does not exist"};
  }
  if (!fs::is_directory(a.model)) throw ExitError{"model folder '" + a.model + "' does not exist"};
  LoadRequest request;
  request.model_dir = a.model;
  request.delta = a.delta;
  request.tokenizer = true;
  LoadedModel loaded = load_with_delta(request);
  auto& model = loaded.model;
  auto& tokenizer = loaded.tokenizer;
  auto& trained = loaded.trained;
  std::vector<delta::Delta*> gated;
  for (auto& d : trained.deltas)
    if (delta::has_gates(*d)) gated.push_back(d.get());
  if (gated.empty())
    throw ExitError{a.delta + ": the " + trained.method + " delta has no gates (only UniPELT deltas do)"};

  const nlohmann::json& run_config = loaded.train_config;
  const data::Fields fields{setting(a.text_field, run_config, "text-field", "text"),
                            setting(a.pair_field, run_config, "pair-field", "text_pair"), "label"};
  int64_t max_length = a.max_length;
  if (max_length <= 0)
    max_length = run_config.is_object() ? run_config.value("max-length", int64_t(128)) : 128;
  std::vector<data::Example> examples = data::read_examples(file, fields, /*labels_optional=*/true);
  if (a.limit > 0 && int64_t(examples.size()) > a.limit) examples.resize(size_t(a.limit));
  if (examples.empty()) throw ExitError{file.string() + ": no examples"};
  const data::EncodedDataset dataset = data::encode(examples, *tokenizer, max_length);

  model->set_training(false);
  for (auto* d : gated) delta::record_gates(*d, true);
  data::Batcher batcher(dataset, {.batch_size = a.batch_size}, data::padding_id(*tokenizer));
  {
    NoGradGuard no_grad;
    for (auto& indices : batcher.epoch_order(0))
      model->forward(train::model_input(*model, batcher.make_batch(indices)));
  }
  std::vector<delta::GateMean> gates;
  for (auto* d : gated) {
    delta::record_gates(*d, false);
    for (auto& g : delta::gate_means(*d)) gates.push_back(g);
  }
  std::printf(
      "UniPELT gates of %s on %s (%zu examples; mean over each example's tokens, then over examples)\n",
      a.delta.c_str(), file.string().c_str(), examples.size());
  std::printf("%s", delta::gates_table(gates).c_str());
  if (!a.output.empty()) {
    nlohmann::json out = delta::gates_json(gates);
    out["delta"] = a.delta;
    out["data"] = file.string();
    write_file_atomic(a.output, out.dump(2) + "\n");
    std::printf("wrote %s\n", a.output.c_str());
  }
}

void setup(CLI::App& app) {
  auto a = std::make_shared<Args>();
  app.add_option("--model", a->model, "Hugging Face model folder")->required();
  app.add_option("--delta", a->delta, "A UniPELT delta folder (RUN_DIR/delta), or a combination holding one")
      ->required();
  app.add_option("--data", a->data, "A data file (.jsonl, .csv, .tsv) or a task folder")->required();
  app.add_option("--split", a->split, "Split of a task folder: train, dev or test")->capture_default_str();
  app.add_option("--dump-gates,--output,--out", a->output, "Write the gate means as JSON to this file");
  app.add_option("--batch-size", a->batch_size, "Examples per batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  app.add_option("--max-length", a->max_length, "Tokens per example (default: the run's, else 128)")
      ->check(CLI::Range(2, 1 << 20));
  app.add_option("--limit", a->limit, "Use only the first N examples")->check(CLI::Range(1, 1 << 30));
  cli::add_threads_option(app, &a->threads);
  app.add_option("--text-field", a->text_field, "Field holding the text (default: the run's, else text)");
  app.add_option("--pair-field", a->pair_field,
                 "Field holding the second text (default: the run's, else text_pair)");
  app.callback([a] { run(*a); });
}
deltatune::cli::Register reg("gates",
                             "Read out a UniPELT delta's gates per layer and submodule over a dataset",
                             setup);
}  // namespace
