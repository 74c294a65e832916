#pragma once
// What a training run reports while it runs, sent to a sink the caller provides
// (TrainOptions::events). The command line's sink draws the progress bar on stderr (stderr_progress);
// a library user or a server receives the same events as values and prints nothing.
//
//   struct Recorder : train::TrainEvents {
//     std::vector<double> losses;
//     void on_update(const train::UpdateEvent& e) override { losses.push_back(e.loss); }
//   };
//   options.events = std::make_shared<Recorder>();
//
// Events arrive on the training thread, in order: on_start; per update on_update, then on_eval when
// an evaluation is due and on_checkpoint when a checkpoint is written; on_end last. A run that
// diverges sends on_diverged and throws instead of ending. Every method does nothing by default.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace deltatune::train {

struct TrainResult;

struct StartEvent {
  int64_t first_step = 0;   // updates already done (a resumed run starts past 0)
  int64_t total_steps = 0;  // planned
  int64_t trainable = 0, total = 0;
  std::string optimizer;  // "adamw", "sgd"
  bool resumed = false;
  bool in_memory = false;  // no run folder: no log, no checkpoints
};

struct UpdateEvent {
  int64_t step = 0;         // updates done, this one included
  double epoch = 0;         // fractional: 1.5 is halfway through the second epoch
  double loss = 0;          // this update's training loss (mean over its accumulated batches)
  double lr = 0;            // the learning rate this update used
  double grad_norm = 0;     // before clipping
  int64_t tokens = 0;       // real tokens in this update's batches
  double tokens_per_s = 0;  // since this call of train started
};

struct EvalEvent {
  int64_t step = 0;
  double epoch = 0;
  nlohmann::json metrics;       // what evaluate() returns
  bool is_best = false;         // the best score so far: these weights are kept
  bool early_stopping = false;  // patience ran out: training stops after this update
};

struct CheckpointEvent {
  int64_t step = 0;
  std::filesystem::path dir;  // RUN/checkpoint
};

class TrainEvents {
 public:
  virtual ~TrainEvents() = default;
  virtual void on_start(const StartEvent&) {}
  virtual void on_update(const UpdateEvent&) {}
  virtual void on_eval(const EvalEvent&) {}
  virtual void on_checkpoint(const CheckpointEvent&) {}
  // Something a person should know that does not stop the run (e.g. resuming with other settings).
  virtual void on_warning(const std::string&) {}
  // The loss or gradient norm of update `step` is not finite; TrainingDiverged follows.
  virtual void on_diverged(int64_t /*step*/, const std::string& /*what*/) {}
  virtual void on_end(const TrainResult&) {}
};

// The command line's sink: with `bar`, a status line on stderr (redrawn in place on a terminal, else a
// line every `log_every` updates, about 20 per run when 0) and a line per evaluation; warnings are
// printed either way. What a run gets when TrainOptions::events is null (bar = TrainOptions::progress).
std::shared_ptr<TrainEvents> stderr_progress(bool bar = true, int64_t log_every = 0);

}  // namespace deltatune::train
