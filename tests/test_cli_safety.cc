// The command line keeps what the user has: `train` and `merge` refuse a folder that holds earlier
// output unless told what to do with it, SIGTERM stops training with a checkpoint as Ctrl-C does,
// unwritable outputs and bad options are reported before any work, every written file is replaced
// atomically, and usage errors are one readable line with exit code 2.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cli_run.h"
#include "deltatune/atomic_file.h"
#include "deltatune/error.h"
#include "small_task.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using cli_test::quote;
using cli_test::run;

namespace {

const fs::path kAssets = DELTATUNE_ASSETS;
const fs::path kSource = kAssets.parent_path();
const std::string kBert = quote((kAssets / "models" / "bert-mini").string());
const std::string kGpt2 = quote((kAssets / "models" / "gpt2-mini").string());

fs::path temp_dir(const std::string& name) { return test_support::temp_dir("safety_" + name); }

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A small sentiment task: 64 train, 16 dev, 16 test examples (or no dev/test split).
fs::path small_task(const std::string& name, bool with_dev = true) {
  return test_support::write_sentiment_subset(temp_dir("task_" + name), 64, with_dev ? 16 : 0, 16);
}

// A task folder whose training file is broken at line 2: loading it fails with "train.jsonl:2".
fs::path broken_task() {
  const fs::path d = temp_dir("broken");
  std::ofstream(d / "train.jsonl") << "{\"text\": \"a\", \"label\": \"x\"}\n{\"label\": \"y\"}\n";
  return d;
}

std::string train_args(const fs::path& data, const fs::path& out) {
  return "train --model " + kBert + " --data " + quote(data.string()) + " --out " + quote(out.string()) +
         " --batch-size 8 --max-length 32 --seed 3 --threads 2 --no-test-before --quiet";
}

int64_t train_entries(const fs::path& log) {
  std::ifstream in(log);
  int64_t n = 0;
  for (std::string line; std::getline(in, line);) {
    // A line being written while the test reads is skipped, not an error.
    const nlohmann::json entry = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (entry.is_object() && entry.value("type", "") == "train") ++n;
  }
  return n;
}

ino_t inode(const fs::path& file) {
  struct stat st {};
  EXPECT_EQ(::stat(file.c_str(), &st), 0) << file;
  return st.st_ino;
}

int count_lines(const std::string& text) {
  int n = 0;
  for (char c : text) n += c == '\n';
  return n;
}

}  // namespace

// --- 1. a folder holding a run is refused unless --overwrite or --resume says what to do with it ---

