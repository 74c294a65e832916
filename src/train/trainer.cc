// The training loop: updates, evaluation, best weights, checkpoints and early stopping.
#include "deltatune/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>

#include "deltatune/autograd.h"
#include "deltatune/metrics.h"
#include "deltatune/ops.h"
#include "train/checkpoint.h"
#include "train/files.h"
#include "train/progress.h"

namespace fs = std::filesystem;

namespace deltatune::train {
namespace {

using train_detail::ProgressBar;
using train_detail::RunLog;

// Dropout streams per update from (seed, step): a resumed run draws exactly the same masks.
uint64_t step_seed(uint64_t seed, int64_t step) {
  uint64_t z = seed ^ (0xD1B54A32D192ED03ull * uint64_t(step + 1));
  z = (z ^ (z >> 32)) * 0x9E3779B97F4A7C15ull;
  return z ^ (z >> 29);
}

// transformers' Trainer decays every weight except biases and normalisation weights.
std::vector<ParamGroup> param_groups(TransformerModel& model, const NamedParams& params,
                                     double weight_decay) {
  std::map<std::string, std::string> module_types;
  for (auto& [path, module] : model.named_modules()) module_types[path] = module->type_name();
  ParamGroup decay, no_decay;
  no_decay.weight_decay = 0.0;
  decay.weight_decay = weight_decay;
  for (const auto& [name, t] : params) {
    const size_t dot = name.rfind('.');
    const std::string leaf = dot == std::string::npos ? name : name.substr(dot + 1);
    const std::string owner = dot == std::string::npos ? "" : name.substr(0, dot);
    auto it = module_types.find(owner);
    const bool is_norm = it != module_types.end() && it->second.find("Norm") != std::string::npos;
    const bool is_bias = leaf == "bias" || leaf.ends_with("_bias");
    (is_norm || is_bias ? no_decay : decay).params.emplace_back(name, t);
  }
  std::vector<ParamGroup> groups;
  if (!decay.params.empty()) groups.push_back(std::move(decay));
  if (!no_decay.params.empty()) groups.push_back(std::move(no_decay));
  return groups;
}

bool improved(double score, double best, const std::string& metric) {
  if (std::isnan(best)) return true;
  return metrics::higher_is_better(metric) ? score > best : score < best;
}

double json_number(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>()
                                               : std::numeric_limits<double>::quiet_NaN();
}

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
  require(!o.run_dir.empty(), "the trainer needs a run folder");
}

}  // namespace

Trainer::Trainer(TrainTarget target, TrainOptions options)
    : target_(std::move(target)), options_(std::move(options)) {
  if (!target_.model) throw ConfigError("the trainer needs a model");
  validate(options_);
}

