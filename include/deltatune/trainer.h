#pragma once
// Fine-tuning a sequence classifier (or a causal LM on plain texts): only the delta (and the task
// head) train, with AdamW or SGD, a learning-rate schedule, gradient clipping and accumulation,
// periodic evaluation on a dev set, early stopping, the best weights kept, and checkpoints that
// resume bit for bit.
//
//   train::TrainTarget target = train::TrainTarget::with_deltas(*model, {lora.get()}, "lora");
//   train::Trainer trainer(target, options);           // options.run_dir receives logs and checkpoints
//   train::TrainResult result = trainer.train(train_set, &dev_set);
//   train::save_trained(run_dir / "delta", target);
//
// Reproducibility: data order depends only on (seed, epoch) and the model's dropout is drawn from
// (seed, step, micro-batch) with one stream per example, so a run is a function of its seed and a resumed
// run replays exactly the updates an uninterrupted one makes.
//
// Seams for runs that are not the command line's: `after_backward` sees the accumulated gradients
// before clipping and the step (a data-parallel run averages them across processes there), `events`
// receives progress instead of stderr (deltatune/train_events.h), and `in_memory` runs without a
// run folder (the best weights kept in memory, nothing written).
//
// Data parallel (`communicator`, deltatune/distributed.h): N processes train one run as PyTorch's DDP
// does. batch_size stays per process; each update reads a global batch of N x batch_size (x
// grad_accum), the one a single process with batch N x batch_size would read, and process r takes its
// r-th share. Every process weights its loss by its share of the global batch's loss terms (examples,
// or predicted tokens for a language model), the gradients of the trainable tensors are summed across
// processes, and every process makes the same optimizer step: N processes at batch B compute what one
// process at batch N x B does, up to float32 summation order. Dropout is drawn per example (keyed by
// its index in the training set), so it does not depend on the split either. Rank 0 alone writes the
// run folder and reports progress; dev evaluation is split across processes; at every checkpoint a
// hash of the trainable weights must agree on every process.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/data.h"
#include "deltatune/delta.h"
#include "deltatune/distributed.h"
#include "deltatune/error.h"
#include "deltatune/loading.h"
#include "deltatune/model.h"
#include "deltatune/optim.h"
#include "deltatune/tokenizer.h"
#include "deltatune/train_events.h"

namespace deltatune::train {

// What a run trains: the deltas attached to the model (none for full or head-only tuning) and the
// model's own parameters that train and are saved with them (the task head; everything for "full").
struct TrainTarget {
  TransformerModel* model = nullptr;
  std::vector<delta::Delta*> deltas;
  std::vector<std::string> model_parameters;
  std::string method;  // "lora", ..., "full", "head"

  // Deltas already attached; the head trains with them.
  static TrainTarget with_deltas(TransformerModel& model, std::vector<delta::Delta*> deltas,
                                 std::string method);
  // Every model parameter trains.
  static TrainTarget full(TransformerModel& model);
  // Only the task head trains (a linear probe on frozen features).
  static TrainTarget head_only(TransformerModel& model);

  // Sets requires_grad accordingly (everything else frozen); returns (trainable, total) counts.
  std::pair<int64_t, int64_t> freeze() const;
  // The trainable tensors by name (delta parameters, then model parameters): optimizer and checkpoint keys.
  NamedParams parameters() const;
};

// Raised when the loss or the gradient norm stops being finite; training stops without writing
// anything, so the last checkpoint on disk is the last good state.
class TrainingDiverged : public Error {
  using Error::Error;
};

struct TrainOptions {
  int64_t epochs = 3;
  int64_t max_steps = 0;  // > 0: stop after this many optimizer updates (overrides epochs)
  double lr = 5e-4;
  double weight_decay = 0.01;  // not applied to biases and norm weights (as transformers' Trainer)
  double warmup_ratio = 0.06;
  std::string schedule = "linear";  // LrSchedule::names()
  double max_grad_norm = 1.0;       // <= 0: no clipping
  int64_t batch_size = 16;
  int64_t eval_batch_size = 64;
  int64_t grad_accum = 1;  // batches per optimizer update
  // The optimizer: "adamw" (torch.optim.AdamW) or "sgd" (torch.optim.SGD); its own settings below.
  // Checkpoints record it, and resuming with another one is an error.
  std::string optimizer = "adamw";
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8;  // torch's defaults
  bool amsgrad = false;
  double momentum = 0, dampening = 0;  // sgd
  bool nesterov = false;               // sgd, with momentum > 0 and dampening 0
  bool bucket_by_length = false;
  uint64_t seed = 42;

