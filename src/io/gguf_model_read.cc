// A GGUF model file as a Hugging Face model: its config from the `{arch}.*` keys, its tensors under
// Hugging Face names with the converter's q/k permutation undone.
#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "deltatune/error.h"
#include "deltatune/gguf_model.h"

namespace deltatune::gguf {
namespace {

struct ArchInfo {
  const char* gguf;
  const char* model_type;
  const char* architecture;
};
const ArchInfo kArchs[] = {{"llama", "llama", "LlamaForCausalLM"}, {"qwen2", "qwen2", "Qwen2ForCausalLM"}};

const ArchInfo& arch_of(const File& f) {
  const std::string arch = f.string("general.architecture");
  for (const ArchInfo& a : kArchs)
    if (arch == a.gguf) return a;
  throw IoError(f.path.string() + ": general.architecture '" + arch +
                "' is not supported (supported: llama, qwen2, and mistral written as llama)");
}

std::optional<int64_t> optional_int(const File& f, const std::string& key) {
  if (!f.find(key)) return std::nullopt;
  return f.integer(key);
}

}  // namespace

ModelConfig model_config(const File& f) {
  const ArchInfo& arch = arch_of(f);
  const std::string a = arch.gguf;
  if (f.find(a + ".rope.scaling.type") && f.string(a + ".rope.scaling.type") != "none")
    throw IoError(f.path.string() + ": " + a + ".rope.scaling.type '" + f.string(a + ".rope.scaling.type") +
                  "' is not supported (plain rotary positions only)");
  nlohmann::json c;
  c["model_type"] = arch.model_type;
  c["architectures"] = {arch.architecture};
  c["hidden_act"] = "silu";
  c["hidden_size"] = f.integer(a + ".embedding_length");
  c["num_hidden_layers"] = f.integer(a + ".block_count");
  c["intermediate_size"] = f.integer(a + ".feed_forward_length");
  c["num_attention_heads"] = f.integer(a + ".attention.head_count");
  c["num_key_value_heads"] =
      optional_int(f, a + ".attention.head_count_kv").value_or(c["num_attention_heads"]);
  c["max_position_embeddings"] = f.integer(a + ".context_length");
  c["rms_norm_eps"] = f.number(a + ".attention.layer_norm_rms_epsilon");
  if (f.find(a + ".rope.freq_base")) c["rope_theta"] = f.number(a + ".rope.freq_base");
  if (auto kl = optional_int(f, a + ".attention.key_length")) c["head_dim"] = *kl;
  const TensorInfo& embed = f.tensor("token_embd.weight");
  if (embed.dims.size() != 2) throw IoError(f.path.string() + ": tensor 'token_embd.weight' is not a matrix");
  c["vocab_size"] = optional_int(f, a + ".vocab_size").value_or(embed.dims[1]);
  c["tie_word_embeddings"] = f.find_tensor("output.weight") == nullptr;
  const bool qkv_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  c["attention_bias"] = qkv_bias;
  if (auto bos = optional_int(f, "tokenizer.ggml.bos_token_id")) c["bos_token_id"] = *bos;
  if (auto eos = optional_int(f, "tokenizer.ggml.eos_token_id")) c["eos_token_id"] = *eos;
  if (auto pad = optional_int(f, "tokenizer.ggml.padding_token_id")) c["pad_token_id"] = *pad;
  ModelConfig config = parse_model_config(c, f.path.string());
  if (auto rope = optional_int(f, a + ".rope.dimension_count"); rope && *rope != config.head_dim)
    throw IoError(f.path.string() + ": " + a + ".rope.dimension_count " + std::to_string(*rope) +
                  " differs from the head size " + std::to_string(config.head_dim) +
                  " (partial rotary embeddings are not supported)");
  return config;
}

HfWeights hf_weights(const File& f, const ModelConfig& config) {
  HfWeights out;
  for (const TensorInfo& t : f.tensors) {
    const std::optional<std::string> name = hf_tensor_name(t.name);
    if (!name)
      throw IoError(f.path.string() + ": tensor '" + t.name + "' is not part of a " + config.model_type +
                    " model");
    const std::vector<int64_t> shape = t.shape();
    const int64_t rows = shape.empty() ? 1 : shape[0];
    const int64_t cols = shape.size() < 2 ? 1 : t.elements() / std::max<int64_t>(rows, 1);
    const int64_t heads = permutation_heads(config, *name);
    if (heads && (rows % heads != 0 || (rows / heads) % 2 != 0))
      throw IoError(f.path.string() + ": tensor '" + t.name + "' has " + std::to_string(rows) +
                    " rows, which do not split into " + std::to_string(heads) + " heads of even size");
    const bool linear = shape.size() == 2 && t.name != "token_embd.weight";
    if (linear && (t.type == GgmlType::Q8_0 || t.type == GgmlType::Q4_0)) {
      auto q = std::make_shared<QuantizedMatrix>();
      q->format = t.type == GgmlType::Q8_0 ? QuantFormat::Q8_0 : QuantFormat::Q4_0;
      q->rows = rows;
      q->cols = cols;
      q->data = heads ? permute_rows(t.data, rows, t.bytes / size_t(rows), heads, true)
                      : std::vector<uint8_t>(t.data, t.data + t.bytes);
      out.quantized[*name] = std::move(q);
      continue;
    }
    std::vector<float> values = dequantize(t, f.path);
    if (heads) {
      const std::vector<uint8_t> bytes = permute_rows(reinterpret_cast<const uint8_t*>(values.data()), rows,
                                                      size_t(cols) * sizeof(float), heads, true);
      std::memcpy(values.data(), bytes.data(), bytes.size());
    }
    out.tensors[*name] = Tensor::from_floats(values, shape);
  }
  return out;
}

}  // namespace deltatune::gguf
