#pragma once
// Llama-family models (llama, mistral, qwen2) in GGUF, as llama.cpp's convert_hf_to_gguf.py writes
// them: `{arch}.*` hyperparameters, `tokenizer.ggml.*`, tensors named token_embd, blk.N.attn_q, ...,
// output_norm, output, and the q/k rows of a "llama" file permuted for ggml's rotary layout.
//
//   gguf::convert_model("assets/models/llama-mini", "mini.gguf", gguf::GgmlType::Q8_0);
//   auto model = load_pretrained("mini.gguf");   // the same model, through this header's readers
//
// Reading undoes the permutation, so a model read from GGUF computes what the Hugging Face
// checkpoint does (within the precision of the file's types).
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "deltatune/gguf.h"
#include "deltatune/hf_config.h"
#include "deltatune/model.h"
#include "deltatune/quantize.h"
#include "deltatune/tensor.h"

namespace deltatune::gguf {

// llama.cpp's tensor name of a Hugging Face parameter ("model.layers.3.self_attn.q_proj.weight" ->
// "blk.3.attn_q.weight"), and back; nullopt for a name the family does not have.
std::optional<std::string> gguf_tensor_name(const std::string& hf_name);
std::optional<std::string> hf_tensor_name(const std::string& gguf_name);

// The converter's q/k row permutation for a "llama" file: within each of `heads` heads of `rows /
// heads` rows, the rotary halves interleaved (row 2i+j of a head <- row j*(half)+i). `inverse` undoes
// it. Rows are moved whole: `row_bytes` bytes each, so a quantised matrix's blocks move as they are.
std::vector<uint8_t> permute_rows(const uint8_t* data, int64_t rows, size_t row_bytes, int64_t heads,
                                  bool inverse);
// How many heads the permutation of an HF tensor uses: num_heads for q, num_kv_heads for k; 0 when
// it is not permuted (other tensors, and architectures whose files keep HF's order such as qwen2).
int64_t permutation_heads(const ModelConfig& config, const std::string& hf_name);

// The Hugging Face config a GGUF model file describes. IoError / ConfigError naming the file and key.
ModelConfig model_config(const File& file);

// A GGUF model's tensors under Hugging Face names, the permutation undone. Q8_0 and Q4_0 matrices stay
// quantised (`quantized`, ggml's blocks as they are in the file); every other tensor is float32.
struct HfWeights {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::shared_ptr<const QuantizedMatrix>> quantized;
};
HfWeights hf_weights(const File& file, const ModelConfig& config);

// Writes a Hugging Face llama-family folder as a GGUF model: matrices in `type` (F32, F16, BF16, Q8_0,
// Q4_0; norms and biases always F32, as the converter does), the SentencePiece tokenizer as
// tokenizer.ggml.* (llama.cpp's "llama" vocabulary). ConfigError for another architecture.
void convert_model(const std::filesystem::path& hf_dir, const std::filesystem::path& out, GgmlType type);

// The same for a model in memory (a merged one): its causal-LM weights (a quantised layer's blocks
// written as they are when `type` is its format, else dequantised), the tokenizer of `tokenizer_source`
// (a Hugging Face folder's tokenizer.model, or a GGUF file's tokenizer.ggml.* keys copied).
void write_model(const TransformerModel& model, const std::filesystem::path& tokenizer_source,
                 const std::filesystem::path& out, GgmlType type);

}  // namespace deltatune::gguf
