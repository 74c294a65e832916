#include "model_loading.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "command.h"
#include "deltatune/delta_io.h"
#include "deltatune/error.h"

namespace deltatune::cli {

HeadKind parse_head(const std::string& head) {
  if (head == "causal-lm") return HeadKind::CausalLM;
  if (head == "masked-lm") return HeadKind::MaskedLM;
  if (head == "sequence-classification" || head == "classification") return HeadKind::SequenceClassification;
  if (head == "none") return HeadKind::None;
  throw ExitError{"unknown head '" + head + "' (supported: causal-lm, masked-lm, sequence-classification, none)"};
}

LoadedModel load_model(const std::string& model_dir, const std::string& head, const std::string& delta) {
  if (!std::filesystem::is_directory(model_dir))
    throw ExitError{"model folder '" + model_dir + "' does not exist or is not a folder"};
  LoadOptions options;
  if (!head.empty()) options.head = parse_head(head);
  const bool delta_is_config = !delta.empty() && std::filesystem::is_regular_file(delta);
  if (!delta.empty() && !delta_is_config) {
    if (!std::filesystem::is_directory(delta)) throw ExitError{"delta '" + delta + "' is neither a delta folder nor a config file"};
    delta::check_delta_fits(delta, model_dir);  // before its head is asked of the model
    // A delta saved with a task head decides the head (and label count) the model loads with.
    delta::DeltaRequirements req = delta::peek_delta(delta);
    if (req.head && head.empty()) options.head = req.head;
    if (req.num_labels) options.num_labels = req.num_labels;
    options.verbose = false;  // the delta supplies the head weights
  }
  LoadedModel loaded;
  loaded.model = load_pretrained(model_dir, options);
  if (delta_is_config) {  // a fresh delta from a JSON config: attach it as it would train
    std::ifstream in(delta);
    nlohmann::json config;
    try {
      config = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      throw ExitError{delta + ": not valid JSON: " + e.what()};
    }
    auto d = delta::make_delta(config);
    d->attach(*loaded.model);
    for (const auto& path : d->attached_modules()) loaded.tree_options.delta_labels[path] = d->method();
    auto [trainable, total] = delta::freeze_for_delta(*loaded.model, {d.get()}, loaded.model->head_parameters());
    loaded.trainable_line = trainable_summary(trainable, total);
    loaded.deltas.push_back(std::move(d));
  } else if (!delta.empty()) {
    // Whatever `train` wrote: a delta to attach, or a full / head run's weights replacing the model's.
    delta::SavedDelta saved = delta::load_delta(delta, *loaded.model);
    loaded.trained_parameters = delta::trained_model_parameters(saved, *loaded.model);
    std::vector<delta::Delta*> deltas;
    if (saved.delta) {
      for (const auto& path : saved.delta->attached_modules())
        loaded.tree_options.delta_labels[path] = saved.delta->method();
      deltas.push_back(saved.delta.get());
    }
    std::vector<std::string> trained;
    for (auto& [n, _] : saved.head) trained.push_back(n);
    auto [trainable, total] = delta::freeze_for_delta(*loaded.model, deltas, trained);
    loaded.trainable_line = trainable_summary(trainable, total);
    if (saved.delta) loaded.deltas.push_back(std::move(saved.delta));
  }
  return loaded;
}

void use_bf16(TransformerModel& model, const std::vector<std::string>& trained) {
  if (!ops::bf16_linear_available()) {
    std::fprintf(stderr, "note: this CPU has no AVX-512 BF16; --bf16 is ignored (float32 products)\n");
    return;
  }
  ops::set_matmul_precision(ops::MatmulPrecision::Bf16);
  std::fprintf(stderr, "bf16: products in bfloat16, %lld frozen weight matrices stored in bfloat16\n",
               static_cast<long long>(nn::store_frozen_weights(model, DType::BF16, {trained.begin(), trained.end()})));
}

}  // namespace deltatune::cli
