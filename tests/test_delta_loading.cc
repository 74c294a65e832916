// Whatever `train` (or PEFT) wrote loads in every command that takes --delta: full and head runs
// (their weights replace the model's), stand-alone PEFT adapters by their task_type, `combine`'s result
// (with the sources' labels), and --bf16 keeps what a run trained at its precision.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "cli_run.h"
#include "deltatune/autograd.h"
#include "deltatune/data.h"
#include "deltatune/delta.h"
#include "deltatune/delta_io.h"
#include "deltatune/nn.h"
#include "deltatune/ops.h"
#include "deltatune/safetensors.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"
#include "golden.h"
#include "small_task.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using namespace deltatune;
using cli_test::quote;

namespace {

const fs::path kBert = golden::model_dir("bert-mini"), kGpt2 = golden::model_dir("gpt2-mini"),
               kLlama = golden::model_dir("llama-mini");

fs::path temp_dir(const std::string& name) { return test_support::temp_dir("loading_" + name); }

fs::path small_task() {
  static const fs::path dir = test_support::write_sentiment_subset(temp_dir("task"), 48, 16, 32);
  return dir;
}

// A few plain texts for causal-LM runs and evaluations.
fs::path texts_file() {
  static const fs::path file = [] {
    fs::path f = temp_dir("texts") / "texts.jsonl";
    std::ofstream out(f);
    for (const char* t : {"The whale swam far out to sea.", "Call me Ishmael, said the sailor.",
                          "A ship is a small world of its own.", "The sea was calm and grey that morning."})
      out << nlohmann::json{{"text", t}}.dump() << "\n";
    return f;
  }();
  return file;
}

nlohmann::json read_json(const fs::path& file) {
  std::ifstream in(file);
  return nlohmann::json::parse(in);
}

// Trains a short run and returns its folder; the run must succeed.
fs::path train_run(const std::string& name, const std::string& args) {
  const fs::path dir = temp_dir(name);
  auto r = cli_test::run("train " + args + " --out " + quote((dir / "run").string()) +
                         " --batch-size 8 --max-length 32 --seed 3 --max-steps 2 --threads 2 --quiet");
  EXPECT_EQ(r.code, 0) << r.output;
  return dir / "run";
}

fs::path train_classifier(const std::string& name, const std::string& method, const std::string& extra = "") {
  return train_run(name, "--model " + quote(kBert.string()) + " --data " + quote(small_task().string()) +
                             " --method " + method + " " + extra);
}

// The ids `forward` reads.
fs::path ids_file(const fs::path& dir) {
  const fs::path f = dir / "ids.json";
  std::ofstream(f) << R"({"input_ids": [[2, 45, 97, 311, 28, 3], [2, 61, 5, 904, 77, 3]]})";
  return f;
}

// The logits of `model_dir` with the run's saved tensors written over its parameters, computed here
// from the files alone: what `forward --delta RUN/delta` must give for a full or head run.
std::vector<float> logits_with_saved_weights(const fs::path& model_dir, const fs::path& delta_dir) {
  const nlohmann::json config = read_json(delta_dir / "delta_config.json");
  LoadOptions options;
  options.verbose = false;
  if (config["head"] == "sequence-classification") {
    options.head = HeadKind::SequenceClassification;
    options.num_labels = config["num_labels"].get<int64_t>();
  }
  auto model = load_pretrained(model_dir, options);
  NoGradGuard no_grad;
  for (auto& [name, value] : read_safetensors(delta_dir / "delta.safetensors").tensors) {
    Tensor* p = model->find_parameter(name);
    if (!p) throw std::runtime_error("no parameter " + name);
    *p = value.float32().contiguous().clone();
  }
  ModelInput input;
  input.input_ids = Tensor::from_ints({2, 45, 97, 311, 28, 3, 2, 61, 5, 904, 77, 3}, {2, 6});
  return model->forward(input).logits.to_floats();
}

double max_abs_difference(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    worst = std::max(worst, double(std::fabs(a[i] - b[i])));
  return worst;
}

void expect_forward_uses_saved_weights(const fs::path& model_dir, const fs::path& delta_dir,
                                       const fs::path& scratch) {
  const fs::path out = scratch / "forward.safetensors";
  auto f =
      cli_test::run("forward --model " + quote(model_dir.string()) + " --delta " + quote(delta_dir.string()) +
                    " --input " + quote(ids_file(scratch).string()) + " --output " + quote(out.string()));
  ASSERT_EQ(f.code, 0) << f.output;
  const std::vector<float> got = read_safetensors(out).tensors.at("logits").to_floats();
  EXPECT_LT(max_abs_difference(got, logits_with_saved_weights(model_dir, delta_dir)), 1e-5);
}

}  // namespace

