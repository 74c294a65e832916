// The trainer's entry point: options checked up front, then one TrainLoop per call of train.
#include "deltatune/trainer.h"

#include <cmath>

#include "train/train_loop.h"

namespace deltatune::train {
namespace {

void validate(const TrainOptions& o) {
  auto require = [](bool ok, const std::string& what) {
    if (!ok) throw ConfigError(what);
  };
  require(o.epochs >= 1 || o.max_steps > 0, "epochs must be at least 1 (or give max_steps)");
  require(o.max_steps >= 0, "max_steps must be >= 0");
  require(std::isfinite(o.lr) && o.lr > 0, "lr must be a positive number");
  require(o.weight_decay >= 0, "weight_decay must be >= 0");
  require(o.warmup_ratio >= 0 && o.warmup_ratio <= 1, "warmup_ratio must be in [0, 1]");
  require(o.batch_size >= 1, "batch_size must be at least 1");
  require(o.eval_batch_size >= 1, "eval_batch_size must be at least 1");
  require(o.grad_accum >= 1, "grad_accum must be at least 1");
  require(o.eval_every >= 0 && o.checkpoint_every >= 0 && o.patience >= 0,
          "eval_every, checkpoint_every and patience must be >= 0");
  require(o.metric == "accuracy" || o.metric == "macro_f1" || o.metric == "mcc" || o.metric == "loss" ||
              o.metric == "perplexity",
          "metric must be one of accuracy, macro_f1, mcc, loss, perplexity (got '" + o.metric + "')");
  require(o.optimizer == "adamw" || o.optimizer == "sgd",
          "optimizer must be adamw or sgd (got '" + o.optimizer + "')");
  if (o.in_memory) {
    require(o.run_dir.empty(),
            "an in-memory run takes no run folder (run_dir is " + o.run_dir.string() + ")");
    require(!o.resume, "an in-memory run has no checkpoint to resume from");
  } else {
    require(!o.run_dir.empty(), "the trainer needs a run folder (or in_memory = true)");
  }
}

}  // namespace

Trainer::Trainer(TrainTarget target, TrainOptions options)
    : target_(std::move(target)), options_(std::move(options)) {
  if (!target_.model) throw ConfigError("the trainer needs a model");
  validate(options_);
}

TrainResult Trainer::train(const data::EncodedDataset& train_set, const data::EncodedDataset* dev) {
  return train_detail::TrainLoop(target_, options_, train_set, dev).run();
}

}  // namespace deltatune::train
