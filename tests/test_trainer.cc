// The trainer on bert-mini with a small slice of the sentiment task: the loss falls, a seed fixes the
// run bit for bit, a resumed run ends where an uninterrupted one does, a NaN stops training with the
// last good checkpoint kept, and the `train` / `eval` / `predict` commands work end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "cli_run.h"
#include "deltatune/data.h"
#include "deltatune/delta.h"
#include "deltatune/safetensors.h"
#include "deltatune/threads.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"
#include "small_task.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using namespace deltatune;

namespace {

const fs::path kModel = fs::path(DELTATUNE_ASSETS) / "models" / "bert-mini";

fs::path temp_dir(const std::string& name) { return test_support::temp_dir("trainer_" + name); }

fs::path small_task() {
  static const fs::path dir = test_support::write_sentiment_subset(temp_dir("task"), 64, 32, 32);
  return dir;
}

const test_support::EncodedTask& task_data() {
  static const test_support::EncodedTask d = test_support::encoded_task(small_task(), kModel);
  return d;
}

// One LoRA run from scratch: a fresh model and delta, seeded.
struct TrainingRun {
  std::unique_ptr<TransformerModel> model;
  std::unique_ptr<delta::Delta> lora;
  train::TrainTarget target;
  train::TrainResult result;
  std::map<std::string, std::vector<float>> final_params;
};

// lora_dropout > 0 exercises the dropout generator, which must replay exactly too.
std::unique_ptr<TrainingRun> make_run(uint64_t seed, double lora_dropout = 0.0) {
  auto run = std::make_unique<TrainingRun>();
  LoadOptions load;
  load.head = HeadKind::SequenceClassification;
  load.num_labels = task_data().labels.size();
  load.seed = seed;
  load.verbose = false;
  run->model = load_pretrained(kModel, load);
  run->lora = delta::make_delta({{"method", "lora"},
                                 {"r", 4},
                                 {"alpha", 8},
                                 {"dropout", lora_dropout},
                                 {"targets", {"attn.q", "attn.v"}}});
  run->lora->seed = seed;
  run->lora->attach(*run->model);
  run->target = train::TrainTarget::with_deltas(*run->model, {run->lora.get()}, "lora");
  return run;
}

void train_run(TrainingRun& run, const train::TrainOptions& options, bool with_dev = true) {
  train::Trainer trainer(run.target, options);
  run.result = trainer.train(task_data().train, with_dev ? &task_data().dev : nullptr);
  for (auto& [name, t] : run.target.parameters()) run.final_params[name] = t.to_floats();
}

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override { set_num_threads(2); }
};

}  // namespace

TEST_F(TrainerTest, LossFallsAndRunFolderIsWritten) {
  fs::path dir = temp_dir("falls");
  auto run = make_run(1);
  const double before = train::evaluate(*run->model, task_data().train)["loss"];
  train_run(*run, test_support::small_train_options(dir, 1));
  const double after = train::evaluate(*run->model, task_data().train)["loss"];
  EXPECT_LT(after, before - 0.05) << "training loss before " << before << ", after " << after;
  EXPECT_EQ(run->result.steps, 16);  // 64 examples / 8 per batch * 2 epochs
  EXPECT_EQ(run->result.losses.size(), 16u);
  EXPECT_EQ(run->result.stop_reason, "completed");
  EXPECT_TRUE(run->result.best_dev.contains("accuracy"));
  EXPECT_GE(run->result.best_step, 8);
  EXPECT_GT(run->result.trainable, 0);
  EXPECT_LT(run->result.trainable, run->result.total / 10);
  for (const char* f :
       {"log.jsonl", "checkpoint/state.json", "checkpoint/params.safetensors",
        "checkpoint/optimizer.safetensors", "best/delta_config.json", "best/delta.safetensors"})
    EXPECT_TRUE(fs::exists(dir / f)) << f;
  auto log = train::read_log(dir / "log.jsonl");
  int train_entries = 0, evals = 0;
  for (auto& e : log) {
    train_entries += e["type"] == "train";
    evals += e["type"] == "eval";
  }
  EXPECT_EQ(train_entries, 16);
  EXPECT_EQ(evals, 2);  // one per epoch
  const std::string svg = train::training_plot_svg(log);
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("polyline"), std::string::npos);

  // The saved delta loads back onto a fresh model and predicts exactly as the trained one does.
  train::save_trained(dir / "delta", run->target);
  task_data().labels.save(dir / "delta" / "labels.json");
  train::Classifier c = train::load_classifier(kModel, dir / "delta");
  auto expected = train::predict(*run->model, task_data().dev, 64, true);
  auto got = train::predict(*c.model, task_data().dev, 64, true);
  EXPECT_EQ(got.predicted, expected.predicted);
  for (size_t i = 0; i < got.probabilities.size(); ++i)
    EXPECT_NEAR(got.probabilities[i][0], expected.probabilities[i][0], 1e-6);
}

