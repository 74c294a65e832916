// deltatune sweep --model DIR --tasks T1,T2 --methods full,lora,... --k 100,1000 --seeds 1,2 --out DIR
// The method-comparison grid (methods x K-shot sizes x seeds x tasks), run in-process, resumable and
// shardable; writes OUT/table.md, OUT/table.csv and OUT/plot.svg (see include/deltatune/sweep.h).
#include <algorithm>
#include <cstdio>
#include <sstream>

#include "command.h"
#include "deltatune/error.h"
#include "deltatune/method_presets.h"
#include "deltatune/sweep.h"
#include "deltatune/threads.h"
#include "option_checks.h"

namespace {
using namespace deltatune;
using cli::ExitError;

struct Args {
  std::string model, out, shard, only_method, only_task;
  std::vector<std::string> tasks, methods, k_epochs;
  std::vector<int64_t> k_shots = {100, 1000};
  std::vector<uint64_t> seeds = {1, 2};
  int64_t epochs = 10, patience = 3, eval_every = 0, max_steps = 0, max_dev = 1000, max_test = 0;
  int64_t batch_size = 16, max_length = 128;
  double lr = 0, lr_scale = 1.0;
  int threads = 0;
  bool tables_only = false, list = false, quiet = false, keep_weights = false;
};

// Every name the method table has (the same as train's --method), the default grid's marked.
void print_methods() {
  const auto& grid = train::default_sweep_methods();
  for (const auto& m : method_presets()) {
    const bool in_grid = std::find(grid.begin(), grid.end(), m.name) != grid.end();
    std::printf("%c %-16s lr %-6g %s\n", in_grid ? '*' : ' ', m.name.c_str(), m.lr, m.description.c_str());
  }
  std::printf("(* in the default grid)\n");
}

void run(const Args& a) {
  if (a.list) {
    print_methods();
    return;
  }
  if (a.out.empty()) throw ExitError{"--out is required"};
  if (a.tables_only) {
    std::fputs(train::write_sweep_tables(a.out, a.methods, {}).c_str(), stdout);
    return;
  }
  if (a.model.empty() || a.tasks.empty()) throw ExitError{"--model and --tasks are required"};
  train::SweepOptions o;
  o.model_dir = a.model;
  o.out_dir = a.out;
  for (const auto& t : a.tasks) o.tasks.push_back(t);
  o.methods = a.methods;
  if (o.methods.empty()) o.methods = train::default_sweep_methods();
  o.k_shots = a.k_shots;
  o.seeds = a.seeds;
  o.epochs = a.epochs;
  for (const auto& ke : a.k_epochs) {
    long long k = 0, n = 0;
    char colon = 0;
    std::istringstream in(ke);
    if (!(in >> k >> colon >> n) || colon != ':' || k < 1 || n < 1 || !in.eof())
      throw ExitError{"--k-epochs takes K:EPOCHS pairs (e.g. 100:10,1000:2), got '" + ke + "'"};
    o.epochs_for_k[k] = n;
  }
  o.patience = a.patience;
  o.eval_every = a.eval_every;
  o.max_steps = a.max_steps;
  o.max_dev = a.max_dev;
  o.max_test = a.max_test;
  o.batch_size = a.batch_size;
  o.max_length = a.max_length;
  if (a.lr > 0) o.lr = a.lr;
  o.lr_scale = a.lr_scale;
  o.only_method = a.only_method;
  o.only_task = a.only_task;
  o.progress = !a.quiet;
  o.keep_weights = a.keep_weights;
  if (!a.shard.empty()) {
    long long i = -1, n = 0;
    char slash = 0;
    std::istringstream in(a.shard);
    if (!(in >> i >> slash >> n) || slash != '/' || n < 1 || i < 0 || i >= n || !in.eof())
      throw ExitError{"--shard must be I/N with 0 <= I < N, got '" + a.shard + "'"};
    o.shard_index = i;
    o.shard_count = n;
  }
  o.communicator = distributed::world();
  // Each process of an MPI job trains its own cells: one thread each unless told otherwise.
  if (a.threads > 0 || o.communicator->size() > 1) set_num_threads(a.threads > 0 ? a.threads : 1);
  train::SweepReport r;
  try {
    r = train::run_sweep(o);
  } catch (const ConfigError& e) {
    throw ExitError{e.what()};
  }
  if (o.communicator->rank() != 0) return;  // rank 0 reports for the job
  std::fprintf(
      stderr,
      "sweep: %lld runs planned; %lld ran, %lld already finished, %lld failed, %lld left to other pieces\n",
      (long long)r.planned, (long long)r.ran, (long long)r.skipped, (long long)r.failed,
      (long long)r.other_shards);
  for (const auto& f : r.failures) std::fprintf(stderr, "  failed: %s\n", f.c_str());
  std::printf("tables: %s/table.md, table.csv, plot.svg\n", a.out.c_str());
  if (r.failed > 0) throw ExitError{std::to_string(r.failed) + " runs failed", 1};
}

void setup(CLI::App& app) {
  auto a = std::make_shared<Args>();
  app.add_option("--model", a->model, "Hugging Face model folder (a sequence classifier is trained on it)");
  app.add_option("--tasks", a->tasks, "Task folders (train/dev/test), comma-separated")->delimiter(',');
  app.add_option("--out,--output", a->out,
                 "Sweep folder: one run folder per cell, and the tables (required)");
  app.add_option("--methods", a->methods,
                 "Methods, comma-separated: the names train's --method takes (--list-methods); default: the "
                 "starred ones, in that order")
      ->delimiter(',');
  app.add_option("--k", a->k_shots, "K-shot training set sizes, comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--seeds", a->seeds, "Seeds, comma-separated (few-shot sample, init, data order)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--epochs", a->epochs, "Most epochs per run (early stopping usually ends runs sooner)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--k-epochs", a->k_epochs,
                 "Epochs for particular K sizes, K:EPOCHS comma-separated (e.g. 100:10,1000:2)")
      ->delimiter(',');
  app.add_option("--patience", a->patience, "Early stopping: dev evaluations without improvement (0: off)")
      ->capture_default_str()
      ->check(deltatune::cli::kNonNegative);
  app.add_option("--eval-every", a->eval_every, "Also evaluate on dev every N updates (always at epoch ends)")
      ->check(deltatune::cli::kNonNegative);
  app.add_option("--max-steps", a->max_steps, "Cap on updates per run (0: none)")
      ->check(deltatune::cli::kNonNegative);
  app.add_option("--max-dev", a->max_dev, "Few-shot dev set size cap (the examples after the K train ones)")
      ->capture_default_str()
      ->check(deltatune::cli::kNonNegative);
  app.add_option("--max-test", a->max_test, "Test on the first N test examples only (0: all)")
      ->check(deltatune::cli::kNonNegative);
  app.add_option("--batch-size", a->batch_size, "Examples per batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  app.add_option("--max-length", a->max_length, "Tokens per example")
      ->capture_default_str()
      ->check(CLI::Range(2, 1 << 20));
  app.add_option("--lr", a->lr, "One learning rate for every method (default: each method's, --list-methods)")
      ->check(deltatune::cli::kPositive);
  app.add_option("--lr-scale", a->lr_scale, "Multiplies every method's learning rate")
      ->capture_default_str()
      ->check(deltatune::cli::kPositive);
  app.add_option("--only-method", a->only_method, "Run this method's cells only (a piece of the grid)");
  app.add_option("--only-task", a->only_task, "Run this task's cells only (its folder name)");
  app.add_option("--shard", a->shard, "Run piece I of N (I/N, 0-based) of the grid's cells");
  cli::add_threads_option(app, &a->threads);
  app.add_flag("--tables-only", a->tables_only,
               "Rebuild the tables from the finished runs in --out and print them");
  app.add_flag("--list-methods", a->list, "List the methods with their default learning rates");
  app.add_flag("--keep-weights", a->keep_weights, "Keep each run's best/ and checkpoint/ folders");
  app.add_flag("--quiet", a->quiet, "No progress lines");
  app.footer(
      "Runs whose folder holds a summary.json are skipped, so rerunning the same command resumes; several "
      "processes may share --out with different --shard or --only-method. Each method's delta config and "
      "default learning rate are train's (--list-methods); batch 16; max length 128; the best dev accuracy's "
      "weights are tested.");
  app.callback([a] { run(*a); });
}
deltatune::cli::Register reg("sweep", "Compare delta methods over a grid of tasks, K-shot sizes and seeds",
                             setup);
}  // namespace
