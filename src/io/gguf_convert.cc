// A Hugging Face llama-family folder written as a GGUF model, the way llama.cpp's convert_hf_to_gguf.py
// writes one: general.* and {arch}.* keys, the tokenizer, then the tensors under llama.cpp's names in
// the model's order (token_embd, blk.0 ... blk.N-1, output_norm, output), q/k rows permuted.
#include <algorithm>
#include <cstring>
#include <regex>

#include "deltatune/error.h"
#include "deltatune/gguf_model.h"
#include "deltatune/safetensors.h"
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
      throw ConfigError(std::string("convert --to gguf: type ") + traits(type).name +
                        " is not supported (f32, f16, bf16, q8_0, q4_0)");
  }
}

void add_hyperparameters(Writer& w, const ModelConfig& c, const std::string& arch, const fs::path& dir,
                         GgmlType type) {
  w.set("general.architecture", Value::of_string(arch));
  w.set("general.type", Value::of_string("model"));
  w.set("general.name", Value::of_string(fs::absolute(dir).lexically_normal().filename().string()));
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

}  // namespace

void convert_model(const fs::path& hf_dir, const fs::path& out, GgmlType type) {
  const ModelConfig config = load_model_config(hf_dir);
  if (config.family != ArchFamily::Llama)
    throw ConfigError(hf_dir.string() + ": GGUF conversion supports the llama family (llama, mistral, qwen2), not " +
                      config.model_type);
  if (config.rope_type != "default") throw ConfigError(hf_dir.string() + ": rope type " + config.rope_type + " is not supported");
  const std::string arch = config.model_type == "qwen2" ? "qwen2" : "llama";
  Writer w;
  add_hyperparameters(w, config, arch, hf_dir, type);
  tokenize::add_gguf_vocab(hf_dir, config.vocab_size, w);

  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [hf_name, t] : load_checkpoint_tensors(hf_dir)) {
    if (config.tie_word_embeddings && hf_name == "lm_head.weight") continue;
    const std::string key = hf_name.rfind("model.", 0) == 0 || hf_name.rfind("lm_head.", 0) == 0 ? hf_name : "model." + hf_name;
    const std::optional<std::string> name = gguf_tensor_name(key);
    if (!name) throw ConfigError(hf_dir.string() + ": tensor '" + hf_name + "' has no llama.cpp name");
    tensors.emplace_back(key, t);
  }
  std::stable_sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) {
    return order_key(*gguf_tensor_name(a.first)) < order_key(*gguf_tensor_name(b.first));
  });
  for (const auto& [hf_name, t] : tensors) {
    const Shape shape = t.shape();
    const int64_t rows = shape.empty() ? 1 : shape[0];
    const int64_t cols = rows ? t.numel() / rows : 0;
    std::vector<float> values = t.to_floats();
    if (const int64_t heads = permutation_heads(config, hf_name)) {
      const std::vector<uint8_t> moved = permute_rows(reinterpret_cast<const uint8_t*>(values.data()), rows,
                                                      size_t(cols) * sizeof(float), heads, false);
      std::memcpy(values.data(), moved.data(), moved.size());
    }
    const GgmlType stored = tensor_type(shape, type);
    w.add_tensor(*gguf_tensor_name(hf_name), Shape(shape.rbegin(), shape.rend()), stored,
                 encode(values.data(), rows, cols, stored));
  }
  w.write(out);
}

}  // namespace deltatune::gguf
