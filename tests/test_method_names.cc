// One set of method names for every command: the method table (include/deltatune/method_presets.h)
// has every delta method, full/head/none and the sweep's presets; `train` and `sweep` take the same
// names with the same delta configs and learning rates; LoRA's alpha means one thing in the flag, the
// table and a delta config; an unknown name lists every accepted one; sweep.cc compiles cleanly.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>

#include "cli_run.h"
#include "deltatune/delta.h"
#include "deltatune/error.h"
#include "deltatune/method_presets.h"
#include "deltatune/sweep.h"
#include "temp_dir.h"

using namespace deltatune;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kModel = fs::path(DELTATUNE_ASSETS) / "models/bert-mini";
const fs::path kSentiment = fs::path(DELTATUNE_ASSETS) / "tasks/sentiment";

std::string read(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}
json read_json(const fs::path& p) { return json::parse(read(p)); }

// A task folder of the first 8 sentiment training examples: a training run of one step takes a second.
fs::path tiny_task(const fs::path& dir) {
  fs::create_directories(dir);
  std::ifstream in(kSentiment / "train.jsonl");
  std::ofstream out(dir / "train.jsonl");
  std::string line;
  for (int i = 0; i < 8 && std::getline(in, line); ++i) out << line << "\n";
  return dir;
}

// `deltatune train` for one step on the tiny task into `out`; extra flags appended.
cli_test::Result train_one_step(const fs::path& task, const fs::path& out, const std::string& flags) {
  return cli_test::run("train --model " + cli_test::quote(kModel.string()) + " --data " +
                       cli_test::quote(task.string()) + " --out " + cli_test::quote(out.string()) +
                       " --max-steps 1 --batch-size 4 --max-length 16 --quiet " + flags);
}

json trained_delta_config(const fs::path& run) {
  return read_json(run / "delta" / "delta_config.json")["delta"];
}

train::SweepOptions tiny_sweep(const fs::path& out, std::vector<std::string> methods) {
  train::SweepOptions o;
  o.model_dir = kModel;
  o.out_dir = out;
  o.tasks = {kSentiment};
  o.methods = std::move(methods);
  o.k_shots = {8};
  o.seeds = {1};
  o.batch_size = 4;
  o.max_length = 16;
  o.epochs = 1;
  o.max_steps = 1;
  o.max_dev = 4;
  o.max_test = 8;
  o.progress = false;
  return o;
}

// The words of a message (names are separated by commas, spaces, semicolons, colons, brackets).
std::set<std::string> words(const std::string& text) {
  std::set<std::string> out;
  std::string word;
  for (char c : text) {
    if (std::string(" ,;:()'\"[]{}\n").find(c) != std::string::npos) {
      if (!word.empty()) out.insert(word);
      word.clear();
    } else {
      word += c;
    }
  }
  if (!word.empty()) out.insert(word);
  return out;
}

}  // namespace

TEST(MethodNames, TheTableHasEveryDeltaMethodFullHeadNoneAndTheSweepPresets) {
  for (const auto& name : delta::supported_methods()) {
    const MethodPreset* m = find_method_preset(name);
    ASSERT_NE(m, nullptr) << name;
    EXPECT_EQ(m->trains, MethodPreset::Trains::Delta) << name;
    EXPECT_EQ(m->delta_config["method"], name);
  }
  EXPECT_EQ(method_preset("full").trains, MethodPreset::Trains::Full);
  EXPECT_EQ(method_preset("head").trains, MethodPreset::Trains::Head);
  EXPECT_EQ(method_preset("none").trains, MethodPreset::Trains::Head);
  for (const char* name : {"full", "head", "none"})
    EXPECT_TRUE(method_preset(name).delta_config.is_null()) << name;
  EXPECT_EQ(method_preset("houlsby").delta_config["variant"], "houlsby");
  EXPECT_EQ(method_preset("pfeiffer").delta_config["variant"], "pfeiffer");
  EXPECT_EQ(method_preset("unipelt-ap").delta_config["variant"], "AP");
  EXPECT_EQ(method_preset("unipelt-apl").delta_config["variant"], "APL");
  for (const auto& name : train::default_sweep_methods())
    EXPECT_NE(find_method_preset(name), nullptr) << name;
  std::set<std::string> seen;
  for (const auto& m : method_presets()) {
    EXPECT_TRUE(seen.insert(m.name).second) << "twice: " << m.name;
    EXPECT_GT(m.lr, 0) << m.name;
    EXPECT_FALSE(m.description.empty()) << m.name;
    // Every delta preset builds as it is, except a combination, which needs its members listed.
    if (m.trains == MethodPreset::Trains::Delta && m.name != "combination")
      EXPECT_NO_THROW(delta::make_delta(m.delta_config)) << m.name;
  }
}

