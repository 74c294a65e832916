// Training that finishes (issue 12): every method ends with the weights of its best dev evaluation when
// that was not the last one; prompt tuning trains causal and masked LMs, and its result generates;
// one effective max length (the model's positions less the virtual tokens that take positions) is
// trained with, recorded, and reused by eval and predict.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "cli_run.h"
#include "deltatune/data.h"
#include "deltatune/delta.h"
#include "deltatune/random.h"
#include "deltatune/threads.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using namespace deltatune;

namespace {

const fs::path kAssets = fs::path(DELTATUNE_ASSETS);
const fs::path kBert = kAssets / "models" / "bert-mini";

// --- the best weights are restored, for every method ---

// 16 sentiment reviews to train on, and the same reviews with their labels swapped as dev: training
// raises the dev loss, so the first evaluation is the best one and later updates move away from it.
struct RiggedData {
  data::EncodedDataset train, dev;
};

const RiggedData& rigged_data() {
  static const RiggedData d = [] {
    auto examples = data::read_examples(kAssets / "tasks" / "sentiment" / "train.jsonl", {});
    examples.resize(16);
    data::LabelMap labels = data::LabelMap::from_examples(examples);
    data::assign_labels(examples, labels);
    auto tok = Tokenizer::load(kBert);
    RiggedData out;
    out.train = data::encode(examples, *tok, 32);
    out.dev = out.train;
    for (auto& e : out.dev.examples) e.label = 1 - e.label;
    return out;
  }();
  return d;
}

struct MethodCase {
  std::string name;       // the test's name
  nlohmann::json config;  // a delta config, or null for "full" / "head"
  double lr = 1e-2;
};
void PrintTo(const MethodCase& c, std::ostream* os) { *os << c.name; }

std::vector<MethodCase> method_cases() {
  return {
      {"lora", {{"method", "lora"}, {"r", 4}}},
      {"ia3", {{"method", "ia3"}}},
      {"prefix", {{"method", "prefix"}, {"num_virtual_tokens", 4}}},
      {"prefix_projection",
       {{"method", "prefix"}, {"num_virtual_tokens", 4}, {"projection", true}, {"encoder_hidden_size", 16}}},
      {"prompt", {{"method", "prompt"}, {"num_virtual_tokens", 4}}},
      {"adapter", {{"method", "adapter"}, {"bottleneck", 8}}},
      {"bitfit", {{"method", "bitfit"}}},
      {"ln", {{"method", "ln"}}},
      {"last_layers", {{"method", "last-layers"}, {"k", 1}}, 1e-3},
      {"compacter", {{"method", "compacter"}}},
      {"compacter_pp", {{"method", "compacter++"}, {"rank", 2}}},
      {"lowrank_adapter", {{"method", "lowrank_adapter"}}},
      {"diff_pruning",
       {{"method", "diff_pruning"}, {"target_sparsity", 0.5}, {"targets", {"attn.q", "attn.v"}}}},
      {"mask", {{"method", "mask"}, {"targets", {"ffn.up"}}}},
      {"unipelt", {{"method", "unipelt"}, {"variant", "APL"}}, 1e-3},
      {"intrinsic", {{"method", "intrinsic"}, {"dim", 16}, {"delta", {{"method", "lora"}, {"r", 2}}}}, 1e-1},
      {"combination",
       {{"method", "combination"},
        {"deltas",
         {{{"method", "lora"}, {"r", 2}},
          {{"method", "prefix"}, {"num_virtual_tokens", 2}},
          {{"method", "diff_pruning"}, {"targets", {"attn.o"}}},
          {{"method", "mask"}, {"targets", {"ffn.down"}}}}}}},
      {"full", nullptr, 1e-3},
      {"head", nullptr},
  };
}

using Snapshot = std::vector<std::vector<float>>;

Snapshot snapshot(const train::TrainTarget& target) {
  Snapshot out;
  for (auto& [_, t] : target.parameters()) out.push_back(t.to_floats());
  return out;
}

class BestWeights : public ::testing::TestWithParam<MethodCase> {
 protected:
  void SetUp() override { set_num_threads(2); }
};

}  // namespace

TEST(BestWeightsCases, CoverEveryMethod) {
  std::set<std::string> covered;
  for (const auto& c : method_cases())
    covered.insert(c.config.is_null() ? c.name : c.config["method"].get<std::string>());
  for (const auto& m : delta::supported_methods()) EXPECT_TRUE(covered.count(m)) << m << " has no case";
  EXPECT_TRUE(covered.count("full") && covered.count("head"));
}

