// The trainer's seams for runs that are not the command line's: the after-backward hook (where a
// data-parallel run reduces gradients), the optimizer chosen by name (SGD trains and resumes bit for
// bit; resuming with another optimizer is refused), progress as events to a sink the caller gives
// (nothing on stderr), and in-memory runs that write nothing yet keep the best weights.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "deltatune/autograd.h"
#include "deltatune/data.h"
#include "deltatune/delta.h"
#include "deltatune/ops.h"
#include "deltatune/threads.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"
#include "small_task.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using namespace deltatune;

namespace {

const fs::path kModel = fs::path(DELTATUNE_ASSETS) / "models" / "bert-mini";

fs::path temp_dir(const std::string& name) { return test_support::temp_dir("seams_" + name); }

const test_support::EncodedTask& task_data() {
  static const test_support::EncodedTask d =
      test_support::encoded_task(test_support::write_sentiment_subset(temp_dir("task"), 64, 32, 32), kModel);
  return d;
}

using Weights = std::map<std::string, std::vector<float>>;

// A fresh bert-mini with a seeded LoRA.
struct LoraRun {
  std::unique_ptr<TransformerModel> model;
  std::unique_ptr<delta::Delta> lora;
  train::TrainTarget target;

  explicit LoraRun(uint64_t seed) {
    LoadOptions load;
    load.head = HeadKind::SequenceClassification;
    load.num_labels = int64_t(task_data().labels.size());
    load.seed = seed;
    load.verbose = false;
    model = load_pretrained(kModel, load);
    lora = delta::make_delta({{"method", "lora"}, {"r", 4}, {"alpha", 8}, {"targets", {"attn.q", "attn.v"}}});
    lora->seed = seed;
    lora->attach(*model);
    target = train::TrainTarget::with_deltas(*model, {lora.get()}, "lora");
    target.freeze();  // parameters() lists what trains once frozen, as the trainer does
  }
  Weights weights() const {
    Weights w;
    for (auto& [name, t] : target.parameters()) w[name] = t.to_floats();
    return w;
  }
  train::TrainResult train(const train::TrainOptions& options, bool with_dev = true) {
    return train::Trainer(target, options).train(task_data().train, with_dev ? &task_data().dev : nullptr);
  }
  double train_loss() const { return train::evaluate(*model, task_data().train)["loss"]; }
};

class TrainerSeams : public ::testing::Test {
 protected:
  void SetUp() override { set_num_threads(2); }
};

}  // namespace

// --- the hook between backward and the optimizer step ---

TEST_F(TrainerSeams, AfterBackwardRunsOncePerUpdateAndItsGradientsAreTheOnesApplied) {
  LoraRun run(11);
  const Weights before = run.weights();
  auto o = test_support::small_train_options(temp_dir("hook"), 11);
  o.grad_accum = 2;  // once per update, not per batch
  o.max_steps = 3;
  o.weight_decay = 0;
  int64_t calls = 0, with_gradient = 0;
  o.after_backward = [&](const NamedParams& params) {
    ++calls;
    NoGradGuard guard;
    for (const auto& [_, p] : params) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      ++with_gradient;
      g.copy_(ops::mul_scalar(g, 0.0f));  // what an all-reduce would do, scaled to nothing
    }
  };
  const train::TrainResult result = run.train(o, false);
  EXPECT_EQ(result.steps, 3);
  EXPECT_EQ(calls, 3);
  EXPECT_GT(with_gradient, 0);
  // Zero gradients and no weight decay: AdamW leaves every weight exactly where it was.
  EXPECT_EQ(run.weights(), before);

  // Without the hook the same run moves the weights (the hook is what held them).
  LoraRun free(11);
  o.after_backward = nullptr;
  o.run_dir = temp_dir("hook_free");
  free.train(o, false);
  EXPECT_NE(free.weights(), before);
}

// --- the optimizer by name ---

TEST_F(TrainerSeams, SgdTrainsAndTheCheckpointNamesIt) {
  LoraRun run(12);
  const fs::path dir = temp_dir("sgd");
  auto o = test_support::small_train_options(dir, 12);
  o.optimizer = "sgd";
  o.lr = 0.05;
  o.momentum = 0.9;
  const double before = run.train_loss();
  const train::TrainResult result = run.train(o);
  const double after = run.train_loss();
  EXPECT_LT(after, before - 0.05) << "training loss before " << before << ", after " << after;
  EXPECT_EQ(result.steps, 16);
  std::ifstream state_file(dir / "checkpoint" / "state.json");
  EXPECT_EQ(nlohmann::json::parse(state_file)["optimizer"], "sgd");

  // SGD is not AdamW: the same run with AdamW ends elsewhere.
  LoraRun adamw(12);
  o.optimizer = "adamw";
  o.run_dir = temp_dir("sgd_vs_adamw");
  adamw.train(o);
  EXPECT_NE(adamw.weights(), run.weights());
}

