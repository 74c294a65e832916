// Language-model tuning: masked-LM corruption and training (bert-mini), causal LMs learning only the
// answer after a prompt (gpt2-mini), `predict` continuing texts, and early stopping with patience.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <set>

#include "cli_run.h"
#include "deltatune/data.h"
#include "deltatune/delta.h"
#include "deltatune/threads.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using namespace deltatune;

namespace {

const fs::path kAssets = fs::path(DELTATUNE_ASSETS);
const fs::path kBert = kAssets / "models" / "bert-mini", kGpt2 = kAssets / "models" / "gpt2-mini";

std::vector<data::Example> sentiment_texts(size_t n) {
  auto texts = data::read_examples(kAssets / "tasks" / "sentiment" / "train.jsonl", {}, true);
  texts.resize(n);
  return texts;
}

// Prompt/answer pairs a small decoder can learn: the answer is the word the prompt names.
std::vector<data::Example> prompt_answers(size_t n) {
  std::vector<data::Example> out;
  for (size_t i = 0; i < n; ++i) {
    data::Example e;
    const bool good = i % 2 == 0;
    e.text = "Review " + std::to_string(i) + ": I " + (good ? "loved" : "hated") + " it. Sentiment:";
    e.text_pair = good ? " positive" : " negative";
    e.origin = "pairs:" + std::to_string(i + 1);
    out.push_back(e);
  }
  return out;
}

train::TrainOptions options(const std::string& dir, const std::string& metric) {
  train::TrainOptions o;
  o.epochs = 2;
  o.batch_size = 8;
  o.lr = 5e-3;
  o.metric = metric;
  o.run_dir = test_support::temp_dir(dir);
  o.progress = false;
  return o;
}

}  // namespace

TEST(MlmMasking, ChoosesRealNonSpecialTokensAtTheRateAndIsSeeded) {
  auto tok = Tokenizer::load(kBert);
  const data::EncodedDataset set = data::encode(sentiment_texts(64), *tok, 64);
  data::Batcher batcher(set, {.batch_size = 64}, tok->pad_id());
  std::vector<size_t> all(64);
  for (size_t i = 0; i < 64; ++i) all[i] = i;
  const data::Batch clean = batcher.make_batch(all);
  const data::MlmMasking masking = data::MlmMasking::for_tokenizer(*tok);

  data::Batch a = clean, b = clean, c = clean;
  data::apply_mlm_masking(a, masking, 1);
  data::apply_mlm_masking(b, masking, 1);
  data::apply_mlm_masking(c, masking, 2);
  EXPECT_EQ(a.input_ids.to_ints(), b.input_ids.to_ints());
  EXPECT_EQ(a.lm_targets.to_ints(), b.lm_targets.to_ints());
  EXPECT_NE(a.lm_targets.to_ints(), c.lm_targets.to_ints());

  const auto ids = clean.input_ids.to_ints(), mask = clean.attention_mask.to_ints();
  const auto masked = a.input_ids.to_ints(), targets = a.lm_targets.to_ints();
  const std::set<int64_t> special = {tok->cls_id(), tok->sep_id(), tok->pad_id()};
  int64_t eligible = 0, chosen = 0, as_mask = 0, unchanged_elsewhere = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const bool can = mask[i] && !special.count(ids[i]);
    eligible += can;
    if (targets[i] != -100) {
      ASSERT_TRUE(can) << "position " << i << " is padding or a special token";
      EXPECT_EQ(targets[i], ids[i]);
      ++chosen;
      as_mask += masked[i] == tok->mask_id();
    } else {
      unchanged_elsewhere += masked[i] == ids[i];
    }
  }
  EXPECT_EQ(unchanged_elsewhere, int64_t(ids.size()) - chosen);  // only chosen positions change
  EXPECT_NEAR(double(chosen) / double(eligible), 0.15, 0.03);
  EXPECT_NEAR(double(as_mask) / double(chosen), 0.8, 0.08);
}

TEST(MlmMasking, TokenizersWithoutAMaskTokenAreRefused) {
  EXPECT_THROW(data::MlmMasking::for_tokenizer(*Tokenizer::load(kGpt2)), ConfigError);
}

TEST(LmTraining, MaskedLmLossFallsWithLora) {
  set_num_threads(2);
  LoadOptions load;
  load.head = HeadKind::MaskedLM;
  load.verbose = false;
  auto model = load_pretrained(kBert, load);
  auto lora =
      delta::make_delta({{"method", "lora"}, {"r", 8}, {"alpha", 16}, {"targets", {"attn.q", "attn.v"}}});
  lora->attach(*model);
  auto tok = Tokenizer::load(kBert);
  const data::EncodedDataset set = data::encode(sentiment_texts(64), *tok, 48);
  const data::MlmMasking masking = data::MlmMasking::for_tokenizer(*tok);
  const double before = train::evaluate(*model, set, 64, &masking)["loss"];
  auto o = options("mlm", "loss");
  o.epochs = 4;
  o.mlm = masking;
  train::Trainer trainer(train::TrainTarget::with_deltas(*model, {lora.get()}, "lora"), o);
  trainer.train(set, &set);
  const double after = train::evaluate(*model, set, 64, &masking)["loss"];
  EXPECT_LT(after, before - 0.05) << before << " -> " << after;
  // The masked LM needs its masking settings.
  auto no_masking = options("mlm_none", "loss");
  train::Trainer refused(train::TrainTarget::with_deltas(*model, {lora.get()}, "lora"), no_masking);
  EXPECT_THROW(refused.train(set, nullptr), ConfigError);
}

