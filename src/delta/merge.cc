#include "deltatune/merge.h"

#include <cmath>

#include <map>

#include "delta/methods.h"
#include "delta/module_names.h"
#include "deltatune/atomic_file.h"
#include "deltatune/autograd.h"
#include "deltatune/error.h"
#include "deltatune/lora_arithmetic.h"
#include "deltatune/ops.h"
#include "deltatune/safetensors.h"

namespace deltatune::delta {
namespace fs = std::filesystem;
namespace {

// IA3: a vector scales a layer's output rows (and its bias) or, on feed-forward layers, its input
// columns; merging multiplies the weight by it and unmerging divides (PEFT adds 1e-8 to the divisor).
void apply_ia3(TransformerModel& model, Delta& delta, float sign) {
  for (auto& [name, l] : delta.parameters()) {
    const std::string path = name.substr(0, name.size() - std::string(".ia3_l").size());
    auto* layer = dynamic_cast<nn::Linear*>(model.find_module(path));
    if (!layer) throw ConfigError("merge: '" + path + "' is not a linear layer of this model");
    const bool feedforward = ia3_scales_inputs(l.shape(), *layer);
    NoGradGuard no_grad;
    Tensor v = l.detach().float32().reshape({-1});
    if (sign < 0) v = ops::div(Tensor::scalar(1.0f), ops::add_scalar(v, 1e-8f));
    const int64_t out = layer->out_features, in = layer->in_features;
    // [out, in] scaled by columns (a feed-forward IA3 scales the inputs) or by rows.
    Tensor w = ops::mul(layer->weight_out_in().float32(), feedforward ? v.reshape({1, in}) : v.reshape({out, 1}));
    Tensor stored = layer->fan_in_fan_out ? w.t().contiguous() : w;
    layer->weight() = stored.to(layer->weight().dtype()).contiguous().detach();
    if (!feedforward && layer->bias().defined())
      layer->bias() = ops::mul(layer->bias().float32(), v).to(layer->bias().dtype()).contiguous().detach();
  }
}

// LoRA on an embedding table: E += s (B A)^T, as PEFT's Embedding.get_delta_weight.
void apply_lora_embedding(TransformerModel& model, const std::string& path, const Tensor& A, const Tensor& B,
                          double scaling, float sign) {
  auto* emb = dynamic_cast<nn::Embedding*>(model.find_module(path));
  if (!emb) throw ConfigError("merge: '" + path + "' is not an embedding table of this model");
  // A tied LM head reads the same table: folding the delta in would change the head too, which the
  // attached delta never does (it only changes the lookup).
  if (model.config.tie_word_embeddings && (model.head == HeadKind::CausalLM || model.head == HeadKind::MaskedLM) &&
      emb->weight().same(model.input_embeddings()))
    throw ConfigError("merge: '" + path + "' is tied to the LM head (tie_word_embeddings), so folding a LoRA into it "
                      "would change the head as well; use the delta as it is, or load the model without the LM head");
  Tensor delta_e = ops::mul_scalar(ops::matmul(B, A).t().contiguous(), float(scaling) * sign);  // [vocab, dim]
  Tensor merged = ops::add(emb->weight().float32(), delta_e);
  emb->weight() = merged.to(emb->weight().dtype()).contiguous().detach();
}

void apply(TransformerModel& model, Delta& delta, float sign) {
  if (delta.method() == "unipelt")
    throw ConfigError("merge: UniPELT's LoRA is scaled by a gate computed from each input, so it cannot be "
                      "folded into fixed weights; use the delta as it is (deltatune eval/predict --delta)");
  NoGradGuard no_grad;
  if (delta.method() == "ia3") return apply_ia3(model, delta, sign);
  if (delta.method() != "lora")
    throw ConfigError("merge: the " + delta.method() + " delta cannot be merged into the weights (supported: lora, dora, ia3)");
  const nlohmann::json c = delta.config();
  if (sign < 0 && c.value("bias", std::string("none")) != "none")
    throw ConfigError("unmerge: a LoRA that trained biases replaced them; reload the base instead");
  for (auto& [path, f] : lora_embedding_factors(delta)) apply_lora_embedding(model, path, f.A, f.B, f.scaling, sign);
  for (auto& [path, f] : lora_factors(delta)) {
    auto* layer = dynamic_cast<nn::Linear*>(model.find_module(path));
    if (!layer) throw ConfigError("merge: '" + path + "' is not a linear layer of this model");
    Tensor w = layer->weight_out_in().float32().contiguous();     // [out, in]
    Tensor delta_w = ops::mul_scalar(ops::matmul(f.B, f.A), float(f.scaling));
    Tensor merged;
    if (f.magnitude.defined()) {
      if (sign < 0) throw ConfigError("unmerge: DoRA merges cannot be undone exactly; reload the base instead");
      Tensor combined = ops::add(w, delta_w);
      Tensor norm = ops::sqrt(ops::sum(ops::square(combined), {1}, true));
      merged = ops::mul(ops::div(f.magnitude.reshape({-1, 1}), norm), combined);
    } else {
      merged = sign > 0 ? ops::add(w, delta_w) : ops::sub(w, delta_w);
    }
    Tensor stored = layer->fan_in_fan_out ? merged.t().contiguous() : merged;
    layer->weight() = stored.to(layer->weight().dtype()).contiguous().detach();
  }
}

// LoRA's trained biases (bias "all" / "lora_only") replace the model's while attached and named as the
// model's own (<module>.bias): they are copied in once the delta is detached.
std::map<std::string, Tensor> trained_biases(Delta& delta) {
  std::map<std::string, Tensor> out;
  if (delta.method() != "lora" || delta.config().value("bias", std::string("none")) == "none") return out;
  for (auto& [name, t] : delta.parameters())
    if (strip_suffix(name, ".bias")) out[name] = t.clone();
  return out;
}
}  // namespace

void merge_into(TransformerModel& model, Delta& delta) {
  std::map<std::string, Tensor> biases = trained_biases(delta);
  apply(model, delta, 1.0f);
  delta.detach();
  NoGradGuard no_grad;
  for (auto& [name, b] : biases) {
    Tensor* target = model.find_parameter(name);
    if (!target) throw ConfigError("merge: the model has no parameter '" + name + "' for the trained bias");
    *target = b.to(target->dtype()).contiguous().detach();
  }
}

void unmerge_from(TransformerModel& model, Delta& delta) { apply(model, delta, -1.0f); }

std::string architecture_name(const std::string& model_type, HeadKind head) {
  static const std::map<std::string, std::string> prefixes = {{"bert", "Bert"},       {"roberta", "Roberta"},
                                                              {"gpt2", "GPT2"},       {"llama", "Llama"},
                                                              {"mistral", "Mistral"}, {"qwen2", "Qwen2"}};
  auto it = prefixes.find(model_type);
  if (it == prefixes.end())
    throw ConfigError("no transformers class is known for model type '" + model_type + "'");
  const std::string& prefix = it->second;
  switch (head) {
    case HeadKind::SequenceClassification:
      return prefix + "ForSequenceClassification";
    case HeadKind::MaskedLM:
      return prefix + "ForMaskedLM";
    case HeadKind::CausalLM:
      return prefix + (model_type == "gpt2" || model_type == "bert" ? "LMHeadModel" : "ForCausalLM");
    case HeadKind::None:
      return prefix + "Model";
  }
  return prefix + "Model";
}

namespace {
// The dtype the base checkpoint is stored in: its config's dtype, else that of its first floating
// tensor (float32 when it has none).
DType base_dtype(const TransformerModel& model, const fs::path& source_dir) {
  const std::string& d = model.config.dtype;
  if (d == "float32") return DType::F32;
  if (d == "float16") return DType::F16;
  if (d == "bfloat16") return DType::BF16;
  for (auto& [_, t] : load_checkpoint_tensors(source_dir))
    if (t.dtype() == DType::F32 || t.dtype() == DType::F16 || t.dtype() == DType::BF16) return t.dtype();
  return DType::F32;
}

// A classifier's config names its classes: id2label / label2id (num_labels follows from them).
void write_label_map(nlohmann::json& config, const TransformerModel& model,
                     const std::vector<std::string>& labels) {
  std::vector<std::string> names = labels;
  if (names.empty())
    for (const auto& [_, name] : model.config.id2label) names.push_back(name);
  if (int64_t(names.size()) != model.config.num_labels)
    throw ConfigError("the classifier has " + std::to_string(model.config.num_labels) + " outputs but " +
                      std::to_string(names.size()) + " label names were given");
  nlohmann::json id2label = nlohmann::json::object(), label2id = nlohmann::json::object();
  for (size_t i = 0; i < names.size(); ++i) {
    id2label[std::to_string(i)] = names[i];
    label2id[names[i]] = i;
  }
  config["id2label"] = id2label;
  config["label2id"] = label2id;
  config.erase("num_labels");
}
}  // namespace

void save_checkpoint(TransformerModel& model, const fs::path& source_dir, const fs::path& out_dir,
                     const CheckpointOptions& options) {
  const DType dtype = options.dtype.value_or(base_dtype(model, source_dir));
  nlohmann::json config = model.config.raw;
  config.erase("_name_or_path");  // set by load_pretrained to the base's folder: not this checkpoint's name
  // The checkpoint holds exactly this head's tensors: transformers must build the same class.
  config["architectures"] = {architecture_name(model.config.model_type, model.head)};
  if (model.head == HeadKind::SequenceClassification) {
    write_label_map(config, model, options.labels);
    // transformers' decoder classifiers find each row's last token through pad_token_id and refuse
    // batches without it; the usual recipe (pad with the end-of-text token) when the base has none.
    if (config.value("pad_token_id", nlohmann::json()).is_null() && config.contains("eos_token_id") &&
        model.config.family != ArchFamily::Bert) {
      const nlohmann::json& eos = config["eos_token_id"];
      config["pad_token_id"] = eos.is_array() && !eos.empty() ? eos[0] : eos;
    }
  }
  config["dtype"] = dtype_name(dtype);
  if (config.contains("torch_dtype")) config["torch_dtype"] = dtype_name(dtype);
  fs::create_directories(out_dir);
  std::map<std::string, Tensor> tensors;
  for (auto& [name, t] : model.named_parameters()) tensors[name] = t->to(dtype).contiguous().detach();
  write_safetensors(out_dir / "model.safetensors", tensors, {{"format", "pt"}});
  write_file_atomic(out_dir / "config.json", config.dump(2) + "\n");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                        "tokenizer.model", "special_tokens_map.json", "generation_config.json"})
    if (fs::exists(source_dir / f) && !fs::equivalent(source_dir, out_dir))
      fs::copy_file(source_dir / f, out_dir / f, fs::copy_options::overwrite_existing);
}

}  // namespace deltatune::delta