TEST_P(BestWeights, RestoredWeightsAreThoseOfTheBestEvaluation) {
  const MethodCase& c = GetParam();
  LoadOptions load;
  load.head = HeadKind::SequenceClassification;
  load.num_labels = 2;
  load.seed = 7;
  load.verbose = false;
  auto model = load_pretrained(kBert, load);
  std::unique_ptr<delta::Delta> delta;
  train::TrainTarget target;
  if (c.name == "full") {
    target = train::TrainTarget::full(*model);
  } else if (c.name == "head") {
    target = train::TrainTarget::head_only(*model);
  } else {
    delta = delta::make_delta(c.config);
    delta->seed = 7;
    delta->attach(*model);
    target = train::TrainTarget::with_deltas(*model, {delta.get()}, delta->method());
  }

  train::TrainOptions o;
  o.max_steps = 4;
  o.batch_size = 8;
  o.eval_every = 1;
  o.warmup_ratio = 0;
  o.lr = c.lr;
  o.metric = "loss";
  o.run_dir = test_support::temp_dir("best_" + c.name);
  o.progress = false;
  std::map<int64_t, Snapshot> at_step;  // the weights each evaluation saw (it runs before on_step)
  o.on_step = [&](int64_t step) {
    at_step[step] = snapshot(target);
    return true;
  };
  train::Trainer trainer(target, o);
  const train::TrainResult result = trainer.train(rigged_data().train, &rigged_data().dev);

  ASSERT_EQ(result.steps, 4);
  ASSERT_GE(result.best_step, 1);
  ASSERT_LT(result.best_step, result.steps) << "the rigged dev set should make an early evaluation the best";
  ASSERT_NE(at_step[result.best_step], at_step[result.steps]) << "the weights did not move after the best";
  EXPECT_EQ(snapshot(target), at_step[result.best_step]);
  // What the run then saves, and its dev loss, are those of the best evaluation too.
  const nlohmann::json again = train::evaluate(*model, rigged_data().dev);
  EXPECT_DOUBLE_EQ(again["loss"].get<double>(), result.best_dev["loss"].get<double>());
}

INSTANTIATE_TEST_SUITE_P(EveryMethod, BestWeights, ::testing::ValuesIn(method_cases()),
                         [](const ::testing::TestParamInfo<MethodCase>& info) { return info.param.name; });

// --- prompt tuning of language models ---

namespace {

// A small task folder of plain texts (the sentiment reviews without their labels).
fs::path text_task(const std::string& name) {
  const fs::path dir = test_support::temp_dir(name);
  std::ifstream in(kAssets / "tasks" / "sentiment" / "train.jsonl");
  std::string line;
  for (auto [split, n] : {std::pair{"train", 16}, {"dev", 8}, {"test", 8}}) {
    std::ofstream out(dir / (std::string(split) + ".jsonl"));
    for (int i = 0; i < n && std::getline(in, line); ++i)
      out << nlohmann::json{{"text", nlohmann::json::parse(line)["text"]}}.dump() << "\n";
  }
  return dir;
}

nlohmann::json read_json(const fs::path& file) {
  std::ifstream in(file);
  return nlohmann::json::parse(in);
}

std::string q(const fs::path& p) { return cli_test::quote(p.string()); }

// Trains a prompt on MODEL with --task TASK, then checks what the run wrote is usable: eval on the
// saved delta gives the run's own test loss.
fs::path train_prompt(const std::string& model, const std::string& task, const std::string& extra = "") {
  const fs::path dir = text_task("prompt_" + model + "_" + task), run = dir / "run";
  const fs::path model_dir = kAssets / "models" / model;
  auto r = cli_test::run("train --model " + q(model_dir) + " --data " + q(dir) + " --task " + task +
                         " --method prompt --max-steps 4 --batch-size 8 --max-length 32 --lr 3e-2 --quiet "
                         "--threads 2 --out " +
                         q(run) + " " + extra);
  EXPECT_EQ(r.code, 0) << r.output;
  const nlohmann::json summary = read_json(run / "summary.json");
  EXPECT_EQ(summary["steps"], 4);
  const double test_loss = summary["test"]["loss"].get<double>();
  EXPECT_TRUE(std::isfinite(test_loss)) << summary.dump();
  auto e = cli_test::run("eval --model " + q(model_dir) + " --delta " + q(run / "delta") + " --data " +
                         q(dir) + " --threads 2 --output " + q(dir / "eval.json"));
  EXPECT_EQ(e.code, 0) << e.output;
  if (e.code == 0) EXPECT_NEAR(read_json(dir / "eval.json")["loss"].get<double>(), test_loss, 1e-5);
  return run;
}

// predict and generate run the trained prompt.
void check_generation(const std::string& model, const fs::path& run) {
  const fs::path model_dir = kAssets / "models" / model, input = run.parent_path() / "in.jsonl";
  std::ofstream(input) << R"({"text": "The food was"})"
                       << "\n"
                       << R"({"text": "I did not like"})"
                       << "\n";
  auto p = cli_test::run("predict --model " + q(model_dir) + " --delta " + q(run / "delta") + " --input " +
                         q(input) + " --max-new-tokens 3 --threads 2 --output " +
                         q(run.parent_path() / "out.jsonl"));
  ASSERT_EQ(p.code, 0) << p.output;
  std::ifstream out(run.parent_path() / "out.jsonl");
  int lines = 0;
  for (std::string line; std::getline(out, line); ++lines)
    EXPECT_TRUE(nlohmann::json::parse(line)["generated"].is_string()) << line;
  EXPECT_EQ(lines, 2);
  auto g = cli_test::run("generate --model " + q(model_dir) + " --delta " + q(run / "delta") +
                         " --prompt 'The food was' --max-new-tokens 3");
  EXPECT_EQ(g.code, 0) << g.output;
}

}  // namespace

