// The commands as a new user meets them (issue 12): generation's text and limits, forward on texts,
// tokenize's batch file, inspect's flag, one spelling of output and thread flags, the README's commands.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "cli_run.h"
#include "deltatune/error.h"
#include "deltatune/generate.h"
#include "deltatune/tokenizer.h"
#include "golden.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using cli_test::quote;
using cli_test::run;
using deltatune::Tokenizer;
using nlohmann::json;

namespace {

fs::path temp_dir(const std::string& name) { return test_support::temp_dir("commands_" + name); }
std::string model(const std::string& name) { return quote(golden::model_dir(name).string()); }

// stdout and stderr apart (cli_test::run merges them): generate's speed line goes to stderr only.
struct SplitResult {
  int code = -1;
  std::string out, err;
};

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// Runs a shell command line; its stdout and stderr land in files in `scratch`.
SplitResult run_shell(const std::string& line, const fs::path& scratch) {
  const fs::path err = scratch / "stderr.txt", out = scratch / "stdout.txt";
  const std::string command = "(" + line + "\n) >" + quote(out.string()) + " 2>" + quote(err.string());
  const int status = std::system(command.c_str());
  SplitResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_text(out);
  r.err = read_text(err);
  return r;
}

SplitResult run_split(const std::string& args, const fs::path& scratch) {
  return run_shell(std::string(DELTATUNE_BINARY) + " " + args, scratch);
}

json golden_tokenizers() {
  std::ifstream in(golden::dir() / "tokenizers.json");
  return json::parse(in);
}

std::string ascii_lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::vector<int64_t> concat(std::vector<int64_t> a, const std::vector<int64_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The greedy continuation `generate` prints for `prompt`, computed with the library as the command does.
std::vector<int64_t> greedy_ids(const std::string& name, const std::vector<int64_t>& prompt,
                                int64_t new_tokens, const Tokenizer& tokenizer) {
  deltatune::LoadOptions options;
  options.verbose = false;
  options.head = deltatune::HeadKind::CausalLM;
  auto m = deltatune::load_pretrained(golden::model_dir(name), options);
  deltatune::GenerationOptions g;
  g.max_new_tokens = new_tokens;
  g.eos_ids = m->config.eos_token_ids;
  if (tokenizer.eos_id() >= 0) g.eos_ids.push_back(tokenizer.eos_id());
  return deltatune::generate(*m, prompt, g);
}

// A help text names the flag itself, not only a longer flag starting with it (--out vs --output).
bool names_flag(const std::string& help, const std::string& flag) {
  return std::regex_search(help, std::regex(flag + "(?![-A-Za-z])"));
}

}  // namespace

// --- 1. a continuation is decoded in its prompt's context ---------------------------------------------

// Every golden text split into a prompt and a continuation at every token: the continuation decoded in
// the prompt's context is the text after the prompt's own text (the reference is transformers' ids for
// the text, and the text itself; the uncased BERT's reference is the lowercased text).
TEST(CommandsDecode, ContinuationInContextIsTheGoldenTextAfterThePrompt) {
  const json all = golden_tokenizers();
  for (const std::string name : {"llama-mini", "gpt2-mini", "bert-mini"}) {
    const auto tokenizer = Tokenizer::load(golden::model_dir(name));
    int checked = 0, alone_differs = 0;
    for (const json& entry : all[name]) {
      const std::vector<int64_t> ids = entry["ids"].get<std::vector<int64_t>>();
      const std::string text =
          name == "bert-mini" ? ascii_lower(entry["text"]) : entry["text"].get<std::string>();
      if (ids.size() < 3 || tokenizer->decode(ids) != text) continue;  // texts the decoder does not restore
      for (size_t k = 1; k < ids.size(); ++k) {
        const std::vector<int64_t> prompt(ids.begin(), ids.begin() + long(k)),
            rest(ids.begin() + long(k), ids.end());
        const std::string head = tokenizer->decode(prompt);
        if (text.compare(0, head.size(), head) != 0) continue;  // a cleanup rule spans the seam
        const std::string expected = text.substr(head.size());
        EXPECT_EQ(tokenizer->decode_continuation(prompt, rest), expected)
            << name << " split at " << k << ": " << text;
        alone_differs += tokenizer->decode(rest) != expected;
        ++checked;
      }
    }
    EXPECT_GT(checked, 50) << name;
    // Decoding the continuation alone (the old way) loses SentencePiece's spaces and WordPiece's joins.
    if (name != "gpt2-mini") EXPECT_GT(alone_differs, 10) << name;
  }
}

// `generate` prints exactly the text of prompt and continuation decoded together ("I am a", not "I ama").
TEST(CommandsGenerate, LlamaContinuationKeepsTheSpaceBeforeTheFirstNewWord) {
  const fs::path dir = temp_dir("llama_space");
  const auto tokenizer = Tokenizer::load(golden::model_dir("llama-mini"));
  const std::string prompt_text = "I am";
  const std::vector<int64_t> prompt = tokenizer->encode(prompt_text).ids;
  const std::vector<int64_t> produced = greedy_ids("llama-mini", prompt, 6, *tokenizer);
  const std::string whole = tokenizer->decode(concat(prompt, produced));
  ASSERT_EQ(whole.rfind(prompt_text, 0), 0u) << whole;
  ASSERT_NE(prompt_text + tokenizer->decode(produced), whole) << "this prompt does not show the lost space";
  const SplitResult r =
      run_split("generate --model " + model("llama-mini") + " --prompt 'I am' --max-new-tokens 6", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, whole + "\n");
}

// --- 2. GPT-2 stops at n_positions --------------------------------------------------------------------

TEST(CommandsGenerate, Gpt2StopsAtItsContextLimit) {
  auto gpt2 = golden::load_model("gpt2-mini");
  const int64_t limit = gpt2->config.max_position_embeddings;
  const std::vector<int64_t> prompt(size_t(limit - 5), 264);  // " the" again and again
  deltatune::GenerationOptions options;
  options.max_new_tokens = 20;
  const deltatune::Generation g = deltatune::generate_with_stop(*gpt2, prompt, options);
  EXPECT_EQ(g.stop, deltatune::StopReason::ContextLimit);
  EXPECT_EQ(int64_t(g.ids.size()), 5);  // prompt and continuation fill the positions exactly
  options.max_new_tokens = 3;
  EXPECT_EQ(deltatune::generate_with_stop(*gpt2, prompt, options).stop, deltatune::StopReason::MaxNewTokens);
  EXPECT_THROW(deltatune::generate_with_stop(*gpt2, std::vector<int64_t>(size_t(limit), 264), options),
               deltatune::ConfigError);

  // The command: the text so far, and a note on stderr instead of an error mid-stream.
  const fs::path dir = temp_dir("gpt2_limit");
  std::string long_prompt;
  for (int i = 0; i < 100; ++i) long_prompt += "the whale and the sea ";
  const auto tokenizer = Tokenizer::load(golden::model_dir("gpt2-mini"));
  const int64_t prompt_tokens = int64_t(tokenizer->encode(long_prompt).size());
  ASSERT_LT(prompt_tokens, limit - 8);
  ASSERT_GT(prompt_tokens, limit - 100);
  const SplitResult r = run_split(
      "generate --model " + model("gpt2-mini") + " --prompt " + quote(long_prompt) + " --max-new-tokens 200",
      dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind(long_prompt, 0), 0u);
  EXPECT_NE(r.err.find("context limit (" + std::to_string(limit) + " positions)"), std::string::npos)
      << r.err;
  const std::regex count("generated ([0-9]+) tokens? in");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.err, m, count)) << r.err;
  EXPECT_EQ(std::stoll(m[1]), limit - prompt_tokens) << r.err;
  // A prompt with no room left: one clear line, exit 2.
  std::string too_long;
  for (int i = 0; i < 140; ++i) too_long += "the whale and the sea ";
  const SplitResult refused =
      run_split("generate --model " + model("gpt2-mini") + " --prompt " + quote(too_long), dir);
  EXPECT_EQ(refused.code, 2) << refused.err;
  EXPECT_NE(refused.err.find("positions"), std::string::npos) << refused.err;
  EXPECT_EQ(std::count(refused.err.begin(), refused.err.end(), '\n'), 1) << refused.err;
}