TEST_F(TrainerTest, SameSeedGivesIdenticalLosses) {
  auto a = make_run(5, 0.1), b = make_run(5, 0.1), c = make_run(6, 0.1);
  auto options = test_support::small_train_options(temp_dir("seed_a"), 5);
  options.max_steps = 6;
  train_run(*a, options, false);
  options.run_dir = temp_dir("seed_b");
  train_run(*b, options, false);
  EXPECT_EQ(a->result.losses, b->result.losses);  // bit for bit
  EXPECT_EQ(a->final_params, b->final_params);
  options.run_dir = temp_dir("seed_c");
  options.seed = 6;
  train_run(*c, options, false);
  EXPECT_NE(a->result.losses, c->result.losses);
}

TEST_F(TrainerTest, ResumeEndsWhereAnUninterruptedRunEnds) {
  auto options = test_support::small_train_options(temp_dir("resume_full"), 9);
  options.eval_every = 3;
  options.grad_accum = 2;  // positions inside an epoch must survive the restart too
  auto whole = make_run(9, 0.1);
  train_run(*whole, options);

  options.run_dir = temp_dir("resume_parts");
  auto first = make_run(9, 0.1);
  train::TrainOptions interrupted = options;
  interrupted.on_step = [](int64_t step) { return step < 5; };
  train_run(*first, interrupted);
  EXPECT_EQ(first->result.stop_reason, "stopped");
  EXPECT_EQ(first->result.steps, 5);

  auto second = make_run(9, 0.1);  // a new process: fresh model and delta, state from the checkpoint
  train::TrainOptions resumed = options;
  resumed.resume = true;
  train_run(*second, resumed);
  EXPECT_EQ(second->result.steps, whole->result.steps);
  // The resumed losses are the tail of the uninterrupted run's.
  std::vector<double> tail(whole->result.losses.begin() + 5, whole->result.losses.end());
  EXPECT_EQ(second->result.losses, tail);
  EXPECT_EQ(second->result.best_step, whole->result.best_step);
  ASSERT_EQ(second->final_params.size(), whole->final_params.size());
  for (auto& [name, values] : whole->final_params) {
    const auto& other = second->final_params.at(name);
    ASSERT_EQ(other.size(), values.size()) << name;
    for (size_t i = 0; i < values.size(); ++i) ASSERT_EQ(other[i], values[i]) << name << "[" << i << "]";
  }
  // The log holds each update once.
  int train_entries = 0;
  for (auto& e : train::read_log(options.run_dir / "log.jsonl")) train_entries += e["type"] == "train";
  EXPECT_EQ(train_entries, whole->result.steps);
}

