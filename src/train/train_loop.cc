// The training loop: updates, evaluation, best weights, checkpoints and early stopping.
#include "train/train_loop.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <tuple>

#include "deltatune/autograd.h"
#include "deltatune/forward_context.h"
#include "deltatune/metrics.h"
#include "deltatune/ops.h"
#include "train/checkpoint.h"
#include "train/replicas.h"

namespace fs = std::filesystem;

namespace deltatune::train_detail {
namespace {

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

std::unique_ptr<Optimizer> make_optimizer(const train::TrainOptions& o, std::vector<ParamGroup> groups) {
  if (o.optimizer == "sgd")
    return std::make_unique<SGD>(std::move(groups), SGDOptions{.lr = o.lr,
                                                               .momentum = o.momentum,
                                                               .dampening = o.dampening,
                                                               .weight_decay = o.weight_decay,
                                                               .nesterov = o.nesterov});
  return std::make_unique<AdamW>(std::move(groups), AdamWOptions{.lr = o.lr,
                                                                 .beta1 = o.adam_beta1,
                                                                 .beta2 = o.adam_beta2,
                                                                 .eps = o.adam_epsilon,
                                                                 .weight_decay = o.weight_decay,
                                                                 .amsgrad = o.amsgrad});
}

bool improved(double score, double best, const std::string& metric) {
  if (std::isnan(best)) return true;
  return metrics::higher_is_better(metric) ? score > best : score < best;
}

double json_number(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>()
                                               : std::numeric_limits<double>::quiet_NaN();
}

int64_t updates_per_epoch(const data::Batcher& batcher, int64_t grad_accum) {
  return (batcher.batches_per_epoch() + grad_accum - 1) / grad_accum;
}

std::shared_ptr<distributed::Communicator> communicator_of(const train::TrainOptions& o) {
  return o.communicator ? o.communicator : distributed::single_process();
}

// Rank 0 reports; the other processes of a data-parallel run say nothing.
std::shared_ptr<train::TrainEvents> events_of(const train::TrainOptions& o, bool lead) {
  if (!lead) return std::make_shared<train::TrainEvents>();
  return o.events ? o.events : train::stderr_progress(o.progress, o.log_every);
}

}  // namespace

bool TrainLoop::check_inputs(const TransformerModel& model, const train::TrainOptions& o,
                             const data::EncodedDataset& train_set) {
  const bool mlm = model.head == HeadKind::MaskedLM;
  const bool lm = model.head == HeadKind::CausalLM || mlm;
  if (!lm && model.head != HeadKind::SequenceClassification)
    throw ConfigError(
        "the trainer fine-tunes sequence classifiers, causal LMs and masked LMs; the model has a " +
        std::string(head_name(model.head)) + " head");
  if (mlm && !o.mlm) throw ConfigError("training a masked LM needs masking settings (TrainOptions::mlm)");
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
  return lm;
}

TrainLoop::TrainLoop(const train::TrainTarget& target, const train::TrainOptions& options,
                     const data::EncodedDataset& train_set, const data::EncodedDataset* dev)
    : started_(std::chrono::steady_clock::now()),
      target_(target),
      o_(options),
      model_(*target.model),
      train_set_(train_set),
      lm_(check_inputs(model_, options, train_set)),
      dev_(dev && dev->size() > 0 ? dev : nullptr),
      masking_(model_.head == HeadKind::MaskedLM ? &*options.mlm : nullptr),
      comm_(communicator_of(options)),
      lead_(comm_->rank() == 0),
      writes_(lead_ && !options.in_memory),
      events_(events_of(options, lead_)),
      // The global batches: each process reads its share of every one.
      batcher_(train_set,
               {.batch_size = options.batch_size * comm_->size(),
                .shuffle = true,
                .seed = options.seed,
                .bucket_by_length = options.bucket_by_length},
               0),
      updates_per_epoch_(updates_per_epoch(batcher_, options.grad_accum)),
      total_(options.max_steps > 0 ? options.max_steps : options.epochs * updates_per_epoch_),
      schedule_(LrSchedule::from_name(options.schedule,
                                      int64_t(std::ceil(options.warmup_ratio * double(total_))), total_)) {
  if (!o_.in_memory) {
    if (writes_) fs::create_directories(o_.run_dir);
    checkpoint_dir_ = o_.run_dir / "checkpoint";
    best_dir_ = o_.run_dir / "best";
    log_file_ = o_.run_dir / "log.jsonl";
  }
  std::tie(result_.trainable, result_.total) = target_.freeze();
  params_ = target_.parameters();
  if (params_.empty()) throw ConfigError("nothing to train: no parameter requires a gradient");
  for (const auto& [_, t] : params_) param_tensors_.push_back(t);
  optimizer_ = make_optimizer(o_, param_groups(model_, params_, o_.weight_decay));
  result_.total_steps = total_;
  result_.processes = comm_->size();
}

train::TrainResult TrainLoop::run() {
  start_or_resume();
  model_.set_training(true);
  while (should_continue()) {
    const EpochOrder order = batcher_.epoch_order(s_.epoch);
    bool epoch_end = false;
    while (!epoch_end && s_.update_in_epoch < updates_per_epoch_ && should_continue())
      epoch_end = update(order);
  }
  model_.set_training(false);
  return finish();
}

bool TrainLoop::should_continue() const { return s_.step < total_ && !s_.stop_early && !s_.stop_requested; }

void TrainLoop::start_or_resume() {
  if (o_.resume) {
    resume();
  } else if (writes_) {
    // A fresh run must not append to an older run's log.
    std::error_code ignored;
    fs::remove(log_file_, ignored);
  }
  if (writes_) log_.emplace(log_file_);
  events_->on_start({.first_step = s_.step,
                     .total_steps = total_,
                     .trainable = result_.trainable,
                     .total = result_.total,
                     .optimizer = optimizer_->name(),
                     .resumed = o_.resume,
                     .in_memory = o_.in_memory});
  loop_started_ = std::chrono::steady_clock::now();
}

void TrainLoop::resume() {
  if (!checkpoint_exists(checkpoint_dir_))
    throw IoError(checkpoint_dir_.string() + ": no checkpoint to resume from");
  const nlohmann::json saved = read_checkpoint_state(checkpoint_dir_);
  // Checkpoints from before the choice existed were AdamW's.
  const std::string saved_optimizer = saved.value("optimizer", std::string("adamw"));
  if (saved_optimizer != o_.optimizer)
    throw ConfigError(checkpoint_dir_.string() + ": the checkpoint was trained with the " + saved_optimizer +
                      " optimizer; resuming it with " + o_.optimizer + " is not possible");
  // Every process reads the checkpoint (the run folder is shared, as on a cluster's file system).
  const int64_t saved_processes = saved.value("processes", int64_t(1));
  if (saved_processes != comm_->size())
    throw ConfigError(
        checkpoint_dir_.string() + ": the checkpoint was trained by " + std::to_string(saved_processes) +
        " process(es); resume it with the same number (" +
        (saved_processes > 1 ? "mpirun -np " + std::to_string(saved_processes) : "without mpirun") +
        "), so that every update reads the same global batch");
  load_checkpoint_weights(checkpoint_dir_, params_, *optimizer_);
  const nlohmann::json& s = saved;
  if (s.value("seed", o_.seed) != o_.seed || s.value("batch_size", o_.batch_size) != o_.batch_size ||
      s.value("grad_accum", o_.grad_accum) != o_.grad_accum ||
      s.value("train_size", int64_t(train_set_.size())) != int64_t(train_set_.size()))
    events_->on_warning(
        "warning: resuming with a different seed, batch size, accumulation or training set than the "
        "checkpoint's");
  s_.step = s.at("step").get<int64_t>();  // read_checkpoint_state checked the types
  s_.epoch = s.at("epoch").get<int64_t>();
  s_.update_in_epoch = s.at("update_in_epoch").get<int64_t>();
  if (s_.update_in_epoch >= updates_per_epoch_)
    throw ConfigError((checkpoint_dir_ / "state.json").string() + ": the checkpoint stopped at update " +
                      std::to_string(s_.update_in_epoch) + " of an epoch, but this run's epochs have " +
                      std::to_string(updates_per_epoch_) +
                      " updates: resume with the training set and batch size of the interrupted run");
  s_.bad_evals = s.value("bad_evals", int64_t(0));
  s_.best_score = json_number(s, "best_score");
  s_.best_step = s.value("best_step", int64_t(-1));
  s_.best_dev = s.value("best_dev", nlohmann::json());
  s_.last_dev = s.value("last_dev", nlohmann::json());
  s_.stop_early = s.value("stopped_early", false);  // an early-stopped run has nothing left to do
  s_.last_checkpoint = s_.step;
  if (writes_) RunLog::truncate_after(log_file_, s_.step);
}

bool TrainLoop::update(const EpochOrder& order) {
  Accumulated batches = forward_backward(order);
  allreduce(batches);
  if (o_.after_backward) o_.after_backward(params_);
  const Stepped stepped = clip_and_step();
  ++s_.step;
  ++s_.update_in_epoch;
  result_.losses.push_back(batches.loss);
  report_update(batches, stepped);

  const bool epoch_end = s_.update_in_epoch == updates_per_epoch_;
  const bool evaluated = maybe_evaluate(epoch_end);
  if (epoch_end) {
    ++s_.epoch;
    s_.update_in_epoch = 0;
  }
  const bool saved = maybe_checkpoint(evaluated || epoch_end);
  // The callback runs after the checkpoint: what it does to the weights is not saved unless it
  // asks to stop, and a stop always leaves a checkpoint of this step.
  // Every process stops at the same update (a signal may reach them at different ones).
  s_.stop_requested = summed(o_.on_step && !o_.on_step(s_.step) ? 1.0 : 0.0) > 0;
  if (s_.stop_requested && !saved) save_checkpoint();
  return epoch_end;
}

TrainLoop::Accumulated TrainLoop::forward_backward(const EpochOrder& order) {
  const size_t first = size_t(s_.update_in_epoch * o_.grad_accum);
  const size_t last = std::min(order.size(), first + size_t(o_.grad_accum));
  const float scale = 1.0f / float(last - first);
  Accumulated out;
  for (size_t b = first; b < last; ++b) {
    const std::vector<size_t> mine = my_share(order[b]);
    // The micro-batch's dropout: per example, from (seed, step, micro-batch) and the example's index,
    // so that neither a resume nor the split across processes changes a mask.
    ForwardContext call(step_seed(o_.seed, s_.step) + (b - first));
    call.dropout_rng.key_rows(std::vector<uint64_t>(mine.begin(), mine.end()));
    Tensor loss;
    int64_t terms = 0;
    double value = 0;
    data::Batch batch;
    if (!mine.empty()) {
      batch = batcher_.make_batch(mine);
      if (masking_)
        data::apply_mlm_masking(batch, *masking_,
                                step_seed(o_.seed, s_.step) + b + (size_t(comm_->rank()) << 32));
      ModelInput input = train::model_input(model_, batch);
      input.context = &call;
      loss = train::training_loss(model_, model_.forward(input).logits, batch, &terms);
      for (delta::Delta* d : target_.deltas)  // e.g. diff pruning's sparsity penalty
        if (Tensor penalty = d->regularizer(); penalty.defined()) loss = ops::add(loss, penalty);
      value = loss.item();
      if (!std::isfinite(value)) diverged("loss", value);
    }
    // This process's share of the global micro-batch's loss terms (1 alone): the processes' weighted
    // losses add up to the loss one process would compute over the whole micro-batch.
    const double all_terms = summed(double(terms));
    const float share = comm_->size() == 1 ? 1.0f : all_terms > 0 ? float(double(terms) / all_terms) : 0.0f;
    if (loss.defined()) {
      ops::mul_scalar(loss, scale * share).backward();
      out.loss += value * scale * share;
      out.tokens += batch.num_tokens;
    }
  }
  return out;
}

std::vector<size_t> TrainLoop::my_share(const std::vector<size_t>& global_batch) const {
  const auto [begin, end] = distributed::share(global_batch.size(), comm_->rank(), comm_->size());
  return {global_batch.begin() + ptrdiff_t(begin), global_batch.begin() + ptrdiff_t(end)};
}

double TrainLoop::summed(double value) {
  if (comm_->size() == 1) return value;
  comm_->allreduce_sum(std::span<double>(&value, 1));
  return value;
}

void TrainLoop::allreduce(Accumulated& batches) {
  if (comm_->size() == 1) return;
  const AllreduceCost cost = allreduce_gradients(params_, *comm_);
  result_.allreduce_bytes += cost.bytes;
  result_.allreduce_seconds += cost.seconds;
  double totals[2] = {batches.loss, double(batches.tokens)};
  comm_->allreduce_sum(totals);
  batches.loss = totals[0];
  batches.tokens = int64_t(totals[1]);
}

TrainLoop::Stepped TrainLoop::clip_and_step() {
  Stepped out;
  out.grad_norm = clip_grad_norm(param_tensors_, o_.max_grad_norm > 0 ? o_.max_grad_norm : INFINITY);
  if (!std::isfinite(out.grad_norm)) diverged("gradient norm", out.grad_norm);
  optimizer_->set_lr_multiplier(schedule_.multiplier(s_.step));
  out.lr = optimizer_->lr();
  optimizer_->step();
  optimizer_->zero_grad();
  return out;
}

double TrainLoop::epoch_position() const {
  return double(s_.epoch) + double(s_.update_in_epoch) / double(updates_per_epoch_);
}

void TrainLoop::report_update(const Accumulated& batches, const Stepped& stepped) {
  tokens_seen_ += batches.tokens;
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - loop_started_).count();
  const train::UpdateEvent e{.step = s_.step,
                             .epoch = epoch_position(),
                             .loss = batches.loss,
                             .lr = stepped.lr,
                             .grad_norm = stepped.grad_norm,
                             .tokens = batches.tokens,
                             .tokens_per_s = elapsed > 0 ? double(tokens_seen_) / elapsed : 0.0};
  events_->on_update(e);
  log({{"type", "train"},
       {"step", e.step},
       {"epoch", e.epoch},
       {"loss", e.loss},
       {"lr", e.lr},
       {"grad_norm", e.grad_norm},
       {"tokens_per_s", e.tokens_per_s}});
}