// `full` and `head` runs of a classifier: forward, inspect, eval and merge take RUN/delta (before:
// "unknown delta method 'full'"), the saved weights replace the model's, and combine refuses them
// with a clear line.
TEST(DeltaLoading, FullAndHeadClassifierRunsLoadInEveryCommand) {
  for (const std::string method : {"full", "head"}) {
    SCOPED_TRACE(method);
    const fs::path run = train_classifier("cls_" + method, method, "--lr 1e-3");
    const fs::path delta_dir = run / "delta";
    ASSERT_EQ(read_json(delta_dir / "delta_config.json")["delta"]["method"], method);
    expect_forward_uses_saved_weights(kBert, delta_dir, run);

    auto i = cli_test::run("inspect " + quote(kBert.string()) + " --delta " + quote(delta_dir.string()));
    EXPECT_EQ(i.code, 0) << i.output;
    EXPECT_NE(i.output.find("trainable "), std::string::npos) << i.output;

    auto e = cli_test::run("eval --model " + quote(kBert.string()) + " --delta " + quote(delta_dir.string()) +
                           " --data " + quote(small_task().string()) + " --split test --threads 2 --output " +
                           quote((run / "eval.json").string()));
    ASSERT_EQ(e.code, 0) << e.output;
    EXPECT_NEAR(read_json(run / "eval.json")["loss"].get<double>(),
                read_json(run / "summary.json")["test"]["loss"].get<double>(), 1e-6);

    auto c =
        cli_test::run("combine --model " + quote(kBert.string()) + " --delta " + quote(delta_dir.string()) +
                      " --out " + quote((run.parent_path() / "combined").string()));
    EXPECT_EQ(c.code, 2) << c.output;
    EXPECT_NE(c.output.find("is a '" + method + "' run"), std::string::npos) << c.output;
    EXPECT_FALSE(fs::exists(run.parent_path() / "combined"));

    // merge loads it (the checkpoint writer is merge's own): a full run's weights are what it writes
    // (in float32 here, so exactly; by default merge keeps the base's float16).
    const fs::path merged = run.parent_path() / "merged";
    auto m = cli_test::run("merge --model " + quote(kBert.string()) + " --delta " +
                           quote(delta_dir.string()) + " --dtype float32 --out " + quote(merged.string()));
    ASSERT_EQ(m.code, 0) << m.output;
    if (method != "full") continue;
    auto base = golden::load_model("bert-mini");
    const TensorFile written = read_safetensors(merged / "model.safetensors");
    double moved = 0, off = 0;  // how far training moved the weights; how far the merge is from them
    int64_t compared = 0;
    for (auto& [name, trained] : read_safetensors(delta_dir / "delta.safetensors").tensors) {
      Tensor* b = base->find_parameter(name);
      auto it = written.tensors.find(name);
      if (!b || it == written.tensors.end()) continue;  // the head (the base has none)
      moved = std::max(moved, max_abs_difference(trained.to_floats(), b->to_floats()));
      off = std::max(off, max_abs_difference(trained.to_floats(), it->second.to_floats()));
      ++compared;
    }
    EXPECT_GT(compared, 10);
    EXPECT_GT(moved, 1e-4);
    EXPECT_EQ(off, 0.0);  // the trained weights themselves, not the base's
  }
}

