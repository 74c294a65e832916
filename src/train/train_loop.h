#pragma once
// One call of Trainer::train, as an object: the run's fixed parts (model, data, optimizer, schedule)
// and its moving position (RunState, all of it checkpointed), with one member function per phase of
// an update:
//
//   run():  start_or_resume ─▶ per update: forward_backward ─▶ (all-reduce) ─▶ after_backward hook
//           ─▶ clip_and_step ─▶ report_update ─▶ maybe_evaluate ─▶ maybe_checkpoint ─▶ on_step ─▶ ...
//           ─▶ finish
// Data parallel (options.communicator of size N): the batcher makes global batches of N x batch_size,
// this process takes its share of each, and only rank 0 (`lead_`) writes files or reports.
#include <chrono>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "deltatune/data.h"
#include "deltatune/distributed.h"
#include "deltatune/optim.h"
#include "deltatune/trainer.h"
#include "train/progress.h"

namespace deltatune::train_detail {

// The loop's position and the early-stopping bookkeeping: what a checkpoint's state.json holds.
struct RunState {
  int64_t step = 0, epoch = 0, update_in_epoch = 0, bad_evals = 0;
  int64_t last_checkpoint = -1;  // the step of the newest checkpoint, -1 before the first
  bool stop_early = false, stop_requested = false;
  double best_score = std::numeric_limits<double>::quiet_NaN();  // before the first evaluation
  int64_t best_step = -1;
  nlohmann::json best_dev = nullptr, last_dev = nullptr;
};

class TrainLoop {
 public:
  // Checks the inputs against the model and builds the optimizer; nothing is written yet.
  TrainLoop(const train::TrainTarget& target, const train::TrainOptions& options,
            const data::EncodedDataset& train_set, const data::EncodedDataset* dev);
  train::TrainResult run();

 private:
  using EpochOrder = std::vector<std::vector<size_t>>;
  struct Accumulated {  // one update's batches, after their backward
    double loss = 0;
    int64_t tokens = 0;
  };
  struct Stepped {
    double grad_norm = 0, lr = 0;
  };

  // Throws ConfigError when the data or options do not fit the model; true for a language model.
  static bool check_inputs(const TransformerModel& model, const train::TrainOptions& options,
                           const data::EncodedDataset& train_set);
  void start_or_resume();
  void resume();
  bool should_continue() const;
  // One update over the epoch's order; true at the epoch's end (the next update needs a new order).
  bool update(const EpochOrder& order);
  Accumulated forward_backward(const EpochOrder& order);
  // The global batch's part this process reads (its dataset indices; possibly none).
  std::vector<size_t> my_share(const std::vector<size_t>& global_batch) const;
  // Sums across processes (identity alone).
  double summed(double value);
  void allreduce(Accumulated& batches);
  Stepped clip_and_step();
  void report_update(const Accumulated& batches, const Stepped& stepped);
  bool maybe_evaluate(bool epoch_end);  // true when it evaluated
  void evaluate_dev();
  void keep_best();
  bool maybe_checkpoint(bool forced);  // true when it wrote one
  void save_checkpoint();
  nlohmann::json state_json() const;
  [[noreturn]] void diverged(const std::string& what, double value);
  train::TrainResult finish();

  double epoch_position() const;
  void log(const nlohmann::json& entry);

  const std::chrono::steady_clock::time_point started_;
  const train::TrainTarget& target_;
  const train::TrainOptions& o_;
  TransformerModel& model_;
  const data::EncodedDataset& train_set_;
  const bool lm_;                    // a causal or masked LM (else a classifier)
  const data::EncodedDataset* dev_;  // null: no evaluation
  const data::MlmMasking* masking_;  // masked LMs only
  const std::shared_ptr<distributed::Communicator> comm_;
  const bool lead_;    // rank 0: writes the run folder, reports progress
  const bool writes_;  // a run folder, and this process writes it

  std::shared_ptr<train::TrainEvents> events_;
  std::filesystem::path checkpoint_dir_, best_dir_, log_file_;  // empty in memory
  std::optional<RunLog> log_;

  train::TrainResult result_;
  NamedParams params_;
  std::vector<Tensor> param_tensors_;
  std::unique_ptr<Optimizer> optimizer_;
  data::Batcher batcher_;
  int64_t updates_per_epoch_ = 0, total_ = 0;
  LrSchedule schedule_;

  RunState s_;
  NamedParams best_in_memory_;  // in-memory runs: copies of the best weights
  std::chrono::steady_clock::time_point loop_started_;
  int64_t tokens_seen_ = 0;
};

}  // namespace deltatune::train_detail