  int64_t eval_every = 0;        // > 0: also evaluate on dev every N updates (always at each epoch end)
  int64_t checkpoint_every = 0;  // > 0: also checkpoint every N updates (always after each evaluation)
  int64_t patience = 0;          // > 0: stop after N evaluations without improvement
  // Dev metric that picks the best weights: accuracy, macro_f1, mcc, loss (classifiers); loss,
  // perplexity (causal LMs).
  std::string metric = "accuracy";
  bool restore_best = true;  // end with the best dev weights (when a dev set is given)
  // Masked-LM models: how batches are corrupted (required for them; the positions depend on the step).
  std::optional<data::MlmMasking> mlm;

  std::filesystem::path run_dir;  // log.jsonl, checkpoint/, best/ (required unless in_memory)
  bool resume = false;            // continue from run_dir/checkpoint
  // No run folder (run_dir must be empty): no log, no checkpoints, the best dev weights kept in
  // memory (restore_best works as with a folder); resume is an error, and a stop leaves nothing.
  bool in_memory = false;

  // Where progress goes. Null: the stderr progress bar when `progress` (stderr_progress), warnings
  // only otherwise. A sink given here receives every event and nothing is printed.
  std::shared_ptr<TrainEvents> events;
  bool progress = true;   // progress on stderr (when `events` is null)
  int64_t log_every = 0;  // non-TTY progress lines every N updates; 0: about 20 lines per run
  // Called once per update with the trainable parameters after their gradients are accumulated,
  // before clipping and the optimizer step (a parameter that got no gradient has none). Gradients
  // may be changed in place: a data-parallel run averages them across processes here.
  std::function<void(const NamedParams& params)> after_backward;
  // Called after every update (and after that update's checkpoint, if one is due) with the step
  // count; returning false stops training, leaving a checkpoint of this step (an interrupt). Changes it
  // makes to the weights are not in that checkpoint. Tests use it to interrupt and to inject faults.
  std::function<bool(int64_t step)> on_step;
  // The processes training this run together (null: this process alone). See the top of this file.
  std::shared_ptr<distributed::Communicator> communicator;
};

struct TrainResult {
  int64_t steps = 0;           // updates done in total (including those before a resume)
  int64_t total_steps = 0;     // planned
  std::vector<double> losses;  // training loss of each update made by this call
  nlohmann::json best_dev;     // dev metrics at the best evaluation (null without dev)
  int64_t best_step = -1;
  nlohmann::json last_dev;
  std::string stop_reason;  // "completed", "max_steps", "early_stopping", "stopped"
  double seconds = 0;       // wall time of this call
  int64_t trainable = 0, total = 0;
  int processes = 1;             // the communicator's size
  int64_t allreduce_bytes = 0;   // gradient bytes each process sent into all-reduces, this call in total
  double allreduce_seconds = 0;  // time spent in those all-reduces
};

// Raised when the processes of a data-parallel run no longer hold the same trainable weights.
class ReplicasDiverged : public Error {
  using Error::Error;
};

class Trainer {
 public:
  Trainer(TrainTarget target, TrainOptions options);
  // `dev` may be null: no evaluation, the final weights are the last ones.
  TrainResult train(const data::EncodedDataset& train_set, const data::EncodedDataset* dev);