TEST(CliSafety, TrainRefusesAFolderHoldingARunUnlessOverwriteOrResume) {
  const fs::path task = small_task("refuse"), out = temp_dir("refuse_run");
  auto first = run(train_args(task, out) + " --max-steps 2");
  ASSERT_EQ(first.code, 0) << first.output;
  std::ofstream(out / "notes.txt") << "the user's own file\n";
  const std::string summary = read_text(out / "summary.json"),
                    delta = read_text(out / "delta" / "delta.safetensors");

  // Refused before any data is read: the broken data set would fail with its own message otherwise.
  auto again = run(train_args(broken_task(), out) + " --max-steps 2");
  EXPECT_EQ(again.code, 2) << again.output;
  EXPECT_NE(again.output.find("is not empty"), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("--resume"), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("--overwrite"), std::string::npos) << again.output;
  EXPECT_EQ(again.output.find("train.jsonl:2"), std::string::npos) << again.output;
  EXPECT_EQ(read_text(out / "summary.json"), summary);
  EXPECT_EQ(read_text(out / "delta" / "delta.safetensors"), delta);

  auto both = run(train_args(task, out) + " --resume --overwrite");
  EXPECT_EQ(both.code, 2) << both.output;
  EXPECT_EQ(count_lines(both.output), 1) << both.output;

  // --overwrite starts over: the earlier run's log is gone, the user's own file stays.
  auto over = run(train_args(task, out) + " --max-steps 3 --overwrite");
  ASSERT_EQ(over.code, 0) << over.output;
  EXPECT_EQ(train_entries(out / "log.jsonl"), 3);
  EXPECT_TRUE(fs::exists(out / "notes.txt"));

  // --resume continues from the checkpoint (step 3) to the new end.
  auto resumed = run(train_args(task, out) + " --max-steps 5 --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_EQ(train_entries(out / "log.jsonl"), 5);
  EXPECT_EQ(nlohmann::json::parse(read_text(out / "summary.json"))["steps"], 5);

  // --resume where no run was: said up front.
  const fs::path empty = temp_dir("refuse_empty");
  auto nothing = run(train_args(broken_task(), empty) + " --resume");
  EXPECT_EQ(nothing.code, 2) << nothing.output;
  EXPECT_NE(nothing.output.find("no checkpoint"), std::string::npos) << nothing.output;
}

TEST(CliSafety, MergeRefusesANonEmptyOutUnlessOverwrite) {
  const fs::path task = small_task("merge"), run_dir = temp_dir("merge_run");
  auto trained = run(train_args(task, run_dir) + " --max-steps 1");
  ASSERT_EQ(trained.code, 0) << trained.output;
  const std::string merge =
      "merge --model " + kBert + " --delta " + quote((run_dir / "delta").string()) + " --out ";

  const fs::path out = temp_dir("merge_out");
  std::ofstream(out / "keep.txt") << "mine\n";
  auto refused = run(merge + quote(out.string()));
  EXPECT_EQ(refused.code, 2) << refused.output;
  EXPECT_NE(refused.output.find("--overwrite"), std::string::npos) << refused.output;
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));

  auto merged = run(merge + quote(out.string()) + " --overwrite");
  ASSERT_EQ(merged.code, 0) << merged.output;
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
  EXPECT_TRUE(fs::exists(out / "config.json"));

  // An --out that is a file is named as such, not an internal filesystem error.
  std::ofstream(out / "a_file") << "x";
  auto onto_file = run(merge + quote((out / "a_file").string()));
  EXPECT_EQ(onto_file.code, 2) << onto_file.output;
  EXPECT_NE(onto_file.output.find("is a file"), std::string::npos) << onto_file.output;
}

// --- 2. SIGTERM stops training as Ctrl-C does: checkpoint, message, exit status 143 ---

TEST(CliSafety, SigtermStopsTrainingWithACheckpoint) {
  const fs::path task = small_task("sigterm"), out = temp_dir("sigterm_run"), log = out / "output.txt";
  const fs::path run_dir = out / "run";
  const std::string command = std::string(DELTATUNE_BINARY) + " " + train_args(task, run_dir) +
                              " --max-steps 1000000 > " + quote(log.string()) + " 2>&1";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", ("exec " + command).c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Wait until training runs (a logged update), then ask it to stop. The bound only keeps a broken
  // build from hanging the test.
  bool training = false, ended = false;
  int status = 0;
  for (int i = 0; i < 6000 && !training && !ended; ++i) {
    training = fs::exists(run_dir / "log.jsonl") && train_entries(run_dir / "log.jsonl") > 0;
    ended = !training && ::waitpid(pid, &status, WNOHANG) == pid;
    if (!training && !ended) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!ended) {
    ::kill(pid, training ? SIGTERM : SIGKILL);
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  }
  ASSERT_TRUE(training) << read_text(log);
  const std::string output = read_text(log);
  ASSERT_TRUE(WIFEXITED(status)) << "ended by signal " << WTERMSIG(status) << "\n" << output;
  EXPECT_EQ(WEXITSTATUS(status), 143) << output;
  EXPECT_NE(output.find("interrupted (SIGTERM)"), std::string::npos) << output;
  EXPECT_NE(output.find("--resume"), std::string::npos) << output;
  ASSERT_TRUE(fs::exists(run_dir / "checkpoint" / "state.json"));
  const int64_t step = nlohmann::json::parse(read_text(run_dir / "checkpoint" / "state.json"))["step"];
  EXPECT_GT(step, 0);

  // Running the same command again without --resume would overwrite the checkpoint: refused.
  auto rerun = run(train_args(task, run_dir) + " --max-steps 1000000");
  EXPECT_EQ(rerun.code, 2) << rerun.output;
  EXPECT_NE(rerun.output.find("--resume"), std::string::npos) << rerun.output;
  auto resumed = run(train_args(task, run_dir) + " --resume --max-steps " + std::to_string(step + 2));
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_EQ(nlohmann::json::parse(read_text(run_dir / "summary.json"))["steps"], step + 2);
}

