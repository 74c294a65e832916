// Crash safety: `deltatune train` killed with SIGKILL at random moments (checkpoint and best-weight
// writes included), then resumed, again and again: after every kill each file of the run folder is
// whole (JSON parses, safetensors read back), and every run that reaches its end has the same delta,
// bit for bit, as a run that was never interrupted.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "cli_run.h"
#include "deltatune/error.h"
#include "deltatune/safetensors.h"
#include "small_task.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using cli_test::quote;

namespace {

const fs::path kBert = fs::path(DELTATUNE_ASSETS) / "models" / "bert-mini";
constexpr int kKills = 50;

fs::path temp_dir(const std::string& name) { return test_support::temp_dir("crash_" + name); }

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string train_command(const fs::path& task, const fs::path& out, const std::string& extra,
                          int steps = 40) {
  return std::string(DELTATUNE_BINARY) + " train --model " + quote(kBert.string()) + " --data " +
         quote(task.string()) + " --out " + quote(out.string()) +
         " --batch-size 8 --max-length 32 --seed 3 --threads 1 --max-steps " + std::to_string(steps) +
         " --checkpoint-every 1"
         " --eval-every 5 --no-test-before --quiet " +
         extra + " > " + quote((out.parent_path() / (out.filename().string() + ".log")).string()) + " 2>&1";
}

pid_t start(const std::string& command) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", ("exec " + command).c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

// Waits up to `ms` for the process; kills it (SIGKILL) if it is still running. True: it was killed.
bool kill_after(pid_t pid, int ms, int* exit_code) {
  int status = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < until) {
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return true;
}

// A temporary of an atomic write or a folder swap, which a kill may leave behind.
bool is_temporary(const fs::path& p) {
  const std::string s = p.string();
  return s.find(".tmp-") != std::string::npos || s.find(".new") != std::string::npos ||
         s.find(".old") != std::string::npos;
}

// Every file of the run folder that is not a temporary is whole.
void expect_whole_files(const fs::path& run, int kill) {
  if (!fs::exists(run)) return;
  for (const auto& e : fs::recursive_directory_iterator(run)) {
    if (!e.is_regular_file() || is_temporary(e.path())) continue;
    const fs::path& f = e.path();
    SCOPED_TRACE("after kill " + std::to_string(kill) + ": " + f.string());
    if (f.extension() == ".json") {
      EXPECT_TRUE(nlohmann::json::accept(read_text(f)));
    } else if (f.extension() == ".safetensors") {
      EXPECT_NO_THROW((void)deltatune::read_safetensors(f));
    } else if (f.extension() == ".jsonl") {  // the log: complete lines, each JSON (appended, then flushed)
      std::istringstream lines(read_text(f));
      std::string line;
      while (std::getline(lines, line))
        if (!line.empty()) EXPECT_TRUE(nlohmann::json::accept(line)) << line;
    }
  }
}

}  // namespace

