// Running a classifier over a dataset: predictions, probabilities, loss and metrics.
#include <cmath>
#include <cstdio>
#include <span>

#include "deltatune/autograd.h"
#include "deltatune/metrics.h"
#include "deltatune/ops.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"

namespace deltatune::train {
namespace {

// Restores the model's training flag when evaluation ends, whichever way it ends.
class EvalMode {
 public:
  explicit EvalMode(TransformerModel& model) : model_(model), was_training_(model.training()) {
    model.set_training(false);
  }
  ~EvalMode() { model_.set_training(was_training_); }
  EvalMode(const EvalMode&) = delete;
  EvalMode& operator=(const EvalMode&) = delete;

 private:
  TransformerModel& model_;
  bool was_training_;
};

}  // namespace

int64_t effective_max_length(const TransformerModel& model, int64_t requested) {
  const std::optional<int64_t> limit = model.max_input_length();
  if (!limit || requested <= *limit) return requested;
  if (*limit < 2)
    throw ConfigError("the deltas' virtual tokens take all but " + std::to_string(*limit) +
                      " of the model's " + std::to_string(model.config.max_position_embeddings) +
                      " positions");
  const int64_t positions = model.config.max_position_embeddings - model.config.position_offset;
  std::string why = "the model's " + std::to_string(positions) + " positions";
  if (*limit < positions) why += " less " + std::to_string(positions - *limit) + " taken by virtual tokens";
  std::fprintf(stderr, "note: max length %lld exceeds %s; using %lld\n", (long long)requested, why.c_str(),
               (long long)*limit);
  return *limit;
}

ModelInput model_input(const TransformerModel& model, const data::Batch& batch) {
  ModelInput in;
  in.input_ids = batch.input_ids;
  in.attention_mask = batch.attention_mask;
  // Only BERT-style models have segment embeddings; others must not be given ids they would ignore.
  if (model.config.type_vocab_size > 0) in.token_type_ids = batch.token_type_ids;
  return in;
}

Predictions predict(TransformerModel& model, const data::EncodedDataset& dataset, int64_t batch_size,
                    bool keep_probabilities) {
  if (model.head != HeadKind::SequenceClassification)
    throw ConfigError("predict: the model has no sequence-classification head");
  EvalMode eval(model);
  NoGradGuard no_grad;
  // Length-sorted batches waste little on padding; results go back to the dataset's order.
  data::Batcher batcher(dataset,
                        {.batch_size = batch_size, .shuffle = false, .seed = 0, .bucket_by_length = true}, 0);
  const size_t n = dataset.size();
  Predictions out;
  out.predicted.assign(n, -1);
  out.labels.assign(n, -1);
  if (keep_probabilities) out.probabilities.resize(n);
  double loss_sum = 0;
  int64_t labelled = 0;
  for (const auto& indices : batcher.epoch_order(0)) {
    data::Batch batch = batcher.make_batch(indices);
    Tensor logits = model.forward(model_input(model, batch)).logits;
    const int64_t C = logits.size(-1);
    if (batch.labels.defined()) {
      loss_sum += double(ops::cross_entropy(logits, batch.labels).item()) * double(batch.size());
      labelled += batch.size();
    }
    const std::vector<float> probs = ops::softmax(logits, -1).to_floats();
    for (size_t b = 0; b < indices.size(); ++b) {
      const float* row = probs.data() + b * size_t(C);
      int64_t best = 0;
      for (int64_t c = 1; c < C; ++c)
        if (row[c] > row[best]) best = c;
      out.predicted[indices[b]] = best;
      out.labels[indices[b]] = dataset.examples[indices[b]].label;
      if (keep_probabilities) out.probabilities[indices[b]].assign(row, row + C);
    }
  }
  out.loss = labelled > 0 ? loss_sum / double(labelled) : 0.0;
  return out;
}

namespace {

// Token-weighted mean loss over the dataset (next-token, or at masked positions), and its perplexity.
nlohmann::json evaluate_lm(TransformerModel& model, const data::EncodedDataset& dataset, int64_t batch_size,
                           const data::MlmMasking* mlm) {
  EvalMode eval(model);
  NoGradGuard no_grad;
  data::Batcher batcher(dataset,
                        {.batch_size = batch_size, .shuffle = false, .seed = 0, .bucket_by_length = true}, 0);
  double total = 0;
  int64_t tokens = 0;
  for (const auto& indices : batcher.epoch_order(0)) {
    data::Batch batch = batcher.make_batch(indices);
    int64_t n = 0;
    double loss = 0;
    if (mlm) {
      data::apply_mlm_masking(batch, *mlm, 0x5eed + indices.front());  // fixed: comparable across evaluations
      loss = masked_lm_loss(model.forward(model_input(model, batch)).logits, batch, &n).item();
      if (n == 0) continue;
    } else {
      if (batch.input_ids.size(1) < 2) continue;  // one-token texts predict nothing
      loss = causal_lm_loss(model.forward(model_input(model, batch)).logits, batch, &n).item();
    }
    total += loss * double(n);
    tokens += n;
  }
  const double mean = tokens > 0 ? total / double(tokens) : 0.0;
  return {{"loss", mean}, {"perplexity", std::exp(mean)}, {"tokens", tokens}};
}

}  // namespace

nlohmann::json evaluate(TransformerModel& model, const data::EncodedDataset& dataset, int64_t batch_size,
                        const data::MlmMasking* mlm) {
  if (model.head == HeadKind::CausalLM) return evaluate_lm(model, dataset, batch_size, nullptr);
  if (model.head == HeadKind::MaskedLM) {
    if (!mlm) throw ConfigError("evaluating a masked LM needs its masking settings");
    return evaluate_lm(model, dataset, batch_size, mlm);
  }
  Predictions p = predict(model, dataset, batch_size, false);
  for (int64_t label : p.labels)
    if (label < 0) throw ConfigError("evaluate: the dataset has unlabelled examples");
  nlohmann::json m = metrics::classification_metrics(p.predicted, p.labels);
  m["loss"] = p.loss;
  return m;
}

namespace {

// The examples [begin, end) of a dataset.
data::EncodedDataset part_of(const data::EncodedDataset& dataset, std::pair<size_t, size_t> range) {
  data::EncodedDataset part;
  part.examples.assign(dataset.examples.begin() + ptrdiff_t(range.first),
                       dataset.examples.begin() + ptrdiff_t(range.second));
  return part;
}

}  // namespace

Predictions predict(TransformerModel& model, const data::EncodedDataset& dataset, int64_t batch_size,
                    bool keep_probabilities, distributed::Communicator& comm) {
  if (comm.size() == 1) return predict(model, dataset, batch_size, keep_probabilities);
  const auto range = distributed::share(dataset.size(), comm.rank(), comm.size());
  Predictions mine = predict(model, part_of(dataset, range), batch_size, keep_probabilities);
  // Everyone's predictions by summing buffers that are zero outside each process's part.
  const size_t n = dataset.size(), C = size_t(model.config.num_labels);
  std::vector<double> ints(2 * n + 2, 0.0);
  int64_t labelled = 0;
  for (size_t i = range.first; i < range.second; ++i) {
    ints[i] = double(mine.predicted[i - range.first]);
    ints[n + i] = double(mine.labels[i - range.first]);
    labelled += mine.labels[i - range.first] >= 0 ? 1 : 0;
  }
  ints[2 * n] = mine.loss * double(labelled);
  ints[2 * n + 1] = double(labelled);
  comm.allreduce_sum(ints);
  Predictions out;
  for (size_t i = 0; i < n; ++i) {
    out.predicted.push_back(int64_t(ints[i]));
    out.labels.push_back(int64_t(ints[n + i]));
  }
  out.loss = ints[2 * n + 1] > 0 ? ints[2 * n] / ints[2 * n + 1] : 0.0;
  if (keep_probabilities) {
    std::vector<float> probabilities(n * C, 0.0f);
    for (size_t i = range.first; i < range.second; ++i)
      std::copy(mine.probabilities[i - range.first].begin(), mine.probabilities[i - range.first].end(),
                probabilities.begin() + ptrdiff_t(i * C));
    comm.allreduce_sum(probabilities);
    for (size_t i = 0; i < n; ++i)
      out.probabilities.emplace_back(probabilities.begin() + ptrdiff_t(i * C),
                                     probabilities.begin() + ptrdiff_t((i + 1) * C));
  }
  return out;
}

nlohmann::json evaluate(TransformerModel& model, const data::EncodedDataset& dataset, int64_t batch_size,
                        const data::MlmMasking* mlm, distributed::Communicator& comm) {
  if (comm.size() == 1) return evaluate(model, dataset, batch_size, mlm);
  if (model.head == HeadKind::SequenceClassification) {
    Predictions p = predict(model, dataset, batch_size, false, comm);
    for (int64_t label : p.labels)
      if (label < 0) throw ConfigError("evaluate: the dataset has unlabelled examples");
    nlohmann::json m = metrics::classification_metrics(p.predicted, p.labels);
    m["loss"] = p.loss;
    return m;
  }
  // Language models: token-weighted loss sums.
  const nlohmann::json mine = evaluate(
      model, part_of(dataset, distributed::share(dataset.size(), comm.rank(), comm.size())), batch_size, mlm);
  const double tokens = mine["tokens"].get<double>();
  double sums[2] = {mine["loss"].get<double>() * tokens, tokens};
  comm.allreduce_sum(sums);
  const double mean = sums[1] > 0 ? sums[0] / sums[1] : 0.0;
  return {{"loss", mean}, {"perplexity", std::exp(mean)}, {"tokens", int64_t(sums[1])}};
}

}  // namespace deltatune::train
