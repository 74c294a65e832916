// Data-parallel training and sweeps (deltatune/distributed.h). Without MPI: the split of items over
// processes, per-example dropout streams, and the replica check with a stand-in communicator. With
// Open MPI (scripts/setup installs it): `mpirun -np 2` runs of the real binary against one process.
//
// Exactness: 2 processes at batch 8 must train what 1 process at batch 16 trains. They run the same
// float32 arithmetic on the same examples with the same dropout masks; what differs is the summation
// order (each process sums its half of the batch, then the all-reduce adds the halves, and padding to
// a shorter length changes nothing but the masked softmax terms). float32 has 24 bits (6e-8
// relative); a few steps of AdamW over sums of 8-16 terms stay within 1e-5 relative on the losses and
// 2e-5 absolute on the delta's weights (whose values are ~1e-2 after a few steps at lr 2e-3).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_run.h"
#include "deltatune/distributed.h"
#include "deltatune/ops.h"
#include "deltatune/random.h"
#include "deltatune/safetensors.h"
#include "deltatune/trainer.h"
#include "small_task.h"
#include "temp_dir.h"
#include "train/replicas.h"

namespace {
using namespace deltatune;
namespace fs = std::filesystem;
using nlohmann::json;

TEST(Share, SplitsItemsIntoContiguousNearlyEqualParts) {
  EXPECT_EQ(distributed::share(16, 0, 2), (std::pair<size_t, size_t>{0, 8}));
  EXPECT_EQ(distributed::share(16, 1, 2), (std::pair<size_t, size_t>{8, 16}));
  EXPECT_EQ(distributed::share(5, 0, 3), (std::pair<size_t, size_t>{0, 2}));
  EXPECT_EQ(distributed::share(5, 2, 3), (std::pair<size_t, size_t>{4, 5}));
  EXPECT_EQ(distributed::share(1, 1, 2), (std::pair<size_t, size_t>{1, 1}));  // nothing left
}

TEST(SingleProcess, CollectivesAreTheIdentity) {
  auto comm = distributed::single_process();
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  std::vector<float> v = {1.5f, -2.0f};
  comm->allreduce_sum(v);
  EXPECT_EQ(v, (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(comm->allgather(7), (std::vector<uint64_t>{7}));
}

std::vector<float> dropout_mask(const Shape& shape, std::vector<uint64_t> keys, uint64_t seed) {
  Generator gen(seed);
  gen.key_rows(std::move(keys));
  return ops::dropout(Tensor::ones(shape), 0.5f, true, gen).to_floats();
}

// What makes 2 x 8 equal 1 x 16 with dropout on: an example's mask depends on its key alone.
TEST(KeyedDropout, AnExamplesMaskDoesNotDependOnItsBatchOrPadding) {
  const std::vector<float> batch = dropout_mask({4, 3, 5}, {10, 11, 12, 13}, 99);
  const std::vector<float> alone = dropout_mask({1, 3, 5}, {12}, 99);
  EXPECT_TRUE(std::equal(alone.begin(), alone.end(), batch.begin() + 2 * 15));
  // Padded to 6 positions: the first 3 positions draw the same.
  const std::vector<float> padded = dropout_mask({1, 6, 5}, {12}, 99);
  EXPECT_TRUE(std::equal(alone.begin(), alone.end(), padded.begin()));
  // Flattened rows [B * T, H] split the same way.
  const std::vector<float> flat = dropout_mask({12, 5}, {10, 11, 12, 13}, 99);
  EXPECT_EQ(flat, batch);
  // Different keys draw differently; no keys: one serial stream, as before.
  EXPECT_NE(dropout_mask({1, 3, 5}, {13}, 99), alone);
  Generator serial(99);
  EXPECT_EQ(dropout_mask({1, 3, 5}, {}, 99),
            ops::dropout(Tensor::ones({1, 3, 5}), 0.5f, true, serial).to_floats());
}

// A communicator of two whose other process holds other weights.
class DivergedPeer final : public distributed::Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::string name() const override { return "stand-in"; }
  void allreduce_sum(std::span<float> v) override {
    for (float& x : v) x *= 2;  // the peer holds the same gradients
  }
  void allreduce_sum(std::span<double> v) override {
    for (double& x : v) x *= 2;
  }
  std::vector<uint64_t> allgather(uint64_t value) override { return {value, value + 1}; }
  void broadcast(std::string&, int) override {}
  void barrier() override {}
  [[noreturn]] void abort(int code) override { std::exit(code); }
};

TEST(Replicas, DifferentWeightsOnAnotherProcessAreAnError) {
  Tensor w = Tensor::from_floats({1, 2, 3}, {3});
  NamedParams params = {{"w", w}};
  DivergedPeer peer;
  try {
    train_detail::check_replicas_agree(params, peer, 7);
    FAIL() << "expected ReplicasDiverged";
  } catch (const train::ReplicasDiverged& e) {
    EXPECT_NE(std::string(e.what()).find("process 1 differ from process 0's at step 7"), std::string::npos)
        << e.what();
  }
  EXPECT_NE(train_detail::weights_hash(params),
            train_detail::weights_hash({{"w", Tensor::from_floats({1, 2, 3.0001f}, {3})}}));
}

TEST(Replicas, GradientsAreSummedAndAbsentOnesStayAbsent) {
  Tensor a = Tensor::from_floats({1, 2}, {2}).set_requires_grad();
  Tensor b = Tensor::from_floats({3}, {1}).set_requires_grad();
  a.set_grad(Tensor::from_floats({0.5f, -1}, {2}));
  DivergedPeer peer;  // sums two equal copies
  const train_detail::AllreduceCost cost = train_detail::allreduce_gradients({{"a", a}, {"b", b}}, peer, 2);
  EXPECT_EQ(a.grad().to_floats(), (std::vector<float>{1, -2}));
  EXPECT_FALSE(b.grad().defined());
  EXPECT_EQ(cost.bytes, int64_t((3 + 2) * sizeof(float)));  // two buckets: a and its flag, b and its flag
}

// --- over mpirun ---

bool have_mpirun() { return std::system("command -v mpirun >/dev/null 2>&1") == 0; }

#define SKIP_WITHOUT_MPI()                                                                                   \
  do {                                                                                                       \
    if (!distributed::built_with_mpi()) GTEST_SKIP() << "this build has no MPI (scripts/setup installs it)"; \
    if (!have_mpirun()) GTEST_SKIP() << "mpirun is not installed (scripts/setup installs openmpi-bin)";      \
  } while (0)

const std::string kMpirun = "mpirun --allow-run-as-root --oversubscribe -np 2";

cli_test::Result run_two(const std::string& args) { return cli_test::run_with_env(kMpirun, args); }

std::vector<json> log_entries(const fs::path& run, const std::string& type) {
  std::vector<json> out;
  std::ifstream in(run / "log.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line);
    if (j["type"] == type) out.push_back(j);
  }
  return out;
}

void expect_same_training(const fs::path& one, const fs::path& two) {
  const std::vector<json> a = log_entries(one, "train"), b = log_entries(two, "train");
  ASSERT_EQ(a.size(), b.size());  // rank 0 alone logs
  ASSERT_FALSE(a.empty());
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = a[i]["loss"], y = b[i]["loss"];
    EXPECT_NEAR(x, y, 1e-5 * std::abs(x)) << "step " << i + 1;
    EXPECT_NEAR(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>(),
                1e-4 * a[i]["grad_norm"].get<double>());
  }
  const std::vector<json> ea = log_entries(one, "eval"), eb = log_entries(two, "eval");
  ASSERT_EQ(ea.size(), eb.size());
  for (size_t i = 0; i < ea.size(); ++i)
    EXPECT_NEAR(ea[i]["loss"].get<double>(), eb[i]["loss"].get<double>(), 1e-5 * ea[i]["loss"].get<double>());
  const auto da = load_checkpoint_tensors(one / "delta" / "delta.safetensors");
  const auto db = load_checkpoint_tensors(two / "delta" / "delta.safetensors");
  ASSERT_EQ(da.size(), db.size());
  float worst = 0, largest = 0;
  for (const auto& [name, t] : da) {
    const std::vector<float> x = t.to_floats(), y = db.at(name).to_floats();
    ASSERT_EQ(x.size(), y.size()) << name;
    for (size_t i = 0; i < x.size(); ++i) {
      worst = std::max(worst, std::abs(x[i] - y[i]));
      largest = std::max(largest, std::abs(x[i]));
    }
  }
  EXPECT_LT(worst, 2e-5f) << "largest weight " << largest;
  EXPECT_GT(largest, 0.0f);
}

// One process at batch 16 and two at batch 8 over the same data, LoRA with dropout (and the model's
// own hidden dropout), evaluating on dev (split across the two) along the way.
void compare_one_and_two(const std::string& model, const std::string& task_flags, const std::string& name) {
  const fs::path dir = test_support::temp_dir(name);
  test_support::write_sentiment_subset(dir / "task", 64, 24, 24);
  std::ofstream(dir / "lora.json") << R"({"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1})";
  const std::string common = "train --model " + std::string(DELTATUNE_ASSETS) + "/models/" + model + " " +
                             task_flags + " --data " + (dir / "task").string() + " --delta-config " +
                             (dir / "lora.json").string() +
                             " --max-steps 4 --eval-every 2 --threads 1 --quiet --max-length 32";
  const cli_test::Result one = cli_test::run(common + " --batch-size 16 --out " + (dir / "one").string());
  ASSERT_EQ(one.code, 0) << one.output;
  const cli_test::Result two = run_two(common + " --batch-size 8 --out " + (dir / "two").string());
  ASSERT_EQ(two.code, 0) << two.output;
  EXPECT_NE(two.output.find("batch 8 per process x 2 processes"), std::string::npos) << two.output;
  expect_same_training(dir / "one", dir / "two");
  fs::remove_all(dir);
}

