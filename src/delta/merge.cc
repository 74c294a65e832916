#include "deltatune/merge.h"

#include <map>

#include "deltatune/atomic_file.h"
#include "deltatune/error.h"
#include "deltatune/nn.h"
#include "deltatune/safetensors.h"

namespace deltatune::delta {
namespace fs = std::filesystem;

// Each method knows whether and how it folds into the weights (Delta::merge_into, lora.cc, ia3.cc).
void merge_into(TransformerModel& model, Delta& delta) {
  nn::dequantize_weights(model);  // a quantised base (--quantize, a GGUF file) merges in float32
  delta.merge_into(model);
}

void unmerge_from(TransformerModel& model, Delta& delta) { delta.unmerge_from(model); }

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