TEST(CrashSafety, KilledAndResumedRunsEndWithTheUninterruptedDelta) {
  const fs::path task = test_support::write_sentiment_subset(temp_dir("task"), 64, 16, 16);
  const fs::path reference = temp_dir("reference") / "run";
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(std::system(train_command(task, reference, "").c_str()), 0)
      << read_text(reference.parent_path() / "run.log");
  const int run_ms = int(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
  const std::string want = read_text(reference / "delta" / "delta.safetensors");
  ASSERT_FALSE(want.empty());

  std::mt19937 rng(2026);
  std::uniform_int_distribution<int> delay(0, std::max(run_ms, 200));
  const fs::path run = temp_dir("killed") / "run";
  int kills = 0, finished = 0, starts = 0;
  while (kills < kKills || finished == 0) {
    // Resume when a checkpoint survived, else start over (a kill before the first checkpoint).
    const bool resume = fs::exists(run / "checkpoint" / "state.json");
    const pid_t pid = start(train_command(task, run, resume ? "--resume" : "--overwrite"));
    ASSERT_GT(pid, 0);
    ++starts;
    int code = -1;
    const bool killed = kills < kKills && kill_after(pid, delay(rng), &code);
    if (!killed && code == -1) kill_after(pid, 600000, &code);  // no more kills: let it finish
    if (killed) {
      ++kills;
      expect_whole_files(run, kills);
      continue;
    }
    ASSERT_EQ(code, 0) << "start " << starts << ":\n" << read_text(run.parent_path() / "run.log");
    EXPECT_EQ(read_text(run / "delta" / "delta.safetensors"), want) << "finished run " << finished;
    ++finished;
    if (kills < kKills) fs::remove_all(run);  // another run from scratch, to be killed more
    ASSERT_LT(starts, 20 * kKills) << "runs keep finishing before the kill";
  }
  EXPECT_GE(kills, kKills);
  EXPECT_GE(finished, 1);
}

// A full disk while a checkpoint is written. A file-size limit (ulimit -f) stands in for it: the
// write fails with EFBIG where a full disk gives ENOSPC, through the same code. The run stops with a
// one-line error (exit code 2), the previous checkpoint and the delta stay as they were, no staged
// folder is left behind, and resuming once there is room finishes the run.
TEST(CrashSafety, AFullDiskDuringACheckpointKeepsThePreviousCheckpointAndDelta) {
  const fs::path task = test_support::write_sentiment_subset(temp_dir("full_task"), 64, 16, 16);
  const fs::path run = temp_dir("full_disk") / "run";
  ASSERT_EQ(std::system(train_command(task, run, "", 10).c_str()), 0)
      << read_text(run.parent_path() / "run.log");
  const std::string checkpoint_params = read_text(run / "checkpoint" / "params.safetensors");
  const std::string checkpoint_state = read_text(run / "checkpoint" / "state.json");
  const std::string delta = read_text(run / "delta" / "delta.safetensors");
  ASSERT_GT(checkpoint_params.size(), 4096u);

  // Room for the log's lines but not for a checkpoint's tensors (ulimit -f counts KiB).
  const size_t limit_kib = checkpoint_params.size() / 1024 / 2;
  const std::string limited =
      "ulimit -f " + std::to_string(limit_kib) + " && " + train_command(task, run, "--resume", 40);
  const int status = std::system(("sh -c " + quote(limited)).c_str());
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 2);
  const std::string log = read_text(run.parent_path() / "run.log");
  EXPECT_NE(log.find("File too large"), std::string::npos) << log;
  EXPECT_EQ(log.find("internal error"), std::string::npos) << log;

  EXPECT_EQ(read_text(run / "checkpoint" / "params.safetensors"), checkpoint_params);
  EXPECT_EQ(read_text(run / "checkpoint" / "state.json"), checkpoint_state);
  EXPECT_EQ(read_text(run / "delta" / "delta.safetensors"), delta);
  EXPECT_FALSE(fs::exists(run / "checkpoint.tmp"));
  expect_whole_files(run, 0);

  ASSERT_EQ(std::system(train_command(task, run, "--resume", 40).c_str()), 0)
      << read_text(run.parent_path() / "run.log");
  EXPECT_EQ(nlohmann::json::parse(read_text(run / "summary.json")).value("steps", 0), 40);
}

// A damaged or hand-edited checkpoint state: --resume refuses it with one line naming the key (exit
// code 2), never an internal error from the JSON library or a loop that cannot end.
TEST(CrashSafety, ResumeRefusesADamagedCheckpointStateNamingTheKey) {
  const fs::path task = test_support::write_sentiment_subset(temp_dir("damaged_task"), 64, 16, 16);
  const fs::path run = temp_dir("damaged") / "run";
  ASSERT_EQ(std::system(train_command(task, run, "", 10).c_str()), 0)
      << read_text(run.parent_path() / "run.log");
  const fs::path state_file = run / "checkpoint" / "state.json";
  const nlohmann::json state = nlohmann::json::parse(read_text(state_file));
  auto edited = [&](const char* key, const nlohmann::json& value) {
    nlohmann::json s = state;
    s[key] = value;
    return s;
  };
  nlohmann::json no_epoch = state;
  no_epoch.erase("epoch");
  const std::vector<std::pair<nlohmann::json, std::string>> cases = {
      {nlohmann::json::array(), "expected a JSON object"},
      {no_epoch, "missing 'epoch'"},
      {edited("step", "ten"), "'step' must be an integer >= 0"},
      {edited("update_in_epoch", -3), "'update_in_epoch' must be an integer >= 0"},
      {edited("optimizer", 7), "'optimizer' must be a string"},
      {edited("best_dev", "good"), "'best_dev' must be an object or null"},
      {edited("stopped_early", "no"), "'stopped_early' must be true or false"},
      {edited("update_in_epoch", 100000), "resume with the training set and batch size"},
  };
  for (const auto& [bad, message] : cases) {
    std::ofstream(state_file) << bad.dump();
    const int status = std::system(train_command(task, run, "--resume", 40).c_str());
    const std::string log = read_text(run.parent_path() / "run.log");
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << bad.dump() << "\n" << log;
    EXPECT_NE(log.find(message), std::string::npos) << log;
    EXPECT_NE(log.find("state.json"), std::string::npos) << log;
  }
}