// A full causal-LM run: generate and forward take RUN/delta; generate continues as predict does
// (predict loads through the trainer's path).
TEST(DeltaLoading, FullCausalLmRunGeneratesAndRunsForward) {
  const fs::path run =
      train_run("lm_full", "--model " + quote(kGpt2.string()) + " --data " + quote(texts_file().string()) +
                               " --task causal-lm --method full --lr 1e-3");
  const fs::path delta_dir = run / "delta";
  ASSERT_EQ(read_json(delta_dir / "delta_config.json")["delta"]["method"], "full");
  expect_forward_uses_saved_weights(kGpt2, delta_dir, run);

  const std::string prompt = "The whale";
  auto g = cli_test::run("generate --model " + quote(kGpt2.string()) + " --delta " +
                         quote(delta_dir.string()) + " --prompt " + quote(prompt) + " --max-new-tokens 6");
  ASSERT_EQ(g.code, 0) << g.output;
  std::ofstream(run / "prompts.jsonl") << nlohmann::json{{"text", prompt}}.dump() << "\n";
  auto p = cli_test::run("predict --model " + quote(kGpt2.string()) + " --delta " +
                         quote(delta_dir.string()) + " --input " + quote((run / "prompts.jsonl").string()) +
                         " --max-new-tokens 6 --output " + quote((run / "predicted.jsonl").string()));
  ASSERT_EQ(p.code, 0) << p.output;
  const std::string generated = read_json(run / "predicted.jsonl")["generated"];
  ASSERT_FALSE(generated.empty());
  EXPECT_NE(g.output.find(generated), std::string::npos) << g.output << "\npredict: " << generated;
}

// A stand-alone PEFT adapter with task_type CAUSAL_LM (every golden causal-LM adapter) is a language
// model to eval and predict: its loss equals the library's evaluation with the adapter loaded, and
// predict continues texts. A SEQ_CLS adapter stays a classifier (which needs its labels).
TEST(DeltaLoading, PeftAdapterTaskTypeDecidesEvalAndPredict) {
  for (const char* name : {"llama-lora-qv", "gpt2-lora-cattn"}) {
    SCOPED_TRACE(name);
    const fs::path adapter = golden::dir() / "adapters" / name;
    ASSERT_EQ(read_json(adapter / "adapter_config.json")["task_type"], "CAUSAL_LM");
    const fs::path model_dir = std::string(name).rfind("llama", 0) == 0 ? kLlama : kGpt2;
    EXPECT_EQ(delta::peek_delta(adapter).head, HeadKind::CausalLM);

    const fs::path scratch = temp_dir(std::string("peft_") + name);
    auto e = cli_test::run("eval --model " + quote(model_dir.string()) + " --delta " +
                           quote(adapter.string()) + " --data " + quote(texts_file().string()) +
                           " --threads 2 --output " + quote((scratch / "eval.json").string()));
    ASSERT_EQ(e.code, 0) << e.output;
    const nlohmann::json metrics = read_json(scratch / "eval.json");
    EXPECT_FALSE(metrics.contains("accuracy")) << e.output;
    ASSERT_TRUE(metrics.contains("perplexity")) << e.output;

    LoadOptions options;
    options.head = HeadKind::CausalLM;
    options.verbose = false;
    auto model = load_pretrained(model_dir, options);
    auto saved = delta::load_delta(adapter, *model);
    auto tokenizer = Tokenizer::load(model_dir);
    std::vector<data::Example> examples = data::read_examples(texts_file(), {}, /*labels_optional=*/true);
    const nlohmann::json want = train::evaluate(*model, data::encode_for_lm(examples, *tokenizer, 128), 64);
    EXPECT_NEAR(metrics["loss"].get<double>(), want["loss"].get<double>(), 1e-6);

    auto p = cli_test::run("predict --model " + quote(model_dir.string()) + " --delta " +
                           quote(adapter.string()) + " --input " + quote(texts_file().string()) +
                           " --max-new-tokens 2 --output " + quote((scratch / "predicted.jsonl").string()));
    ASSERT_EQ(p.code, 0) << p.output;
    std::ifstream lines(scratch / "predicted.jsonl");
    int n = 0;
    for (std::string line; std::getline(lines, line); ++n)
      EXPECT_TRUE(nlohmann::json::parse(line).contains("generated"));
    EXPECT_EQ(n, 4);
  }
  const fs::path classifier = golden::dir() / "adapters" / "bert-cls-lora";
  EXPECT_EQ(delta::peek_delta(classifier).head, HeadKind::SequenceClassification);
  auto p = cli_test::run("predict --model " + quote(kBert.string()) + " --delta " +
                         quote(classifier.string()) + " --input " + quote(texts_file().string()));
  EXPECT_EQ(p.code, 2) << p.output;
  EXPECT_NE(p.output.find("labels.json"), std::string::npos) << p.output;
}