TrainResult Trainer::train(const data::EncodedDataset& train_set, const data::EncodedDataset* dev) {
  const auto started = std::chrono::steady_clock::now();
  const TrainOptions& o = options_;
  TransformerModel& model = *target_.model;
  const bool mlm = model.head == HeadKind::MaskedLM;
  const bool lm = model.head == HeadKind::CausalLM || mlm;
  if (!lm && model.head != HeadKind::SequenceClassification)
    throw ConfigError("the trainer fine-tunes sequence classifiers, causal LMs and masked LMs; the model has a " +
                      std::string(head_name(model.head)) + " head");
  if (mlm && !o.mlm) throw ConfigError("training a masked LM needs masking settings (TrainOptions::mlm)");
  const data::MlmMasking* masking = mlm ? &*o.mlm : nullptr;
  // A classifier may be judged by its dev loss too; a language model has no classes to count.
  if (lm ? o.metric != "loss" && o.metric != "perplexity" : o.metric == "perplexity")
    throw ConfigError("metric '" + o.metric + "' does not fit a " + std::string(head_name(model.head)) +
                      " model");
  if (train_set.size() == 0) throw ConfigError("the training set is empty");
  if (!lm)
    for (const auto& e : train_set.examples)
      if (e.label < 0 || e.label >= model.config.num_labels)
        throw ConfigError("training label " + std::to_string(e.label) + " is outside the head's " +
                          std::to_string(model.config.num_labels) + " classes");
  if (dev && dev->size() == 0) dev = nullptr;
  fs::create_directories(o.run_dir);

  TrainResult result;
  std::tie(result.trainable, result.total) = target_.freeze();
  const NamedParams params = target_.parameters();
  if (params.empty()) throw ConfigError("nothing to train: no parameter requires a gradient");
  std::vector<Tensor> param_tensors;
  for (const auto& [_, t] : params) param_tensors.push_back(t);
  AdamW optimizer(param_groups(model, params, o.weight_decay), {.lr = o.lr, .weight_decay = o.weight_decay});

  data::Batcher batcher(
      train_set,
      {.batch_size = o.batch_size, .shuffle = true, .seed = o.seed, .bucket_by_length = o.bucket_by_length},
      0);
  const int64_t batches_per_epoch = batcher.batches_per_epoch();
  const int64_t updates_per_epoch = (batches_per_epoch + o.grad_accum - 1) / o.grad_accum;
  const int64_t total = o.max_steps > 0 ? o.max_steps : o.epochs * updates_per_epoch;
  const int64_t warmup = int64_t(std::ceil(o.warmup_ratio * double(total)));
  const LrSchedule schedule = LrSchedule::from_name(o.schedule, warmup, total);
  result.total_steps = total;

  // The loop's position and the early-stopping bookkeeping: all of it goes into checkpoints.
  int64_t step = 0, epoch = 0, update_in_epoch = 0, bad_evals = 0, last_checkpoint = -1;
  bool stop_early = false, stop_requested = false;
  double best_score = std::numeric_limits<double>::quiet_NaN();
  nlohmann::json best_dev = nullptr, last_dev = nullptr;
  const fs::path checkpoint_dir = o.run_dir / "checkpoint", best_dir = o.run_dir / "best",
                 log_file = o.run_dir / "log.jsonl";

  if (o.resume) {
    if (!train_detail::checkpoint_exists(checkpoint_dir))
      throw IoError(checkpoint_dir.string() + ": no checkpoint to resume from");
    nlohmann::json s = train_detail::load_checkpoint(checkpoint_dir, params, optimizer);
    if (s.value("seed", o.seed) != o.seed || s.value("batch_size", o.batch_size) != o.batch_size ||
        s.value("grad_accum", o.grad_accum) != o.grad_accum ||
        s.value("train_size", int64_t(train_set.size())) != int64_t(train_set.size()))
      std::fprintf(stderr,
                   "warning: resuming with a different seed, batch size, accumulation or training set than "
                   "the checkpoint's\n");
    step = s.at("step").get<int64_t>();
    epoch = s.at("epoch").get<int64_t>();
    update_in_epoch = s.at("update_in_epoch").get<int64_t>();
    bad_evals = s.value("bad_evals", int64_t(0));
    best_score = json_number(s, "best_score");
    result.best_step = s.value("best_step", int64_t(-1));
    best_dev = s.value("best_dev", nlohmann::json());
    last_dev = s.value("last_dev", nlohmann::json());
    stop_early = s.value("stopped_early", false);  // an early-stopped run has nothing left to do
    last_checkpoint = step;
    RunLog::truncate_after(log_file, step);
  } else {
    // A fresh run must not append to an older run's log.
    std::error_code ignored;
    fs::remove(log_file, ignored);
  }

  RunLog log(log_file);
  ProgressBar bar(total, step, o.progress, o.log_every);

  auto state_json = [&] {
    return nlohmann::json{
        {"step", step},
        {"epoch", epoch},
        {"update_in_epoch", update_in_epoch},
        {"bad_evals", bad_evals},
        {"best_score", std::isnan(best_score) ? nlohmann::json() : nlohmann::json(best_score)},
        {"best_step", result.best_step},
        {"best_dev", best_dev},
        {"last_dev", last_dev},
        {"stopped_early", stop_early},
        {"seed", o.seed},
        {"batch_size", o.batch_size},
        {"grad_accum", o.grad_accum},
        {"total_steps", total},
        {"train_size", int64_t(train_set.size())},
        {"method", target_.method}};
  };
  auto save_checkpoint = [&] {
    train_detail::save_checkpoint(checkpoint_dir, params, optimizer, state_json());
    last_checkpoint = step;
  };
  auto diverged = [&](const std::string& what, double value) {
    log.write({{"type", "diverged"},
               {"step", step + 1},
               {"what", what},
               {"value", std::isnan(value) ? "nan" : "inf"}});
    bar.finish();
    char lr[32];
    std::snprintf(lr, sizeof lr, "%g", o.lr);
    std::string where = last_checkpoint >= 0
                            ? "the last good checkpoint (step " + std::to_string(last_checkpoint) +
                                  ") is kept in " + checkpoint_dir.string() + "; --resume continues from it"
                            : "no checkpoint had been written yet";
    throw TrainingDiverged("training stopped at step " + std::to_string(step + 1) + ": the " + what + " is " +
                           (std::isnan(value) ? "nan" : "inf") + " (try a lower --lr than " + lr +
                           " or a smaller --max-grad-norm); " + where);
  };
  auto run_eval = [&] {
    nlohmann::json m = evaluate(model, *dev, o.eval_batch_size, masking);
    const double score = json_number(m, o.metric.c_str());
    const bool is_best = improved(score, best_score, o.metric);
    nlohmann::json entry = {{"type", "eval"},
                            {"split", "dev"},
                            {"step", step},
                            {"epoch", double(epoch) + double(update_in_epoch) / double(updates_per_epoch)}};
    entry.update(m);
    entry["best"] = is_best;
    log.write(entry);
    last_dev = m;
    if (is_best) {
      best_score = score;
      best_dev = m;
      result.best_step = step;
      bad_evals = 0;
      train_detail::save_best(best_dir, target_, params);
    } else if (o.patience > 0 && ++bad_evals >= o.patience) {
      stop_early = true;
    }
    char line[256];
    const char* mark = is_best ? "  (best)" : stop_early ? "  (early stopping)" : "";
    if (lm)
      std::snprintf(line, sizeof line, "dev @ step %lld: loss %.4f  perplexity %.3f%s", (long long)step,
                    json_number(m, "loss"), json_number(m, "perplexity"), mark);
    else
      std::snprintf(line, sizeof line, "dev @ step %lld: loss %.4f  accuracy %.4f  macro_f1 %.4f%s",
                    (long long)step, json_number(m, "loss"), json_number(m, "accuracy"),
                    json_number(m, "macro_f1"), mark);
    bar.message(line);
  };

  model.set_training(true);
  while (step < total && !stop_early && !stop_requested) {
    const std::vector<std::vector<size_t>> order = batcher.epoch_order(epoch);
    for (; update_in_epoch < updates_per_epoch && step < total;) {
      ForwardContext update_call(step_seed(o.seed, step));  // the update's dropout, reproducible
      const size_t first = size_t(update_in_epoch * o.grad_accum);
      const size_t last = std::min(order.size(), first + size_t(o.grad_accum));
      const float scale = 1.0f / float(last - first);
      double loss_value = 0;
      int64_t tokens = 0;
      for (size_t b = first; b < last; ++b) {
        data::Batch batch = batcher.make_batch(order[b]);
        if (masking) data::apply_mlm_masking(batch, *masking, step_seed(o.seed, step) + b);
        ModelInput input = model_input(model, batch);
        input.context = &update_call;
        Tensor loss = training_loss(model, model.forward(input).logits, batch);
        for (delta::Delta* d : target_.deltas)  // e.g. diff pruning's sparsity penalty
          if (Tensor penalty = d->regularizer(); penalty.defined()) loss = ops::add(loss, penalty);
        const double value = loss.item();
        if (!std::isfinite(value)) diverged("loss", value);
        ops::mul_scalar(loss, scale).backward();
        loss_value += value * scale;
        tokens += batch.num_tokens;
      }
      const double grad_norm =
          clip_grad_norm(param_tensors, o.max_grad_norm > 0 ? o.max_grad_norm : INFINITY);
      if (!std::isfinite(grad_norm)) diverged("gradient norm", grad_norm);
      optimizer.set_lr_multiplier(schedule.multiplier(step));
      const double lr = optimizer.lr();
      optimizer.step();
      optimizer.zero_grad();
      ++step;
      ++update_in_epoch;
      result.losses.push_back(loss_value);

      const double epoch_pos = double(epoch) + double(update_in_epoch) / double(updates_per_epoch);
      bar.update(step, epoch_pos, loss_value, lr, tokens);
      log.write({{"type", "train"},
                 {"step", step},
                 {"epoch", epoch_pos},
                 {"loss", loss_value},
                 {"lr", lr},
                 {"grad_norm", grad_norm},
                 {"tokens_per_s", bar.tokens_per_second()}});

      const bool epoch_end = update_in_epoch == updates_per_epoch;
      const bool evaluate_now =
          dev && ((o.eval_every > 0 && step % o.eval_every == 0) || epoch_end || step == total);
      if (evaluate_now) {
        model.set_training(false);
        run_eval();
        model.set_training(true);
      }
      if (epoch_end) {
        ++epoch;
        update_in_epoch = 0;
      }
      const bool checkpoint_due = evaluate_now || epoch_end || step == total || stop_early ||
                                  (o.checkpoint_every > 0 && step % o.checkpoint_every == 0);
      if (checkpoint_due) save_checkpoint();
      // The callback runs after the checkpoint: what it does to the weights is not saved unless it
      // asks to stop, and a stop always leaves a checkpoint of this step.
      stop_requested = o.on_step && !o.on_step(step);
      if (stop_requested && !checkpoint_due) save_checkpoint();
      // A new epoch needs its own order: leave the loop over this one.
      if (stop_early || stop_requested || epoch_end) break;
    }
  }
  model.set_training(false);
  bar.finish();

  result.steps = step;
  result.best_dev = best_dev;
  result.last_dev = last_dev;
  result.stop_reason = stop_requested    ? "stopped"
                       : stop_early      ? "early_stopping"
                       : o.max_steps > 0 ? "max_steps"
                                         : "completed";
  // End with the weights that scored best on dev (what the test set and the saved delta get).
  if (o.restore_best && !stop_requested && result.best_step >= 0 && result.best_step != step &&
      fs::exists(best_dir))
    train_detail::restore_best(best_dir, target_, params);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return result;
}

}  // namespace deltatune::train