TEST(DataParallel, TwoProcessesAtBatch8TrainWhatOneAtBatch16Does_BertClassifier) {
  SKIP_WITHOUT_MPI();
  compare_one_and_two("bert-mini", "", "dp_bert");
}

TEST(DataParallel, TwoProcessesAtBatch8TrainWhatOneAtBatch16Does_Gpt2CausalLM) {
  SKIP_WITHOUT_MPI();
  compare_one_and_two("gpt2-mini", "--task causal-lm", "dp_gpt2");
}

TEST(DataParallel, ResumeNeedsTheSameNumberOfProcesses) {
  SKIP_WITHOUT_MPI();
  const fs::path dir = test_support::temp_dir("dp_resume");
  test_support::write_sentiment_subset(dir / "task", 32, 8, 0);
  const std::string common = "train --model " + std::string(DELTATUNE_ASSETS) + "/models/bert-mini --data " +
                             (dir / "task").string() +
                             " --batch-size 8 --threads 1 --quiet --max-length 32 --out " +
                             (dir / "run").string();
  ASSERT_EQ(run_two(common + " --max-steps 2").code, 0);
  const cli_test::Result alone = cli_test::run(common + " --max-steps 4 --resume");
  EXPECT_EQ(alone.code, 2) << alone.output;
  EXPECT_NE(alone.output.find("trained by 2 process(es); resume it with the same number (mpirun -np 2)"),
            std::string::npos)
      << alone.output;
  const cli_test::Result again = run_two(common + " --max-steps 4 --resume");
  ASSERT_EQ(again.code, 0) << again.output;
  EXPECT_EQ(log_entries(dir / "run", "train").size(), 4u);
  fs::remove_all(dir);
}