// --- 3. generate's speed ------------------------------------------------------------------------------

TEST(CommandsGenerate, PrintsTokensPerSecondOnStderr) {
  const fs::path dir = temp_dir("speed");
  const SplitResult r = run_split(
      "generate --model " + model("gpt2-mini") + " --prompt 'Call me Ishmael.' --max-new-tokens 5", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.err, m,
                                std::regex("generated ([0-9]+) tokens? in [0-9.]+ s \\(([0-9.]+) tokens/s")))
      << r.err;
  EXPECT_GE(std::stoi(m[1]), 1);
  EXPECT_LE(std::stoi(m[1]), 5);
  EXPECT_EQ(r.out.find("tokens/s"), std::string::npos) << r.out;  // stdout holds the text alone
}

// --- 4. forward on texts; tokenize writes forward's input ---------------------------------------------

// Two golden texts three ways: tokenize --output then forward --input, forward --text, and forward on a
// .jsonl of texts. The ids file holds transformers' ids for the texts; the three outputs are identical.
TEST(CommandsForward, TakesTextsAndTokenizeWritesItsInput) {
  const json all = golden_tokenizers();
  for (const std::string name : {"bert-mini", "gpt2-mini", "llama-mini"}) {
    const fs::path dir = temp_dir("forward_texts_" + name);
    const json a = all[name][0], b = all[name][1];
    const std::string text_a = a["text"], text_b = b["text"];
    const std::string texts = " --text " + quote(text_a) + " --text " + quote(text_b);
    auto tok =
        run("tokenize --model " + model(name) + texts + " --output " + quote((dir / "ids.json").string()));
    ASSERT_EQ(tok.code, 0) << tok.output;
    const json ids = json::parse(read_text(dir / "ids.json"));
    ASSERT_EQ(ids["input_ids"].size(), 2u);
    const size_t width = std::max(a["ids"].size(), b["ids"].size());
    for (size_t row = 0; row < 2; ++row) {
      const json& expected = row == 0 ? a["ids"] : b["ids"];
      ASSERT_EQ(ids["input_ids"][row].size(), width) << name;
      for (size_t i = 0; i < width; ++i) {
        const bool real = i < expected.size();
        EXPECT_EQ(ids["attention_mask"][row][i].get<int64_t>(), real ? 1 : 0) << name << " row " << row;
        if (real)
          EXPECT_EQ(ids["input_ids"][row][i], expected[i]) << name << " row " << row << " position " << i;
      }
    }
    {
      std::ofstream jsonl(dir / "texts.jsonl");
      jsonl << json{{"text", text_a}}.dump() << "\n" << json{{"text", text_b}}.dump() << "\n";
    }
    auto from_ids = run("forward --model " + model(name) + " --input " + quote((dir / "ids.json").string()) +
                        " --output " + quote((dir / "ids.safetensors").string()));
    ASSERT_EQ(from_ids.code, 0) << from_ids.output;
    auto from_text = run("forward --model " + model(name) + texts + " --output " +
                         quote((dir / "text.safetensors").string()));
    ASSERT_EQ(from_text.code, 0) << from_text.output;
    auto from_jsonl =
        run("forward --model " + model(name) + " --input " + quote((dir / "texts.jsonl").string()) +
            " --output " + quote((dir / "jsonl.safetensors").string()));
    ASSERT_EQ(from_jsonl.code, 0) << from_jsonl.output;
    const auto reference = deltatune::read_safetensors(dir / "ids.safetensors");
    for (const char* file : {"text.safetensors", "jsonl.safetensors"}) {
      const auto other = deltatune::read_safetensors(dir / file);
      for (const char* tensor : {"logits", "last_hidden_state"}) {
        EXPECT_EQ(other.tensors.at(tensor).shape(), reference.tensors.at(tensor).shape())
            << name << " " << file;
        EXPECT_EQ(other.tensors.at(tensor).to_floats(), reference.tensors.at(tensor).to_floats())
            << name << " " << file;
      }
    }
  }
  // Neither ids nor texts, or ids and texts at once: one clear line, exit 2.
  const fs::path dir = temp_dir("forward_bad");
  auto none =
      run("forward --model " + model("gpt2-mini") + " --output " + quote((dir / "o.safetensors").string()));
  EXPECT_EQ(none.code, 2) << none.output;
  std::ofstream(dir / "ids.json") << R"({"input_ids": [[1, 2]]})";
  auto both = run("forward --model " + model("gpt2-mini") + " --input " + quote((dir / "ids.json").string()) +
                  " --text hi --output " + quote((dir / "o.safetensors").string()));
  EXPECT_EQ(both.code, 2) << both.output;
  EXPECT_EQ(std::count(both.output.begin(), both.output.end(), '\n'), 1) << both.output;
}