// --- 3. an output that cannot be written is reported up front, in words ---

TEST(CliSafety, UnwritableOutIsReportedBeforeTheData) {
  const fs::path dir = temp_dir("unwritable"), bad_data = broken_task();
  std::ofstream(dir / "a_file") << "x";
  auto file = run(train_args(bad_data, dir / "a_file"));
  EXPECT_EQ(file.code, 2) << file.output;
  EXPECT_NE(file.output.find("is a file, not a folder"), std::string::npos) << file.output;
  EXPECT_EQ(file.output.find("internal error"), std::string::npos) << file.output;
  EXPECT_EQ(file.output.find("train.jsonl:2"), std::string::npos) << file.output;

  auto under_file = run(train_args(bad_data, dir / "a_file" / "run"));
  EXPECT_EQ(under_file.code, 2) << under_file.output;
  EXPECT_NE(under_file.output.find("cannot be created"), std::string::npos) << under_file.output;
  EXPECT_NE(under_file.output.find("is a file"), std::string::npos) << under_file.output;

  // /proc takes no new folders, whoever asks (the tests may run as root, for whom modes do not count).
  auto refused = run(train_args(bad_data, "/proc/self/deltatune_run"));
  EXPECT_EQ(refused.code, 2) << refused.output;
  EXPECT_NE(refused.output.find("cannot write into"), std::string::npos) << refused.output;
  EXPECT_EQ(refused.output.find("train.jsonl:2"), std::string::npos) << refused.output;
  EXPECT_EQ(count_lines(refused.output), 1) << refused.output;
}

// --- 4. one atomic write for every file the tool writes ---

TEST(CliSafety, AtomicWriteReplacesWholeFilesAndLeavesNoTemporary) {
  const fs::path dir = temp_dir("atomic");
  deltatune::write_file_atomic(dir / "a.json", "old\n");
  fs::create_hard_link(dir / "a.json", dir / "a.link");
  deltatune::write_file_atomic(dir / "a.json", "new\n");
  EXPECT_EQ(read_text(dir / "a.json"), "new\n");
  EXPECT_EQ(read_text(dir / "a.link"), "old\n");  // a new file renamed over, not rewritten in place
  {
    deltatune::AtomicFile abandoned(dir / "a.json");
    abandoned.write("half", 4);
  }  // never committed: the target is as it was
  EXPECT_EQ(read_text(dir / "a.json"), "new\n");
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"a.json", "a.link"}));
  EXPECT_THROW(deltatune::write_file_atomic(dir / "missing" / "b.json", "x"), deltatune::IoError);
}

