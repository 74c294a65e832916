// Exports PEFT and transformers accept: IA3 configs that pass IA3Config's checks and select what we
// attached, the base's real name_or_path, merged classifiers and full fine-tunes as checkpoints
// transformers loads as ...ForSequenceClassification, and plain-worded errors for a delta on another
// architecture or targets that match nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "cli_run.h"
#include "deltatune/autograd.h"
#include "deltatune/delta_io.h"
#include "deltatune/error.h"
#include "deltatune/merge.h"
#include "deltatune/safetensors.h"
#include "deltatune/trainer.h"
#include "golden.h"
#include "temp_dir.h"

using namespace deltatune;
namespace fs = std::filesystem;
using cli_test::quote;
using nlohmann::json;

namespace {
fs::path temp_dir(const std::string& name) { return test_support::temp_dir("peft_export_" + name); }

json read_json(const fs::path& file) {
  std::ifstream in(file);
  return json::parse(in);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// PEFT's check_target_module_exists for a list: an exact name or a dotted suffix.
bool peft_targets(const json& target_modules, const std::string& path) {
  for (const auto& t : target_modules) {
    const std::string entry = t;
    if (path == entry || ends_with(path, "." + entry)) return true;
  }
  return false;
}

// PEFT's IA3 _check_target_module_feedforward for a list: a plain endswith.
bool peft_feedforward(const json& feedforward_modules, const std::string& path) {
  for (const auto& f : feedforward_modules)
    if (ends_with(path, f.get<std::string>())) return true;
  return false;
}

// A small sentiment task with named labels (so a label map is visible in what is written).
fs::path named_label_task() {
  static const fs::path dir = [] {
    fs::path d = temp_dir("task");
    for (auto [split, n] : {std::pair<std::string, int>{"train", 32}, {"dev", 16}, {"test", 16}}) {
      std::ifstream in(fs::path(DELTATUNE_ASSETS) / "tasks" / "sentiment" / (split + ".jsonl"));
      std::ofstream out(d / (split + ".jsonl"));
      std::string line;
      for (int i = 0; i < n && std::getline(in, line); ++i) {
        json j = json::parse(line);
        out << json{{"text", j["text"]}, {"label", j["label"] == 1 ? "positive" : "negative"}}.dump() << "\n";
      }
    }
    return d;
  }();
  return dir;
}

std::string model_arg(const std::string& name) { return quote(golden::model_dir(name).string()); }

// Trains a few steps of `method` on bert-mini's named-label task into `run_dir`.
void train_classifier(const fs::path& run_dir, const std::string& method) {
  auto r = cli_test::run(
      "train --model " + model_arg("bert-mini") + " --data " + quote(named_label_task().string()) +
      " --method " + method + " --out " + quote(run_dir.string()) +
      " --batch-size 8 --max-length 32 --seed 3 --max-steps 3 --threads 2 --quiet --no-test-before");
  ASSERT_EQ(r.code, 0) << r.output;
}

ModelInput sample_input() {
  ModelInput in;
  in.input_ids = Tensor::from_ints({101, 2023, 3185, 2001, 2307, 102, 101, 7592, 102, 0}, {2, 5});
  in.attention_mask = Tensor::from_ints({1, 1, 1, 1, 1, 1, 1, 1, 1, 0}, {2, 5});
  return in;
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  std::vector<float> x = a.contiguous().to_floats(), y = b.contiguous().to_floats();
  EXPECT_EQ(x.size(), y.size());
  float m = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) m = std::max(m, std::fabs(x[i] - y[i]));
  return m;
}

// A merged classifier checkpoint: transformers' class and label map, the head's tensors by their HF
// names, and logits equal to the base with the delta attached.
void expect_merged_classifier(const fs::path& run_dir, const fs::path& out) {
  const json config = read_json(out / "config.json");
  EXPECT_EQ(config["architectures"], json({"BertForSequenceClassification"}));
  EXPECT_EQ(config["id2label"], json({{"0", "negative"}, {"1", "positive"}}));
  EXPECT_EQ(config["label2id"], json({{"negative", 0}, {"positive", 1}}));
  const TensorFile file = read_safetensors(out / "model.safetensors");
  for (const char* name :
       {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias"})
    EXPECT_EQ(file.tensors.count(name), 1u) << name;

  LoadOptions quiet;
  quiet.verbose = false;
  LoadReport report;
  auto merged = load_pretrained(out, quiet, &report);
  EXPECT_EQ(merged->head, HeadKind::SequenceClassification);
  EXPECT_EQ(merged->config.num_labels, 2);
  EXPECT_TRUE(report.initialized.empty());  // the head came from the checkpoint
  train::Classifier reference = train::load_classifier(golden::model_dir("bert-mini"), run_dir / "delta");
  merged->set_training(false);
  NoGradGuard no_grad;
  const Tensor want = reference.model->forward(sample_input()).logits;
  const Tensor got = merged->forward(sample_input()).logits;
  EXPECT_EQ(got.shape(), want.shape());
  EXPECT_LT(max_abs_diff(got, want), 1e-4);
}
}  // namespace

// --- 1. IA3 configs PEFT accepts and that select exactly what we attached ---

struct Ia3Case {
  std::string model;
  json config;
};

class Ia3Export : public ::testing::TestWithParam<Ia3Case> {};

TEST_P(Ia3Export, FeedforwardModulesAreASubsetOfTargetModulesAndSelectWhatWasAttached) {
  const Ia3Case& c = GetParam();
  auto model = golden::load_model(c.model);
  auto d = delta::make_delta(c.config);
  d->attach(*model);
  fs::path dir = temp_dir("ia3");
  delta::save_peft(dir, *d, *model);
  const json p = read_json(dir / "adapter_config.json");
  ASSERT_TRUE(p["target_modules"].is_array());
  ASSERT_TRUE(p["feedforward_modules"].is_array());
  // IA3Config.__post_init__: "feedforward_modules should be a subset of target_modules".
  std::set<std::string> targets(p["target_modules"].begin(), p["target_modules"].end());
  for (const auto& f : p["feedforward_modules"])
    EXPECT_TRUE(targets.count(f.get<std::string>())) << f << " in " << p.dump();

  // What PEFT would build from the file is what we attached, feed-forward where ours scales inputs.
  std::map<std::string, Shape> shapes;
  for (auto& [n, t] : d->parameters()) shapes[n.substr(0, n.rfind('.'))] = t.shape();
  const auto attached = d->attached_modules();
  int64_t feedforward = 0;
  for (auto& [path, module] : model->named_modules()) {
    if (module->type_name() != "Linear") continue;
    const bool ours = std::find(attached.begin(), attached.end(), path) != attached.end();
    EXPECT_EQ(peft_targets(p["target_modules"], path), ours) << path << " in " << p.dump();
    if (!ours) continue;
    const bool scales_inputs = shapes.at(path)[0] == 1;
    feedforward += scales_inputs;
    EXPECT_EQ(peft_feedforward(p["feedforward_modules"], path), scales_inputs) << path << " in " << p.dump();
  }
  EXPECT_GT(feedforward, 0);

  // And it loads back here with the same vectors' shapes.
  auto fresh = golden::load_model(c.model);
  auto loaded = delta::load_delta(dir, *fresh);
  std::map<std::string, Shape> reloaded;
  for (auto& [n, t] : loaded.delta->parameters()) reloaded[n.substr(0, n.rfind('.'))] = t.shape();
  EXPECT_EQ(reloaded, shapes);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    Models, Ia3Export,
    ::testing::Values(
        Ia3Case{"bert-mini", {{"method", "ia3"}}}, Ia3Case{"gpt2-mini", {{"method", "ia3"}}},
        Ia3Case{"llama-mini", {{"method", "ia3"}}},
        Ia3Case{"gpt2-mini", {{"method", "ia3"}, {"targets", {"ffn.down"}}, {"feedforward", {"ffn.down"}}}},
        Ia3Case{"bert-mini",
                {{"method", "ia3"}, {"targets", {"ffn.up", "ffn.down", "attn.o"}}, {"layers", {1, 2}}}}),
    [](const auto& info) {
      return std::to_string(info.index) + "_" + info.param.model.substr(0, info.param.model.find('-'));
    });

// --- 2. base_model_name_or_path is the base's folder, never the model type ---

TEST(PeftExport, BaseModelNameIsTheFolderTheModelWasLoadedFrom) {
  const fs::path base = golden::model_dir("gpt2-mini");
  LoadOptions quiet;
  quiet.verbose = false;
  auto model = load_pretrained(base, quiet);
  auto d = delta::make_delta({{"method", "lora"}, {"targets", {"attn.q"}}});
  d->attach(*model);
  fs::path dir = temp_dir("base_name");
  delta::save_peft(dir / "peft", *d, *model);
  EXPECT_EQ(read_json(dir / "peft" / "adapter_config.json")["base_model_name_or_path"], base.string());
  delta::save_delta(dir / "ours", *d, *model);
  const json ours = read_json(dir / "ours" / "delta_config.json");
  EXPECT_EQ(ours["base_model"], base.string());
  EXPECT_EQ(ours["base_model_type"], "gpt2");

  // A model built from a config alone has no name: null, as PEFT writes it, not "gpt2" (a Hub id).
  ModelConfig unnamed = model->config;
  unnamed.raw.erase("_name_or_path");
  auto built = build_model(unnamed, HeadKind::CausalLM);
  auto d2 = delta::make_delta({{"method", "lora"}, {"targets", {"attn.q"}}});
  d2->attach(*built);
  delta::save_peft(dir / "built", *d2, *built);
  EXPECT_TRUE(read_json(dir / "built" / "adapter_config.json")["base_model_name_or_path"].is_null());
  fs::remove_all(dir);
}

TEST(PeftExport, TrainWritesTheModelFolderAsGivenInThePeftConfig) {
  fs::path run_dir = temp_dir("train_base_name");
  train_classifier(run_dir, "ia3");
  const json p = read_json(run_dir / "peft" / "adapter_config.json");
  EXPECT_EQ(p["base_model_name_or_path"], golden::model_dir("bert-mini").string());
  fs::remove_all(run_dir);
}

// --- 3. merging a classifier writes a ...ForSequenceClassification checkpoint ---

TEST(PeftExport, MergedClassifierLoadsAsOneWithItsLabelsAndLogits) {
  fs::path run_dir = temp_dir("merge_cls");
  train_classifier(run_dir, "lora");
  const fs::path out = run_dir / "merged";
  auto r = cli_test::run("merge --model " + model_arg("bert-mini") + " --delta " +
                         quote((run_dir / "delta").string()) + " --out " + quote(out.string()) +
                         " --dtype float32");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_merged_classifier(run_dir, out);
  for (auto& [name, t] : read_safetensors(out / "model.safetensors").tensors)
    EXPECT_EQ(t.dtype(), DType::F32) << name;
  EXPECT_EQ(read_json(out / "config.json")["dtype"], "float32");
  fs::remove_all(run_dir);
}

TEST(PeftExport, MergeKeepsTheBaseDtypeUnlessTold) {
  // bert-mini is stored in float16: a merged copy stays float16 (half the size of float32).
  const fs::path base = golden::model_dir("bert-mini");
  ASSERT_EQ(read_json(base / "config.json")["dtype"], "float16");
  fs::path dir = temp_dir("merge_dtype");
  std::ofstream(dir / "lora.json") << R"({"method": "lora", "targets": ["attn.q"]})";
  auto r = cli_test::run("merge --model " + quote(base.string()) + " --delta " +
                         quote((dir / "lora.json").string()) + " --out " + quote((dir / "half").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  for (auto& [name, t] : read_safetensors(dir / "half" / "model.safetensors").tensors)
    EXPECT_EQ(t.dtype(), DType::F16) << name;
  EXPECT_EQ(read_json(dir / "half" / "config.json")["dtype"], "float16");
  auto bf16 = cli_test::run("merge --model " + quote(base.string()) + " --delta " +
                            quote((dir / "lora.json").string()) + " --out " + quote((dir / "bf16").string()) +
                            " --dtype bfloat16");
  ASSERT_EQ(bf16.code, 0) << bf16.output;
  for (auto& [name, t] : read_safetensors(dir / "bf16" / "model.safetensors").tensors)
    EXPECT_EQ(t.dtype(), DType::BF16) << name;
  EXPECT_EQ(read_json(dir / "bf16" / "config.json")["dtype"], "bfloat16");
  // A dtype it does not know: one line, exit 2, nothing written.
  auto bad = cli_test::run("merge --model " + quote(base.string()) + " --delta " +
                           quote((dir / "lora.json").string()) + " --out " + quote((dir / "bad").string()) +
                           " --dtype float8");
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("--dtype 'float8'"), std::string::npos) << bad.output;
  EXPECT_FALSE(fs::exists(dir / "bad"));
  fs::remove_all(dir);
}

// A decoder classifier (GPT-2, Llama) is only usable in batches by transformers when its config names a
// pad token (it finds each row's last token through it): a merged one gets the end-of-text token when
// the base names none, as the usual recipe does; an encoder's config is left as it is.
TEST(PeftExport, MergedDecoderClassifierNamesAPadToken) {
  fs::path dir = temp_dir("merge_pad");
  for (const std::string name : {"gpt2-mini", "llama-mini", "bert-mini"}) {
    SCOPED_TRACE(name);
    const fs::path base = golden::model_dir(name);
    const json base_config = read_json(base / "config.json");
    LoadOptions options;
    options.verbose = false;
    options.head = HeadKind::SequenceClassification;
    options.num_labels = 2;
    auto model = load_pretrained(base, options);
    delta::CheckpointOptions checkpoint;
    checkpoint.labels = {"neg", "pos"};
    delta::save_checkpoint(*model, base, dir / name, checkpoint);
    const json written = read_json(dir / name / "config.json");
    if (name == "bert-mini")
      EXPECT_EQ(written["pad_token_id"], base_config["pad_token_id"]);
    else
      EXPECT_EQ(written["pad_token_id"], base_config["eos_token_id"]);
  }
  fs::remove_all(dir);
}

// --- 4. a full fine-tune exports as a normal checkpoint ---

TEST(PeftExport, FullFineTuneMergesIntoACheckpoint) {
  fs::path run_dir = temp_dir("merge_full");
  train_classifier(run_dir, "full");
  const fs::path out = run_dir / "merged";
  auto r = cli_test::run("merge --model " + model_arg("bert-mini") + " --delta " +
                         quote((run_dir / "delta").string()) + " --out " + quote(out.string()) +
                         " --dtype float32");
  ASSERT_EQ(r.code, 0) << r.output;
  expect_merged_classifier(run_dir, out);
  fs::remove_all(run_dir);
}

// --- 5. a delta for another architecture says so ---

TEST(PeftExport, DeltaForAnotherArchitectureSaysSo) {
  fs::path dir = temp_dir("other_arch");
  {
    LoadOptions quiet;
    quiet.verbose = false;
    auto bert = load_pretrained(golden::model_dir("bert-mini"), quiet);
    auto d = delta::make_delta({{"method", "lora"}, {"targets", {"attn.q", "attn.v"}}});
    d->attach(*bert);
    delta::save_delta(dir / "bert-lora", *d, *bert);
  }
  const std::string fingerprint = read_json(dir / "bert-lora" / "delta_config.json")["base_fingerprint"];
  auto check = [&](const std::string& command) {
    auto r = cli_test::run(command);
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_EQ(r.output.find("missing delta tensor"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("is a delta for a bert model"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("not for this llama model"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(fingerprint), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(golden::model_dir("bert-mini").string()), std::string::npos) << r.output;
  };
  const std::string llama = model_arg("llama-mini");
  check("inspect " + llama + " --delta " + quote((dir / "bert-lora").string()));
  check("merge --model " + llama + " --delta " + quote((dir / "bert-lora").string()) + " --out " +
        quote((dir / "out").string()));
  // A delta saved before base_model_type was recorded named the type as its base_model.
  json c = read_json(dir / "bert-lora" / "delta_config.json");
  c.erase("base_model_type");
  c["base_model"] = "bert";
  std::ofstream(dir / "bert-lora" / "delta_config.json") << c.dump();
  auto old = cli_test::run("inspect " + llama + " --delta " + quote((dir / "bert-lora").string()));
  EXPECT_EQ(old.code, 2) << old.output;
  EXPECT_NE(old.output.find("is a delta for a bert model"), std::string::npos) << old.output;
  fs::remove_all(dir);
}

TEST(PeftExport, FullRunForAnotherArchitectureSaysSo) {
  fs::path run_dir = temp_dir("full_other_arch");
  train_classifier(run_dir, "head");
  auto r = cli_test::run("merge --model " + model_arg("llama-mini") + " --delta " +
                         quote((run_dir / "delta").string()) + " --out " + quote((run_dir / "out").string()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("is a delta for a bert model"), std::string::npos) << r.output;
  fs::remove_all(run_dir);
}

// --- 6. "match no module" lists real module paths and the roles that apply ---

namespace {
std::string between(const std::string& s, const std::string& from, const std::string& to) {
  const size_t a = s.find(from);
  if (a == std::string::npos) return "";
  const size_t b = s.find(to, a + from.size());
  return s.substr(a + from.size(), b == std::string::npos ? std::string::npos : b - a - from.size());
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= s.size()) {
    size_t comma = s.find(", ", at);
    out.push_back(s.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
    if (comma == std::string::npos) break;
    at = comma + 2;
  }
  return out;
}
}  // namespace

class TargetingError : public ::testing::TestWithParam<std::string> {};

TEST_P(TargetingError, ListsRealModulePathsAndTheRolesThatApply) {
  auto model = golden::load_model(GetParam());
  auto d = delta::make_delta({{"method", "lora"}, {"targets", {"no_such_layer"}}});
  std::string message;
  try {
    d->attach(*model);
  } catch (const ConfigError& e) {
    message = e.what();
  }
  ASSERT_NE(message.find("match no linear module"), std::string::npos) << message;
  const std::vector<std::string> paths = split_list(between(message, "in layer 0: ", " (and the same"));
  ASSERT_GE(paths.size(), 4u) << message;
  for (const auto& p : paths) {
    nn::Module* m = model->find_module(p);
    ASSERT_NE(m, nullptr) << "'" << p << "' is not a module path: " << message;
    EXPECT_EQ(m->type_name(), "Linear") << p;
    EXPECT_EQ(delta::layer_index(*model, p), 0) << p;
  }
  const std::vector<std::string> roles = split_list(between(message, "; roles: ", ")"));
  ASSERT_GE(roles.size(), 6u) << message;
  for (const auto& role : roles) {  // each role listed selects a linear layer on this model
    auto r = delta::make_delta({{"method", "lora"}, {"targets", {role}}});
    EXPECT_NO_THROW(r->attach(*model)) << role << ": " << message;
    r->detach();
  }
  // Llama has a gated feed-forward; the others do not, and are not told they do.
  EXPECT_EQ(std::find(roles.begin(), roles.end(), "ffn.gate") != roles.end(), GetParam() == "llama-mini")
      << message;
}

INSTANTIATE_TEST_SUITE_P(Models, TargetingError, ::testing::Values("bert-mini", "gpt2-mini", "llama-mini"),
                         [](const auto& info) { return info.param.substr(0, info.param.find('-')); });