bool TrainLoop::maybe_evaluate(bool epoch_end) {
  const bool due =
      dev_ && ((o_.eval_every > 0 && s_.step % o_.eval_every == 0) || epoch_end || s_.step == total_);
  if (!due) return false;
  model_.set_training(false);
  evaluate_dev();
  model_.set_training(true);
  return true;
}

void TrainLoop::evaluate_dev() {
  nlohmann::json m = train::evaluate(model_, *dev_, o_.eval_batch_size, masking_, *comm_);
  const double score = json_number(m, o_.metric.c_str());
  const bool is_best = improved(score, s_.best_score, o_.metric);
  nlohmann::json entry = {{"type", "eval"}, {"split", "dev"}, {"step", s_.step}, {"epoch", epoch_position()}};
  entry.update(m);
  entry["best"] = is_best;
  log(entry);
  s_.last_dev = m;
  if (is_best) {
    s_.best_score = score;
    s_.best_dev = m;
    s_.best_step = s_.step;
    s_.bad_evals = 0;
    keep_best();
  } else if (o_.patience > 0 && ++s_.bad_evals >= o_.patience) {
    s_.stop_early = true;
  }
  events_->on_eval({.step = s_.step,
                    .epoch = epoch_position(),
                    .metrics = std::move(m),
                    .is_best = is_best,
                    .early_stopping = s_.stop_early});
}