// A file rewritten in place would change under a hard link; one replaced atomically does not.
TEST(CliSafety, RunFilesAndOutputsAreReplacedNotRewritten) {
  const fs::path task = small_task("replaced"), out = temp_dir("replaced_run"),
                 keep = temp_dir("replaced_keep");
  auto first = run(train_args(task, out) + " --max-steps 2");
  ASSERT_EQ(first.code, 0) << first.output;
  for (const char* f : {"summary.json", "train_config.json"}) fs::create_hard_link(out / f, keep / f);
  const std::string summary = read_text(out / "summary.json");
  auto resumed = run(train_args(task, out) + " --max-steps 3 --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_EQ(read_text(keep / "summary.json"), summary);
  for (const char* f : {"summary.json", "train_config.json"}) EXPECT_NE(inode(out / f), inode(keep / f)) << f;

  // eval --output and predict --output too.
  const std::string delta = quote((out / "delta").string());
  std::ofstream(out / "eval.json") << "earlier\n";
  std::ofstream(out / "pred.jsonl") << "earlier\n";
  fs::create_hard_link(out / "eval.json", keep / "eval.json");
  fs::create_hard_link(out / "pred.jsonl", keep / "pred.jsonl");
  auto e = run("eval --model " + kBert + " --delta " + delta + " --data " + quote(task.string()) +
               " --threads 2 --output " + quote((out / "eval.json").string()));
  ASSERT_EQ(e.code, 0) << e.output;
  auto p = run("predict --model " + kBert + " --delta " + delta + " --input " +
               quote((task / "test.jsonl").string()) + " --threads 2 --output " +
               quote((out / "pred.jsonl").string()));
  ASSERT_EQ(p.code, 0) << p.output;
  EXPECT_TRUE(nlohmann::json::parse(read_text(out / "eval.json")).contains("accuracy"));
  EXPECT_EQ(count_lines(read_text(out / "pred.jsonl")), 16);
  EXPECT_EQ(read_text(keep / "eval.json"), "earlier\n");
  EXPECT_EQ(read_text(keep / "pred.jsonl"), "earlier\n");
}

// The copies of the atomic write are gone: no source file writes a file through a stream of its own
// (the run log, appended line by line, is the one file not replaced whole).
TEST(CliSafety, NoSourceWritesFilesAroundTheAtomicWrite) {
  std::vector<std::string> offenders;
  for (const char* folder : {"src", "tools"})
    for (auto& e : fs::recursive_directory_iterator(kSource / folder)) {
      if (!e.is_regular_file() || e.path().filename() == "atomic_file.cc") continue;
      const std::string text = read_text(e.path());
      for (const char* pattern : {"ofstream", "\"w\")", "\"wb\")", "O_TRUNC"})
        if (text.find(pattern) != std::string::npos)
          offenders.push_back(fs::relative(e.path(), kSource).string() + " (" + pattern + ")");
    }
  EXPECT_TRUE(offenders.empty()) << ::testing::PrintToString(offenders);
}

// --- 5. options are checked before any work; plot keeps plot.svg on an unknown metric ---

TEST(CliSafety, BadOptionsFailBeforeAnyWorkAndLeaveNoFolder) {
  const fs::path task = small_task("options"), dir = temp_dir("options");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--schedule foo", "--schedule 'foo'"},
      {"--metric foo", "--metric 'foo'"},
      {"--metric perplexity", "not a metric of a classifier"},
      {"--method no_such_method", "no_such_method"},
  };
  for (const auto& [flags, expected] : cases) {
    const fs::path out = dir / "run";
    auto r = run(train_args(task, out) + " " + flags);
    EXPECT_EQ(r.code, 2) << flags << "\n" << r.output;
    EXPECT_NE(r.output.find(expected), std::string::npos) << flags << "\n" << r.output;
    EXPECT_EQ(r.output.find("data:"), std::string::npos) << flags << "\n" << r.output;  // nothing loaded
    EXPECT_FALSE(fs::exists(out)) << flags;
  }
}