TEST(MethodNames, TrainTakesTheSweepsPresetNames) {
  const fs::path dir = test_support::temp_dir("names_train_presets");
  const fs::path task = tiny_task(dir / "task");
  for (const char* name : {"houlsby", "pfeiffer", "unipelt-ap"}) {
    const fs::path run = dir / name;
    auto r = train_one_step(task, run, std::string("--method ") + name);
    ASSERT_EQ(r.code, 0) << name << ": " << r.output;
    json saved = trained_delta_config(run);
    const json& preset = method_preset(name).delta_config;
    EXPECT_EQ(saved["method"], preset["method"]) << name;
    EXPECT_EQ(saved["variant"], preset["variant"]) << name;
    EXPECT_EQ(read_json(run / "train_config.json")["lr"].get<double>(), method_preset(name).lr) << name;
  }
  fs::remove_all(dir);
}

TEST(MethodNames, SweepTakesTrainsNames) {
  const fs::path out = test_support::temp_dir("names_sweep_train_names");
  train::SweepOptions o = tiny_sweep(out, {"adapter", "head", "unipelt"});
  train::SweepReport r = train::run_sweep(o);
  EXPECT_EQ(r.ran, 3);
  EXPECT_EQ(r.failed, 0) << (r.failures.empty() ? "" : r.failures[0]);
  for (const auto& run : train::sweep_plan(o)) {
    json s = read_json(run.dir / "summary.json");
    EXPECT_EQ(s["lr"].get<double>(), method_preset(run.method).lr) << run.method;
    EXPECT_EQ(s["delta_config"], method_preset(run.method).delta_config) << run.method;
  }
  // The head alone trains fewer parameters than the head with an adapter.
  const auto plan = train::sweep_plan(o);
  EXPECT_LT(read_json(plan[1].dir / "summary.json")["trainable_params"].get<int64_t>(),
            read_json(plan[0].dir / "summary.json")["trainable_params"].get<int64_t>());
  fs::remove_all(out);
}

TEST(MethodNames, TrainAndSweepGiveANameTheSameLearningRateAndConfig) {
  const fs::path dir = test_support::temp_dir("names_same_lr");
  const fs::path task = tiny_task(dir / "task");
  train::SweepOptions o = tiny_sweep(dir / "sweep", {"full", "lora"});
  train::SweepReport report = train::run_sweep(o);
  ASSERT_EQ(report.failed, 0) << report.failures[0];
  for (const auto& cell : train::sweep_plan(o)) {
    const json swept = read_json(cell.dir / "summary.json");
    const fs::path run = dir / ("train_" + cell.method);
    auto r = train_one_step(task, run, "--method " + cell.method);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(read_json(run / "train_config.json")["lr"].get<double>(), swept["lr"].get<double>())
        << cell.method;
    if (cell.method == "lora") {
      const json trained = trained_delta_config(run);
      for (const char* key : {"r", "alpha", "targets"})
        EXPECT_EQ(trained[key], swept["delta_config"][key]) << key;
    }
  }
  fs::remove_all(dir);
}

