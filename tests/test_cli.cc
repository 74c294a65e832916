// End-to-end tests of the `deltatune` command on the mini models.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>

#include "cli_run.h"
#include "golden.h"
#include "model_compare.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using cli_test::quote;
using cli_test::run;
using cli_test::run_with_env;

namespace {
fs::path temp_dir(const std::string& name) { return test_support::temp_dir("cli_" + name); }
std::string model(const std::string& name) { return quote(golden::model_dir(name).string()); }
// generate's output less the speed line it ends with on stderr (a time differs from run to run).
std::string without_speed(const std::string& output) {
  return std::regex_replace(output, std::regex("generated [0-9]+ tokens? in [^\n]*tokens/s[^\n]*\n"), "");
}
}  // namespace

TEST(Cli, HelpAndVersion) {
  auto help = run("--help");
  EXPECT_EQ(help.code, 0);
  for (const char* cmd : {"inspect", "tokenize", "forward", "generate"})
    EXPECT_NE(help.output.find(cmd), std::string::npos) << cmd;
  auto version = run("--version");
  EXPECT_EQ(version.code, 0);
  EXPECT_NE(version.output.find("deltatune"), std::string::npos);
  for (const char* cmd : {"inspect", "tokenize", "forward", "generate"}) {
    auto r = run(std::string(cmd) + " --help");
    EXPECT_EQ(r.code, 0) << cmd;
    EXPECT_NE(r.output.find("Usage"), std::string::npos) << cmd;
  }
}