void TrainLoop::keep_best() {
  if (writes_) return save_best(best_dir_, target_, params_);
  NoGradGuard guard;
  best_in_memory_.clear();
  for (const auto& [name, t] : params_) best_in_memory_.emplace_back(name, t.detach().clone());
}

bool TrainLoop::maybe_checkpoint(bool forced) {
  const bool due = forced || s_.step == total_ || s_.stop_early ||
                   (o_.checkpoint_every > 0 && s_.step % o_.checkpoint_every == 0);
  if (due) save_checkpoint();
  return due;
}

void TrainLoop::save_checkpoint() {
  if (o_.in_memory) return;  // nothing to resume from: an in-memory run ends with its process
  check_replicas_agree(params_, *comm_, s_.step);
  if (writes_) train_detail::save_checkpoint(checkpoint_dir_, params_, *optimizer_, state_json());
  s_.last_checkpoint = s_.step;
  events_->on_checkpoint({.step = s_.step, .dir = checkpoint_dir_});
}

nlohmann::json TrainLoop::state_json() const {
  return nlohmann::json{
      {"step", s_.step},
      {"epoch", s_.epoch},
      {"update_in_epoch", s_.update_in_epoch},
      {"bad_evals", s_.bad_evals},
      {"best_score", std::isnan(s_.best_score) ? nlohmann::json() : nlohmann::json(s_.best_score)},
      {"best_step", s_.best_step},
      {"best_dev", s_.best_dev},
      {"last_dev", s_.last_dev},
      {"stopped_early", s_.stop_early},
      {"seed", o_.seed},
      {"batch_size", o_.batch_size},
      {"processes", int64_t(comm_->size())},
      {"grad_accum", o_.grad_accum},
      {"total_steps", total_},
      {"train_size", int64_t(train_set_.size())},
      {"method", target_.method},
      {"optimizer", optimizer_->name()}};
}