// PEFT's rule: the labels of the virtual tokens are -100, so the last of them predicts the first real
// token and no other virtual position is scored; padding and a prompt's text (loss_from) are not.
TEST(PromptTuningLoss, CausalLmScoresRealTokensOnlyAsPeftDoes) {
  const int64_t B = 2, P = 3, T = 4, V = 5;
  Generator gen(1);
  const Tensor logits = Tensor::randn({B, P + T, V}, gen);
  data::Batch batch;
  batch.input_ids = Tensor::from_ints({1, 2, 3, 4, 2, 0, 1, 0}, {B, T});
  batch.attention_mask = Tensor::from_ints({1, 1, 1, 1, 1, 1, 1, 0}, {B, T});  // row 1: one pad
  batch.loss_from = {0, 1};  // row 1: its first token is a prompt
  int64_t counted = 0;
  const double loss = train::causal_lm_loss(logits, batch, &counted).item();
  // By hand: token t of row b is predicted at position P + t - 1.
  const std::vector<float> l = logits.to_floats();
  const std::vector<int64_t> ids = batch.input_ids.to_ints();
  double sum = 0;
  int64_t n = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      if ((b == 1 && t == 0) || (b == 1 && t == 3)) continue;  // the prompt token, the pad
      const float* row = l.data() + (b * (P + T) + P + t - 1) * V;
      double z = 0;
      for (int64_t v = 0; v < V; ++v) z += std::exp(double(row[v]));
      sum += std::log(z) - row[ids[size_t(b * T + t)]];
      ++n;
    }
  EXPECT_EQ(counted, n);
  EXPECT_NEAR(loss, sum / double(n), 1e-5);
  // Without virtual tokens nothing changes: the first token has nothing before it.
  const Tensor plain = logits.slice(1, P, P + T).contiguous();
  train::causal_lm_loss(plain, batch, &counted);
  EXPECT_EQ(counted, n - 1);
}

TEST(PromptTuningLoss, MaskedLmLeavesTheVirtualTokensOut) {
  const int64_t P = 2, T = 3, V = 4;
  Generator gen(2);
  const Tensor logits = Tensor::randn({1, P + T, V}, gen);
  data::Batch batch;
  batch.input_ids = Tensor::from_ints({5, 6, 7}, {1, T});
  batch.attention_mask = Tensor::from_ints({1, 1, 1}, {1, T});
  batch.lm_targets = Tensor::from_ints({-100, 2, -100}, {1, T});
  const double loss = train::masked_lm_loss(logits, batch).item();
  const std::vector<float> l = logits.to_floats();
  const float* row = l.data() + (P + 1) * V;
  double z = 0;
  for (int64_t v = 0; v < V; ++v) z += std::exp(double(row[v]));
  EXPECT_NEAR(loss, std::log(z) - row[2], 1e-5);
}

TEST(PromptTuning, TrainsGpt2CausalLmAndGenerates) {
  check_generation("gpt2-mini", train_prompt("gpt2-mini", "causal-lm"));
}

TEST(PromptTuning, TrainsLlamaCausalLmAndGenerates) {
  check_generation("llama-mini", train_prompt("llama-mini", "causal-lm"));
}