TEST(MethodNames, LoraAlphaMeansOneThingInTheFlagTheTableAndADeltaConfig) {
  const fs::path dir = test_support::temp_dir("names_lora_alpha");
  const fs::path task = tiny_task(dir / "task");
  const double library_default = delta::make_delta({{"method", "lora"}})->config()["alpha"].get<double>();
  const double table_default = method_preset("lora").delta_config["alpha"].get<double>();
  auto alpha_of = [&](const std::string& name, const std::string& flags, const std::string& config = "") {
    if (!config.empty()) std::ofstream(dir / (name + ".json")) << config;
    const std::string with_config =
        config.empty() ? "" : " --delta-config " + cli_test::quote((dir / (name + ".json")).string());
    auto r = train_one_step(task, dir / name, flags + with_config);
    EXPECT_EQ(r.code, 0) << name << ": " << r.output;
    return r.code == 0 ? trained_delta_config(dir / name)["alpha"].get<double>() : -1.0;
  };
  EXPECT_EQ(alpha_of("method", "--method lora"), table_default);
  // A delta config means in train what it means everywhere: the alpha it gives, else the library's.
  EXPECT_EQ(alpha_of("file_without_alpha", "", R"({"method": "lora", "r": 4})"), library_default);
  EXPECT_EQ(alpha_of("file_with_alpha", "", R"({"method": "lora", "alpha": 4})"), 4.0);
  EXPECT_EQ(alpha_of("file_peft_spelling", "--method lora", R"({"lora_alpha": 6})"), 6.0);
  // A file naming no method lies over --method's (here the default lora's) config.
  EXPECT_EQ(alpha_of("file_without_method", "", R"({"r": 4})"), table_default);
  // The flag, when given, wins over both.
  EXPECT_EQ(alpha_of("flag", "--method lora --lora-alpha 32"), 32.0);
  EXPECT_EQ(alpha_of("flag_over_file", "--lora-alpha 32", R"({"method": "lora", "alpha": 4})"), 32.0);
  // A preset's name in a file: its config under the file's fields.
  std::ofstream(dir / "houlsby.json") << R"({"method": "houlsby", "reduction_factor": 8})";
  auto houlsby = train_one_step(task, dir / "houlsby",
                                "--delta-config " + cli_test::quote((dir / "houlsby.json").string()));
  ASSERT_EQ(houlsby.code, 0) << houlsby.output;
  EXPECT_EQ(trained_delta_config(dir / "houlsby")["variant"], "houlsby");
  EXPECT_EQ(trained_delta_config(dir / "houlsby")["reduction_factor"], 8);
  // A run repeated from its train_config.json trains the same alpha.
  for (const char* run : {"file_without_alpha", "flag_over_file"}) {
    const fs::path again = dir / (std::string(run) + "_again");
    auto r = cli_test::run("train --config " + cli_test::quote((dir / run / "train_config.json").string()) +
                           " --out " + cli_test::quote(again.string()) + " --quiet");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(trained_delta_config(again)["alpha"], trained_delta_config(dir / run)["alpha"]) << run;
  }
  fs::remove_all(dir);
}