// A process killed mid-run ends the job with an error, not a hang (mpirun ends the others).
TEST(DataParallel, AKilledProcessEndsTheJob) {
  SKIP_WITHOUT_MPI();
  const fs::path dir = test_support::temp_dir("dp_kill");
  test_support::write_sentiment_subset(dir / "task", 64, 0, 0);
  // Rank 1 is killed 3 seconds in (exec keeps the shell's pid for deltatune).
  const std::string script = "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then (sleep 3; kill -9 $$) & fi; exec " +
                             std::string(DELTATUNE_BINARY) + " train --model " +
                             std::string(DELTATUNE_ASSETS) + "/models/bert-mini --data " +
                             (dir / "task").string() +
                             " --batch-size 8 --max-steps 100000 --threads 1 --quiet --max-length 32 --out " +
                             (dir / "run").string();
  const std::string command = "timeout 120 " + kMpirun + " sh -c " + cli_test::quote(script) + " > " +
                              (dir / "out.txt").string() + " 2>&1";
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  const int code = WEXITSTATUS(status);
  std::ifstream in(dir / "out.txt");
  const std::string output((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(code, 0) << output;
  EXPECT_NE(code, 124) << "the job hung: " << output;  // timeout's code
  EXPECT_NE(output.find("rank 1"), std::string::npos) << output;
  EXPECT_NE(output.find("signal 9"), std::string::npos) << output;
  fs::remove_all(dir);
}

// The sweep's cells dealt over 2 processes give the serial sweep's table (timings aside).
TEST(DataParallel, ASweepOverTwoProcessesGivesTheSerialTable) {
  SKIP_WITHOUT_MPI();
  const fs::path dir = test_support::temp_dir("dp_sweep");
  test_support::write_sentiment_subset(dir / "task", 48, 16, 24);
  const std::string common = "sweep --model " + std::string(DELTATUNE_ASSETS) + "/models/bert-mini --tasks " +
                             (dir / "task").string() +
                             " --methods lora,bitfit,head --k 16 --seeds 1,2 --max-steps 3 --max-dev 16 "
                             "--threads 1 --quiet --max-length 32 --out ";
  const cli_test::Result serial = cli_test::run(common + (dir / "serial").string());
  ASSERT_EQ(serial.code, 0) << serial.output;
  const cli_test::Result spread = run_two(common + (dir / "spread").string());
  ASSERT_EQ(spread.code, 0) << spread.output;
  EXPECT_NE(spread.output.find("6 runs planned; 6 ran"), std::string::npos) << spread.output;
  // The table without its timing columns (train_seconds, inference_seconds and the ratios).
  auto table = [](const fs::path& csv) {
    std::ifstream in(csv);
    std::string line, out;
    while (std::getline(in, line)) {
      std::vector<std::string> cells;
      size_t start = 0;
      for (size_t comma; (comma = line.find(',', start)) != std::string::npos; start = comma + 1)
        cells.push_back(line.substr(start, comma - start));
      cells.push_back(line.substr(start));
      for (size_t c : {0, 1, 2, 3, 4, 5, 11}) out += cells.at(c) + ",";
      out += "\n";
    }
    return out;
  };
  EXPECT_EQ(table(dir / "serial" / "table.csv"), table(dir / "spread" / "table.csv"));
  // Each cell's test metrics, to every digit summary.json keeps.
  int cells = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir / "serial"))
    if (e.path().filename() == "summary.json") {
      const fs::path other = dir / "spread" / fs::relative(e.path(), dir / "serial");
      ASSERT_TRUE(fs::exists(other)) << other;
      const json a = json::parse(std::ifstream(e.path())), b = json::parse(std::ifstream(other));
      EXPECT_EQ(a["test"]["accuracy"], b["test"]["accuracy"]) << other;
      EXPECT_EQ(a["test"]["loss"], b["test"]["loss"]) << other;
      ++cells;
    }
  EXPECT_EQ(cells, 6);
  fs::remove_all(dir);
}

}  // namespace
