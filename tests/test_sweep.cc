// The method-comparison sweep: the plan covers the grid once in any sharding, a tiny grid runs and
// writes its tables, a rerun resumes (skips what finished), and bad grids are clear errors.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>

#include "cli_run.h"
#include "deltatune/error.h"
#include "deltatune/sweep.h"
#include "temp_dir.h"

using namespace deltatune;
namespace fs = std::filesystem;

namespace {
train::SweepOptions tiny(const fs::path& out) {
  train::SweepOptions o;
  o.model_dir = fs::path(DELTATUNE_ASSETS) / "models/bert-mini";
  o.out_dir = out;
  o.tasks = {fs::path(DELTATUNE_ASSETS) / "tasks/sentiment"};
  o.methods = {"full", "lora"};
  o.k_shots = {8};
  o.seeds = {1, 2};
  o.batch_size = 4;
  o.max_length = 32;
  o.epochs = 1;
  o.max_steps = 2;
  o.max_dev = 8;
  o.max_test = 16;
  o.progress = false;
  return o;
}

std::string read(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}
}  // namespace

TEST(Sweep, ThePlanHasOneFolderPerCellAndSeedsComeFirst) {
  train::SweepOptions o = tiny("/nonexistent");
  o.methods = {"full", "bitfit", "lora", "unipelt-apl"};
  o.k_shots = {100, 1000};
  auto plan = train::sweep_plan(o);
  ASSERT_EQ(plan.size(), 4u * 2u * 2u);
  std::set<fs::path> dirs;
  for (const auto& r : plan) dirs.insert(r.dir);
  EXPECT_EQ(dirs.size(), plan.size());  // one folder per cell
  // Every cell gets its first seed before any gets its second.
  EXPECT_EQ(plan.front().seed, 1u);
  EXPECT_EQ(plan[plan.size() / 2 - 1].seed, 1u);
  EXPECT_EQ(plan[plan.size() / 2].seed, 2u);
}

TEST(Sweep, BadGridsAreConfigErrors) {
  train::SweepOptions o = tiny("/nonexistent");
  o.methods = {"lora", "adapterfusion"};
  try {
    train::sweep_plan(o);
    FAIL() << "an unknown method must be refused";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("unipelt-apl"), std::string::npos) << e.what();  // lists the known
  }
  o.methods = {"lora"};
  o.k_shots = {0};
  EXPECT_THROW(train::sweep_plan(o), ConfigError);
}

TEST(Sweep, RunsATinyGridWritesTablesAndResumes) {
  fs::path out = test_support::temp_dir("sweep");
  fs::remove_all(out);
  train::SweepOptions o = tiny(out);
  train::SweepReport first = train::run_sweep(o);
  EXPECT_EQ(first.planned, 4);
  EXPECT_EQ(first.ran, 4);
  EXPECT_EQ(first.failed, 0) << (first.failures.empty() ? "" : first.failures[0]);
  for (const auto& r : train::sweep_plan(o)) {
    ASSERT_TRUE(train::sweep_run_finished(r)) << r.dir;
    nlohmann::json s = nlohmann::json::parse(read(r.dir / "summary.json"));
    const double acc = s["test"]["accuracy"].get<double>();
    EXPECT_GE(acc, 0.0);
    EXPECT_LE(acc, 1.0);
    EXPECT_FALSE(fs::exists(r.dir / "best"));  // weights are not kept by default
  }
  const std::string md = read(out / "table.md"), csv = read(out / "table.csv");
  EXPECT_NE(md.find("| full |"), std::string::npos) << md;
  EXPECT_NE(md.find("| lora |"), std::string::npos) << md;
  EXPECT_NE(md.find("±"), std::string::npos) << md;
  EXPECT_NE(csv.find("sentiment_mean"), std::string::npos) << csv;
  EXPECT_NE(read(out / "plot.svg").find("<svg"), std::string::npos);

  // A rerun skips the finished cells and leaves their results untouched.
  const auto plan = train::sweep_plan(o);
  const std::string before = read(plan[1].dir / "summary.json");
  train::SweepReport again = train::run_sweep(o);
  EXPECT_EQ(again.ran, 0);
  EXPECT_EQ(again.skipped, 4);
  EXPECT_EQ(read(plan[1].dir / "summary.json"), before);

  // Removing one summary re-runs that cell only; the same seed gives the same test accuracy.
  nlohmann::json old = nlohmann::json::parse(before);
  fs::remove(plan[1].dir / "summary.json");
  train::SweepReport one = train::run_sweep(o);
  EXPECT_EQ(one.ran, 1);
  nlohmann::json redo = nlohmann::json::parse(read(plan[1].dir / "summary.json"));
  EXPECT_EQ(redo["test"]["accuracy"], old["test"]["accuracy"]);
  fs::remove_all(out);
}

TEST(Sweep, CommandListsMethodsAndRefusesAMissingModel) {
  auto list = cli_test::run("sweep --list-methods");
  EXPECT_EQ(list.code, 0) << list.output;
  for (const char* m : {"full", "bitfit", "houlsby", "pfeiffer", "prefix", "prompt", "lora", "ia3",
                        "unipelt-ap", "unipelt-apl"})
    EXPECT_NE(list.output.find(m), std::string::npos) << m;
  auto bad =
      cli_test::run("sweep --model /nonexistent/model --tasks " +
                    cli_test::quote((fs::path(DELTATUNE_ASSETS) / "tasks/sentiment").string()) +
                    " --methods lora --out " + cli_test::quote(test_support::temp_dir("sweep_bad").string()));
  EXPECT_NE(bad.code, 0);
  EXPECT_EQ(bad.output.find("Segmentation"), std::string::npos);
}