 private:
  TrainTarget target_;
  TrainOptions options_;
};

// --- evaluation ---

struct Predictions {
  std::vector<int64_t> predicted;
  std::vector<int64_t> labels;                    // -1 where unlabelled
  std::vector<std::vector<float>> probabilities;  // per example, when asked for
  double loss = 0;                                // mean cross-entropy (labelled sets only)
};
// Runs the model over a dataset in eval mode without recording, in the dataset's order.
Predictions predict(TransformerModel& model, const data::EncodedDataset& dataset, int64_t batch_size = 64,
                    bool keep_probabilities = false);
// A classifier: {"loss", "accuracy", "macro_f1", "mcc"} on a labelled dataset. A causal LM:
// {"loss", "perplexity"} over the next-token predictions of every text.
// A masked LM: {"loss", "perplexity"} at positions chosen by `mlm` with a fixed seed (the same
// positions at every evaluation).
nlohmann::json evaluate(TransformerModel& model, const data::EncodedDataset& dataset, int64_t batch_size = 64,
                        const data::MlmMasking* mlm = nullptr);
// The same two split across the processes of `comm`: each runs its share of the dataset and every
// process gets the whole result (the same predictions; sums in another order). A masked LM's
// evaluation positions then depend on the split.
Predictions predict(TransformerModel& model, const data::EncodedDataset& dataset, int64_t batch_size,
                    bool keep_probabilities, distributed::Communicator& comm);
nlohmann::json evaluate(TransformerModel& model, const data::EncodedDataset& dataset, int64_t batch_size,
                        const data::MlmMasking* mlm, distributed::Communicator& comm);

// Causal-LM loss: mean cross-entropy of each real token predicted from the ones before it (labels
// shifted by one, padding ignored). logits [B, T, V], or [B, P + T, V] when a delta prepended P
// virtual tokens (prompt tuning): those predict nothing but the first token, as in PEFT. `counted`
// receives the number of predictions.
Tensor causal_lm_loss(const Tensor& logits, const data::Batch& batch, int64_t* counted = nullptr);
// Masked-LM loss: mean cross-entropy at the positions apply_mlm_masking chose (batch.lm_targets);
// the logits of prepended virtual tokens are left out.
Tensor masked_lm_loss(const Tensor& logits, const data::Batch& batch, int64_t* counted = nullptr);
// The loss a model of this head trains on: cross-entropy over classes, or the causal-LM loss.
// `counted` receives the number of terms it averages (examples, or predictions).
Tensor training_loss(const TransformerModel& model, const Tensor& logits, const data::Batch& batch,
                     int64_t* counted = nullptr);

// The max length a run encodes with: `requested`, capped to the model's max_input_length() (its
// positions less those of the attached deltas' virtual tokens), with a note on stderr when capped.
// Call it with the deltas attached; `train` records the result and eval/predict reuse it.
int64_t effective_max_length(const TransformerModel& model, int64_t requested);

// The model inputs of a batch (token types only for models that have them).
ModelInput model_input(const TransformerModel& model, const data::Batch& batch);

// --- what a run leaves behind ---

// Saves what `target` trained into `dir`: a delta in our format (with the head tensors), or for
// full / head-only tuning the trained model tensors in the same layout (delta.safetensors and a
// delta_config.json whose delta method is "full" or "head").
void save_trained(const std::filesystem::path& dir, const TrainTarget& target);
// PEFT's adapter format, for a single delta whose method PEFT has. Returns false when not possible.
bool save_trained_peft(const std::filesystem::path& dir, const TrainTarget& target);

// Loads a folder written by save_trained (or a PEFT adapter) onto `model`: a view of the one loader's
// last step (apply_saved_delta, deltatune/loading.h).
using LoadedTrained = AppliedDelta;
inline LoadedTrained load_trained(const std::filesystem::path& dir, TransformerModel& model) {
  return apply_saved_delta(dir, model);
}

// Finds labels.json for a delta folder: inside it, or in its parent (the run folder).
std::filesystem::path find_labels_file(const std::filesystem::path& delta_dir);

// The run's train_config.json (the settings `deltatune train` used) found beside a delta folder (in
// it or in its run folder), or null when there is none.
nlohmann::json read_train_config(const std::filesystem::path& delta_dir);

// A trained classifier ready to run: the one loader (load_with_delta, deltatune/loading.h) asked for a
// classification head sized by the delta's labels.json, and the tokenizer. Without a delta (empty path)
// the head is newly initialised over `labels` (a baseline).
using Classifier = LoadedModel;
Classifier load_classifier(const std::filesystem::path& model_dir, const std::filesystem::path& delta_dir,
                           const data::LabelMap* labels = nullptr);

// The run's curves as a small SVG: training loss, dev loss and the dev metric against the step.
std::string training_plot_svg(const std::vector<nlohmann::json>& log_entries,
                              const std::string& metric = "accuracy");
// Reads run_dir/log.jsonl and writes run_dir/plot.svg; returns its path.
std::filesystem::path write_training_plot(const std::filesystem::path& run_dir,
                                          const std::string& metric = "accuracy");
std::vector<nlohmann::json> read_log(const std::filesystem::path& log_file);

}  // namespace deltatune::train
