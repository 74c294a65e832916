// A saved delta at work (see include/deltatune/workflow.h): evaluating it on a labelled file and
// predicting with it, through the one loader. `deltatune eval` and `deltatune predict` run these.
#include "deltatune/delta_io.h"
#include "deltatune/error.h"
#include "deltatune/workflow.h"

namespace deltatune::workflow {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A setting: the request's, else what the run was trained with (train_config.json), else the default.
std::string setting(const std::string& given, const json& run, const char* key, const char* fallback) {
  if (!given.empty()) return given;
  if (run.is_object() && run.contains(key) && run[key].is_string()) return run[key].get<std::string>();
  return fallback;
}

data::Fields fields_of(const RunSettings& s, const json& run) {
  return {setting(s.text_field, run, "text-field", "text"),
          setting(s.pair_field, run, "pair-field", "text_pair"),
          setting(s.label_field, run, "label-field", "label")};
}

int64_t max_length_of(const RunSettings& s, const json& run, const TransformerModel& model) {
  int64_t max_length = s.max_length;
  if (max_length <= 0) max_length = run.is_object() ? run.value("max-length", int64_t(128)) : 128;
  return train::effective_max_length(model, max_length);
}

// The head a saved delta runs with: a language model's when its head (a PEFT adapter's task_type) or
// its run's task says so; unset for a classifier.
std::optional<HeadKind> lm_head(const fs::path& delta_dir) {
  if (delta_dir.empty()) return std::nullopt;
  const std::optional<HeadKind> head = delta::peek_delta(delta_dir).head;
  const json run = train::read_train_config(delta_dir);
  const std::string task = run.is_object() ? run.value("task", std::string()) : std::string();
  if (head == HeadKind::CausalLM || task == "causal-lm") return HeadKind::CausalLM;
  if (head == HeadKind::MaskedLM || task == "masked-lm") return HeadKind::MaskedLM;
  return std::nullopt;
}

LoadedModel load_lm(const fs::path& model_dir, const fs::path& delta_dir, HeadKind head, bool bf16,
                    std::optional<QuantFormat> quantize) {
  LoadRequest load;
  load.model_dir = model_dir;
  load.delta = delta_dir;
  load.head = head;
  load.tokenizer = true;
  load.quantize = quantize;
  LoadedModel m = load_with_delta(load);
  use_precision(*m.model, bf16, quantize, m.trained.model_parameters);
  return m;
}

// A language-model delta: the loss and perplexity of its next-token predictions over the texts (only
// the answers of prompt/answer pairs), or of a masked LM at 15% masked positions (fixed seed).
Evaluation evaluate_lm(const EvaluateRequest& r, HeadKind head) {
  LoadedModel m = load_lm(r.model_dir, r.delta, head, r.bf16, r.quantize);
  data::Fields fields = fields_of(r.settings, m.train_config);
  fields.label = "label";
  const int64_t max_length = max_length_of(r.settings, m.train_config, *m.model);
  std::vector<data::Example> examples = data::read_examples(r.data_file, fields, /*labels_optional=*/true);
  const bool mlm = head == HeadKind::MaskedLM;
  const data::EncodedDataset dataset = mlm ? data::encode(examples, *m.tokenizer, max_length)
                                           : data::encode_for_lm(examples, *m.tokenizer, max_length);
  std::optional<data::MlmMasking> masking;
  if (mlm) masking = data::MlmMasking::for_tokenizer(*m.tokenizer);
  Evaluation out;
  out.metrics = {{"data", r.data_file.string()}, {"examples", dataset.size()}};
  out.metrics.update(train::evaluate(*m.model, dataset, r.batch_size, masking ? &*masking : nullptr));
  return out;
}

// A classifier; without a delta, the base with an untrained head over the labels of labels_source.
LoadedModel load_classifier_of(const EvaluateRequest& r) {
  data::LabelMap baseline;
  LoadRequest load;
  load.model_dir = r.model_dir;
  load.delta = r.delta;
  load.classifier = true;
  load.tokenizer = true;
  if (r.delta.empty()) {
    const fs::path source = r.labels_source.empty() ? r.data_file : r.labels_source;
    std::vector<data::Example> examples = data::read_examples(source, {});
    baseline = data::LabelMap::from_examples(examples);
    load.labels = &baseline;
  }
  load.quantize = r.quantize;
  LoadedModel m = load_with_delta(load);
  use_precision(*m.model, r.bf16, r.quantize, m.trained.model_parameters);
  return m;
}

// A causal LM tuned on prompts: each input's text, continued greedily up to EOS or the limit.
void continue_texts(const PredictRequest& r, const std::function<void(const json&)>& emit) {
  LoadedModel m = load_lm(r.model_dir, r.delta, HeadKind::CausalLM, r.bf16, r.quantize);
  data::Fields fields;
  fields.text = setting(r.settings.text_field, m.train_config, "text-field",
                        "text");  // a PEFT adapter has no run config
  const std::vector<data::Example> examples = data::read_examples(r.input, fields, /*labels_optional=*/true);
  GenerationOptions options;
  options.max_new_tokens = r.max_new_tokens;
  for (const data::Example& ex : examples)
    emit({{"text", ex.text}, {"generated", generate_text(*m.model, *m.tokenizer, ex.text, options).text}});
}

}  // namespace