TEST_F(TrainerSeams, SgdResumesBitForBitAndAnotherOptimizerCannotResumeIt) {
  auto o = test_support::small_train_options(temp_dir("sgd_whole"), 13);
  o.optimizer = "sgd";
  o.lr = 0.05;
  o.momentum = 0.9;  // momentum buffers must survive the restart
  o.eval_every = 3;
  o.grad_accum = 2;
  LoraRun whole(13);
  const train::TrainResult expected = whole.train(o);

  o.run_dir = temp_dir("sgd_parts");
  LoraRun first(13);
  train::TrainOptions interrupted = o;
  interrupted.on_step = [](int64_t step) { return step < 5; };
  ASSERT_EQ(first.train(interrupted).steps, 5);

  LoraRun wrong(13);
  train::TrainOptions other = o;
  other.resume = true;
  other.optimizer = "adamw";
  try {
    wrong.train(other);
    FAIL() << "resuming an sgd checkpoint with adamw should fail";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("sgd"), std::string::npos) << msg;
    EXPECT_NE(msg.find("adamw"), std::string::npos) << msg;
  }

  LoraRun second(13);
  train::TrainOptions resumed = o;
  resumed.resume = true;
  const train::TrainResult result = second.train(resumed);
  EXPECT_EQ(result.steps, expected.steps);
  EXPECT_EQ(result.losses, std::vector<double>(expected.losses.begin() + 5, expected.losses.end()));
  EXPECT_EQ(result.best_step, expected.best_step);
  EXPECT_EQ(second.weights(), whole.weights());  // bit for bit
}

TEST_F(TrainerSeams, UnknownOptimizerIsAConfigError) {
  LoraRun run(14);
  auto o = test_support::small_train_options(temp_dir("bad_optimizer"), 14);
  o.optimizer = "adagrad";
  EXPECT_THROW(train::Trainer(run.target, o), ConfigError);
}

// --- events instead of stderr ---

namespace {

struct Recorder : train::TrainEvents {
  std::vector<std::string> sequence;  // "start", "update 3", "eval 8 best", "checkpoint 8", "end"
  train::StartEvent start;
  std::vector<train::UpdateEvent> updates;
  std::vector<train::EvalEvent> evals;
  int64_t ended_steps = -1;

  void on_start(const train::StartEvent& e) override {
    start = e;
    sequence.push_back("start");
  }
  void on_update(const train::UpdateEvent& e) override {
    updates.push_back(e);
    sequence.push_back("update " + std::to_string(e.step));
  }
  void on_eval(const train::EvalEvent& e) override {
    evals.push_back(e);
    sequence.push_back("eval " + std::to_string(e.step) + (e.is_best ? " best" : ""));
  }
  void on_checkpoint(const train::CheckpointEvent& e) override {
    sequence.push_back("checkpoint " + std::to_string(e.step));
  }
  void on_end(const train::TrainResult& r) override {
    ended_steps = r.steps;
    sequence.push_back("end");
  }
};

}  // namespace

TEST_F(TrainerSeams, ASinkReceivesTheRunAsEventsAndNothingIsPrinted) {
  LoraRun run(15);
  const fs::path dir = temp_dir("events");
  auto o = test_support::small_train_options(dir, 15);
  o.eval_every = 4;
  o.progress = true;  // a sink replaces the bar: still nothing on stderr
  auto recorder = std::make_shared<Recorder>();
  o.events = recorder;
  testing::internal::CaptureStderr();
  const train::TrainResult result = run.train(o);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");

  EXPECT_EQ(recorder->start.total_steps, 16);
  EXPECT_EQ(recorder->start.first_step, 0);
  EXPECT_EQ(recorder->start.optimizer, "adamw");
  EXPECT_EQ(recorder->start.trainable, result.trainable);
  ASSERT_EQ(recorder->evals.size(), 4u);
  // The best flags are the log's, and the last best is the result's best step.
  int64_t last_best = -1;
  size_t eval_index = 0;
  for (auto& entry : train::read_log(dir / "log.jsonl")) {
    if (entry["type"] != "eval") continue;
    const train::EvalEvent& e = recorder->evals.at(eval_index++);
    EXPECT_EQ(entry["step"], e.step);
    EXPECT_EQ(entry["best"], e.is_best);
    EXPECT_EQ(entry["accuracy"], e.metrics["accuracy"]);
    if (e.is_best) last_best = e.step;
  }
  EXPECT_TRUE(recorder->evals.front().is_best);  // the first evaluation is always the best so far
  EXPECT_EQ(last_best, result.best_step);
  // Updates, evaluations (every 4 updates, which includes each epoch's end) and checkpoints, in order.
  std::vector<std::string> expected = {"start"};
  for (int64_t step = 1; step <= 16; ++step) {
    expected.push_back("update " + std::to_string(step));
    if (step % 4 != 0) continue;
    const bool best = recorder->evals.at(size_t(step / 4 - 1)).is_best;
    expected.push_back("eval " + std::to_string(step) + (best ? " best" : ""));
    expected.push_back("checkpoint " + std::to_string(step));
  }
  expected.push_back("end");
  EXPECT_EQ(recorder->sequence, expected);
  ASSERT_EQ(recorder->updates.size(), 16u);
  for (size_t i = 0; i < 16; ++i) EXPECT_EQ(recorder->updates[i].loss, result.losses[i]);
  EXPECT_EQ(recorder->ended_steps, 16);
}