// README.md's "Commands" block, run line by line as written in a folder that looks like a fresh clone
// (assets/ and tests/ of the source tree, `build/deltatune` the binary under test).
TEST(CommandsReadme, EveryCommandRunsAsWritten) {
  const fs::path source = fs::path(DELTATUNE_ASSETS).parent_path();
  const std::string readme = read_text(source / "README.md");
  const size_t section = readme.find("## Commands");
  ASSERT_NE(section, std::string::npos);
  const size_t start = readme.find("```sh\n", section), end = readme.find("```", start + 6);
  ASSERT_NE(start, std::string::npos);
  std::istringstream block(readme.substr(start + 6, end - start - 6));
  std::vector<std::string> commands;
  std::string line, pending;
  while (std::getline(block, line)) {
    pending += line;
    if (!line.empty() && line.back() == '\\') {
      pending.pop_back();
      continue;
    }
    if (pending.find_first_not_of(' ') != std::string::npos) commands.push_back(pending);
    pending.clear();
  }
  ASSERT_GE(commands.size(), 8u);
  const fs::path clone = temp_dir("readme");
  fs::create_directory_symlink(source / "assets", clone / "assets");
  fs::create_directory_symlink(source / "tests", clone / "tests");
  fs::create_directories(clone / "build");
  fs::create_symlink(DELTATUNE_BINARY, clone / "build" / "deltatune");
  for (const std::string& command : commands) {
    const SplitResult r = run_shell("cd " + quote(clone.string()) + " && " + command, clone);
    EXPECT_EQ(r.code, 0) << command << "\n" << r.err;
  }
}