TEST(LmTraining, PromptTokensAreNotLearnt) {
  auto tok = Tokenizer::load(kGpt2);
  const auto examples = prompt_answers(4);
  const data::EncodedDataset set = data::encode_for_lm(examples, *tok, 64);
  for (size_t i = 0; i < set.size(); ++i) {
    const auto prompt = tok->encode(examples[i].text, true).ids;
    const auto answer = tok->encode(*examples[i].text_pair, false).ids;
    EXPECT_EQ(set.examples[i].loss_from, int64_t(prompt.size()));
    EXPECT_EQ(set.examples[i].ids.size(), prompt.size() + answer.size() + 1);  // + EOS
    EXPECT_EQ(set.examples[i].ids.back(), tok->eos_id());
  }
  // The loss counts the answer and EOS only.
  LoadOptions load;
  load.head = HeadKind::CausalLM;
  load.verbose = false;
  auto model = load_pretrained(kGpt2, load);
  data::Batcher batcher(set, {.batch_size = 4}, 0);
  data::Batch batch = batcher.make_batch({0, 1, 2, 3});
  int64_t counted = 0;
  train::causal_lm_loss(model->forward(train::model_input(*model, batch)).logits, batch, &counted);
  int64_t answers = 0;
  for (const auto& e : set.examples) answers += int64_t(e.ids.size()) - e.loss_from;
  EXPECT_EQ(counted, answers);
  // A prompt that fills the length limit leaves nothing to learn: an error naming the example.
  try {
    data::encode_for_lm(examples, *tok, 4);
    FAIL() << "expected an error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("pairs:1"), std::string::npos) << e.what();
  }
}

TEST(LmTraining, CausalLmLearnsAnswersAndPredictContinuesTexts) {
  const fs::path dir = test_support::temp_dir("qa");
  {
    std::ofstream train(dir / "train.jsonl");
    for (const auto& e : prompt_answers(40))
      train << nlohmann::json{{"text", e.text}, {"text_pair", *e.text_pair}}.dump() << "\n";
    std::ofstream in(dir / "in.jsonl");
    in << R"({"text": "Review 7: I hated it. Sentiment:"})"
       << "\n"
       << R"({"text": "Review 12: I loved it. Sentiment:"})"
       << "\n";
  }
  const std::string run = cli_test::quote((dir / "run").string());
  auto r =
      cli_test::run("train --model " + cli_test::quote(kGpt2.string()) + " --data " +
                    cli_test::quote((dir / "train.jsonl").string()) +
                    " --task causal-lm --method lora --epochs 5 --lr 5e-3 --quiet --threads 2 --out " + run);
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream log(dir / "run" / "log.jsonl");
  std::vector<double> losses;
  for (std::string line; std::getline(log, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["type"] == "train") losses.push_back(j["loss"]);
  }
  ASSERT_GE(losses.size(), 10u);
  EXPECT_LT(losses.back(), 0.5 * losses.front());

  auto p = cli_test::run("predict --model " + cli_test::quote(kGpt2.string()) + " --delta " +
                         cli_test::quote((dir / "run" / "delta").string()) + " --input " +
                         cli_test::quote((dir / "in.jsonl").string()) + " --max-new-tokens 3");
  ASSERT_EQ(p.code, 0) << p.output;
  std::istringstream lines(p.output);
  std::vector<std::string> generated;
  for (std::string line; std::getline(lines, line);)
    generated.push_back(nlohmann::json::parse(line)["generated"]);
  ASSERT_EQ(generated.size(), 2u) << p.output;
  EXPECT_NE(generated[0].find("negative"), std::string::npos) << generated[0];
  EXPECT_NE(generated[1].find("positive"), std::string::npos) << generated[1];
}

TEST(TrainerOptions, EarlyStoppingAfterPatienceEvaluationsWithoutImprovement) {
  set_num_threads(2);
  LoadOptions load;
  load.head = HeadKind::SequenceClassification;
  load.num_labels = 2;
  load.verbose = false;
  auto model = load_pretrained(kBert, load);
  auto lora = delta::make_delta({{"method", "lora"}, {"r", 4}, {"alpha", 8}});
  lora->attach(*model);
  auto examples = data::read_examples(kAssets / "tasks" / "sentiment" / "train.jsonl");
  examples.resize(32);
  data::LabelMap labels = data::LabelMap::from_examples(examples);
  const data::EncodedDataset set = data::encode(examples, *Tokenizer::load(kBert), 32);
  // A learning rate of zero never improves on the first evaluation: patience 2 stops two evals later.
  auto o = options("patience", "loss");
  o.metric = "accuracy";
  o.lr = 1e-12;
  o.epochs = 50;
  o.batch_size = 16;
  o.eval_every = 1;
  o.patience = 2;
  train::Trainer trainer(train::TrainTarget::with_deltas(*model, {lora.get()}, "lora"), o);
  const train::TrainResult result = trainer.train(set, &set);
  EXPECT_EQ(result.stop_reason, "early_stopping");
  EXPECT_EQ(result.best_step, 1);
  EXPECT_EQ(result.steps, 3);
}