TEST(MethodNames, AnUnknownNameListsEveryAcceptedNameBeforeAnyWork) {
  // train: refused before the data is read (the folder does not exist), every name listed.
  auto r = cli_test::run("train --model " + cli_test::quote(kModel.string()) +
                         " --data /nonexistent/data --method adapterfusion --out /nonexistent/out");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("unknown method 'adapterfusion'"), std::string::npos) << r.output;
  const std::set<std::string> listed = words(r.output);
  for (const auto& m : method_presets())
    EXPECT_TRUE(listed.count(m.name)) << m.name << " missing: " << r.output;
  for (const char* name : {"full", "head", "none", "houlsby", "pfeiffer", "unipelt-apl"})
    EXPECT_TRUE(listed.count(name)) << name;

  // sweep: the same names.
  auto s = cli_test::run("sweep --model " + cli_test::quote(kModel.string()) + " --tasks " +
                         cli_test::quote(kSentiment.string()) + " --methods lora,adapterfusion --out " +
                         cli_test::quote(test_support::temp_dir("names_sweep_unknown").string()));
  EXPECT_EQ(s.code, 2) << s.output;
  const std::set<std::string> sweep_listed = words(s.output);
  for (const auto& m : method_presets())
    EXPECT_TRUE(sweep_listed.count(m.name)) << m.name << ": " << s.output;

  // A delta config: the delta methods, and the names train and sweep take besides.
  try {
    delta::make_delta({{"method", "adapterfusion"}});
    FAIL() << "an unknown delta method must be refused";
  } catch (const ConfigError& e) {
    const std::set<std::string> in_error = words(e.what());
    for (const auto& m : method_presets()) EXPECT_TRUE(in_error.count(m.name)) << m.name << ": " << e.what();
  }
  // `full` in a delta config: says what it is rather than "unknown".
  try {
    delta::make_delta({{"method", "full"}});
    FAIL() << "full is not a delta";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("not a delta method"), std::string::npos) << e.what();
  }
  // A preset name in a delta config: the config it stands for.
  try {
    delta::make_delta({{"method", "pfeiffer"}});
    FAIL() << "pfeiffer is a preset, not a delta method";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(method_preset("pfeiffer").delta_config.dump()), std::string::npos)
        << e.what();
  }
}

TEST(MethodNames, SweepRefusesACombinationItCannotBuildBeforeAnyRun) {
  train::SweepOptions o = tiny_sweep("/nonexistent/sweep", {"lora", "combination"});
  try {
    train::sweep_plan(o);
    FAIL() << "a combination without members cannot run";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("combination"), std::string::npos) << e.what();
  }
}

// sweep.cc built with -Werror, exactly as the build compiles it (GCC 12 warned -Wrestrict on two
// string concatenations).
TEST(Build, SweepCompilesWithoutWarnings) {
  const fs::path commands = fs::path(DELTATUNE_BINARY).parent_path() / "compile_commands.json";
  ASSERT_TRUE(fs::exists(commands)) << commands;
  std::string command;
  for (const auto& entry : read_json(commands))
    if (entry["file"].get<std::string>().ends_with("src/train/sweep.cc"))
      command = "cd " + cli_test::quote(entry["directory"].get<std::string>()) + " && " +
                entry["command"].get<std::string>();
  ASSERT_FALSE(command.empty());
  const size_t o = command.find(" -o ");
  ASSERT_NE(o, std::string::npos) << command;
  const size_t end = command.find(' ', o + 4);
  const fs::path object = test_support::temp_dir("names_sweep_object") / "sweep.o";
  command = command.substr(0, o) + " -o " + cli_test::quote(object.string()) + command.substr(end) +
            " -Werror 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) output.append(buf, n);
  EXPECT_EQ(pclose(pipe), 0) << output;
  EXPECT_EQ(output, "");
  fs::remove_all(object.parent_path());
}

// `train --optimizer` reaches the trainer (its checkpoint names the optimizer that ran) and the run's
// settings; a name the trainer does not have is a usage error before any work.
TEST(TrainFlags, OptimizerFlagChoosesTheOptimizer) {
  const fs::path dir = test_support::temp_dir("train_optimizer_flag");
  const fs::path task = tiny_task(dir / "task");
  auto r = train_one_step(task, dir / "sgd", "--method lora --optimizer sgd --momentum 0.9");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(read_json(dir / "sgd" / "checkpoint" / "state.json")["optimizer"], "sgd");
  const json settings = read_json(dir / "sgd" / "train_config.json");
  EXPECT_EQ(settings["optimizer"], "sgd");
  EXPECT_DOUBLE_EQ(settings["momentum"].get<double>(), 0.9);

  r = train_one_step(task, dir / "default", "--method lora");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(read_json(dir / "default" / "checkpoint" / "state.json")["optimizer"], "adamw");

  r = train_one_step(task, dir / "bad", "--method lora --optimizer adam");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--optimizer"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "bad" / "summary.json"));
  fs::remove_all(dir);
}