void TrainLoop::diverged(const std::string& what, double value) {
  const char* shown = std::isnan(value) ? "nan" : "inf";
  log({{"type", "diverged"}, {"step", s_.step + 1}, {"what", what}, {"value", shown}});
  events_->on_diverged(s_.step + 1, what);
  char lr[32];
  std::snprintf(lr, sizeof lr, "%g", o_.lr);
  const std::string where = o_.in_memory ? "the run was in memory, without checkpoints"
                            : s_.last_checkpoint >= 0
                                ? "the last good checkpoint (step " + std::to_string(s_.last_checkpoint) +
                                      ") is kept in " + checkpoint_dir_.string() +
                                      "; --resume continues from it"
                                : "no checkpoint had been written yet";
  throw train::TrainingDiverged("training stopped at step " + std::to_string(s_.step + 1) + ": the " + what +
                                " is " + shown + " (try a lower --lr than " + lr +
                                " or a smaller --max-grad-norm); " + where);
}

train::TrainResult TrainLoop::finish() {
  result_.steps = s_.step;
  result_.best_step = s_.best_step;
  result_.best_dev = s_.best_dev;
  result_.last_dev = s_.last_dev;
  result_.stop_reason = s_.stop_requested  ? "stopped"
                        : s_.stop_early    ? "early_stopping"
                        : o_.max_steps > 0 ? "max_steps"
                                           : "completed";
  // End with the weights that scored best on dev (what the test set and the saved delta get).
  const bool restore = o_.restore_best && !s_.stop_requested && s_.best_step >= 0 && s_.best_step != s_.step;
  if (restore && !writes_) {
    NoGradGuard guard;
    for (size_t i = 0; i < params_.size(); ++i) {
      Tensor param = params_[i].second;
      param.copy_(best_in_memory_.at(i).second);
    }
  } else if (restore && fs::exists(best_dir_)) {
    restore_best(best_dir_, target_, params_);
  }
  result_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  events_->on_end(result_);
  return result_;
}

void TrainLoop::log(const nlohmann::json& entry) {
  if (log_) log_->write(entry);
}

}  // namespace deltatune::train_detail
