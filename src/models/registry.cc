// Building models from configs and loading Hugging Face checkpoints into them by name.
#include <cstdio>
#include <functional>
#include <map>
#include <set>

#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/gguf_model.h"
#include "deltatune/model.h"
#include "deltatune/safetensors.h"
#include "models/bert.h"
#include "models/common.h"
#include "models/gpt2.h"
#include "models/llama.h"

namespace deltatune {
namespace {

// Keys that transformers ties to another parameter and skips when loading.
bool is_tied_alias(const TransformerModel& model, const std::string& key) {
  if (!model.config.tie_word_embeddings) return false;
  return key == "lm_head.weight" || key == "cls.predictions.decoder.weight" ||
         key == "cls.predictions.decoder.bias" || key == "lm_head.decoder.weight" ||
         key == "lm_head.decoder.bias";
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// `initialised` is told each parameter's name once its values are set.
void init_parameters(TransformerModel& model, uint64_t seed, const std::set<std::string>* only = nullptr,
                     const std::function<void(const std::string&)>& initialised = {}) {
  Generator gen(seed);
  NoGradGuard guard;
  for (auto& [name, t] : model.named_parameters()) {
    if (only && !only->count(name)) continue;
    const bool is_norm = name.find("LayerNorm") != std::string::npos ||
                         name.find("layer_norm") != std::string::npos ||
                         name.find("ln_") != std::string::npos || name.find("norm.") != std::string::npos ||
                         name.find("layernorm") != std::string::npos;
    const bool is_bias = name.ends_with(".bias");
    if (is_bias)
      t->fill_(0.0f);
    else if (is_norm)
      t->fill_(1.0f);
    else
      models::init_normal(*t, gen, 0.02f);
    if (initialised) initialised(name);
  }
}

// The linear weights LoadOptions::quantize stores quantised, by parameter name: those of the body (not
// the head, which trains or is replaced) that share their storage with no other parameter (a tied LM
// head is the embedding table).
std::map<std::string, nn::Linear*> quantizable_linears(TransformerModel& model) {
  const std::set<const Storage*> shared = nn::shared_storages(model);
  const std::vector<std::string> head_list = model.head_parameters();
  const std::set<std::string> head(head_list.begin(), head_list.end());
  std::map<std::string, nn::Linear*> out;
  for (auto& [path, module] : model.named_modules()) {
    auto* linear = dynamic_cast<nn::Linear*>(module);
    const std::string name = path + ".weight";
    if (linear && linear->weight().defined() && !head.count(name) &&
        !shared.count(linear->weight().storage().get()))
      out.emplace(name, linear);
  }
  return out;
}

// Stores a body linear's weight in the compact form LoadOptions asks for, from `src` (its initialised
// values, or a view of the checkpoint's mapping): quantised (`quantize`) or else bfloat16, in memory of
// its own. Only a float32 copy of this one matrix exists on the way to the blocks, and only when the
// source is not float32 already or is stored [in, out]. `where` ("FILE: tensor 'KEY'") prefixes a
// quantiser's refusal (NaN or infinite values) as an IoError; empty, the refusal goes on as it is.
void store_compact(nn::Linear& linear, const Tensor& src, std::optional<QuantFormat> quantize,
                   const std::string& where = "") {
  if (!quantize) {
    linear.weight() = src.to(DType::BF16).contiguous().detach();
    if (linear.weight().storage() == src.storage()) linear.weight() = src.clone().detach();  // writable
    return;
  }
  linear.weight() = src.float32();
  try {
    nn::quantize_weight(linear, *quantize);
  } catch (const ConfigError& e) {
    if (where.empty()) throw;
    throw IoError(where + ": " + e.what());
  }
}

// A linear weight that a GGUF file holds in Q8_0 / Q4_0 stays so: the layer keeps the file's blocks
// (as --quantize would have made them) and its float weight is freed. False when `q` is null.
bool keep_quantized(TransformerModel& model, const std::string& param,
                    std::shared_ptr<const QuantizedMatrix> q) {
  if (!q || !param.ends_with(".weight")) return false;
  auto* linear = dynamic_cast<nn::Linear*>(
      model.find_module(param.substr(0, param.size() - std::string(".weight").size())));
  if (!linear) return false;
  if (q->rows != linear->out_features || q->cols != linear->in_features || linear->fan_in_fan_out)
    throw IoError("tensor '" + param + "' is [" + std::to_string(q->rows) + ", " + std::to_string(q->cols) +
                  "] but the model expects " + shape_str(linear->weight().shape()));
  linear->quantized = std::move(q);
  linear->weight() = Tensor();
  return true;
}

// The family's model class, parameters not yet initialised or loaded.
std::unique_ptr<TransformerModel> construct(const ModelConfig& config, HeadKind head) {
  switch (config.family) {
    case ArchFamily::Bert:
      return std::make_unique<models::BertModel>(config, head);
    case ArchFamily::Gpt2:
      return std::make_unique<models::Gpt2Model>(config, head);
    case ArchFamily::Llama:
      return std::make_unique<models::LlamaModel>(config, head);
  }
  throw ConfigError("unknown architecture family");
}

}  // namespace

HeadKind head_from_architectures(const ModelConfig& c) {
  for (const auto& a : c.architectures) {
    if (a.find("ForSequenceClassification") != std::string::npos) return HeadKind::SequenceClassification;
    if (a.find("ForMaskedLM") != std::string::npos) return HeadKind::MaskedLM;
    if (a.find("ForCausalLM") != std::string::npos || a.find("LMHeadModel") != std::string::npos)
      return HeadKind::CausalLM;
  }
  return c.family == ArchFamily::Bert ? HeadKind::MaskedLM : HeadKind::CausalLM;
}

std::unique_ptr<TransformerModel> build_model(const ModelConfig& config, HeadKind head, uint64_t seed,
                                              std::optional<QuantFormat> quantize, bool bf16) {
  std::unique_ptr<TransformerModel> model = construct(config, head);
  std::map<std::string, nn::Linear*> linears;
  if (quantize || bf16) linears = quantizable_linears(*model);
  init_parameters(*model, seed, nullptr, [&](const std::string& name) {
    auto it = linears.find(name);
    if (it == linears.end()) return;
    store_compact(*it->second, it->second->weight().detach(), quantize);
  });
  return model;
}

std::unique_ptr<TransformerModel> load_pretrained(const std::filesystem::path& dir,
                                                  const LoadOptions& options, LoadReport* report_out) {
  // A GGUF file (llama.cpp's) holds its config in metadata and its tensors under llama.cpp's names.
  std::optional<gguf::File> gguf_file;
  if (gguf::is_gguf_file(dir)) gguf_file = gguf::read_file(dir);
  ModelConfig config = gguf_file ? gguf::model_config(*gguf_file) : load_model_config(dir);
  // As transformers' from_pretrained: the model's name is the folder it was read from, as given (what
  // a saved delta records as its base, PEFT's base_model_name_or_path).
  config.raw["_name_or_path"] = dir.string();
  if (options.num_labels) {
    if (*options.num_labels < 1) throw ConfigError("num_labels must be at least 1");
    config.num_labels = *options.num_labels;
  }
  const HeadKind head = options.head.value_or(head_from_architectures(config));
  std::unique_ptr<TransformerModel> model = construct(config, head);
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::shared_ptr<const QuantizedMatrix>> quantized;  // GGUF Q8_0 / Q4_0 matrices
  if (gguf_file) {
    gguf::HfWeights weights = gguf::hf_weights(*gguf_file, config);
    tensors = std::move(weights.tensors);
    quantized = std::move(weights.quantized);
  } else {
    tensors = load_checkpoint_tensors(dir);
  }
  const std::string tensor_file = gguf_file ? dir.string() : (dir / "model.safetensors").string();
  // Checkpoints of a bare base model (BertModel, GPT2Model, LlamaModel) lack the prefix.
  const std::string prefix = model->layers_path().substr(0, model->layers_path().find('.')) + ".";
  bool has_prefix = false;
  for (auto& [k, _] : tensors) has_prefix = has_prefix || k.rfind(prefix, 0) == 0;

  LoadReport report;
  std::set<std::string> used;
  const std::vector<std::string> head_params = model->head_parameters();
  std::set<std::string> to_init;
  NoGradGuard guard;
  std::map<std::string, nn::Linear*> quantizable;
  if (options.quantize || options.bf16) quantizable = quantizable_linears(*model);
  for (auto& [name, param] : model->named_parameters()) {
    std::string key = name;
    if (!has_prefix && name.rfind(prefix, 0) == 0) key = name.substr(prefix.size());
    if (keep_quantized(*model, name, quantized.find(key) != quantized.end() ? quantized[key] : nullptr)) {
      used.insert(key);
      continue;
    }
    auto it = tensors.find(key);
    if (it == tensors.end()) {
      report.missing.push_back(name);
      continue;
    }
    used.insert(key);
    const Tensor& src = it->second;
    if (src.shape() != param->shape())
      throw IoError(tensor_file + ": tensor '" + key + "' has shape " + shape_str(src.shape()) +
                    " but the model expects " + shape_str(param->shape()));
    if (auto q = quantizable.find(name); q != quantizable.end()) {  // options.quantize or options.bf16
      store_compact(*q->second, src, options.quantize, tensor_file + ": tensor '" + key + "'");
      release_file_pages(src);
      continue;
    }
    if (options.keep_half_precision)
      *param = src;
    else
      *param = src.float32().contiguous().detach();
    if (param->same(src) && src.dtype() == DType::F32) *param = src.clone().detach();  // own memory, writable
    // Copied: the checkpoint's pages of it go (held once, not twice, while the model loads).
    if (param->storage() != src.storage()) release_file_pages(src);
  }
  for (auto& [key, _] : tensors)
    if (!used.count(key) && !is_tied_alias(*model, key)) report.unexpected.push_back(key);
  for (auto& [key, _] : quantized)
    if (!used.count(key)) report.unexpected.push_back(key);

  std::vector<std::string> fatal;
  for (const auto& name : report.missing) {
    bool is_head = false;
    for (const auto& h : head_params) is_head = is_head || h == name;
    if (is_head) {
      to_init.insert(name);
      report.initialized.push_back(name);
    } else {
      fatal.push_back(name);
    }
  }
  if (!fatal.empty())
    throw IoError(dir.string() + ": the checkpoint lacks weights the model needs: " + join(fatal));
  if (!to_init.empty()) init_parameters(*model, options.seed, &to_init);
  if (options.verbose) {
    if (!report.unexpected.empty())
      std::fprintf(stderr,
                   "Some weights of the model checkpoint at %s were not used when initializing %s: [%s]\n",
                   dir.string().c_str(), model->type_name().c_str(), join(report.unexpected).c_str());
    if (!report.initialized.empty())
      std::fprintf(
          stderr,
          "Some weights of %s were not initialized from the model checkpoint at %s and are newly "
          "initialized: [%s]\nYou should probably TRAIN this model on a down-stream task to be able to use "
          "it for predictions and inference.\n",
          model->type_name().c_str(), dir.string().c_str(), join(report.initialized).c_str());
  }
  if (report_out) *report_out = report;
  return model;
}

}  // namespace deltatune