TEST_F(TrainerTest, NanLossStopsAndKeepsTheLastGoodCheckpoint) {
  fs::path dir = temp_dir("nan");
  auto run = make_run(3);
  auto options = test_support::small_train_options(dir, 3);
  options.checkpoint_every = 1;
  Tensor* bias = run->model->find_parameter("classifier.bias");
  ASSERT_NE(bias, nullptr);
  // After update 3 (and its checkpoint) the head is poisoned: update 4's loss is NaN.
  options.on_step = [bias](int64_t step) {
    if (step == 3) bias->fill_(std::nanf(""));
    return true;
  };
  try {
    train_run(*run, options);
    FAIL() << "expected TrainingDiverged";
  } catch (const train::TrainingDiverged& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("step 4"), std::string::npos) << msg;
    EXPECT_NE(msg.find("loss is nan"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--lr"), std::string::npos) << msg;
    EXPECT_NE(msg.find("checkpoint (step 3)"), std::string::npos) << msg;
  }
  std::ifstream state_file(dir / "checkpoint" / "state.json");
  auto state = nlohmann::json::parse(state_file);
  EXPECT_EQ(state["step"], 3);
  for (auto& [name, t] : read_safetensors(dir / "checkpoint" / "params.safetensors").tensors)
    for (float v : t.to_floats()) ASSERT_TRUE(std::isfinite(v)) << name;
  // And training continues from it.
  auto again = make_run(3);
  auto resume = test_support::small_train_options(dir, 3);
  resume.resume = true;
  resume.max_steps = 5;
  train_run(*again, resume);
  EXPECT_EQ(again->result.steps, 5);
}

TEST_F(TrainerTest, CausalLmLossFallsOnPlainTexts) {
  LoadOptions load;
  load.head = HeadKind::CausalLM;
  load.verbose = false;
  const fs::path gpt2 = fs::path(DELTATUNE_ASSETS) / "models" / "gpt2-mini";
  auto model = load_pretrained(gpt2, load);
  auto lora =
      delta::make_delta({{"method", "lora"}, {"r", 4}, {"alpha", 8}, {"targets", {"attn.q", "attn.v"}}});
  lora->attach(*model);
  std::vector<data::Example> texts = data::load_task(small_task(), {}, /*labels_optional=*/true).train;
  texts.resize(32);
  data::EncodedDataset set = data::encode(texts, *Tokenizer::load(gpt2), 32);
  const double before = train::evaluate(*model, set)["loss"];
  auto options = test_support::small_train_options(temp_dir("lm"), 2);
  options.lr = 5e-3;
  options.metric = "loss";
  train::Trainer trainer(train::TrainTarget::with_deltas(*model, {lora.get()}, "lora"), options);
  train::TrainResult result = trainer.train(set, &set);
  auto after = train::evaluate(*model, set);
  EXPECT_LT(after["loss"].get<double>(), before - 0.1) << before << " -> " << after.dump();
  EXPECT_NEAR(after["perplexity"].get<double>(), std::exp(after["loss"].get<double>()), 1e-6);
  EXPECT_EQ(result.steps, 8);
  // Padding is never a target: the loss counts one prediction per real token after the first.
  data::Batcher batcher(set, {.batch_size = 4}, 0);
  data::Batch batch = batcher.make_batch({0, 1, 2, 3});
  int64_t counted = 0;
  train::causal_lm_loss(model->forward(train::model_input(*model, batch)).logits, batch, &counted);
  EXPECT_EQ(counted, batch.num_tokens - 4);
}

TEST(TrainCli, ContractFormWritesSummaryAndEvalPredictWork) {
  fs::path run_dir = temp_dir("cli_run");
  const std::string model = cli_test::quote(kModel.string()), task = cli_test::quote(small_task().string());
  auto r = cli_test::run(
      "train --model " + model + " --data " + task + " --method lora --out " +
      cli_test::quote(run_dir.string()) +
      " --epochs 1 --lr 0.002 --batch-size 8 --max-length 32 --seed 7 --max-steps 4 --threads 2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("trainable "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("test accuracy"), std::string::npos) << r.output;
  std::ifstream in(run_dir / "summary.json");
  auto summary = nlohmann::json::parse(in);
  for (const char* key :
       {"method", "trainable_params", "total_params", "train_seconds", "dev", "test", "test_before"})
    EXPECT_TRUE(summary.contains(key)) << key;
  EXPECT_EQ(summary["method"], "lora");
  EXPECT_TRUE(summary["dev"].contains("accuracy"));
  EXPECT_TRUE(summary["test"].contains("accuracy"));
  EXPECT_TRUE(summary["test"].contains("macro_f1"));
  EXPECT_LT(summary["trainable_params"].get<int64_t>(), summary["total_params"].get<int64_t>());
  for (const char* f : {"delta/delta_config.json", "delta/labels.json", "peft/adapter_config.json",
                        "labels.json", "log.jsonl", "plot.svg", "train_config.json"})
    EXPECT_TRUE(fs::exists(run_dir / f)) << f;

  // eval on the test split reproduces the summary's test accuracy from the saved delta.
  auto e = cli_test::run(
      "eval --model " + model + " --delta " + cli_test::quote((run_dir / "delta").string()) + " --data " +
      task + " --split test --threads 2 --output " + cli_test::quote((run_dir / "eval.json").string()));
  ASSERT_EQ(e.code, 0) << e.output;
  EXPECT_NE(e.output.find("macro avg"), std::string::npos) << e.output;
  std::ifstream eval_in(run_dir / "eval.json");
  auto metrics = nlohmann::json::parse(eval_in);
  EXPECT_NEAR(metrics["accuracy"].get<double>(), summary["test"]["accuracy"].get<double>(), 1e-9);
  EXPECT_EQ(metrics["per_class"].size(), 2u);

  // predict: one line per example with a label and probabilities that sum to 1.
  auto p =
      cli_test::run("predict --model " + model + " --delta " + cli_test::quote((run_dir / "delta").string()) +
                    " --input " + cli_test::quote((small_task() / "dev.jsonl").string()) + " --output " +
                    cli_test::quote((run_dir / "pred.jsonl").string()));
  ASSERT_EQ(p.code, 0) << p.output;
  std::ifstream pred(run_dir / "pred.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(pred, line)) {
    auto j = nlohmann::json::parse(line);
    double sum = 0;
    for (auto& [_, v] : j["probabilities"].items()) sum += v.get<double>();
    EXPECT_NEAR(sum, 1.0, 1e-5);
    EXPECT_TRUE(j["probabilities"].contains(j["label"].get<std::string>()));
    ++lines;
  }
  EXPECT_EQ(lines, 32);

  auto plot = cli_test::run("plot " + cli_test::quote(run_dir.string()));
  EXPECT_EQ(plot.code, 0) << plot.output;
  EXPECT_NE(plot.output.find("plot.svg"), std::string::npos) << plot.output;

  // A --config file is equivalent to flags; bad data fails with file:line and exit code 2.
  fs::path bad = temp_dir("cli_bad");
  std::ofstream(bad / "train.jsonl") << "{\"text\": \"a\", \"label\": 0}\n{\"label\": 1}\n";
  std::ofstream(bad / "config.json") << "{\"model\": " << nlohmann::json(kModel.string()).dump()
                                     << ", \"data\": " << nlohmann::json(bad.string()).dump()
                                     << ", \"out\": " << nlohmann::json((bad / "run").string()).dump() << "}";
  auto b = cli_test::run("train --config " + cli_test::quote((bad / "config.json").string()));
  EXPECT_EQ(b.code, 2) << b.output;
  EXPECT_NE(b.output.find("train.jsonl:2: missing field 'text'"), std::string::npos) << b.output;
}

// --bf16 (mixed precision): trains, says what it did (or that the CPU lacks AVX-512 BF16), records
// the setting, and leaves a float32 delta; eval and predict run it with --bf16 as well.
TEST(TrainCli, Bf16MixedPrecisionTrainsAFloat32Delta) {
  fs::path run_dir = temp_dir("cli_bf16");
  const std::string model = cli_test::quote(kModel.string()), task = cli_test::quote(small_task().string());
  auto r = cli_test::run("train --model " + model + " --data " + task + " --method lora --out " +
                         cli_test::quote(run_dir.string()) +
                         " --batch-size 8 --max-length 32 --seed 7 --max-steps 4 --threads 2 --bf16");
  ASSERT_EQ(r.code, 0) << r.output;
  const bool kernel = ops::bf16_linear_available();
  EXPECT_NE(r.output.find(kernel ? "bf16: products in bfloat16" : "no AVX-512 BF16"), std::string::npos)
      << r.output;
  std::ifstream config_in(run_dir / "train_config.json");
  EXPECT_EQ(nlohmann::json::parse(config_in)["bf16"], true);
  auto saved = read_safetensors(run_dir / "delta" / "delta.safetensors");
  ASSERT_FALSE(saved.tensors.empty());
  for (auto& [name, t] : saved.tensors) EXPECT_EQ(t.dtype(), DType::F32) << name;
  // eval and predict take --bf16 too, on the float32 checkpoint and delta.
  const std::string expect = kernel ? "bf16: products in bfloat16" : "no AVX-512 BF16";
  auto e =
      cli_test::run("eval --model " + model + " --delta " + cli_test::quote((run_dir / "delta").string()) +
                    " --data " + task + " --split test --threads 2 --bf16");
  EXPECT_EQ(e.code, 0) << e.output;
  EXPECT_NE(e.output.find(expect), std::string::npos) << e.output;
  EXPECT_NE(e.output.find("macro avg"), std::string::npos) << e.output;
  auto p =
      cli_test::run("predict --model " + model + " --delta " + cli_test::quote((run_dir / "delta").string()) +
                    " --input " + cli_test::quote((small_task() / "dev.jsonl").string()) + " --bf16");
  EXPECT_EQ(p.code, 0) << p.output;
  EXPECT_NE(p.output.find("\"probabilities\""), std::string::npos) << p.output;
}