Evaluation evaluate_run(const EvaluateRequest& r) {
  if (const std::optional<HeadKind> head = lm_head(r.delta)) return evaluate_lm(r, *head);
  LoadedModel m = load_classifier_of(r);
  const int64_t max_length = max_length_of(r.settings, m.train_config, *m.model);
  std::vector<data::Example> examples =
      data::read_examples(r.data_file, fields_of(r.settings, m.train_config));
  data::assign_labels(examples, m.labels);
  const data::EncodedDataset dataset = data::encode(examples, *m.tokenizer, max_length);
  train::Predictions p = train::predict(*m.model, dataset, r.batch_size);
  Evaluation out;
  out.per_class = metrics::per_class_report(p.predicted, p.labels, m.labels.names());
  out.metrics = {{"data", r.data_file.string()}, {"examples", dataset.size()}};
  out.metrics.update(metrics::classification_metrics(p.predicted, p.labels));
  out.metrics["loss"] = p.loss;
  out.metrics["per_class"] = metrics::report_json(out.per_class);
  return out;
}

void predict(const PredictRequest& r, const std::function<void(const json&)>& emit) {
  const std::optional<HeadKind> head = lm_head(r.delta);
  if (head == HeadKind::CausalLM) return continue_texts(r, emit);
  if (head == HeadKind::MaskedLM)
    throw ConfigError(r.delta.string() +
                      ": a masked-LM delta has no labels to predict; use `deltatune eval` for its loss");
  LoadedModel m =
      load_classifier_of({r.model_dir, r.delta, r.input, {}, {}, r.batch_size, r.bf16, r.quantize});
  const data::Fields fields = fields_of(r.settings, m.train_config);
  const int64_t max_length = max_length_of(r.settings, m.train_config, *m.model);
  std::vector<data::Example> examples = data::read_examples(r.input, fields, /*labels_optional=*/true);
  classify(*m.model, *m.tokenizer, m.labels, std::move(examples), max_length, r.batch_size, emit);
}

void classify(TransformerModel& model, const Tokenizer& tokenizer, const data::LabelMap& labels,
              std::vector<data::Example> examples, int64_t max_length, int64_t batch_size,
              const std::function<void(const json&)>& emit) {
  // Gold labels are echoed, not scored: an unseen one is not an error here.
  std::vector<std::string> gold;
  for (auto& ex : examples) {
    gold.push_back(ex.label.value_or(""));
    ex.label.reset();
  }
  const data::EncodedDataset dataset = data::encode(examples, tokenizer, max_length);
  train::Predictions p = train::predict(model, dataset, batch_size, /*keep_probabilities=*/true);
  for (size_t i = 0; i < examples.size(); ++i) {
    json probs = json::object();
    for (size_t k = 0; k < p.probabilities[i].size(); ++k)
      probs[labels.name(int64_t(k))] = p.probabilities[i][k];
    json line = {{"label", labels.name(p.predicted[i])}, {"probabilities", probs}};
    if (!gold[i].empty()) line["gold"] = gold[i];
    emit(line);
  }
}

}  // namespace deltatune::workflow