TEST(PromptTuning, TrainsBertMaskedLm) { train_prompt("bert-mini", "masked-lm"); }

// --- one effective max length ---

namespace {

// A task whose first example is far longer than any model's positions, so the length cap matters.
fs::path long_text_task(const std::string& name, bool labelled) {
  const fs::path dir = test_support::temp_dir(name);
  std::string long_text;
  for (int i = 0; i < 120; ++i) long_text += "the food was good but the service was slow ";
  for (auto [split, n] : {std::pair{"train", 8}, {"dev", 4}, {"test", 4}}) {
    std::ofstream out(dir / (std::string(split) + ".jsonl"));
    for (int i = 0; i < n; ++i) {
      nlohmann::json line = {{"text", i == 0 ? long_text : "a short review number " + std::to_string(i)}};
      if (labelled) line["label"] = i % 2;
      out << line.dump() << "\n";
    }
  }
  return dir;
}

int64_t model_positions(const std::string& model) {
  const nlohmann::json c = read_json(kAssets / "models" / model / "config.json");
  return c.contains("n_positions") ? c["n_positions"].get<int64_t>()
                                   : c["max_position_embeddings"].get<int64_t>();
}

struct LengthRun {
  fs::path dir;           // the task folder; its run is dir/run
  int64_t recorded = -1;  // train_config.json's max-length
};

// Trains with --max-length `requested` and reads the recorded length, after checking that eval (with
// the recorded length, and with the length asked for) gives the run's own test loss.
LengthRun train_with_length(const std::string& model, const std::string& args, int64_t requested) {
  const bool labelled = args.find("--task") == std::string::npos;
  LengthRun out{long_text_task("len_" + model + "_" + std::to_string(requested), labelled)};
  const fs::path model_dir = kAssets / "models" / model, run = out.dir / "run";
  auto r = cli_test::run("train --model " + q(model_dir) + " --data " + q(out.dir) + " " + args +
                         " --max-length " + std::to_string(requested) +
                         " --max-steps 1 --batch-size 8 --quiet --threads 2 --out " + q(run));
  EXPECT_EQ(r.code, 0) << r.output;
  if (r.code != 0) return out;
  const double test_loss = read_json(run / "summary.json")["test"]["loss"].get<double>();
  for (const std::string flag : {std::string(), " --max-length " + std::to_string(requested)}) {
    auto e = cli_test::run("eval --model " + q(model_dir) + " --delta " + q(run / "delta") + " --data " +
                           q(out.dir) + flag + " --threads 2 --output " + q(out.dir / "eval.json"));
    EXPECT_EQ(e.code, 0) << flag << "\n" << e.output;
    if (e.code == 0)
      EXPECT_NEAR(read_json(out.dir / "eval.json")["loss"].get<double>(), test_loss, 1e-5) << flag;
  }
  out.recorded = read_json(run / "train_config.json")["max-length"].get<int64_t>();
  return out;
}

int64_t virtual_tokens(const LengthRun& run) {
  return read_json(run.dir / "run" / "delta" / "delta_config.json")["delta"]["num_virtual_tokens"]
      .get<int64_t>();
}

}  // namespace

TEST(MaxLength, CappedToThePositionsRecordedAndReused) {
  EXPECT_EQ(train_with_length("bert-mini", "--method lora", 1024).recorded, model_positions("bert-mini"));
}

TEST(MaxLength, PromptVirtualTokensTakePositions) {
  const LengthRun run = train_with_length("bert-mini", "--method prompt", 512);
  EXPECT_EQ(run.recorded, model_positions("bert-mini") - virtual_tokens(run));
  EXPECT_LT(run.recorded, 512);
  // predict fits the prompt in too, whatever length it is asked for.
  auto p = cli_test::run("predict --model " + q(kBert) + " --delta " + q(run.dir / "run" / "delta") +
                         " --input " + q(run.dir / "test.jsonl") + " --threads 2 --max-length 512");
  EXPECT_EQ(p.code, 0) << p.output;
}

TEST(MaxLength, Gpt2PrefixTakesPositions) {
  const LengthRun run = train_with_length("gpt2-mini", "--task causal-lm --method prefix", 1024);
  EXPECT_EQ(run.recorded, model_positions("gpt2-mini") - virtual_tokens(run));
}

TEST(MaxLength, RotaryPositionsAreNotCapped) {
  EXPECT_EQ(train_with_length("llama-mini", "--task causal-lm --method lora", 600).recorded, 600);
}
