// Settings files: YAML reads as the JSON a user would expect, errors name the file and line, and
// `deltatune train --config run.yaml` is equivalent to the flags.
#include <gtest/gtest.h>

#include <fstream>

#include "cli_run.h"
#include "deltatune/config_file.h"
#include "deltatune/error.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using deltatune::read_config_file;

TEST(ConfigFile, YamlScalarsBecomeJsonTypes) {
  const fs::path dir = test_support::temp_dir("config_yaml");
  std::ofstream(dir / "a.yaml") << "lr: 5e-4\nepochs: 3\nquiet: true\nname: lora run\nquoted: \"42\"\n"
                                   "targets: [attn.q, attn.v]\nnested:\n  r: 8\n  alpha: 16.5\nnothing: ~\n";
  const nlohmann::json j = read_config_file(dir / "a.yaml");
  EXPECT_DOUBLE_EQ(j["lr"].get<double>(), 5e-4);
  EXPECT_TRUE(j["epochs"].is_number_integer());
  EXPECT_EQ(j["epochs"], 3);
  EXPECT_EQ(j["quiet"], true);
  EXPECT_EQ(j["name"], "lora run");
  EXPECT_EQ(j["quoted"], "42");  // quoted stays a string
  EXPECT_EQ(j["targets"], nlohmann::json({"attn.q", "attn.v"}));
  EXPECT_EQ(j["nested"]["r"], 8);
  EXPECT_DOUBLE_EQ(j["nested"]["alpha"].get<double>(), 16.5);
  EXPECT_TRUE(j["nothing"].is_null());
  // The same settings as JSON read the same.
  std::ofstream(dir / "a.json") << j.dump();
  EXPECT_EQ(read_config_file(dir / "a.json"), j);
}

TEST(ConfigFile, ErrorsNameTheFileAndLine) {
  const fs::path dir = test_support::temp_dir("config_bad");
  std::ofstream(dir / "bad.yaml") << "lr: 1\ntargets: [unclosed\n";
  try {
    read_config_file(dir / "bad.yaml");
    FAIL() << "expected an error";
  } catch (const deltatune::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.yaml:"), std::string::npos) << e.what();
  }
  std::ofstream(dir / "bad.json") << "{\"lr\": }";
  EXPECT_THROW(read_config_file(dir / "bad.json"), deltatune::IoError);
  EXPECT_THROW(read_config_file(dir / "missing.yaml"), deltatune::IoError);
}

// Found by fuzzing: YAML passes any bytes through, and JSON numbers can overflow double; both must be
// refused as bad input, naming the file (and the line for YAML), not escape as nlohmann exceptions.
TEST(ConfigFile, InvalidUtf8AndHugeNumbersAreRefusedNamingTheFile) {
  const fs::path dir = test_support::temp_dir("config_fuzzed");
  std::ofstream(dir / "latin1.yaml") << "lr: 1\nname: caf\xe9\n";
  std::ofstream(dir / "latin1_key.yaml") << "lr: 1\n\xff: 2\n";
  std::ofstream(dir / "huge.json") << "{\"lr\": 9e999}";
  for (const char* name : {"latin1.yaml", "latin1_key.yaml", "huge.json"}) {
    try {
      read_config_file(dir / name);
      ADD_FAILURE() << name << ": expected an error";
    } catch (const deltatune::IoError& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
  try {
    read_config_file(dir / "latin1.yaml");
  } catch (const deltatune::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("latin1.yaml:2: not valid YAML: text that is not valid UTF-8"),
              std::string::npos)
        << e.what();
  }
}

TEST(ConfigFile, TrainReadsYamlLikeFlags) {
  const fs::path dir = test_support::temp_dir("config_train");
  const fs::path assets(DELTATUNE_ASSETS);
  std::ofstream(dir / "run.yaml") << "model: " << (assets / "models" / "bert-mini").string() << "\n"
                                  << "data: " << (assets / "tasks" / "sentiment").string() << "\n"
                                  << "method: lora\nmax_steps: 2\nlr: 1e-3\nbatch-size: 4\nmax-length: 32\n"
                                  << "quiet: true\nno-test-before: true\nthreads: 2\n";
  auto r = cli_test::run("train --config " + cli_test::quote((dir / "run.yaml").string()) +
                         " --lr 2e-3 --out " + cli_test::quote((dir / "run").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream in(dir / "run" / "train_config.json");
  const auto c = nlohmann::json::parse(in);
  EXPECT_EQ(c["max-steps"], 2);
  EXPECT_EQ(c["batch-size"], 4);
  EXPECT_DOUBLE_EQ(c["lr"].get<double>(), 2e-3);  // the flag wins over the file
  std::ofstream(dir / "unknown.yaml") << "learning-rate: 1\n";
  auto bad = cli_test::run("train --config " + cli_test::quote((dir / "unknown.yaml").string()) + " --out " +
                           cli_test::quote((dir / "x").string()));
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("learning-rate"), std::string::npos) << bad.output;
}
