// The library workflow, called directly (no command line): a few LoRA steps into a run folder, its
// summary.json, the saved delta loaded back through the one loader with the same predictions, eval and
// predict on it; and one source of default learning rates for `train`, the sweep and the workflow.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "cli_run.h"
#include "deltatune/error.h"
#include "deltatune/loading.h"
#include "deltatune/method_presets.h"
#include "deltatune/sweep.h"
#include "deltatune/workflow.h"
#include "small_task.h"
#include "temp_dir.h"

using namespace deltatune;
namespace fs = std::filesystem;

namespace {

const fs::path kModel = fs::path(DELTATUNE_ASSETS) / "models/bert-mini";

nlohmann::json read_json(const fs::path& file) {
  std::ifstream in(file);
  return nlohmann::json::parse(in);
}

workflow::TrainRequest lora_request(const fs::path& task, const fs::path& run_dir) {
  workflow::TrainRequest r;
  r.model_dir = kModel;
  r.data = task;
  r.method = "lora";
  r.options.max_steps = 3;
  r.options.batch_size = 8;
  r.options.run_dir = run_dir;
  r.options.progress = false;
  r.max_length = 32;
  return r;
}

}  // namespace

TEST(Workflow, TrainsLoraIntoARunFolderThatLoadsBackThroughTheOneLoader) {
  const fs::path dir = test_support::temp_dir("workflow_lora");
  const fs::path task = test_support::write_sentiment_subset(dir / "task", 32, 16, 16);
  std::vector<std::string> notes;
  workflow::TrainRequest request = lora_request(task, dir / "run");
  request.note = [&](const std::string& line) { notes.push_back(line); };
  workflow::TrainRun run = workflow::run_training(request);

  // summary.json: what the run returned, with the method's default learning rate from the table.
  ASSERT_TRUE(fs::is_regular_file(dir / "run" / "summary.json"));
  const nlohmann::json summary = read_json(dir / "run" / "summary.json");
  EXPECT_EQ(summary, run.summary);
  EXPECT_EQ(summary["method"], "lora");
  EXPECT_EQ(summary["steps"], 3);
  EXPECT_EQ(summary["train_examples"], 32);
  EXPECT_TRUE(summary["test"].is_object());
  EXPECT_TRUE(summary["test_before"].is_object());
  EXPECT_EQ(summary["labels"], nlohmann::json(run.labels.names()));
  EXPECT_DOUBLE_EQ(summary["config"]["lr"].get<double>(), method_preset("lora").lr);
  EXPECT_EQ(summary["config"]["max-length"], 32);
  for (const char* file : {"delta/delta_config.json", "peft/adapter_config.json", "labels.json",
                           "train_config.json", "log.jsonl", "plot.svg"})
    EXPECT_TRUE(fs::exists(dir / "run" / file)) << file;
  ASSERT_EQ(notes.size(), 2u);  // the data line and the training line, for a front end to print
  EXPECT_EQ(notes[0].rfind("data: 32 train, 16 dev, 16 test examples; 2 labels", 0), 0u) << notes[0];
  EXPECT_EQ(notes[1].rfind("training lora: ", 0), 0u) << notes[1];

  // The saved delta through the one loader predicts what the trained model in memory predicts.
  LoadRequest load;
  load.model_dir = kModel;
  load.delta = dir / "run" / "delta";
  load.classifier = true;
  load.tokenizer = true;
  LoadedModel loaded = load_with_delta(load);
  EXPECT_EQ(loaded.trained.method, "lora");
  ASSERT_EQ(loaded.trained.deltas.size(), 1u);
  EXPECT_EQ(loaded.labels.names(), run.labels.names());
  EXPECT_EQ(loaded.train_config["lr"], summary["config"]["lr"]);
  const train::Predictions want = train::predict(*run.model, run.test_set, 64, true);
  const train::Predictions got = train::predict(*loaded.model, run.test_set, 64, true);
  EXPECT_EQ(got.predicted, want.predicted);
  ASSERT_EQ(got.probabilities.size(), want.probabilities.size());
  for (size_t i = 0; i < got.probabilities.size(); ++i)
    for (size_t k = 0; k < got.probabilities[i].size(); ++k)
      EXPECT_NEAR(got.probabilities[i][k], want.probabilities[i][k], 1e-5);

  // The views of the loader (train::load_classifier) and the evaluate workflow agree with the run.
  train::Classifier view = train::load_classifier(kModel, dir / "run" / "delta/");
  EXPECT_EQ(train::predict(*view.model, run.test_set, 64).predicted, want.predicted);
  workflow::EvaluateRequest eval;
  eval.model_dir = kModel;
  eval.delta = dir / "run" / "delta";
  eval.data_file = task / "test.jsonl";
  const workflow::Evaluation e = workflow::evaluate_run(eval);
  EXPECT_EQ(e.metrics["examples"], 16);
  EXPECT_NEAR(e.metrics["accuracy"].get<double>(), summary["test"]["accuracy"].get<double>(), 1e-9);
  EXPECT_EQ(e.per_class.size(), run.labels.size());

  // predict: one line per example, each a label of the run.
  workflow::PredictRequest p;
  p.model_dir = kModel;
  p.delta = dir / "run" / "delta";
  p.input = task / "test.jsonl";
  std::vector<nlohmann::json> lines;
  workflow::predict(p, [&](const nlohmann::json& line) { lines.push_back(line); });
  ASSERT_EQ(lines.size(), 16u);
  for (size_t i = 0; i < lines.size(); ++i) EXPECT_EQ(lines[i]["label"], run.labels.name(want.predicted[i]));
}

