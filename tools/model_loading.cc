#include "model_loading.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "command.h"
#include "deltatune/gguf_lora.h"
#include "deltatune/loading.h"

namespace deltatune::cli {
namespace fs = std::filesystem;

HeadKind parse_head(const std::string& head) {
  if (head == "causal-lm") return HeadKind::CausalLM;
  if (head == "masked-lm") return HeadKind::MaskedLM;
  if (head == "sequence-classification" || head == "classification") return HeadKind::SequenceClassification;
  if (head == "none") return HeadKind::None;
  throw ExitError{"unknown head '" + head +
                  "' (supported: causal-lm, masked-lm, sequence-classification, none)"};
}

namespace {

// A fresh delta from a JSON config, attached as it would train.
std::unique_ptr<delta::Delta> fresh_delta(const std::string& config_file, TransformerModel& model) {
  std::ifstream in(config_file);
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw ExitError{config_file + ": not valid JSON: " + e.what()};
  }
  auto d = delta::make_delta(config);
  d->attach(model);
  return d;
}

}  // namespace

LoadedModel load_model(const std::string& model_dir, const std::string& head, const std::string& delta,
                       std::optional<QuantFormat> quantize) {
  if (!model_exists(model_dir))
    throw ExitError{"model folder '" + model_dir + "' does not exist or is not a folder (nor a GGUF file)"};
  const bool delta_is_config = !delta.empty() && fs::is_regular_file(delta) && !gguf::is_gguf_file(delta);
  if (!delta.empty() && !delta_is_config && !fs::is_directory(delta) && !gguf::is_gguf_adapter(delta))
    throw ExitError{"delta '" + delta + "' is neither a delta folder, a config file nor a GGUF adapter"};
  LoadRequest request;
  request.model_dir = model_dir;
  if (!head.empty()) request.head = parse_head(head);
  if (!delta_is_config) request.delta = delta;
  if (!delta_is_config) request.quantize = quantize;  // a fresh delta's config may train the weights
  deltatune::LoadedModel library = load_with_delta(request);

  LoadedModel loaded;
  loaded.model = std::move(library.model);
  loaded.trained_parameters = std::move(library.trained.model_parameters);
  loaded.deltas = std::move(library.trained.deltas);
  if (delta_is_config) loaded.deltas.push_back(fresh_delta(delta, *loaded.model));
  if (delta.empty()) return loaded;
  std::vector<delta::Delta*> deltas;
  for (const auto& d : loaded.deltas) {
    for (const auto& path : d->attached_modules()) loaded.tree_options.delta_labels[path] = d->method();
    deltas.push_back(d.get());
  }
  // What trains with the delta: a fresh one's task head, or what the saved one trained.
  const std::vector<std::string> trained =
      delta_is_config ? loaded.model->head_parameters() : loaded.trained_parameters;
  auto [trainable, total] = delta::freeze_for_delta(*loaded.model, deltas, trained);
  loaded.trainable_line = trainable_summary(trainable, total);
  return loaded;
}

}  // namespace deltatune::cli