// combine's result carries the sources' labels.json, so eval and predict run on it; sources whose
// label maps disagree are refused before anything is written.
TEST(DeltaLoading, CombineCarriesLabelsAndRefusesDisagreeingOnes) {
  const fs::path a = train_classifier("comb_a", "lora"), b = train_classifier("comb_b", "lora", "--lr 5e-3");
  const fs::path out = a.parent_path() / "combined";
  auto c = cli_test::run("combine --model " + quote(kBert.string()) + " --delta " +
                         quote((a / "delta").string()) + " --delta " + quote((b / "delta").string()) +
                         " --type linear --weights 0.5,0.5 --out " + quote(out.string()));
  ASSERT_EQ(c.code, 0) << c.output;
  ASSERT_TRUE(fs::exists(out / "labels.json"));
  EXPECT_EQ(read_json(out / "labels.json"), read_json(a / "labels.json"));
  auto e = cli_test::run("eval --model " + quote(kBert.string()) + " --delta " + quote(out.string()) +
                         " --data " + quote(small_task().string()) + " --threads 2 --output " +
                         quote((a.parent_path() / "eval.json").string()));
  ASSERT_EQ(e.code, 0) << e.output;
  EXPECT_TRUE(read_json(a.parent_path() / "eval.json").contains("accuracy")) << e.output;

  // The same delta with its classes in the other order: the combination would mean nothing.
  const fs::path swapped = a.parent_path() / "swapped";
  fs::copy(b / "delta", swapped);
  nlohmann::json labels = read_json(swapped / "labels.json");
  std::reverse(labels["labels"].begin(), labels["labels"].end());
  std::ofstream(swapped / "labels.json") << labels.dump();
  const fs::path refused = a.parent_path() / "refused";
  auto r = cli_test::run("combine --model " + quote(kBert.string()) + " --delta " +
                         quote((a / "delta").string()) + " --delta " + quote(swapped.string()) +
                         " --type linear --out " + quote(refused.string()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("label maps disagree"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(refused));
}

// --bf16 rounds only frozen base weights: parameters named as trained keep their dtype and values,
// even without a gradient (a loaded delta's head).
TEST(DeltaLoading, StoringFrozenWeightsKeepsTrainedParameters) {
  LoadOptions options;
  options.head = HeadKind::SequenceClassification;
  options.num_labels = 2;
  options.verbose = false;
  auto model = load_pretrained(kBert, options);
  const std::vector<std::string> trained = {"bert.pooler.dense.weight", "classifier.weight",
                                            "bert.encoder.layer.1.output.dense.weight"};
  std::map<std::string, std::vector<float>> before;
  for (const auto& name : trained) {
    Tensor* p = model->find_parameter(name);
    ASSERT_NE(p, nullptr) << name;
    *p = p->float32().contiguous().clone();  // as a loaded delta's tensors are
    before[name] = p->to_floats();
  }
  for (auto& [_, t] : model->named_parameters()) t->set_requires_grad(false);  // eval: nothing learns
  int64_t matrices = 0;
  for (auto& [_, m] : model->named_modules())
    matrices += dynamic_cast<nn::Linear*>(m) != nullptr || dynamic_cast<nn::Embedding*>(m) != nullptr;
  EXPECT_EQ(nn::store_frozen_weights(*model, DType::BF16, {trained.begin(), trained.end()}),
            matrices - int64_t(trained.size()));
  for (const auto& name : trained) {
    EXPECT_EQ(model->find_parameter(name)->dtype(), DType::F32) << name;
    EXPECT_EQ(model->find_parameter(name)->to_floats(), before[name]) << name;
  }
  EXPECT_EQ(model->find_parameter("bert.encoder.layer.0.output.dense.weight")->dtype(), DType::BF16);
}

// What a loaded delta trained, as eval and predict pass it to --bf16: the head saved with it and the
// model tensors it trains in place (last-layers); every weight of a full run.
TEST(DeltaLoading, LoadedTrainedNamesTheModelTensorsItTrained) {
  LoadOptions options;
  options.head = HeadKind::SequenceClassification;
  options.num_labels = 2;
  options.verbose = false;
  const fs::path dir = temp_dir("last_layers") / "delta";
  {
    auto model = load_pretrained(kBert, options);
    auto d = delta::make_delta({{"method", "last-layers"}, {"k", 1}});
    d->attach(*model);
    std::map<std::string, Tensor> head;
    for (const auto& n : model->head_parameters()) head[n] = *model->find_parameter(n);
    delta::save_delta(dir, *d, *model, head);
  }
  auto model = load_pretrained(kBert, options);
  train::LoadedTrained loaded = train::load_trained(dir, *model);
  const std::set<std::string> names(loaded.model_parameters.begin(), loaded.model_parameters.end());
  for (const auto& n : model->head_parameters()) EXPECT_TRUE(names.count(n)) << n;
  EXPECT_TRUE(names.count("bert.encoder.layer.3.output.dense.weight"));  // the last of 4
  EXPECT_FALSE(names.count("bert.encoder.layer.2.output.dense.weight"));

  // A full run (the layout `train --method full` writes) names every weight and attaches no delta.
  const fs::path full = temp_dir("full") / "delta";
  {
    auto m = load_pretrained(kBert, options);
    train::save_trained(full, train::TrainTarget::full(*m));
  }
  auto fresh = load_pretrained(kBert, options);
  train::LoadedTrained whole = train::load_trained(full, *fresh);
  EXPECT_EQ(whole.method, "full");
  EXPECT_TRUE(whole.deltas.empty());
  EXPECT_EQ(whole.model_parameters.size(), fresh->named_parameters().size());
}

// eval --bf16 on a run trained with --bf16 reproduces the run's own test metrics: the trained head
// is not rounded at load. Without AVX-512 BF16 both sides compute in float32 (the library tests above
// still check the rule).
TEST(DeltaLoading, EvalBf16ReproducesTheRunsTestMetrics) {
  if (!ops::bf16_linear_available())
    std::fprintf(stderr, "note: no AVX-512 BF16 here: --bf16 runs in float32 on both sides\n");
  for (const std::string method : {"lora", "full"}) {
    SCOPED_TRACE(method);
    const fs::path run = train_classifier("bf16_" + method, method, "--bf16");
    const nlohmann::json test = read_json(run / "summary.json")["test"];
    const fs::path out = run.parent_path() / "eval.json";
    auto e = cli_test::run("eval --model " + quote(kBert.string()) + " --delta " +
                           quote((run / "delta").string()) + " --data " + quote(small_task().string()) +
                           " --split test --threads 2 --bf16 --output " + quote(out.string()));
    ASSERT_EQ(e.code, 0) << e.output;
    const nlohmann::json got = read_json(out);
    EXPECT_NEAR(got["loss"].get<double>(), test["loss"].get<double>(), 1e-6);
    EXPECT_EQ(got["accuracy"], test["accuracy"]);
  }
}