TEST(Workflow, ChecksARequestBeforeAnyWork) {
  const fs::path dir = test_support::temp_dir("workflow_checks");
  const fs::path task = test_support::write_sentiment_subset(dir / "task", 8, 0, 0);
  workflow::TrainRequest r = lora_request(task, dir / "run");
  r.method = "no-such-method";
  EXPECT_THROW(workflow::check_request(r), ConfigError);
  r = lora_request(task, dir / "run");
  r.options.metric = "bleu";
  EXPECT_THROW(workflow::run_training(r), ConfigError);
  r = lora_request(dir / "absent", dir / "run");
  EXPECT_THROW(workflow::run_training(r), IoError);
  r = lora_request(task, dir / "run");
  r.delta_config = {{"method", "lora"}, {"r", -1}};
  EXPECT_THROW(workflow::check_request(r), ConfigError);
  // Prefix keys are built once per call, outside the blocks: refused before the first evaluation.
  r = lora_request(task, dir / "run");
  r.method = "prefix";
  r.gradient_checkpointing = true;
  try {
    workflow::run_training(r);
    ADD_FAILURE() << "prefix tuning with gradient checkpointing was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("prefix"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "run"));  // nothing written
}

// Every method name: the workflow, `train` and the sweep resolve the same default learning rate, the
// method table's.
TEST(Workflow, TrainAndSweepTakeEachMethodsDefaultLearningRateFromTheMethodTable) {
  train::SweepOptions sweep;
  sweep.model_dir = kModel;
  for (const MethodPreset& m : method_presets()) {
    workflow::TrainRequest r;
    r.method = m.name;
    EXPECT_DOUBLE_EQ(workflow::learning_rate(r), m.lr) << m.name;
    train::SweepRun cell;
    cell.method = m.name;
    EXPECT_DOUBLE_EQ(*train::sweep_cell_request(sweep, cell).lr, m.lr) << m.name;
  }
  // `train` leaves --lr to the workflow: what its train_config.json records is the table's, per method.
  const fs::path dir = test_support::temp_dir("workflow_lrs");
  const fs::path task = test_support::write_sentiment_subset(dir / "task", 8, 0, 0);
  for (const std::string method : {"lora", "full", "head"}) {
    const fs::path run_dir = dir / method;
    const cli_test::Result r = cli_test::run(
        "train --model " + kModel.string() + " --data " + task.string() + " --method " + method +
        " --max-steps 1 --batch-size 8 --max-length 16 --quiet --no-test-before --out " + run_dir.string());
    ASSERT_EQ(r.code, 0) << r.output;
    train::SweepRun cell;
    cell.method = method;
    EXPECT_DOUBLE_EQ(read_json(run_dir / "train_config.json")["lr"].get<double>(),
                     *train::sweep_cell_request(sweep, cell).lr)
        << method;
  }
}

// An in-memory run (a server's or a notebook's) writes nothing anywhere, and trains as a folder run
// does: the same losses, summary and predictions.
TEST(Workflow, InMemoryRunWritesNothingAndTrainsAsAFolderRun) {
  const fs::path dir = test_support::temp_dir("workflow_in_memory");
  const fs::path task = test_support::write_sentiment_subset(dir / "task", 32, 16, 16);
  workflow::TrainRun on_disk = workflow::run_training(lora_request(task, dir / "run"));

  const fs::path empty = dir / "cwd";
  fs::create_directories(empty);
  const fs::path before = fs::current_path();
  fs::current_path(empty);
  workflow::TrainRequest request = lora_request(task, "");
  request.options.in_memory = true;
  workflow::TrainRun in_memory = workflow::run_training(request);
  fs::current_path(before);

  EXPECT_TRUE(fs::is_empty(empty));
  EXPECT_EQ(in_memory.result.losses, on_disk.result.losses);
  EXPECT_EQ(in_memory.result.best_step, on_disk.result.best_step);
  EXPECT_EQ(in_memory.summary["test"]["accuracy"], on_disk.summary["test"]["accuracy"]);
  EXPECT_EQ(in_memory.summary["steps"], 3);
  const train::Predictions a = train::predict(*in_memory.model, in_memory.test_set);
  const train::Predictions b = train::predict(*on_disk.model, on_disk.test_set);
  EXPECT_EQ(a.predicted, b.predicted);
  fs::remove_all(dir);
}

// max_dev / max_test evaluate on the first N examples only: the K-shot dev set (the next examples
// after the K drawn) and the test set are cut, and the same run without the caps sees them whole.
TEST(Workflow, MaxDevAndMaxTestCutTheEvaluationSets) {
  const fs::path dir = test_support::temp_dir("workflow_max_dev");
  const fs::path task = test_support::write_sentiment_subset(dir / "task", 48, 16, 24);
  workflow::TrainRequest request = lora_request(task, "");
  request.options.in_memory = true;
  request.k_shot = 16;
  const workflow::TrainRun whole = workflow::run_training(request);
  EXPECT_EQ(whole.train_set.size(), 16u);
  EXPECT_EQ(whole.dev_set.size(), 32u);  // the 48 - 16 training examples left after the draw
  EXPECT_EQ(whole.test_set.size(), 24u);

  request.max_dev = 10;
  request.max_test = 7;
  const workflow::TrainRun cut = workflow::run_training(request);
  EXPECT_EQ(cut.train_set.size(), 16u);
  ASSERT_EQ(cut.dev_set.size(), 10u);
  ASSERT_EQ(cut.test_set.size(), 7u);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(cut.dev_set.examples[i].ids, whole.dev_set.examples[i].ids) << i;
  for (size_t i = 0; i < 7; ++i) EXPECT_EQ(cut.test_set.examples[i].ids, whole.test_set.examples[i].ids) << i;
  EXPECT_EQ(cut.summary["dev_examples"], 10);
  EXPECT_EQ(cut.summary["test_examples"], 7);

  request.max_dev = -1;
  EXPECT_THROW(workflow::check_request(request), ConfigError);
  fs::remove_all(dir);
}

// K = 4 examples of a 10-class task hold at most 4 classes; the dev set drawn after them holds the
// others. The classifier has every class of the training set (as the sweep's), not only those drawn.
TEST(Workflow, KShotRunsKeepEveryClassOfTheTask) {
  const fs::path dir = test_support::temp_dir("workflow_k_shot_classes");
  fs::create_directories(dir / "task");
  {
    std::ofstream train(dir / "task" / "train.jsonl");
    for (int i = 0; i < 30; ++i)
      train << nlohmann::json{{"text", "example number " + std::to_string(i)},
                              {"label", "class" + std::to_string(i % 10)}}
                   .dump()
            << "\n";
  }
  workflow::TrainRequest request = lora_request(dir / "task", "");
  request.options.in_memory = true;
  request.options.max_steps = 1;
  request.k_shot = 4;
  const workflow::TrainRun run = workflow::run_training(request);
  EXPECT_EQ(run.train_set.size(), 4u);
  EXPECT_EQ(run.dev_set.size(), 26u);
  EXPECT_EQ(run.labels.size(), 10u);
  const train::Predictions dev = train::predict(*run.model, run.dev_set, 64, true);
  ASSERT_FALSE(dev.probabilities.empty());
  EXPECT_EQ(dev.probabilities[0].size(), 10u);  // the head has all ten classes
  fs::remove_all(dir);
}

// The library keeps what the caller had, as the command does: a folder holding an earlier run is
// refused before any work unless the request says overwrite (start over) or resume (continue).
TEST(Workflow, RefusesAFolderHoldingAnEarlierRunUnlessTold) {
  const fs::path dir = test_support::temp_dir("workflow_folder");
  const fs::path task = test_support::write_sentiment_subset(dir / "task", 32, 16, 16);
  fs::create_directories(dir / "run");
  std::ofstream(dir / "run" / "notes.txt") << "the user's own file\n";
  try {
    workflow::run_training(lora_request(task, dir / "run"));
    ADD_FAILURE() << "a non-empty run folder was accepted";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("is not empty"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "run" / "summary.json"));

  workflow::TrainRequest resume = lora_request(task, dir / "run");
  resume.options.resume = true;
  EXPECT_THROW(workflow::run_training(resume), IoError);  // no checkpoint to continue from

  workflow::TrainRequest overwrite = lora_request(task, dir / "run");
  overwrite.overwrite = true;
  workflow::run_training(overwrite);
  EXPECT_TRUE(fs::exists(dir / "run" / "summary.json"));
  EXPECT_TRUE(fs::exists(dir / "run" / "notes.txt"));  // only the run's own files are replaced
  fs::remove_all(dir);
}

TEST(Workflow, GeneratesTheSameTokensAsTheModelAndStreamsTheTextInPieces) {
  workflow::GenerateRequest r;
  r.model_dir = fs::path(DELTATUNE_ASSETS) / "models/gpt2-mini";
  r.prompt = "The whale";
  r.options.max_new_tokens = 12;
  std::string streamed;
  int pieces = 0;
  const workflow::TextGeneration g = workflow::generate_text(r, [&](const std::string& piece) {
    streamed += piece;
    ++pieces;
  });
  EXPECT_EQ(streamed, g.text);
  EXPECT_GT(pieces, 0);
  ASSERT_FALSE(g.ids.empty());

  // The same continuation as the model's own generate on the same prompt and stop ids.
  LoadRequest load;
  load.model_dir = r.model_dir;
  load.head = HeadKind::CausalLM;
  load.tokenizer = true;
  LoadedModel m = load_with_delta(load);
  GenerationOptions options = r.options;
  options.eos_ids = m.model->config.eos_token_ids;
  if (m.tokenizer->eos_id() >= 0) options.eos_ids.push_back(m.tokenizer->eos_id());
  const std::vector<int64_t> prompt = m.tokenizer->encode(r.prompt, true).ids;
  EXPECT_EQ(g.prompt_ids, prompt);
  EXPECT_EQ(g.ids, generate(*m.model, prompt, options));
  EXPECT_EQ(g.text, m.tokenizer->decode_continuation(prompt, g.ids));

  r.prompt = "";
  EXPECT_THROW(workflow::generate_text(r), ConfigError);
}
