// Hugging Face <-> llama.cpp names of the Llama family's tensors (gguf-py's tensor_mapping.py for
// LLM_ARCH_LLAMA / QWEN2), and the converter's q/k row permutation (LlamaModel.permute).
#include <cstring>
#include <regex>
#include <utility>

#include "deltatune/gguf_model.h"

namespace deltatune::gguf {
namespace {

// Per-block parameter suffixes: Hugging Face's, llama.cpp's.
const std::vector<std::pair<std::string, std::string>>& block_names() {
  static const std::vector<std::pair<std::string, std::string>> names = {
      {"input_layernorm", "attn_norm"},    {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},      {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"}, {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"},       {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
  };
  return names;
}

const std::vector<std::pair<std::string, std::string>>& global_names() {
  static const std::vector<std::pair<std::string, std::string>> names = {
      {"model.embed_tokens", "token_embd"}, {"model.norm", "output_norm"}, {"lm_head", "output"}};
  return names;
}

}  // namespace

std::optional<std::string> gguf_tensor_name(const std::string& hf_name) {
  static const std::regex block(R"(model\.layers\.(\d+)\.(.+)\.(weight|bias))");
  static const std::regex global(R"((.+)\.(weight|bias))");
  std::smatch m;
  if (std::regex_match(hf_name, m, block)) {
    for (const auto& [hf, gg] : block_names())
      if (m[2] == hf) return "blk." + m[1].str() + "." + gg + "." + m[3].str();
    return std::nullopt;
  }
  if (std::regex_match(hf_name, m, global))
    for (const auto& [hf, gg] : global_names())
      if (m[1] == hf) return gg + "." + m[2].str();
  return std::nullopt;
}

std::optional<std::string> hf_tensor_name(const std::string& gguf_name) {
  static const std::regex block(R"(blk\.(\d+)\.(.+)\.(weight|bias))");
  static const std::regex global(R"((.+)\.(weight|bias))");
  std::smatch m;
  if (std::regex_match(gguf_name, m, block)) {
    for (const auto& [hf, gg] : block_names())
      if (m[2] == gg) return "model.layers." + m[1].str() + "." + hf + "." + m[3].str();
    return std::nullopt;
  }
  if (std::regex_match(gguf_name, m, global))
    for (const auto& [hf, gg] : global_names())
      if (m[1] == gg) return hf + "." + m[2].str();
  return std::nullopt;
}

int64_t permutation_heads(const ModelConfig& config, const std::string& hf_name) {
  // convert_hf_to_gguf permutes for the archs ggml rotates pairwise (LLM_ARCH_LLAMA: llama, mistral);
  // qwen2 files keep Hugging Face's order (NeoX rotary in llama.cpp).
  if (config.model_type != "llama" && config.model_type != "mistral") return 0;
  const bool q = hf_name.find(".self_attn.q_proj.") != std::string::npos;
  const bool k = hf_name.find(".self_attn.k_proj.") != std::string::npos;
  return q ? config.num_heads : k ? config.num_kv_heads : 0;
}

std::vector<uint8_t> permute_rows(const uint8_t* data, int64_t rows, size_t row_bytes, int64_t heads,
                                  bool inverse) {
  std::vector<uint8_t> out(size_t(rows) * row_bytes);
  const int64_t per_head = rows / heads, half = per_head / 2;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        // reshape(heads, 2, half, ...).swapaxes(1, 2): permuted row (h, i, j) is original row (h, j, i).
        const int64_t permuted = h * per_head + 2 * i + j, original = h * per_head + j * half + i;
        const int64_t to = inverse ? original : permuted, from = inverse ? permuted : original;
        std::memcpy(out.data() + size_t(to) * row_bytes, data + size_t(from) * row_bytes, row_bytes);
      }
  return out;
}

}  // namespace deltatune::gguf
