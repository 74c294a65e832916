#pragma once
// The method-comparison sweep: a grid of methods x K-shot sizes x seeds x tasks, each cell one
// few-shot fine-tuning run driven in-process, as the UniPELT paper's tables are made.
//
//   train::SweepOptions o;
//   o.model_dir = "assets/models/bert-mini"; o.out_dir = "runs/sweep";
//   o.tasks = {"assets/tasks/sentiment"}; o.methods = {"full", "lora"}; o.k_shots = {100}; o.seeds = {1, 2};
//   train::SweepReport r = train::run_sweep(o);   // runs what is missing, then writes the tables
//
// Each run has its own folder OUT/<task>/k<K>/<method>/seed<S>/ holding summary.json once it has
// finished; a folder with a summary.json is skipped, so a sweep resumes where it stopped and can be
// run in pieces (only some methods, or shard i of n) by several processes writing into the same OUT.
// The tables (OUT/table.md, OUT/table.csv, OUT/plot.svg) are rebuilt from every summary.json found.
// Over MPI (`communicator`, e.g. `mpirun -np N deltatune sweep`), the processes split this shard's
// cells (each cell still one process); their summaries are then gathered to rank 0, which writes
// the tables, so no shared file system is needed.
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/distributed.h"
#include "deltatune/workflow.h"

namespace deltatune::train {

// The grid's methods are names of the method table (include/deltatune/method_presets.h), the same
// names `train --method` takes, each with its delta config and default learning rate.
// The methods a sweep compares when none are given, in this order: full, bitfit, houlsby, pfeiffer,
// prefix, prompt, lora, ia3, unipelt-ap, unipelt-apl (the UniPELT paper's rows, plus prompt and IA3).
const std::vector<std::string>& default_sweep_methods();

struct SweepOptions {
  std::filesystem::path model_dir;
  std::filesystem::path out_dir;
  std::vector<std::filesystem::path> tasks;  // task folders (train/dev/test)
  std::vector<std::string> methods;          // names from method_presets()
  std::vector<int64_t> k_shots = {100, 1000};
  std::vector<uint64_t> seeds = {1, 2};

  // Training settings shared by every run (the paper's batch 16 and max length 128).
  int64_t batch_size = 16;
  int64_t max_length = 128;
  int64_t epochs = 10;  // upper bound; early stopping on the few-shot dev set ends most runs sooner
  std::map<int64_t, int64_t> epochs_for_k;  // K -> epochs, where a K needs another bound than `epochs`
  int64_t patience = 3;                     // evaluations without improvement (0: off)
  int64_t eval_every = 0;                   // > 0: also evaluate every N updates
  int64_t max_steps = 0;                    // > 0: cap on updates per run
  int64_t max_dev = 1000;                   // cap on the few-shot dev set (the paper: 1000)
  int64_t max_test = 0;                     // > 0: evaluate on the first N test examples only
  double lr_scale = 1.0;                    // multiplies every method's learning rate
  std::optional<double> lr;                 // overrides every method's learning rate

  // Which part of the grid this process runs (the tables always cover every finished run).
  std::string only_method;  // non-empty: this method only
  std::string only_task;    // non-empty: this task (folder name) only
  int64_t shard_index = 0, shard_count = 1;
  // The processes sharing this shard (null: this one alone). Rank r of N runs the cells i of the grid
  // with i % (shard_count x N) == shard_index + shard_count x r.
  std::shared_ptr<distributed::Communicator> communicator;

  bool progress = true;       // one line per run on stderr
  bool keep_weights = false;  // keep each run's best/ and checkpoint/ folders (deleted by default)
};

// One cell of the grid.
struct SweepRun {
  std::string method, task;
  std::filesystem::path task_dir;
  int64_t k = 0;
  uint64_t seed = 0;
  std::filesystem::path dir;  // its run folder
};

// Every run of the grid, in a fixed order (seed, K, task, method: every cell gets its first seed
// before any gets its second), whatever the shard.
std::vector<SweepRun> sweep_plan(const SweepOptions& options);
// Whether a run has finished (its summary.json exists).
bool sweep_run_finished(const SweepRun& run);
// The training request of one cell (the workflow of deltatune/workflow.h): the sweep's settings, the
// method's learning rate from the method table (times lr_scale) unless `lr` overrides it.
workflow::TrainRequest sweep_cell_request(const SweepOptions& options, const SweepRun& run);
// Trains (run_training with the cell's few-shot splits) and tests one run; writes run.dir/summary.json
// last and returns it.
nlohmann::json run_sweep_cell(const SweepOptions& options, const SweepRun& run);

struct SweepReport {
  int64_t planned = 0;  // runs of the whole grid
  int64_t ran = 0, skipped = 0, failed = 0, other_shards = 0;
  std::vector<std::string> failures;  // "run dir: message"
};
// Runs this process's share of the unfinished runs, then writes the tables. Over several processes,
// every one returns the whole job's report.
SweepReport run_sweep(const SweepOptions& options);

// Reads every OUT/**/summary.json and writes OUT/table.md, OUT/table.csv and OUT/plot.svg. Methods
// and tasks appear in the order given (empty: as found). Returns the markdown.
std::string write_sweep_tables(const std::filesystem::path& out_dir,
                               const std::vector<std::string>& methods = {},
                               const std::vector<std::string>& tasks = {});

}  // namespace deltatune::train