TEST_F(TrainerSeams, ProgressOffPrintsNothing) {
  LoraRun run(16);
  auto o = test_support::small_train_options(temp_dir("quiet"), 16);
  o.max_steps = 2;
  o.eval_every = 1;
  testing::internal::CaptureStderr();
  run.train(o);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

// --- in-memory runs ---

namespace {

// Runs `body` with the working directory set to `dir`.
template <typename Body>
void in_directory(const fs::path& dir, Body body) {
  const fs::path before = fs::current_path();
  fs::current_path(dir);
  try {
    body();
  } catch (...) {
    fs::current_path(before);
    throw;
  }
  fs::current_path(before);
}

// Evaluations every 4 updates; after update 13 the head is blown up, so the last evaluation is not
// the best and restoring the best weights matters. Snapshots what each evaluation saw.
train::TrainOptions rigged_options(LoraRun& run, std::map<int64_t, Weights>& at_step) {
  train::TrainOptions o = test_support::small_train_options("", 17);
  o.eval_every = 4;
  o.metric = "loss";
  Tensor* head = run.model->find_parameter("classifier.weight");
  o.on_step = [&run, &at_step, head](int64_t step) {
    at_step[step] = run.weights();
    if (step == 13) {
      NoGradGuard guard;
      head->copy_(ops::mul_scalar(*head, 100.0f));
    }
    return true;
  };
  return o;
}

}  // namespace

TEST_F(TrainerSeams, InMemoryRunWritesNothingAndRestoresTheBestLikeAFolderRun) {
  LoraRun folder_run(17);
  std::map<int64_t, Weights> folder_steps;
  train::TrainOptions with_folder = rigged_options(folder_run, folder_steps);
  with_folder.run_dir = temp_dir("folder");
  const train::TrainResult expected = folder_run.train(with_folder);
  ASSERT_LT(expected.best_step, expected.steps)
      << "the blown-up head should make an earlier evaluation the best";

  LoraRun memory_run(17);
  std::map<int64_t, Weights> memory_steps;
  train::TrainOptions in_memory = rigged_options(memory_run, memory_steps);
  in_memory.in_memory = true;
  in_memory.checkpoint_every = 1;  // asked for, yet nothing can be written
  const fs::path cwd = temp_dir("cwd");
  train::TrainResult result;
  in_directory(cwd, [&] { result = memory_run.train(in_memory); });
  EXPECT_TRUE(fs::is_empty(cwd)) << "an in-memory run wrote files";

  EXPECT_EQ(result.losses, expected.losses);
  EXPECT_EQ(result.best_step, expected.best_step);
  EXPECT_EQ(result.best_dev, expected.best_dev);
  EXPECT_EQ(memory_run.weights(), folder_run.weights());
  EXPECT_EQ(memory_run.weights(), memory_steps.at(result.best_step));  // the best weights, restored
  EXPECT_NE(memory_run.weights(), memory_steps.at(result.steps));
}

TEST_F(TrainerSeams, InMemoryRunsTakeNoFolderAndCannotResume) {
  LoraRun run(18);
  train::TrainOptions o = test_support::small_train_options("", 18);
  EXPECT_THROW(train::Trainer(run.target, o), ConfigError);  // neither a folder nor in memory
  o.in_memory = true;
  o.resume = true;
  EXPECT_THROW(train::Trainer(run.target, o), ConfigError);
  o.resume = false;
  o.run_dir = temp_dir("not_used");
  EXPECT_THROW(train::Trainer(run.target, o), ConfigError);
}
