// The one loader of a base model plus a saved delta (see include/deltatune/loading.h).
#include "deltatune/loading.h"

#include <cstdio>

#include "deltatune/delta_io.h"
#include "deltatune/error.h"
#include "deltatune/gguf.h"
#include "deltatune/gguf_lora.h"
#include "deltatune/nn.h"
#include "deltatune/ops.h"
#include "deltatune/trainer.h"

namespace deltatune {
namespace fs = std::filesystem;

namespace {

// "run/delta/" -> "run/delta", so that its run folder is its parent.
fs::path folder_path(const fs::path& dir) {
  fs::path d = dir.lexically_normal();
  return d.empty() || d.has_filename() ? d : d.parent_path();
}

// A classifier's classes: labels.json beside the delta, which must agree with the head it saved.
data::LabelMap classifier_labels(const fs::path& delta_dir, const delta::DeltaRequirements& req) {
  const fs::path labels_file = train::find_labels_file(delta_dir);
  data::LabelMap labels = data::LabelMap::load(labels_file);
  if (req.num_labels && *req.num_labels != labels.size())
    throw IoError(labels_file.string() + ": " + std::to_string(labels.size()) +
                  " labels but the delta's head has " + std::to_string(*req.num_labels) + " outputs");
  return labels;
}

}  // namespace

AppliedDelta apply_saved_delta(const fs::path& delta_dir, TransformerModel& model) {
  if (gguf::is_gguf_adapter(delta_dir)) {  // llama.cpp's LoRA adapter file
    AppliedDelta out;
    out.method = "lora";
    out.deltas.push_back(gguf::attach_lora_adapter(delta_dir, model));
    return out;
  }
  if (!fs::is_directory(delta_dir)) throw IoError(delta_dir.string() + ": delta folder does not exist");
  delta::SavedDelta saved = delta::load_delta(delta_dir, model);  // full / head runs replace model weights
  AppliedDelta out;
  out.method = saved.method;
  out.model_parameters = delta::trained_model_parameters(saved, model);
  if (saved.delta) out.deltas.push_back(std::move(saved.delta));
  return out;
}

bool model_exists(const fs::path& model) { return fs::is_directory(model) || gguf::is_gguf_file(model); }

LoadedModel load_with_delta(const LoadRequest& r) {
  if (!model_exists(r.model_dir))
    throw IoError("model folder '" + r.model_dir.string() +
                  "' does not exist or is not a folder (nor a GGUF file)");
  // A GGUF adapter holds a LoRA and no head: the base loads with the request's or its own head.
  const bool gguf_adapter = !r.delta.empty() && gguf::is_gguf_adapter(r.delta);
  const fs::path delta_dir = gguf_adapter ? r.delta : folder_path(r.delta);
  LoadedModel loaded;
  LoadOptions options;
  options.head = r.head;
  bool quantize_at_load = r.quantize.has_value();
  if (gguf_adapter) {
    if (r.classifier) throw ConfigError(r.delta.string() + ": a GGUF adapter has no classification head");
  } else if (!delta_dir.empty()) {
    if (!fs::is_directory(delta_dir)) throw IoError(delta_dir.string() + ": delta folder does not exist");
    delta::check_delta_fits(delta_dir, r.model_dir);  // before its head is asked of the model
    const delta::DeltaRequirements req = delta::peek_delta(delta_dir);
    if (!options.head) options.head = req.head;
    options.num_labels = req.num_labels;
    if (req.trains_linear_weights) quantize_at_load = false;
    if (r.classifier) loaded.labels = classifier_labels(delta_dir, req);
    loaded.train_config = train::read_train_config(delta_dir);
    options.verbose = false;  // the delta supplies the head weights
  } else if (r.classifier) {
    if (!r.labels) throw ConfigError("load_with_delta: a classifier without a delta needs its label names");
    loaded.labels = *r.labels;
    options.verbose = false;  // a new head is what was asked for
  }
  if (r.classifier) {
    options.head = HeadKind::SequenceClassification;
    options.num_labels = loaded.labels.size();
  }
  if (quantize_at_load) options.quantize = r.quantize;
  loaded.model = load_pretrained(r.model_dir, options);
  if (r.tokenizer) loaded.tokenizer = Tokenizer::load(r.model_dir);
  if (!delta_dir.empty()) loaded.trained = apply_saved_delta(delta_dir, *loaded.model);
  loaded.model->set_training(false);
  return loaded;
}

void use_quantized(TransformerModel& model, QuantFormat format, const std::vector<std::string>& trained) {
  nn::quantize_frozen_weights(model, format, {trained.begin(), trained.end()});
  // Counted over every quantised layer: those quantised as the base loaded (LoadRequest::quantize) too.
  int64_t count = 0, weights = 0;
  size_t bytes = 0;
  for (auto& [name, module] : model.named_modules())
    if (auto* linear = dynamic_cast<nn::Linear*>(module); linear && linear->quantized) {
      ++count;
      bytes += linear->quantized->bytes();
      weights += linear->quantized->rows * linear->quantized->cols;
    }
  std::fprintf(stderr, "quantize: %lld frozen weight matrices stored in %s (%.2f MB, %.2f bits a weight)\n",
               static_cast<long long>(count), quant_format_name(format), double(bytes) / 1e6,
               weights ? 8.0 * double(bytes) / double(weights) : 0.0);
}

void use_precision(TransformerModel& model, bool bf16, std::optional<QuantFormat> quantize,
                   const std::vector<std::string>& trained) {
  if (quantize) use_quantized(model, *quantize, trained);
  if (bf16) use_bf16(model, trained);
}

void use_bf16(TransformerModel& model, const std::vector<std::string>& trained) {
  if (!ops::bf16_linear_available()) {
    std::fprintf(stderr, "note: this CPU has no AVX-512 BF16; --bf16 is ignored (float32 products)\n");
    return;
  }
  ops::set_matmul_precision(ops::MatmulPrecision::Bf16);
  std::fprintf(
      stderr, "bf16: products in bfloat16, %lld frozen weight matrices stored in bfloat16\n",
      static_cast<long long>(nn::store_frozen_weights(model, DType::BF16, {trained.begin(), trained.end()})));
}

}  // namespace deltatune