TEST(CliSafety, PlotRejectsAnUnknownMetricAndKeepsThePlot) {
  const fs::path task = small_task("plot"), out = temp_dir("plot_run");
  auto trained = run(train_args(task, out) + " --max-steps 2");
  ASSERT_EQ(trained.code, 0) << trained.output;
  const std::string svg = read_text(out / "plot.svg");
  auto r = run("plot " + quote(out.string()) + " --metric foo");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("'foo'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("accuracy"), std::string::npos) << r.output;  // the known ones are listed
  EXPECT_EQ(read_text(out / "plot.svg"), svg);
  auto ok = run("plot " + quote(out.string()) + " --metric macro_f1");
  EXPECT_EQ(ok.code, 0) << ok.output;
}

// --- 6. numbers are checked; usage errors are one line and exit 2; --help and --version exit 0 ---

TEST(CliSafety, UsageErrorsAreOneLineWithExitCode2) {
  const fs::path task = small_task("usage"), out = temp_dir("usage") / "run";
  const std::string base =
      "train --model " + kBert + " --data " + quote(task.string()) + " --out " + quote(out.string());
  for (const std::string flags :
       {"--lr nan", "--lr -1", "--lr inf", "--warmup-ratio nan", "--weight-decay -1", "--no-such-flag",
        "--epochs abc", "--epochs 0", "--epochs"}) {
    auto r = run(base + " " + flags);
    EXPECT_EQ(r.code, 2) << flags << "\n" << r.output;
    EXPECT_EQ(r.output.rfind("deltatune: ", 0), 0u) << flags << "\n" << r.output;
    EXPECT_EQ(count_lines(r.output), 1) << flags << "\n" << r.output;
    EXPECT_LT(r.output.size(), 300u) << flags << "\n" << r.output;  // no 309-digit DBL_MAX
    EXPECT_FALSE(fs::exists(out)) << flags;
  }
  auto lr = run(base + " --lr -1");
  EXPECT_NE(lr.output.find("--lr"), std::string::npos) << lr.output;
  EXPECT_NE(lr.output.find("positive"), std::string::npos) << lr.output;
  auto no_command = run("");
  EXPECT_EQ(no_command.code, 2) << no_command.output;
  auto unknown = run("no-such-command");
  EXPECT_EQ(unknown.code, 2) << unknown.output;
  EXPECT_NE(unknown.output.find("unknown command 'no-such-command'"), std::string::npos) << unknown.output;
  auto missing = run("merge --model " + kBert);
  EXPECT_EQ(missing.code, 2) << missing.output;
  EXPECT_EQ(count_lines(missing.output), 1) << missing.output;
  for (const char* ok : {"--help", "--version", "train --help", "merge --help"}) {
    auto r = run(ok);
    EXPECT_EQ(r.code, 0) << ok << "\n" << r.output;
    EXPECT_GT(r.output.size(), 8u) << ok;
  }
  EXPECT_NE(run("train --help").output.find("--overwrite"), std::string::npos);
}

// --- 7. what train says about the run ---

TEST(CliSafety, TrainWordsEpochsDevSetsAndStepCapsRight) {
  const fs::path no_dev = small_task("words", /*with_dev=*/false);
  auto one = run(train_args(no_dev, temp_dir("words_one")) + " --epochs 1");
  ASSERT_EQ(one.code, 0) << one.output;
  EXPECT_NE(one.output.find("1 epoch of 64 examples"), std::string::npos) << one.output;
  EXPECT_EQ(one.output.find("1 epochs"), std::string::npos) << one.output;
  EXPECT_NE(one.output.find("no dev set"), std::string::npos) << one.output;
  EXPECT_EQ(one.output.find("0 dev"), std::string::npos) << one.output;

  auto capped = run(train_args(small_task("words_capped"), temp_dir("words_capped")) + " --max-steps 3");
  ASSERT_EQ(capped.code, 0) << capped.output;
  EXPECT_EQ(capped.output.find("3 epochs"), std::string::npos) << capped.output;
  EXPECT_NE(capped.output.find("3 updates (--max-steps)"), std::string::npos) << capped.output;
  EXPECT_NE(capped.output.find("3 steps (max_steps)"), std::string::npos) << capped.output;
}

TEST(CliSafety, CausalLmRunWithoutDevReportsItsFinalTrainingLoss) {
  const fs::path dir = temp_dir("lm_no_dev");
  test_support::copy_sentiment_lines("train", 32, dir / "texts.jsonl");
  const fs::path out = dir / "run";
  auto r = run("train --model " + kGpt2 + " --data " + quote((dir / "texts.jsonl").string()) +
               " --task causal-lm --method lora --max-steps 3 --batch-size 8 --max-length 32 --threads 2 "
               "--quiet --out " +
               quote(out.string()));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto summary = nlohmann::json::parse(read_text(out / "summary.json"));
  ASSERT_TRUE(summary.contains("train_loss") && summary["train_loss"].is_number()) << summary.dump(2);
  // The mean of the logged losses of the last updates (all three here).
  std::ifstream log(out / "log.jsonl");
  double sum = 0;
  int n = 0;
  for (std::string line; std::getline(log, line);)
    if (auto j = nlohmann::json::parse(line); j["type"] == "train") sum += j["loss"].get<double>(), ++n;
  ASSERT_EQ(n, 3);
  EXPECT_NEAR(summary["train_loss"].get<double>(), sum / n, 1e-9);
  EXPECT_NE(r.output.find("final train loss"), std::string::npos) << r.output;
}