// --- 5. inspect --model -------------------------------------------------------------------------------

TEST(CommandsInspect, ModelFlagWorksAsThePositional) {
  auto flag = run("inspect --model " + model("bert-mini"));
  ASSERT_EQ(flag.code, 0) << flag.output;
  EXPECT_EQ(flag.output, run("inspect " + model("bert-mini")).output);
  auto none = run("inspect");
  EXPECT_EQ(none.code, 2) << none.output;
  EXPECT_NE(none.output.find("model folder"), std::string::npos) << none.output;
}

// --- 6. --out / --output and --threads everywhere -----------------------------------------------------

TEST(CommandsOptions, OutAndOutputAreBothAccepted) {
  for (const char* command :
       {"train", "eval", "predict", "forward", "tokenize", "gates", "merge", "combine", "sweep"}) {
    auto help = run(std::string(command) + " --help");
    ASSERT_EQ(help.code, 0) << command;
    EXPECT_TRUE(names_flag(help.output, "--out")) << command << help.output;
    EXPECT_TRUE(names_flag(help.output, "--output")) << command << help.output;
  }
  // The other spelling at work: a file named with --out, a folder with --output.
  const fs::path dir = temp_dir("aliases");
  auto forward = run("forward --model " + model("gpt2-mini") + " --text hello --out " +
                     quote((dir / "o.safetensors").string()));
  ASSERT_EQ(forward.code, 0) << forward.output;
  EXPECT_TRUE(fs::exists(dir / "o.safetensors"));
  auto merge = run("merge --model " + model("llama-mini") + " --delta " +
                   quote((golden::dir() / "adapters/llama-lora-qv").string()) + " --output " +
                   quote((dir / "merged").string()));
  ASSERT_EQ(merge.code, 0) << merge.output;
  EXPECT_TRUE(fs::exists(dir / "merged" / "config.json"));
}

TEST(CommandsOptions, ThreadsOnEveryCommandThatComputes) {
  for (const char* command :
       {"train", "eval", "predict", "forward", "generate", "gates", "merge", "combine", "sweep", "bench"}) {
    auto help = run(std::string(command) + " --help");
    ASSERT_EQ(help.code, 0) << command;
    EXPECT_TRUE(names_flag(help.output, "--threads")) << command << help.output;
  }
  const fs::path dir = temp_dir("threads");
  auto forward = run("forward --model " + model("bert-mini") + " --text hello --threads 1 --output " +
                     quote((dir / "o.safetensors").string()));
  EXPECT_EQ(forward.code, 0) << forward.output;
  auto gen = run("generate --model " + model("gpt2-mini") + " --prompt hi --max-new-tokens 2 --threads 1");
  EXPECT_EQ(gen.code, 0) << gen.output;
  auto zero = run("generate --model " + model("gpt2-mini") + " --prompt hi --threads 0");
  EXPECT_NE(zero.code, 0) << zero.output;
}

// --- 7. the synthetic `demo` subcommand is gone (`make demo` runs the real main job) ------------------

TEST(CommandsDemo, SyntheticDemoSubcommandIsGone) {
  auto help = run("--help");
  ASSERT_EQ(help.code, 0);
  EXPECT_FALSE(std::regex_search(help.output, std::regex("\\n\\s+demo\\s"))) << help.output;
  EXPECT_NE(run("demo").code, 0);
}
