// A llama-family model written as a GGUF model, the way llama.cpp's convert_hf_to_gguf.py writes one:
// general.* and {arch}.* keys, the tokenizer, then the tensors under llama.cpp's names in the model's
// order (token_embd, blk.0 ... blk.N-1, output_norm, output), q/k rows permuted.
#include <algorithm>
#include <cstring>
#include <regex>

#include "deltatune/error.h"
#include "deltatune/gguf_model.h"
#include "deltatune/nn.h"
#include "tokenize/gguf_vocab.h"

namespace deltatune::gguf {
namespace {

namespace fs = std::filesystem;

// llama.cpp's LlamaFileType of a file whose matrices are `type`.
uint32_t file_type(GgmlType type) {
  switch (type) {
    case GgmlType::F32:
      return 0;
    case GgmlType::F16:
      return 1;
    case GgmlType::Q4_0:
      return 2;
    case GgmlType::Q8_0:
      return 7;
    case GgmlType::BF16:
      return 32;
    default:
      throw ConfigError(std::string("GGUF model type ") + traits(type).name +
                        " is not supported (f32, f16, bf16, q8_0, q4_0)");
  }
}

void add_hyperparameters(Writer& w, const ModelConfig& c, const std::string& arch, const std::string& name,
                         GgmlType type) {
  w.set("general.architecture", Value::of_string(arch));
  w.set("general.type", Value::of_string("model"));
  w.set("general.name", Value::of_string(name));
  w.set(arch + ".block_count", Value::of_uint32(uint32_t(c.num_layers)));
  w.set(arch + ".context_length", Value::of_uint32(uint32_t(c.max_position_embeddings)));
  w.set(arch + ".embedding_length", Value::of_uint32(uint32_t(c.hidden_size)));
  w.set(arch + ".feed_forward_length", Value::of_uint32(uint32_t(c.intermediate_size)));
  w.set(arch + ".attention.head_count", Value::of_uint32(uint32_t(c.num_heads)));
  w.set(arch + ".attention.head_count_kv", Value::of_uint32(uint32_t(c.num_kv_heads)));
  w.set(arch + ".rope.freq_base", Value::of_float32(float(c.rope_theta)));
  w.set(arch + ".attention.layer_norm_rms_epsilon", Value::of_float32(float(c.rms_norm_eps)));
  if (c.head_dim * c.num_heads != c.hidden_size) {
    w.set(arch + ".attention.key_length", Value::of_uint32(uint32_t(c.head_dim)));
    w.set(arch + ".attention.value_length", Value::of_uint32(uint32_t(c.head_dim)));
  }
  w.set("general.file_type", Value::of_uint32(file_type(type)));
  w.set(arch + ".vocab_size", Value::of_uint32(uint32_t(c.vocab_size)));
  w.set(arch + ".rope.dimension_count", Value::of_uint32(uint32_t(c.head_dim)));
  w.set("general.quantization_version", Value::of_uint32(2));
}

void add_tokenizer(Writer& w, const fs::path& source, int64_t vocab_size) {
  if (!is_gguf_file(source)) return tokenize::add_gguf_vocab(source, vocab_size, w);
  const File f = read_file(source);
  for (const auto& [key, value] : f.metadata)
    if (key.rfind("tokenizer.", 0) == 0) w.set(key, value);
}

// Model order: token_embd, the blocks by number, then the rest (output_norm, output).
int64_t order_key(const std::string& gguf_name) {
  static const std::regex block(R"(blk\.(\d+)\..*)");
  std::smatch m;
  if (gguf_name.rfind("token_embd.", 0) == 0) return -1;
  if (std::regex_match(gguf_name, m, block)) return std::stoll(m[1]);
  return INT64_MAX - (gguf_name.rfind("output_norm.", 0) == 0 ? 1 : 0);
}

// The type one tensor is stored in: vectors in F32 as the converter keeps them; a matrix whose rows do
// not split into 32-value blocks falls back to F16.
GgmlType tensor_type(const Shape& shape, GgmlType type) {
  if (shape.size() < 2) return GgmlType::F32;
  if ((type == GgmlType::Q8_0 || type == GgmlType::Q4_0) && shape.back() % 32 != 0) return GgmlType::F16;
  return type;
}

// A matrix's bytes in the file's row order (q/k permuted): rows of `row_bytes` each.
std::vector<uint8_t> in_file_order(const ModelConfig& c, const std::string& hf_name,
                                   std::vector<uint8_t> bytes, int64_t rows) {
  const int64_t heads = permutation_heads(c, hf_name);
  if (!heads || rows == 0) return bytes;
  return permute_rows(bytes.data(), rows, bytes.size() / size_t(rows), heads, false);
}

// The model's tensors by Hugging Face name, a quantised linear's weight as its QuantizedMatrix.
struct ModelTensors {
  std::vector<std::pair<std::string, Tensor>> floats;
  std::map<std::string, const QuantizedMatrix*> quantized;
};

ModelTensors model_tensors(const TransformerModel& model) {
  auto& m = const_cast<TransformerModel&>(model);  // named_parameters is not const; nothing changes
  ModelTensors out;
  for (auto& [name, t] : m.named_parameters())
    if (t->defined() && !(model.config.tie_word_embeddings && name == "lm_head.weight"))
      out.floats.emplace_back(name, *t);
  for (auto& [name, module] : m.named_modules())
    if (auto* linear = dynamic_cast<nn::Linear*>(module); linear && linear->quantized)
      out.quantized[name + ".weight"] = linear->quantized.get();
  return out;
}

}  // namespace

void write_model(const TransformerModel& model, const fs::path& tokenizer_source, const fs::path& out,
                 GgmlType type) {
  const ModelConfig& config = model.config;
  if (config.family != ArchFamily::Llama)
    throw ConfigError("GGUF models are written for the llama family (llama, mistral, qwen2), not " +
                      config.model_type);
  if (model.head != HeadKind::CausalLM)
    throw ConfigError(std::string("a GGUF model is a causal LM; this model has a ") + head_name(model.head) +
                      " head");
  if (config.rope_type != "default")
    throw ConfigError("rope type " + config.rope_type + " is not supported in GGUF");
  const std::string arch = config.model_type == "qwen2" ? "qwen2" : "llama";
  Writer w;
  const std::string name = fs::absolute(tokenizer_source).lexically_normal().filename().string();
  add_hyperparameters(w, config, arch, name.ends_with(".gguf") ? name.substr(0, name.size() - 5) : name,
                      type);
  add_tokenizer(w, tokenizer_source, config.vocab_size);

  const ModelTensors tensors = model_tensors(model);
  std::vector<std::pair<std::string, std::string>> names;  // gguf, hf
  for (const auto& [hf, t] : tensors.floats) names.emplace_back(gguf_tensor_name(hf).value_or(""), hf);
  for (const auto& [hf, q] : tensors.quantized) names.emplace_back(gguf_tensor_name(hf).value_or(""), hf);
  for (const auto& [gg, hf] : names)
    if (gg.empty()) throw ConfigError("model tensor '" + hf + "' has no llama.cpp name");
  std::stable_sort(names.begin(), names.end(),
                   [](const auto& a, const auto& b) { return order_key(a.first) < order_key(b.first); });

  std::map<std::string, Tensor> floats(tensors.floats.begin(), tensors.floats.end());
  for (const auto& [gg, hf] : names) {
    const QuantizedMatrix* q = tensors.quantized.count(hf) ? tensors.quantized.at(hf) : nullptr;
    const Shape shape = q ? Shape{q->rows, q->cols} : floats.at(hf).shape();
    const int64_t rows = shape.empty() ? 1 : shape[0], cols = rows ? shape_numel(shape) / rows : 0;
    const GgmlType stored = tensor_type(shape, type);
    const bool same_blocks = q && ((stored == GgmlType::Q8_0 && q->format == QuantFormat::Q8_0) ||
                                   (stored == GgmlType::Q4_0 && q->format == QuantFormat::Q4_0));
    std::vector<uint8_t> bytes;
    if (same_blocks) {
      bytes = q->data;  // the blocks as they are: no second rounding
    } else {
      std::vector<float> values(size_t(rows * cols));
      if (q)
        q->dequantize_rows(0, rows, values.data());
      else
        values = floats.at(hf).to_floats();
      bytes = encode(values.data(), rows, cols, stored);
    }
    w.add_tensor(gg, Shape(shape.rbegin(), shape.rend()), stored,
                 in_file_order(config, hf, std::move(bytes), rows));
  }
  w.write(out);
}

void convert_model(const fs::path& hf_dir, const fs::path& out, GgmlType type) {
  const ModelConfig config = load_model_config(hf_dir);
  if (config.family != ArchFamily::Llama)
    throw ConfigError(hf_dir.string() +
                      ": GGUF conversion supports the llama family (llama, mistral, qwen2), not " +
                      config.model_type);
  file_type(type);  // an unsupported type is refused before the model loads
  LoadOptions options;
  options.head = HeadKind::CausalLM;
  options.verbose = false;
  write_model(*load_pretrained(hf_dir, options), hf_dir, out, type);
}

}  // namespace deltatune::gguf