// Once, not twice: CLI11 copies a parent's footer into the commands added after it is set.
static int count_of(const std::string& text, const std::string& what) {
  int n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(Cli, EveryHelpListsTheExitCodesOnce) {
  const std::string codes = "Exit codes: 0 done; 2 bad input";
  auto help = run("--help");
  EXPECT_EQ(count_of(help.output, codes), 1) << help.output;
  for (const char* cmd :
       {"train", "eval", "predict", "generate", "combine", "sweep", "merge", "forward", "bench"}) {
    auto r = run(std::string(cmd) + " --help");
    EXPECT_EQ(r.code, 0) << cmd;
    EXPECT_EQ(count_of(r.output, codes), 1) << cmd << "\n" << r.output;
  }
}

TEST(Cli, InspectFoldsRepeatedLayers) {
  auto r = run("inspect " + model("bert-mini"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("bert: 4 layers"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("0-3 ×4"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("query (Linear) weight:[256, 256] bias:[256]"), std::string::npos) << r.output;
  auto llama = run("inspect " + model("llama-mini"));
  ASSERT_EQ(llama.code, 0) << llama.output;
  EXPECT_NE(llama.output.find("k_proj (Linear) weight:[128, 256]"), std::string::npos) << llama.output;
}

TEST(Cli, ForwardMatchesGolden) {
  for (const std::string name : {"gpt2-mini", "bert-mini", "llama-mini"}) {
    auto expected = golden::outputs(name + "-base");
    auto c = golden::find_case(name + "-base");
    fs::path dir = temp_dir("forward_" + name);
    nlohmann::json in;
    in["input_ids"] = expected.tensors.at("input_ids").to_ints();
    const int64_t B = expected.tensors.at("input_ids").size(0), T = expected.tensors.at("input_ids").size(1);
    auto ids = expected.tensors.at("input_ids").to_ints();
    auto mask = expected.tensors.at("attention_mask").to_ints();
    nlohmann::json rows = nlohmann::json::array(), mrows = nlohmann::json::array();
    for (int64_t b = 0; b < B; ++b) {
      rows.push_back(std::vector<int64_t>(ids.begin() + b * T, ids.begin() + (b + 1) * T));
      mrows.push_back(std::vector<int64_t>(mask.begin() + b * T, mask.begin() + (b + 1) * T));
    }
    std::ofstream(dir / "in.json") << nlohmann::json{{"input_ids", rows}, {"attention_mask", mrows}}.dump();
    auto r = run("forward --model " + model(name) + " --input " + quote((dir / "in.json").string()) +
                 " --output " + quote((dir / "out.safetensors").string()));
    ASSERT_EQ(r.code, 0) << r.output;
    auto out = deltatune::read_safetensors(dir / "out.safetensors");
    deltatune::ModelOutput mo;
    mo.logits = out.tensors.at("logits");
    mo.last_hidden_state = out.tensors.at("last_hidden_state");
    EXPECT_EQ(mo.logits.dtype(), deltatune::DType::F32);
    auto cmp = golden::compare(mo, expected);
    EXPECT_LT(cmp.max_logits, 1e-4) << name;
    EXPECT_LT(cmp.max_hidden, 1e-4) << name;
    EXPECT_GT(cmp.positions, 50);
  }
}

TEST(Cli, GenerateContinuesAPrompt) {
  auto greedy =
      run("generate --model " + model("gpt2-mini") + " --prompt 'Call me Ishmael.' --max-new-tokens 8");
  ASSERT_EQ(greedy.code, 0) << greedy.output;
  EXPECT_EQ(greedy.output.rfind("Call me Ishmael.", 0), 0u) << greedy.output;
  EXPECT_GT(greedy.output.size(), std::string("Call me Ishmael.\n").size());
  auto again =
      run("generate --model " + model("gpt2-mini") + " --prompt 'Call me Ishmael.' --max-new-tokens 8");
  EXPECT_EQ(without_speed(greedy.output), without_speed(again.output));  // greedy is deterministic
  auto a = run(
      "generate --model " + model("llama-mini") +
      " --prompt 'The sea' --sample --temperature 0.8 --top-k 40 --top-p 0.9 --seed 3 --max-new-tokens 10");
  auto b = run(
      "generate --model " + model("llama-mini") +
      " --prompt 'The sea' --sample --temperature 0.8 --top-k 40 --top-p 0.9 --seed 3 --max-new-tokens 10");
  ASSERT_EQ(a.code, 0) << a.output;
  EXPECT_EQ(without_speed(a.output), without_speed(b.output));  // the same seed samples the same text
}

// The four model commands on each mini model: inspect and tokenize everywhere, forward everywhere (see
// ForwardMatchesGolden), generate on the decoders and a clear refusal on the encoder.
TEST(Cli, FourCommandsOnEveryMiniModel) {
  for (const std::string name : {"bert-mini", "gpt2-mini", "llama-mini"}) {
    auto inspect = run("inspect " + model(name));
    ASSERT_EQ(inspect.code, 0) << name << inspect.output;
    EXPECT_NE(inspect.output.find("4 layers"), std::string::npos) << inspect.output;
    auto tokens = run("tokenize --model " + model(name) + " --text 'Hello world'");
    ASSERT_EQ(tokens.code, 0) << name << tokens.output;
    auto j = nlohmann::json::parse(tokens.output);
    EXPECT_EQ(j["ids"].size(), j["tokens"].size()) << name;
    EXPECT_GE(j["ids"].size(), 2u) << name;
    auto gen = run("generate --model " + model(name) + " --prompt 'Hello' --max-new-tokens 4");
    if (name == "bert-mini") {
      EXPECT_EQ(gen.code, 2) << gen.output;
      EXPECT_NE(gen.output.find("causal LM"), std::string::npos) << gen.output;
    } else {
      ASSERT_EQ(gen.code, 0) << name << gen.output;
      EXPECT_EQ(gen.output.rfind("Hello", 0), 0u) << gen.output;
    }
  }
}

TEST(Cli, CorruptInputsGiveOneLineAndExitCode2) {
  fs::path dir = temp_dir("corrupt");
  // A checkpoint whose safetensors file is truncated.
  fs::create_directories(dir / "truncated");
  fs::copy_file(golden::model_dir("gpt2-mini") / "config.json", dir / "truncated" / "config.json");
  {
    std::ifstream src(golden::model_dir("gpt2-mini") / "model.safetensors", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(src)), {});
    std::ofstream(dir / "truncated" / "model.safetensors", std::ios::binary)
        << bytes.substr(0, bytes.size() / 2);
  }
  auto r = run("inspect " + quote((dir / "truncated").string()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("model.safetensors"), std::string::npos) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  // A config without hidden_size.
  fs::create_directories(dir / "nohidden");
  std::ofstream(dir / "nohidden" / "config.json")
      << R"({"model_type": "bert", "num_hidden_layers": 2, "vocab_size": 100})";
  r = run("inspect " + quote((dir / "nohidden").string()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("hidden_size"), std::string::npos) << r.output;
  // An empty tokenizer folder.
  fs::create_directories(dir / "empty");
  r = run("tokenize --model " + quote((dir / "empty").string()) + " --text hi");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("empty"), std::string::npos) << r.output;
  // Bad forward input.
  std::ofstream(dir / "bad.json") << R"({"input_ids": [[1, 2], [3]]})";
  r = run("forward --model " + model("gpt2-mini") + " --input " + quote((dir / "bad.json").string()) +
          " --output " + quote((dir / "o.safetensors").string()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("row 1"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "o.safetensors"));
}

TEST(Cli, InspectMarksADeltaAndCountsTrainable) {
  fs::path dir = temp_dir("inspect_delta");
  std::ofstream(dir / "lora.json")
      << R"({"method": "lora", "r": 4, "targets": ["attn.q", "attn.v"], "layers": [2, 3]})";
  auto r = run("inspect " + model("bert-mini") + " --delta " + quote((dir / "lora.json").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("0-1 ×2"), std::string::npos) << r.output;  // layers without the delta fold
  EXPECT_NE(r.output.find("query (Linear) weight:[256, 256] bias:[256]  65.8K  [lora]"), std::string::npos)
      << r.output;
  // 2 layers x 2 modules x (4x256 + 256x4) = 8192 trainable parameters.
  EXPECT_NE(r.output.find("trainable 8,192 of 5,470,976"), std::string::npos) << r.output;
  auto golden_dir = quote((golden::dir() / "adapters/llama-lora-qv").string());
  auto peft = run("inspect " + model("llama-mini") + " --delta " + golden_dir);
  ASSERT_EQ(peft.code, 0) << peft.output;
  EXPECT_NE(peft.output.find("q_proj (Linear) weight:[256, 256]  65.5K  [lora]"), std::string::npos)
      << peft.output;
  std::ofstream(dir / "bad.json") << R"({"method": "lora", "targets": ["nonexistent"]})";
  auto bad = run("inspect " + model("bert-mini") + " --delta " + quote((dir / "bad.json").string()));
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("match no"), std::string::npos) << bad.output;
}

// The OpenMP runtime reports how it was configured (OMP_DISPLAY_ENV=VERBOSE prints it at start-up);
// the last report is the one of the process that runs the command.
namespace {
std::string last_spin_count(const std::string& output) {
  const std::string key = "GOMP_SPINCOUNT = '";
  const size_t at = output.rfind(key);
  if (at == std::string::npos) return "";
  return output.substr(at + key.size(), output.find('\'', at + key.size()) - at - key.size());
}
}  // namespace

TEST(Cli, IdleThreadsSleepUnlessTheUserChoseAWaitPolicy) {
  // Busy-waiting OpenMP threads take the cores other work needs: by itself the program must run with
  // the passive policy (no spinning), whatever starts it.
  auto chosen_by_us =
      run_with_env("env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT OMP_DISPLAY_ENV=VERBOSE", "--version");
  ASSERT_EQ(chosen_by_us.code, 0) << chosen_by_us.output;
  EXPECT_EQ(last_spin_count(chosen_by_us.output), "0") << chosen_by_us.output;
  EXPECT_NE(chosen_by_us.output.find("deltatune"), std::string::npos);
  // A policy the user set is theirs.
  auto chosen_by_user = run_with_env("env OMP_WAIT_POLICY=active OMP_DISPLAY_ENV=VERBOSE", "--version");
  ASSERT_EQ(chosen_by_user.code, 0) << chosen_by_user.output;
  EXPECT_NE(last_spin_count(chosen_by_user.output), "0") << chosen_by_user.output;
  EXPECT_NE(last_spin_count(chosen_by_user.output), "") << chosen_by_user.output;
}
